/* listener: control-connection listeners, accept, session limits. */
#ifndef FTPGATE_LISTENER_H
#define FTPGATE_LISTENER_H

#include "ftpgate.h"

/* Bind every listen address of every site. Returns 0 or -1 (logged). */
int listeners_open(struct ftpgate *gw);
void listeners_close(struct ftpgate *gw);

/* Close the connections whose PROXY protocol header is still being read (shutdown). */
void listeners_close_pending(struct ftpgate *gw);

/*
 * Reload: give the sites of `to` their listeners, taking over those of `from`
 * with the same address (no connection is refused in between), opening new
 * ones (a failure is logged, not fatal) and closing those no longer wanted.
 */
void listeners_move(struct ftpgate *gw, struct gen *from, struct gen *to);

#endif
