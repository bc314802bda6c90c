/*
 * access: who may connect. Pure (no I/O), unit-tested.
 *
 * - acl_permits(): a site's allow and deny prefixes (deny wins; a
 *   non-empty allow admits only its prefixes).
 */
#ifndef FTPGATE_ACCESS_H
#define FTPGATE_ACCESS_H

#include <stddef.h>
#include <sys/socket.h>

#include "conf.h"

/* 1 if the site's allow/deny lists admit sa's IP, else 0. */
int acl_permits(const struct site_conf *sc, const struct sockaddr *sa);

#endif
