/*
 * access: who may connect. Pure (no I/O), unit-tested.
 *
 * - acl_permits(): a site's allow and deny prefixes (deny wins; a
 *   non-empty allow admits only its prefixes).
 * - struct bans: login failures per client address and site, and the bans
 *   they lead to (max_login_failures within login_failure_window: banned
 *   for ban_time). A fixed table of BANS_MAX entries, allocated once: a
 *   flood of distinct addresses evicts the least recently seen address
 *   that is not banned; only when every entry is a live ban does the ban
 *   that ends first go. The table belongs to the process (not to a
 *   configuration), so bans survive reloads. No clock inside: the caller
 *   passes the time.
 */
#ifndef FTPGATE_ACCESS_H
#define FTPGATE_ACCESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "conf.h"

/* 1 if the site's allow/deny lists admit sa's IP, else 0. */
int acl_permits(const struct site_conf *sc, const struct sockaddr *sa);

#define BANS_MAX 4096 /* addresses tracked at once, over all sites */

struct ban_entry {
	char site[CONF_NAME_MAX];
	int family; /* AF_INET or AF_INET6; 0 = free */
	unsigned char ip[16];
	unsigned failures;     /* within the current window */
	uint64_t window_start; /* ms: the first failure of the window */
	uint64_t until;        /* ms: banned until then (0 = not banned) */
	uint64_t last;         /* ms: last seen, for eviction */
};

struct bans {
	struct ban_entry e[BANS_MAX];
	uint64_t evicted; /* entries dropped to make room */
};

/* Is sa banned on site at now? *left gets the milliseconds left. */
int bans_check(struct bans *b, const char *site, const struct sockaddr *sa, uint64_t now,
               uint64_t *left);
/*
 * A failed login from sa on site (max, window_ms, ban_ms from the site's
 * configuration). Returns 1 if this failure started a ban, else 0.
 */
int bans_failure(struct bans *b, const char *site, const struct sockaddr *sa, uint64_t now,
                 unsigned max, uint64_t window_ms, uint64_t ban_ms);
/* A successful login from sa on site: its failures are forgotten (a live ban stays). */
void bans_success(struct bans *b, const char *site, const struct sockaddr *sa, uint64_t now);
/* Call fn for each live ban of site at now. */
void bans_each(const struct bans *b, const char *site, uint64_t now,
               void (*fn)(void *arg, const struct ban_entry *e), void *arg);

#endif
