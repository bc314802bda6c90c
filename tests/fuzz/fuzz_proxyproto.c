/*
 * libFuzzer target: the PROXY protocol header (v1 and v2), parsed with each
 * accept mask. Checks the incremental contract of proxyproto.h (a reader
 * that reads what `want` says reaches the same verdict and never reads past
 * the header; a decided prefix stays decided), that a parsed header emitted
 * again parses to the same addresses, and that headers emitted from the
 * input's bytes parse back. Seeds: headers HAProxy 2.6 sent (send-proxy,
 * send-proxy-v2 with TLVs, a LOCAL health check) and the spec's examples.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <netinet/in.h>

#include "fuzz.h"
#include "proxyproto.h"

static int parse_exact(const uint8_t *d, size_t n, unsigned accept, struct pp_header *h)
{
	char *c = fuzz_copy(d, n);
	int r = pp_parse(c, n, accept, h);

	free(c);
	return r;
}

/* Family, addresses and ports equal (what a parse fills). */
static int same_addrs(const struct pp_header *a, const struct pp_header *b)
{
	if (a->family != b->family)
		return 0;
	if (a->family == AF_INET)
		return memcmp(&a->src, &b->src, sizeof(struct sockaddr_in)) == 0 &&
		       memcmp(&a->dst, &b->dst, sizeof(struct sockaddr_in)) == 0;
	if (a->family == AF_INET6)
		return memcmp(&a->src, &b->src, sizeof(struct sockaddr_in6)) == 0 &&
		       memcmp(&a->dst, &b->dst, sizeof(struct sockaddr_in6)) == 0;
	return 1;
}

/* Emit h's addresses in both versions into buffers of exactly size bytes; parse back. */
static void emit_and_parse(const struct sockaddr *src, const struct sockaddr *dst, size_t size,
                           const struct pp_header *want)
{
	char *buf = malloc(size ? size : 1);
	struct pp_header back;
	int n;

	CHECK(buf != NULL);
	n = pp_emit_v1(buf, size, src, dst);
	CHECK(n == -1 || (n >= 15 && n <= PP_V1_MAX && (size_t)n < size && buf[n] == '\0'));
	if (n > 0) {
		CHECK(parse_exact((uint8_t *)buf, (size_t)n, PP_ACCEPT_V1, &back) == n);
		if (want != NULL)
			CHECK(same_addrs(want, &back));
	}
	n = pp_emit_v2(buf, size, src, dst);
	CHECK(n == -1 || (n >= PP_V2_FIXED && (size_t)n <= size && n <= PP_EMIT_MAX));
	if (n > 0) {
		CHECK(parse_exact((uint8_t *)buf, (size_t)n, PP_ACCEPT_V2, &back) == n);
		if (want != NULL)
			CHECK(same_addrs(want, &back));
	}
	free(buf);
}

static void check_accept(const uint8_t *data, size_t size, unsigned accept)
{
	struct pp_header h, hk;
	int r = parse_exact(data, size, accept, &h);
	size_t k = 0;

	CHECK(r <= (int)size && r <= PP_MAX_HEADER && r >= PP_E_V2_TLV_LENGTH);
	CHECK(r <= 0 || r >= 15);
	CHECK(r != 0 || (h.want >= 1 && size < PP_MAX_HEADER));
	CHECK(r < 0 || pp_strerror(r)[0] == 'o');

	/* A reader that reads want bytes at a time. */
	for (;;) {
		int rk = parse_exact(data, k, accept, &hk);

		if (rk != 0) {
			CHECK(rk == r);
			CHECK(rk < 0 || (size_t)rk == k);
			break;
		}
		if (k == size) {
			CHECK(r == 0);
			break;
		}
		CHECK(hk.want >= 1 && (r <= 0 || k + hk.want <= (size_t)r));
		k = k + hk.want < size ? k + hk.want : size;
	}
	/* Prefixes decided early stay decided. */
	for (size_t p = 1; p < size; p *= 3) {
		int rp = parse_exact(data, p, accept, &hk);

		CHECK(rp == 0 || rp == r);
	}
	if (r <= 0)
		return;
	/* The header alone parses the same. */
	CHECK(parse_exact(data, (size_t)r, accept, &hk) == r && same_addrs(&h, &hk));
	if (h.family == AF_INET || h.family == AF_INET6)
		emit_and_parse((struct sockaddr *)&h.src, (struct sockaddr *)&h.dst, PP_EMIT_MAX,
		               &h);
}

/* Addresses from the input's bytes, emitted into a buffer of a size from the input. */
static void check_emit(const uint8_t *d, size_t n)
{
	struct sockaddr_storage src, dst;
	struct sockaddr_in *s4 = (struct sockaddr_in *)&src, *d4 = (struct sockaddr_in *)&dst;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&src, *d6 = (struct sockaddr_in6 *)&dst;
	static const int fams[4] = {AF_INET, AF_INET6, AF_UNIX, AF_UNSPEC};

	if (n < 40)
		return;
	memset(&src, 0, sizeof(src));
	memset(&dst, 0, sizeof(dst));
	src.ss_family = (sa_family_t)fams[d[0] & 3];
	dst.ss_family = (sa_family_t)fams[d[0] >> 2 & 3];
	if (src.ss_family == AF_INET) {
		memcpy(&s4->sin_addr, d + 2, 4);
		memcpy(&s4->sin_port, d + 6, 2);
	} else if (src.ss_family == AF_INET6) {
		memcpy(&s6->sin6_addr, d + 2, 16);
		memcpy(&s6->sin6_port, d + 18, 2);
	}
	if (dst.ss_family == AF_INET) {
		memcpy(&d4->sin_addr, d + 20, 4);
		memcpy(&d4->sin_port, d + 24, 2);
	} else if (dst.ss_family == AF_INET6) {
		memcpy(&d6->sin6_addr, d + 20, 16);
		memcpy(&d6->sin6_port, d + 36, 2);
	}
	emit_and_parse((struct sockaddr *)&src, (struct sockaddr *)&dst, d[1] % (PP_EMIT_MAX + 8),
	               NULL);
	emit_and_parse(d[0] & 0x10 ? NULL : (struct sockaddr *)&src, NULL, d[1], NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_accept(data, size, PP_ACCEPT_ANY);
	check_accept(data, size, PP_ACCEPT_V1);
	check_accept(data, size, PP_ACCEPT_V2);
	check_emit(data, size);
	return 0;
}
