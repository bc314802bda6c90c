/* session: one client control session and its backend control connection. */
#ifndef FTPGATE_SESSION_H
#define FTPGATE_SESSION_H

#include <event2/util.h>
#include <sys/socket.h>

#include "ftpgate.h"

/* Take ownership of an accepted client control socket. */
void session_new(struct site *site, evutil_socket_t fd, const struct sockaddr *peer, int peerlen);

/* Sessions of site whose client has the IP of ip. */
unsigned sessions_count_ip(const struct site *site, const struct sockaddr *ip);

/* Close every session of gw now (shutdown). */
void sessions_close_all(struct ftpgate *gw);

#endif
