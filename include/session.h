/* session: one client control session and its backend control connection. */
#ifndef FTPGATE_SESSION_H
#define FTPGATE_SESSION_H

#include <event2/util.h>
#include <stdint.h>
#include <sys/socket.h>

#include "ftpgate.h"

struct worker;

/*
 * Take ownership of an accepted client control socket (main thread, under
 * gw->lock): the session is counted and linked into worker w, its protocol
 * state made; nothing of it runs yet. peer is the client (from a PROXY
 * protocol header, or the socket's peer); dst the address it connected to
 * as the header says, or NULL for the socket's own. NULL: out of memory
 * (fd closed).
 */
struct session *session_new(struct site *site, struct worker *w, evutil_socket_t fd,
                            const struct sockaddr *peer, int peerlen, const struct sockaddr *dst);

/* Run a new session in its worker's thread: greeting, backend connection. */
void session_start(struct session *s);

/* Free a session that never started (shutdown with it still queued). */
void session_discard(struct session *s);

/* Sessions of site whose client has the IP of ip (under gw->lock). */
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

/* Shutdown: end the worker's idle sessions with 421; the others end once
 * their transfer is done (in the worker's thread). */
void sessions_drain(struct worker *w);

struct session_info;
struct evbuffer;
/* What GET /sessions shows of s (see sessinfo.h); in s's worker thread. */
void session_info(const struct session *s, struct session_info *si, uint64_t now);
/* GET /sessions: every open session of gw (a struct ftpgate *), oldest first,
 * as JSON or (table) the table of `ftpgate sessions`; 0 or -1. Main thread:
 * each worker describes its own sessions (workers_run()). */
int sessions_report(void *gw, struct evbuffer *out, int table);

/* Close every session of w now (shutdown, its thread stopped). */
void sessions_close_all(struct worker *w);

#endif
