/* session: one client control session and its backend control connection. */
#ifndef FTPGATE_SESSION_H
#define FTPGATE_SESSION_H

#include <event2/util.h>
#include <stdint.h>
#include <sys/socket.h>

#include "ftpgate.h"

/*
 * Take ownership of an accepted client control socket. peer is the client
 * (from a PROXY protocol header, or the socket's peer); dst the address it
 * connected to as the header says, or NULL for the socket's own.
 */
void session_new(struct site *site, evutil_socket_t fd, const struct sockaddr *peer, int peerlen,
                 const struct sockaddr *dst);

/* Sessions of site whose client has the IP of ip. */
unsigned sessions_count_ip(const struct site *site, const struct sockaddr *ip);

/*
 * TLS passthrough: a data connection accepted on passive port `port` from
 * peer. Forwarded to the backend's same port if a live session of a site
 * named like site expects it from that address (see passthrough.c). Returns
 * 0 (fd taken) or -1: the fd is still the caller's; *why says why it was
 * refused, or is NULL when it could not be forwarded (already logged).
 */
int session_pt_data(struct site *site, int fd, const struct sockaddr *peer, uint16_t port,
                    const char **why);

/* Shutdown: end idle sessions with 421; the others end once their transfer is done. */
void sessions_drain(struct ftpgate *gw);

/* Passive ports held (listening or connected data pairs) by sessions of sites named name. */
unsigned sessions_ports_in_use(const struct ftpgate *gw, const char *name);

struct session_info;
struct evbuffer;
/* What GET /sessions shows of s (see sessinfo.h). */
void session_info(const struct session *s, struct session_info *si, uint64_t now);
/* GET /sessions: every open session of gw (a struct ftpgate *), oldest first,
 * as JSON or (table) the table of `ftpgate sessions`; 0 or -1. */
int sessions_report(void *gw, struct evbuffer *out, int table);

/* Close every session of gw now (shutdown). */
void sessions_close_all(struct ftpgate *gw);

#endif
