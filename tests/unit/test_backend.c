/* Unit tests for backend (TAP): the choice of a server (backend_choose, backend_addr_hash). */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "backend.h"
#include "tap.h"

static int choose(enum balance how, int n, const int *up, const int *tried, const unsigned *open,
                  uint32_t turn, uint32_t hash)
{
	struct backend_cand c[8];
	for (int i = 0; i < n; i++)
		c[i] =
		    (struct backend_cand){up ? up[i] : 1, tried ? tried[i] : 0, open ? open[i] : 0};
	return backend_choose(how, c, (size_t)n, turn, hash);
}

static void test_roundrobin(void)
{
	int down1[3] = {1, 0, 1}, tried2[3] = {0, 0, 1}, none[3] = {0, 0, 0};
	is_int(choose(BAL_ROUNDROBIN, 3, NULL, NULL, NULL, 0, 0), 0, "roundrobin: from turn 0");
	is_int(choose(BAL_ROUNDROBIN, 3, NULL, NULL, NULL, 4, 0), 1, "turn 4 of 3 is index 1");
	is_int(choose(BAL_ROUNDROBIN, 3, down1, NULL, NULL, 1, 0), 2, "a down server is skipped");
	is_int(choose(BAL_ROUNDROBIN, 3, down1, tried2, NULL, 1, 0), 0,
	       "a tried one too, wrapping around");
	is_int(choose(BAL_ROUNDROBIN, 3, none, NULL, NULL, 0, 0), -1, "all down: none");
	is_int(choose(BAL_ROUNDROBIN, 0, NULL, NULL, NULL, 0, 0), -1, "an empty pool: none");
}

static void test_leastconn(void)
{
	unsigned open[3] = {2, 1, 1};
	int down[3] = {1, 0, 1};
	is_int(choose(BAL_LEASTCONN, 3, NULL, NULL, open, 0, 0), 1, "leastconn: fewest open");
	is_int(choose(BAL_LEASTCONN, 3, NULL, NULL, open, 2, 0), 2, "a tie goes in turn");
	is_int(choose(BAL_LEASTCONN, 3, down, NULL, open, 0, 0), 2, "never a down one");
}

static void test_source(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET}, b = {.sin_family = AF_INET};
	inet_pton(AF_INET, "192.0.2.7", &a.sin_addr);
	b = a;
	a.sin_port = htons(40000);
	b.sin_port = htons(40001);
	uint32_t h = backend_addr_hash((struct sockaddr *)&a);
	is_int(h, backend_addr_hash((struct sockaddr *)&b), "the hash ignores the port");
	inet_pton(AF_INET, "192.0.2.8", &b.sin_addr);
	ok(h != backend_addr_hash((struct sockaddr *)&b), "another address, another hash");
	struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
	inet_pton(AF_INET6, "2001:db8::7", &s6.sin6_addr);
	ok(backend_addr_hash((struct sockaddr *)&s6) != 0, "IPv6 hashes");

	int first = choose(BAL_SOURCE, 4, NULL, NULL, NULL, 0, h);
	is_int(first, (int)(h % 4), "source: hash %% n");
	is_int(choose(BAL_SOURCE, 4, NULL, NULL, NULL, 99, h), first, "turn plays no part");
	int up[4] = {1, 1, 1, 1};
	up[first] = 0;
	is_int(choose(BAL_SOURCE, 4, up, NULL, NULL, 0, h), (first + 1) % 4,
	       "its server down: the next one");
}

int main(void)
{
	test_roundrobin();
	test_leastconn();
	test_source();
	return tap_done();
}
