/*
 * libFuzzer target: client command lines as a session reads them (split at
 * LF, Telnet IAC sequences stripped, parsed), checking what ftp_cmd.h
 * promises, and that a parsed command written back as "NAME arg\r\n" parses
 * to the same command. Seeds: what curl, lftp and ftplib sent.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include "fuzz.h"
#include "ftp_cmd.h"
#include "ftp_reply.h"

static void check_parsed(const char *line, size_t n, const struct ftp_cmd *c)
{
	size_t nl = strlen(c->name);

	CHECK(nl >= 1 && nl <= FTP_VERB_MAX);
	for (size_t k = 0; k < nl; k++)
		CHECK(c->name[k] >= 'A' && c->name[k] <= 'Z');
	CHECK(c->verb == ftp_verb_lookup(c->name));
	(void)ftp_verb_is_transfer(c->verb);
	for (int code = 100; code < 600; code += 25)
		(void)ftp_reply_answers(c->name, code);
	if (c->arg_len == 0)
		return;
	CHECK(c->arg > line && c->arg + c->arg_len <= line + n);
	CHECK(c->arg[c->arg_len - 1] != ' ');
	for (size_t k = 0; k < c->arg_len; k++)
		CHECK((unsigned char)c->arg[k] >= 0x20 && c->arg[k] != 0x7f);
}

/* "NAME arg\r\n" from a parsed command parses to the same command. */
static void check_round_trip(const struct ftp_cmd *c)
{
	size_t nl = strlen(c->name), n = nl + (c->arg_len ? 1 + c->arg_len : 0) + 2;
	char *line = malloc(n);
	struct ftp_cmd back;

	CHECK(line != NULL);
	memcpy(line, c->name, nl);
	if (c->arg_len) {
		line[nl] = ' ';
		memcpy(line + nl + 1, c->arg, c->arg_len);
	}
	memcpy(line + n - 2, "\r\n", 2);
	CHECK(ftp_cmd_parse(line, n, &back) == 0);
	CHECK(strcmp(back.name, c->name) == 0 && back.verb == c->verb);
	CHECK(back.arg_len == c->arg_len && memcmp(back.arg, c->arg, c->arg_len) == 0);
	free(line);
}

static void one_line(const uint8_t *p, size_t n)
{
	char *raw = fuzz_copy(p, n), *line = fuzz_copy(p, n);
	struct ftp_cmd c;
	size_t m;

	if (ftp_cmd_parse(raw, n, &c) == 0)
		check_parsed(raw, n, &c);
	m = ftp_telnet_strip(line, n);
	CHECK(m <= n);
	if (ftp_cmd_parse(line, m, &c) == 0) {
		check_parsed(line, m, &c);
		check_round_trip(&c);
	}
	free(raw);
	free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t pos = 0;

	while (pos < size) {
		const uint8_t *lf = memchr(data + pos, '\n', size - pos);
		size_t n = lf ? (size_t)(lf - (data + pos)) + 1 : size - pos;

		one_line(data + pos, n);
		pos += n;
	}
	return 0;
}
