/* Unit tests for access (TAP): allow/deny lists, the ban table. */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "tap.h"
#include "util.h"

static struct sockaddr_storage ip(const char *text)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, text, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
	} else if (inet_pton(AF_INET6, text, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
	} else {
		abort();
	}
	return ss;
}

static void add(struct cidr *list, size_t *n, const char *text)
{
	char err[128];
	if (cidr_parse(text, &list[(*n)++], err, sizeof(err)) < 0)
		abort();
}

static int permits(const struct site_conf *sc, const char *addr)
{
	struct sockaddr_storage ss = ip(addr);
	return acl_permits(sc, (struct sockaddr *)&ss);
}

static void test_acl(void)
{
	static struct site_conf sc;

	memset(&sc, 0, sizeof(sc));
	ok(permits(&sc, "192.0.2.1") && permits(&sc, "2001:db8::1"), "no lists: everyone");

	add(sc.deny, &sc.n_deny, "192.0.2.0/24");
	ok(!permits(&sc, "192.0.2.77"), "deny only: inside refused");
	ok(permits(&sc, "198.51.100.1"), "deny only: outside admitted");
	ok(!permits(&sc, "::ffff:192.0.2.77"), "an IPv4-mapped address counts as IPv4");

	add(sc.allow, &sc.n_allow, "192.0.2.0/24");
	add(sc.allow, &sc.n_allow, "2001:db8::/32");
	ok(!permits(&sc, "192.0.2.5"), "in allow and in deny: deny wins");
	ok(permits(&sc, "2001:db8:1::5"), "IPv6 in allow");
	ok(!permits(&sc, "2001:db9::5"), "IPv6 outside allow");
	ok(!permits(&sc, "198.51.100.1"), "a non-empty allow admits only its prefixes");

	memset(&sc, 0, sizeof(sc));
	add(sc.deny, &sc.n_deny, "2001:db8::1");
	ok(!permits(&sc, "2001:db8::1") && permits(&sc, "2001:db8::2"), "one IPv6 host denied");
}

static int fail(struct bans *b, const char *addr, uint64_t now)
{
	struct sockaddr_storage ss = ip(addr);
	/* 3 failures within 60 s ban for 900 s. */
	return bans_failure(b, "main", (struct sockaddr *)&ss, now, 3, 60000, 900000);
}

static int banned(struct bans *b, const char *site, const char *addr, uint64_t now)
{
	struct sockaddr_storage ss = ip(addr);
	return bans_check(b, site, (struct sockaddr *)&ss, now, NULL);
}

static void count_ban(void *arg, const struct ban_entry *e)
{
	(void)e;
	++*(int *)arg;
}

static void test_bans(void)
{
	static struct bans b;
	struct sockaddr_storage ss;
	uint64_t left = 0;

	memset(&b, 0, sizeof(b));
	ok(!fail(&b, "192.0.2.1", 1000) && !fail(&b, "192.0.2.1", 2000), "two failures: no ban");
	ok(!banned(&b, "main", "192.0.2.1", 2000), "not banned yet");
	ok(fail(&b, "192.0.2.1", 3000), "the third failure within the window starts a ban");
	ss = ip("192.0.2.1");
	ok(bans_check(&b, "main", (struct sockaddr *)&ss, 4000, &left) && left == 899000,
	   "banned, 899 s left");
	ok(!banned(&b, "other", "192.0.2.1", 4000), "a ban is per site");
	ok(banned(&b, "main", "::ffff:192.0.2.1", 4000), "IPv4-mapped is the same client");
	ok(!fail(&b, "192.0.2.1", 5000), "failures while banned start no second ban");
	ok(!banned(&b, "main", "192.0.2.1", 903000), "the ban ends after ban_time");

	ok(!fail(&b, "192.0.2.2", 0) && !fail(&b, "192.0.2.2", 30000), "two failures");
	ok(!fail(&b, "192.0.2.2", 61000), "the window moved on: the count starts again");
	ok(!fail(&b, "192.0.2.2", 62000) && fail(&b, "192.0.2.2", 63000),
	   "three within the new window: banned");

	ok(!fail(&b, "2001:db8::7", 0) && !fail(&b, "2001:db8::7", 1), "IPv6: two failures");
	ss = ip("2001:db8::7");
	bans_success(&b, "main", (struct sockaddr *)&ss, 2);
	ok(!fail(&b, "2001:db8::7", 3) && !fail(&b, "2001:db8::7", 4),
	   "a success clears the count");
	ok(fail(&b, "2001:db8::7", 5), "then three more ban");
	bans_success(&b, "main", (struct sockaddr *)&ss, 6);
	ok(banned(&b, "main", "2001:db8::7", 7), "a success does not lift a ban");

	/* A flood of distinct addresses, each failing once: the table stays
	 * BANS_MAX entries and the live bans stay. */
	char a[64];
	for (unsigned i = 0; i < 3 * BANS_MAX; i++) {
		snprintf(a, sizeof(a), "10.%u.%u.%u", (i >> 16) & 255, (i >> 8) & 255, i & 255);
		fail(&b, a, 100000 + i);
	}
	ok(b.evicted >= 2 * BANS_MAX, "a full table evicts (%llu evictions)",
	   (unsigned long long)b.evicted);
	ok(banned(&b, "main", "2001:db8::7", 200000) && banned(&b, "main", "192.0.2.2", 200000),
	   "live bans survive a flood of failures from distinct addresses");
	int n = 0;
	bans_each(&b, "main", 200000, count_ban, &n);
	is_int(n, 3, "bans_each lists the three live bans");
}

int main(void)
{
	test_acl();
	test_bans();
	return tap_done();
}
