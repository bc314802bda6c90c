/*
 * access: a site's allow/deny prefixes, and the table of login failures
 * and bans (struct bans, one fixed array owned by the caller). Pure: no
 * I/O, the time comes from the caller.
 */
#include "config.h"

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "access.h"
#include "util.h"

int acl_permits(const struct site_conf *sc, const struct sockaddr *sa)
{
	for (size_t i = 0; i < sc->n_deny; i++)
		if (cidr_match(&sc->deny[i], sa))
			return 0;
	if (sc->n_allow == 0)
		return 1;
	for (size_t i = 0; i < sc->n_allow; i++)
		if (cidr_match(&sc->allow[i], sa))
			return 1;
	return 0;
}

/* sa's IP as family and bytes (IPv4-mapped IPv6 as IPv4). 0, or -1 for another family. */
static int ip_of(const struct sockaddr *sa, int *family, unsigned char ip[16])
{
	memset(ip, 0, 16);
	if (sa->sa_family == AF_INET) {
		*family = AF_INET;
		memcpy(ip, &((const struct sockaddr_in *)sa)->sin_addr, 4);
		return 0;
	}
	if (sa->sa_family != AF_INET6)
		return -1;
	const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
	if (IN6_IS_ADDR_V4MAPPED(a6)) {
		*family = AF_INET;
		memcpy(ip, a6->s6_addr + 12, 4);
	} else {
		*family = AF_INET6;
		memcpy(ip, a6->s6_addr, 16);
	}
	return 0;
}

static struct ban_entry *find(struct bans *b, const char *site, const struct sockaddr *sa)
{
	int fam;
	unsigned char ip[16];
	if (ip_of(sa, &fam, ip) < 0)
		return NULL;
	for (size_t i = 0; i < BANS_MAX; i++) {
		struct ban_entry *e = &b->e[i];
		if (e->family == fam && memcmp(e->ip, ip, 16) == 0 && strcmp(e->site, site) == 0)
			return e;
	}
	return NULL;
}

/* A slot for a new address: a free one, else the least recently seen that is not
 * banned (or whose ban is over), else the ban that ends first. */
static struct ban_entry *make_room(struct bans *b, uint64_t now)
{
	struct ban_entry *lru = NULL, *soonest = NULL;
	for (size_t i = 0; i < BANS_MAX; i++) {
		struct ban_entry *e = &b->e[i];
		if (e->family == 0)
			return e;
		if (e->until <= now) {
			if (!lru || e->last < lru->last)
				lru = e;
		} else if (!soonest || e->until < soonest->until) {
			soonest = e;
		}
	}
	b->evicted++;
	return lru ? lru : soonest;
}

int bans_check(struct bans *b, const char *site, const struct sockaddr *sa, uint64_t now,
               uint64_t *left)
{
	struct ban_entry *e = find(b, site, sa);
	if (!e || e->until <= now)
		return 0;
	if (left)
		*left = e->until - now;
	return 1;
}

int bans_failure(struct bans *b, const char *site, const struct sockaddr *sa, uint64_t now,
                 unsigned max, uint64_t window_ms, uint64_t ban_ms)
{
	if (max == 0)
		return 0;
	struct ban_entry *e = find(b, site, sa);
	if (!e) {
		int fam;
		unsigned char ip[16];
		if (ip_of(sa, &fam, ip) < 0)
			return 0;
		e = make_room(b, now);
		memset(e, 0, sizeof(*e));
		e->family = fam;
		memcpy(e->ip, ip, 16);
		snprintf(e->site, sizeof(e->site), "%s", site);
	}
	e->last = now;
	if (e->until > now)
		return 0; /* already banned (a session that was open before the ban) */
	if (e->until) {
		e->until = 0; /* a ban that ended: start afresh */
		e->failures = 0;
	}
	if (e->failures == 0 || now - e->window_start > window_ms) {
		e->failures = 0;
		e->window_start = now;
	}
	if (++e->failures < max)
		return 0;
	e->failures = 0;
	e->until = now + ban_ms;
	return 1;
}

void bans_success(struct bans *b, const char *site, const struct sockaddr *sa, uint64_t now)
{
	struct ban_entry *e = find(b, site, sa);
	if (e && e->until <= now)
		memset(e, 0, sizeof(*e)); /* forgotten; the slot is free again */
}

void bans_each(const struct bans *b, const char *site, uint64_t now,
               void (*fn)(void *arg, const struct ban_entry *e), void *arg)
{
	for (size_t i = 0; i < BANS_MAX; i++) {
		const struct ban_entry *e = &b->e[i];
		if (e->family && e->until > now && strcmp(e->site, site) == 0)
			fn(arg, e);
	}
}
