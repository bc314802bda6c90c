/* libFuzzer target for the pure parsers (not built by make). Build and run:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude src/ftp_*.c \
 *         tests/fuzz/fuzz_parsers.c -o fuzz_parsers && ./fuzz_parsers -max_total_time=60 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ftp_addr.h"
#include "ftp_cmd.h"
#include "ftp_reply.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c))                                                                          \
			abort();                                                                   \
	} while (0)

static void fuzz_cmd(const char *s, size_t n)
{
	struct ftp_cmd c;
	char *copy;
	size_t k, m;

	if (ftp_cmd_parse(s, n, &c) == 0) {
		size_t nl = strlen(c.name);

		CHECK(nl >= 1 && nl <= FTP_VERB_MAX);
		for (k = 0; k < nl; k++)
			CHECK(c.name[k] >= 'A' && c.name[k] <= 'Z');
		CHECK(c.verb == ftp_verb_lookup(c.name));
		if (c.arg_len > 0) {
			CHECK(c.arg > s && c.arg + c.arg_len <= s + n);
			CHECK(c.arg[c.arg_len - 1] != ' ');
			for (k = 0; k < c.arg_len; k++)
				CHECK((unsigned char)c.arg[k] >= 0x20 && c.arg[k] != 0x7f);
		}
	}
	(void)ftp_verb_is_transfer(c.verb);
	(void)ftp_reply_answers(c.name, n > 0 ? 100 + (unsigned char)s[0] * 2 : 0);

	copy = malloc(n ? n : 1);
	CHECK(copy != NULL);
	memcpy(copy, s, n);
	m = ftp_telnet_strip(copy, n);
	CHECK(m <= n);
	(void)ftp_cmd_parse(copy, m, &c);
	free(copy);
}

static void fuzz_reply(const char *s, size_t n)
{
	struct ftp_reply_asm a;
	size_t start = 0, i;

	ftp_reply_reset(&a);
	for (i = 0; i <= n; i++) {
		enum ftp_reply_status r;

		if (i < n && s[i] != '\n')
			continue;
		r = ftp_reply_feed(&a, s + start, (i < n ? i + 1 : i) - start);
		if (r == FTP_REPLY_DONE) {
			CHECK(a.code >= 100 && a.code <= 599);
			if (a.code >= 400)
				CHECK(ftp_reply_answers("TYPE", a.code));
		}
		if (r != FTP_REPLY_MORE)
			ftp_reply_reset(&a);
		start = i + 1;
	}
}

static void fuzz_addr(const char *s, size_t n)
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
		CHECK(len > 7);
		CHECK(ftp_parse_port(buf + 5, (size_t)len - 7, &back) == 0);
		CHECK(memcmp(&sin, &back, sizeof(sin)) == 0);
	}
	r = ftp_parse_eprt(s, n, &ss);
	CHECK(r == 0 || r == -1 || r == -2);
	if (r == 0) {
		CHECK(ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
		len = ftp_format_eprt(buf, sizeof(buf), (const struct sockaddr *)&ss);
		CHECK(len > 7);
		CHECK(ftp_parse_eprt(buf + 5, (size_t)len - 7, &ss2) == 0);
		CHECK(
		    ftp_addr_same_ip((const struct sockaddr *)&ss, (const struct sockaddr *)&ss2));
		if (ftp_addr_unmap(&ss2) == 1)
			CHECK(ss2.ss_family == AF_INET);
		(void)ftp_addr_same_ip((const struct sockaddr *)&ss, (const struct sockaddr *)&ss2);
	}

	/* Raw bytes as socket addresses for the formatters and helpers. */
	memset(&ss, 0, sizeof(ss));
	memcpy(&ss, s, n < sizeof(ss) ? n : sizeof(ss));
	ss2 = ss;
	(void)ftp_format_eprt(buf, sizeof(buf), (const struct sockaddr *)&ss);
	(void)ftp_format_eprt(buf, n % sizeof(buf) + 1, (const struct sockaddr *)&ss);
	memcpy(&sin, &ss, sizeof(sin));
	(void)ftp_format_227(buf, n % sizeof(buf) + 1, &sin);
	(void)ftp_format_port(buf, n % sizeof(buf) + 1, &sin);
	(void)ftp_format_229(buf, n % sizeof(buf) + 1, (uint16_t)n);
	(void)ftp_addr_same_ip((const struct sockaddr *)&ss, (const struct sockaddr *)&ss2);
	(void)ftp_addr_unmap(&ss2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data;

	fuzz_cmd(s, size);
	fuzz_reply(s, size);
	fuzz_addr(s, size);
	return 0;
}
