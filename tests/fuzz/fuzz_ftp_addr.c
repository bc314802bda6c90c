/*
 * libFuzzer target: PASV/EPSV replies and PORT/EPRT arguments. Whatever
 * parses must format and parse back to the same address (a disagreement
 * aborts), and addresses made from the input's bytes must survive format ->
 * parse. Seeds: the 227/229 replies and PORT/EPRT arguments of real sessions.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <arpa/inet.h>

#include "fuzz.h"
#include "ftp_addr.h"

/* Text from the input: parse, then format and parse back. */
static void text_round_trips(const char *s, size_t n)
{
	struct sockaddr_in sin, back;
	struct sockaddr_storage ss, ss2;
	uint16_t port, port2;
	char buf[128];
	int len, r;

	if (ftp_parse_227(s, n, &sin) == 0) {
		CHECK(sin.sin_family == AF_INET && sin.sin_port != 0);
		len = ftp_format_227(buf, sizeof(buf), &sin);
		CHECK(len > 0);
		CHECK(ftp_parse_227(buf, (size_t)len, &back) == 0);
		CHECK(memcmp(&sin, &back, sizeof(sin)) == 0);
	}
	if (ftp_parse_229(s, n, &port) == 0) {
		CHECK(port != 0);
		len = ftp_format_229(buf, sizeof(buf), port);
		CHECK(len > 0);
		CHECK(ftp_parse_229(buf, (size_t)len, &port2) == 0 && port2 == port);
	}
	if (ftp_parse_port(s, n, &sin) == 0) {
		len = ftp_format_port(buf, sizeof(buf), &sin);
		CHECK(len > 7 && memcmp(buf, "PORT ", 5) == 0);
		CHECK(ftp_parse_port(buf + 5, (size_t)len - 7, &back) == 0);
		CHECK(memcmp(&sin, &back, sizeof(sin)) == 0);
	}
	r = ftp_parse_eprt(s, n, &ss);
	CHECK(r == 0 || r == -1 || r == -2);
	if (r == 0) {
		CHECK(ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
		len = ftp_format_eprt(buf, sizeof(buf), (const struct sockaddr *)&ss);
		CHECK(len > 7 && memcmp(buf, "EPRT ", 5) == 0);
		CHECK(ftp_parse_eprt(buf + 5, (size_t)len - 7, &ss2) == 0);
		CHECK(
		    ftp_addr_same_ip((const struct sockaddr *)&ss, (const struct sockaddr *)&ss2));
		CHECK(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port ==
		                                    ((struct sockaddr_in *)&ss2)->sin_port
		                              : ((struct sockaddr_in6 *)&ss)->sin6_port ==
		                                    ((struct sockaddr_in6 *)&ss2)->sin6_port);
		if (ftp_addr_unmap(&ss2) == 1)
			CHECK(ss2.ss_family == AF_INET);
	}
}

/* Every formatter into an exact-size heap buffer of k bytes: refused or fits (ASan watches). */
static int small_format(size_t k, const struct sockaddr *sa)
{
	char *b = malloc(k ? k : 1);
	int ok = 1, r;

	CHECK(b != NULL);
	r = ftp_format_eprt(b, k, sa);
	ok = ok && r < (int)k;
	if (sa->sa_family == AF_INET) {
		r = ftp_format_227(b, k, (const struct sockaddr_in *)sa);
		ok = ok && r < (int)k;
		r = ftp_format_port(b, k, (const struct sockaddr_in *)sa);
		ok = ok && r < (int)k;
		r = ftp_format_229(b, k, ntohs(((const struct sockaddr_in *)sa)->sin_port));
		ok = ok && r < (int)k;
	}
	free(b);
	return ok;
}

/* Addresses from the input's bytes: format, then parse back. */
static void struct_round_trips(const uint8_t *d, size_t n)
{
	struct sockaddr_in sin, back;
	struct sockaddr_in6 sin6;
	struct sockaddr_storage ss;
	uint16_t port;
	char buf[128];
	int len;

	if (n < 18)
		return;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	memcpy(&sin.sin_addr, d, 4);
	memcpy(&sin.sin_port, d + 4, 2);
	port = ntohs(sin.sin_port);
	if (port != 0) {
		len = ftp_format_227(buf, sizeof(buf), &sin);
		CHECK(len > 0 && ftp_parse_227(buf, (size_t)len, &back) == 0);
		CHECK(memcmp(&sin, &back, sizeof(sin)) == 0);
		len = ftp_format_port(buf, sizeof(buf), &sin);
		CHECK(len > 7 && ftp_parse_port(buf + 5, (size_t)len - 7, &back) == 0);
		CHECK(memcmp(&sin, &back, sizeof(sin)) == 0);
		len = ftp_format_eprt(buf, sizeof(buf), (const struct sockaddr *)&sin);
		CHECK(len > 7 && ftp_parse_eprt(buf + 5, (size_t)len - 7, &ss) == 0);
		CHECK(ss.ss_family == AF_INET && memcmp(&ss, &sin, sizeof(sin)) == 0);
		len = ftp_format_229(buf, sizeof(buf), port);
		CHECK(len > 0 && ftp_parse_229(buf, (size_t)len, &port) == 0 &&
		      port == ntohs(sin.sin_port));
		/* Too small a buffer is refused, never overrun. */
		CHECK(small_format(d[6] % 48, (const struct sockaddr *)&sin));
	}
	memset(&sin6, 0, sizeof(sin6));
	sin6.sin6_family = AF_INET6;
	memcpy(&sin6.sin6_addr, d, 16);
	memcpy(&sin6.sin6_port, d + 16, 2);
	if (sin6.sin6_port != 0) {
		len = ftp_format_eprt(buf, sizeof(buf), (const struct sockaddr *)&sin6);
		CHECK(len > 7 && ftp_parse_eprt(buf + 5, (size_t)len - 7, &ss) == 0);
		CHECK(ss.ss_family == AF_INET6 &&
		      memcmp(&((struct sockaddr_in6 *)&ss)->sin6_addr, &sin6.sin6_addr, 16) == 0 &&
		      ((struct sockaddr_in6 *)&ss)->sin6_port == sin6.sin6_port);
		CHECK(small_format(d[6] % 64, (const struct sockaddr *)&sin6));
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = fuzz_copy(data, size);

	text_round_trips(s, size);
	free(s);
	struct_round_trips(data, size);
	return 0;
}
