/* portpool: listening sockets on a random free port of a passive range. */
#ifndef FTPGATE_PORTPOOL_H
#define FTPGATE_PORTPOOL_H

#include <stdint.h>
#include <sys/socket.h>

/*
 * Open a non-blocking listening socket bound to addr (its port is ignored)
 * on a port in [lo, hi], picked at random; ports that fail to bind are
 * skipped. Returns the fd and the bound port in *port, or -1 (errno set)
 * when no port of the range could be bound.
 */
int portpool_listen(uint16_t lo, uint16_t hi, const struct sockaddr *addr, uint16_t *port);

#endif
