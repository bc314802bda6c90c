/*
 * libFuzzer target: backend reply streams assembled as a session does it
 * (lines framed at LF in a libevent buffer, at most 8192 bytes each, fed to
 * ftp_reply_feed), with the stream arriving in random chunkings: 1 byte at
 * a time and in chunk sizes drawn from the input's hash. Each chunking must
 * give exactly the same lines and verdicts as the whole stream at once, and
 * each verdict must be what RFC 959 4.2 and ftp_reply.h's bounds say (a
 * second, independent reading of the rules here). Seeds: what vsftpd,
 * ProFTPD, Pure-FTPd and pyftpdlib answered curl, lftp and ftplib.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <event2/buffer.h>

#include "fuzz.h"
#include "ftp_reply.h"

#define LINE_MAX_BYTES 8192 /* session.c: REPLY_LINE_MAX */
#define MAX_EVENTS 65536

enum { EV_ABORT = 100 }; /* a line over LINE_MAX_BYTES: the session ends */

struct trace {
	int status[MAX_EVENTS]; /* enum ftp_reply_status, or EV_ABORT */
	int code[MAX_EVENTS];
	size_t n;
};

/* Independent rules: the status a line must get, given the reply so far. */
struct ref {
	int code, multiline;
	size_t lines, bytes;
};

static int is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static int expected(struct ref *r, const uint8_t *line, size_t len)
{
	size_t n = len;

	if (r->lines >= FTP_REPLY_MAX_LINES || r->bytes + len > FTP_REPLY_MAX_BYTES)
		return FTP_REPLY_BAD;
	r->lines++;
	r->bytes += len;
	if (n && line[n - 1] == '\n')
		n--;
	if (n && line[n - 1] == '\r')
		n--;
	if (memchr(line, '\0', n) != NULL)
		return FTP_REPLY_BAD;
	if (r->code == 0) {
		if (n < 3 || line[0] < '1' || line[0] > '5' || !is_digit(line[1]) ||
		    !is_digit(line[2]) || (n > 3 && line[3] != ' ' && line[3] != '-'))
			return FTP_REPLY_BAD;
		r->code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
		r->multiline = n > 3 && line[3] == '-';
		return r->multiline ? FTP_REPLY_MORE : FTP_REPLY_DONE;
	}
	if (n >= 3 && (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0') == r->code &&
	    is_digit(line[0]) && is_digit(line[1]) && is_digit(line[2]) &&
	    (n == 3 || line[3] == ' '))
		return FTP_REPLY_DONE;
	return FTP_REPLY_MORE;
}

static void record(struct trace *t, int status, int code)
{
	CHECK(t->n < MAX_EVENTS);
	t->status[t->n] = status;
	t->code[t->n++] = code;
}

/* Feed one framed line; 0 when the stream must stop (BAD). */
static int feed(struct ftp_reply_asm *a, struct ref *r, struct trace *t, const uint8_t *line,
                size_t n)
{
	enum ftp_reply_status st = ftp_reply_feed(a, (const char *)line, n);
	int want = expected(r, line, n);

	CHECK((int)st == want);
	if (st == FTP_REPLY_DONE) {
		CHECK(a->code >= 100 && a->code <= 599 && a->code == r->code);
		CHECK(a->lines == r->lines && a->bytes == r->bytes);
		/* Any error reply may answer any command (RFC 959 5.4). */
		if (a->code >= 400)
			CHECK(ftp_reply_answers("TYPE", a->code));
	}
	record(t, st, st == FTP_REPLY_DONE ? a->code : 0);
	if (st == FTP_REPLY_BAD)
		return 0;
	if (st == FTP_REPLY_DONE) {
		ftp_reply_reset(a);
		memset(r, 0, sizeof(*r));
	}
	return 1;
}

/* The whole stream at once, framed with memchr. */
static void whole(const uint8_t *data, size_t size, struct trace *t)
{
	struct ftp_reply_asm a;
	struct ref r = {0};
	size_t pos = 0;

	ftp_reply_reset(&a);
	while (pos < size) {
		const uint8_t *lf = memchr(data + pos, '\n', size - pos);
		size_t n;

		if (lf == NULL) {
			if (size - pos >= LINE_MAX_BYTES)
				record(t, EV_ABORT, 0);
			return;
		}
		n = (size_t)(lf - (data + pos)) + 1;
		if (n > LINE_MAX_BYTES) {
			record(t, EV_ABORT, 0);
			return;
		}
		if (!feed(&a, &r, t, data + pos, n))
			return;
		pos += n;
	}
}

/* The stream in chunks into an evbuffer, framed with evbuffer_search_eol as session.c does. */
static void chunked(const uint8_t *data, size_t size, uint64_t seed, struct trace *t)
{
	struct evbuffer *in = evbuffer_new();
	static uint8_t line[LINE_MAX_BYTES];
	struct ftp_reply_asm a;
	struct ref r = {0};
	size_t pos = 0, taken = 0;

	CHECK(in != NULL);
	ftp_reply_reset(&a);
	while (pos < size) {
		size_t chunk = 1;

		if (seed != 0) { /* xorshift64: chunk sizes 1..512, some 1..8 */
			seed ^= seed << 13;
			seed ^= seed >> 7;
			seed ^= seed << 17;
			chunk = seed % 4 == 0 ? 1 + seed / 4 % 8 : 1 + seed / 4 % 512;
		}
		if (chunk > size - pos)
			chunk = size - pos;
		CHECK(evbuffer_add(in, data + pos, chunk) == 0);
		pos += chunk;
		for (;;) {
			size_t eol_len = 0, n;
			struct evbuffer_ptr p =
			    evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);

			if (p.pos < 0) {
				if (evbuffer_get_length(in) >= LINE_MAX_BYTES) {
					record(t, EV_ABORT, 0);
					goto out;
				}
				break;
			}
			n = (size_t)p.pos + eol_len;
			if (n > LINE_MAX_BYTES) {
				record(t, EV_ABORT, 0);
				goto out;
			}
			CHECK(evbuffer_remove(in, line, n) == (int)n);
			/* Nothing lost, nothing doubled: the line is the next bytes of the stream.
			 */
			CHECK(taken + n <= size && memcmp(line, data + taken, n) == 0);
			taken += n;
			if (!feed(&a, &r, t, line, n))
				goto out;
		}
	}
out:
	evbuffer_free(in);
}

static int same(const struct trace *x, const struct trace *y)
{
	return x->n == y->n && memcmp(x->status, y->status, x->n * sizeof(int)) == 0 &&
	       memcmp(x->code, y->code, x->n * sizeof(int)) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct trace ref, t;
	uint64_t h = 1469598103934665603ull; /* FNV-1a of the input seeds the chunking */

	if (size > MAX_EVENTS)
		size = MAX_EVENTS; /* at most one event per byte */
	for (size_t i = 0; i < size; i++)
		h = (h ^ data[i]) * 1099511628211ull;
	ref.n = 0;
	whole(data, size, &ref);
	if (size <= 2048) { /* byte by byte: quadratic in the line length, so short inputs only */
		t.n = 0;
		chunked(data, size, 0, &t);
		CHECK(same(&ref, &t));
	}
	t.n = 0;
	chunked(data, size, h | 1, &t);
	CHECK(same(&ref, &t));
	return 0;
}
