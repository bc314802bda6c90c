/* Unit tests for access (TAP): allow/deny lists. */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
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

int main(void)
{
	test_acl();
	return tap_done();
}
