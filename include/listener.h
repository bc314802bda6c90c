/* listener: control-connection listeners, accept, session limits. */
#ifndef FTPGATE_LISTENER_H
#define FTPGATE_LISTENER_H

#include "ftpgate.h"

/* Bind every listen address of every site. Returns 0 or -1 (logged). */
int listeners_open(struct ftpgate *gw);
void listeners_close(struct ftpgate *gw);

#endif
