/* Unit tests for ftp_reply (TAP). */
#include <stdlib.h>
#include <string.h>

#include "ftp_reply.h"
#include "tap.h"

/* Feed the first n bytes of s from an exact-size heap copy (ASan catches over-reads). */
static enum ftp_reply_status feed_n(struct ftp_reply_asm *a, const char *s, size_t n)
{
	char *p = malloc(n ? n : 1);
	enum ftp_reply_status r;

	if (p == NULL)
		abort();
	memcpy(p, s, n);
	r = ftp_reply_feed(a, p, n);
	free(p);
	return r;
}

static enum ftp_reply_status feed(struct ftp_reply_asm *a, const char *s)
{
	return feed_n(a, s, strlen(s));
}

/* Reset, feed one line, return status. */
static enum ftp_reply_status one(struct ftp_reply_asm *a, const char *s)
{
	ftp_reply_reset(a);
	return feed(a, s);
}

static void test_single(void)
{
	struct ftp_reply_asm a;

	ftp_reply_reset(&a);
	ok(a.code == 0 && a.multiline == 0 && a.lines == 0 && a.bytes == 0, "reset zeroes state");
	is_int(feed(&a, "220 Service ready\r\n"), FTP_REPLY_DONE, "single line CRLF");
	is_int(a.code, 220, "code 220");
	is_int(a.multiline, 0, "not multiline");
	is_int(a.lines, 1, "one line");
	is_int(a.bytes, 19, "bytes include CRLF");

	is_int(one(&a, "331 pw\n"), FTP_REPLY_DONE, "single line LF only");
	is_int(a.code, 331, "code 331");
	is_int(one(&a, "150 ok"), FTP_REPLY_DONE, "single line without terminator");
	ok(ftp_reply_is_prelim(a.code) && !ftp_reply_is_ok(a.code), "150 is preliminary");
	is_int(one(&a, "220"), FTP_REPLY_DONE, "bare '220' is complete");
	is_int(a.code, 220, "bare '220' code");
	is_int(one(&a, "220\r\n"), FTP_REPLY_DONE, "'220\\r\\n' is complete");
	is_int(one(&a, "599 x\r\n"), FTP_REPLY_DONE, "599 accepted");
	is_int(one(&a, "100 x\r\n"), FTP_REPLY_DONE, "100 accepted");
	ok(ftp_reply_is_ok(250) && ftp_reply_is_ok(350) && !ftp_reply_is_ok(450) &&
	       !ftp_reply_is_ok(550) && !ftp_reply_is_ok(150),
	   "ftp_reply_is_ok classes");
	is_int(one(&a, "200 a\r\n"), FTP_REPLY_DONE, "first reply");
	is_int(feed(&a, "200 b\r\n"), FTP_REPLY_BAD, "feeding after DONE without reset is BAD");
}

static void test_bad_first(void)
{
	struct ftp_reply_asm a;

	is_int(one(&a, "620 x\r\n"), FTP_REPLY_BAD, "first digit 6 rejected");
	is_int(one(&a, "020 x\r\n"), FTP_REPLY_BAD, "first digit 0 rejected");
	is_int(one(&a, "22 x\r\n"), FTP_REPLY_BAD, "two digits rejected");
	is_int(one(&a, "22\r\n"), FTP_REPLY_BAD, "two digits only rejected");
	is_int(one(&a, "2200 x\r\n"), FTP_REPLY_BAD, "four digits rejected");
	is_int(one(&a, "22a x\r\n"), FTP_REPLY_BAD, "letter in code rejected");
	is_int(one(&a, "220x\r\n"), FTP_REPLY_BAD, "code followed by letter rejected");
	is_int(one(&a, "220\tx\r\n"), FTP_REPLY_BAD, "code followed by tab rejected");
	is_int(one(&a, " 220 x\r\n"), FTP_REPLY_BAD, "leading space rejected");
	is_int(one(&a, "-220 x\r\n"), FTP_REPLY_BAD, "sign rejected");
	is_int(one(&a, "\r\n"), FTP_REPLY_BAD, "empty first line rejected");
	is_int(one(&a, ""), FTP_REPLY_BAD, "zero-length first line rejected");
	ftp_reply_reset(&a);
	is_int(feed_n(&a, "220 a\0b\r\n", 9), FTP_REPLY_BAD, "NUL in first line rejected");
	ftp_reply_reset(&a);
	is_int(feed_n(&a,
	              "2\0"
	              "0 x\r\n",
	              7),
	       FTP_REPLY_BAD, "NUL in code rejected");
	ftp_reply_reset(&a);
	is_int(feed_n(&a, "220 ok\r\n", 2), FTP_REPLY_BAD, "truncated by len to '22' rejected");
	ftp_reply_reset(&a);
	is_int(feed_n(&a, "220-more\r\n", 3), FTP_REPLY_DONE, "len 3 of '220-...' is '220' (done)");
	is_int(a.multiline, 0, "'-' past len not seen");
	ftp_reply_reset(&a);
	is_int(ftp_reply_feed(&a, NULL, 5), FTP_REPLY_BAD, "NULL line rejected");
	is_int(ftp_reply_feed(NULL, "220\r\n", 5), FTP_REPLY_BAD, "NULL asm rejected");
}

static void test_multi(void)
{
	struct ftp_reply_asm a;

	/* RFC 959 section 4.2 example */
	ftp_reply_reset(&a);
	is_int(feed(&a, "123-First line\r\n"), FTP_REPLY_MORE, "RFC959: first line");
	is_int(a.code, 123, "RFC959: code from first line");
	is_int(a.multiline, 1, "RFC959: multiline");
	is_int(feed(&a, "Second line\r\n"), FTP_REPLY_MORE, "RFC959: text line");
	is_int(feed(&a, "  234 A line beginning with numbers\r\n"), FTP_REPLY_MORE,
	       "RFC959: indented other code");
	is_int(feed(&a, "234 A line with another code\r\n"), FTP_REPLY_MORE,
	       "other code followed by space is content");
	is_int(feed(&a, "123-Same code with dash\r\n"), FTP_REPLY_MORE,
	       "same code + '-' is content");
	is_int(feed(&a, "1234 digits\r\n"), FTP_REPLY_MORE, "'1234' is content");
	is_int(feed(&a, "123x\r\n"), FTP_REPLY_MORE, "'123x' is content");
	is_int(feed(&a, "12\r\n"), FTP_REPLY_MORE, "short line is content");
	is_int(feed(&a, "\r\n"), FTP_REPLY_MORE, "empty line is content");
	is_int(feed(&a, "weird \x01\x7f\xff bytes\r\n"), FTP_REPLY_MORE,
	       "control bytes in content");
	is_int(feed(&a, "123 The last line\r\n"), FTP_REPLY_DONE, "RFC959: last line");
	is_int(a.code, 123, "code kept");
	is_int(a.lines, 11, "11 lines counted");

	ftp_reply_reset(&a);
	is_int(feed(&a, "211-Features:\n"), FTP_REPLY_MORE, "FEAT start");
	is_int(feed(&a, " MDTM\n"), FTP_REPLY_MORE, "FEAT line");
	is_int(feed(&a, "211\n"), FTP_REPLY_DONE, "bare '211' ends the reply");
	is_int(a.bytes, 14 + 6 + 4, "bytes summed with LF");

	ftp_reply_reset(&a);
	is_int(feed(&a, "230-\r\n"), FTP_REPLY_MORE, "'230-' with empty text");
	is_int(feed_n(&a, "230 x\0y\r\n", 9), FTP_REPLY_BAD, "NUL inside multi-line rejected");

	ftp_reply_reset(&a);
	is_int(feed(&a, "230-a\r\n"), FTP_REPLY_MORE, "start");
	is_int(feed_n(&a, "230 done", 3), FTP_REPLY_DONE, "end line cut by len to '230'");
	ftp_reply_reset(&a);
	is_int(feed(&a, "230-a\r\n"), FTP_REPLY_MORE, "start");
	is_int(feed_n(&a, "230 done", 2), FTP_REPLY_MORE, "'23' (len 2) does not end");
}

static void test_bounds(void)
{
	struct ftp_reply_asm a;
	size_t i;
	int bad = 0;
	enum ftp_reply_status r = FTP_REPLY_MORE;
	static char big[FTP_REPLY_MAX_BYTES];

	ftp_reply_reset(&a);
	feed(&a, "220-x\r\n");
	for (i = 1; i < FTP_REPLY_MAX_LINES - 1; i++)
		if (feed(&a, "x\r\n") != FTP_REPLY_MORE)
			bad++;
	is_int(bad, 0, "lines below the bound accepted");
	is_int(feed(&a, "220 end\r\n"), FTP_REPLY_DONE, "line number MAX_LINES accepted");
	is_int(a.lines, FTP_REPLY_MAX_LINES, "exactly MAX_LINES lines");

	ftp_reply_reset(&a);
	feed(&a, "220-x\r\n");
	for (i = 1; i < FTP_REPLY_MAX_LINES && r == FTP_REPLY_MORE; i++)
		r = feed(&a, "x\r\n");
	is_int(r, FTP_REPLY_MORE, "MAX_LINES content lines fed");
	is_int(feed(&a, "220 end\r\n"), FTP_REPLY_BAD, "line MAX_LINES+1 rejected");

	/* byte bound: exactly MAX_BYTES is fine, one more is not */
	memset(big, 'x', sizeof(big));
	memcpy(big, "220-", 4);
	ftp_reply_reset(&a);
	is_int(ftp_reply_feed(&a, big, FTP_REPLY_MAX_BYTES - 5), FTP_REPLY_MORE, "big first line");
	is_int(feed(&a, "220\r\n"), FTP_REPLY_DONE, "total exactly MAX_BYTES accepted");
	is_int(a.bytes, FTP_REPLY_MAX_BYTES, "bytes == MAX_BYTES");

	ftp_reply_reset(&a);
	is_int(ftp_reply_feed(&a, big, FTP_REPLY_MAX_BYTES - 5), FTP_REPLY_MORE, "big first line");
	is_int(feed(&a, "220 \r\n"), FTP_REPLY_BAD, "total MAX_BYTES+1 rejected");

	ftp_reply_reset(&a);
	is_int(ftp_reply_feed(&a, big, FTP_REPLY_MAX_BYTES), FTP_REPLY_MORE, "line of MAX_BYTES");
	is_int(ftp_reply_feed(&a, "", 0), FTP_REPLY_MORE, "empty line still fits");
	is_int(ftp_reply_feed(&a, "2", 1), FTP_REPLY_BAD, "one more byte rejected");

	ftp_reply_reset(&a);
	is_int(ftp_reply_feed(&a, big, (size_t)-1), FTP_REPLY_BAD,
	       "huge len rejected (no overflow)");
}

/* Which codes can answer which command: the reply stream stays in step. */
static void test_answers(void)
{
	/* the examples of a backend out of step */
	ok(!ftp_reply_answers("TYPE", 227), "227 cannot answer TYPE");
	ok(ftp_reply_answers("TYPE", 200), "200 answers TYPE");
	ok(!ftp_reply_answers("SIZE", 200), "200 cannot answer SIZE");
	ok(ftp_reply_answers("SIZE", 213), "213 answers SIZE");
	ok(!ftp_reply_answers("PASV", 200), "200 cannot answer PASV");
	ok(ftp_reply_answers("PASV", 227), "227 answers PASV");
	ok(ftp_reply_answers("EPSV", 229) && !ftp_reply_answers("EPSV", 227), "EPSV: 229, not 227");
	ok(ftp_reply_answers("EPSV", 200) && ftp_reply_answers("EPSV", 220),
	   "EPSV ALL: 200 (vsftpd, ProFTPD), 220 (pyftpdlib)");
	/* errors answer anything */
	int errs = 1;
	for (int c = 400; c <= 599; c++)
		errs &= ftp_reply_answers("TYPE", c) && ftp_reply_answers("RETR", c) &&
		        ftp_reply_answers("XYZZY", c);
	ok(errs, "every 4xx/5xx answers TYPE, RETR and an unknown verb");
	ok(ftp_reply_answers("NOOP", 421) && ftp_reply_answers("NOOP", 500) &&
	       ftp_reply_answers("USER", 530) && ftp_reply_answers("ABOR", 502),
	   "4xx/5xx answer any command");
	/* login */
	ok(ftp_reply_answers("USER", 331) && ftp_reply_answers("USER", 230) &&
	       ftp_reply_answers("USER", 332),
	   "USER: 331, 230 (anonymous without password), 332");
	ok(!ftp_reply_answers("USER", 200) && !ftp_reply_answers("USER", 227),
	   "USER: not 200, not 227");
	ok(ftp_reply_answers("PASS", 230) && ftp_reply_answers("PASS", 202) &&
	       !ftp_reply_answers("PASS", 331),
	   "PASS: 230, 202, not 331");
	/* transfers: preliminary replies, then 226/250; pyftpdlib's 225 for RETR+ABOR */
	static const char *const xfer[] = {"RETR", "STOR", "STOU", "APPE", "LIST", "NLST", "MLSD"};
	int all = 1;
	for (size_t i = 0; i < sizeof(xfer) / sizeof(xfer[0]); i++)
		all &= ftp_reply_answers(xfer[i], 150) && ftp_reply_answers(xfer[i], 125) &&
		       ftp_reply_answers(xfer[i], 226) && ftp_reply_answers(xfer[i], 250) &&
		       ftp_reply_answers(xfer[i], 225) && !ftp_reply_answers(xfer[i], 200) &&
		       !ftp_reply_answers(xfer[i], 227);
	ok(all, "transfers: 125/150, 225/226/250; not 200 or 227");
	ok(!ftp_reply_answers("TYPE", 150) && !ftp_reply_answers("NOOP", 150) &&
	       !ftp_reply_answers("ABOR", 150),
	   "150 answers no command but a transfer");
	ok(ftp_reply_answers("REIN", 120) && ftp_reply_answers("REIN", 220) &&
	       ftp_reply_answers("REIN", 230),
	   "REIN: 120, 220, 230 (pyftpdlib)");
	ok(ftp_reply_answers("ABOR", 225) && ftp_reply_answers("ABOR", 226) &&
	       !ftp_reply_answers("ABOR", 250),
	   "ABOR: 225, 226");
	/* what the four real servers send */
	ok(ftp_reply_answers("CDUP", 250) && ftp_reply_answers("CDUP", 200), "CDUP: 200 or 250");
	ok(ftp_reply_answers("CWD", 250) && ftp_reply_answers("PWD", 257) &&
	       ftp_reply_answers("MKD", 257) && ftp_reply_answers("RMD", 250) &&
	       ftp_reply_answers("DELE", 250) && ftp_reply_answers("RNFR", 350) &&
	       ftp_reply_answers("RNTO", 250) && ftp_reply_answers("REST", 350),
	   "file commands");
	ok(!ftp_reply_answers("PWD", 250) && !ftp_reply_answers("RNFR", 250) &&
	       !ftp_reply_answers("REST", 200),
	   "file commands: not each other's codes");
	ok(ftp_reply_answers("SYST", 215) && ftp_reply_answers("HELP", 214) &&
	       ftp_reply_answers("STAT", 211) && ftp_reply_answers("STAT", 213) &&
	       ftp_reply_answers("FEAT", 211) && ftp_reply_answers("OPTS", 200) &&
	       ftp_reply_answers("NOOP", 200) && ftp_reply_answers("ALLO", 202) &&
	       ftp_reply_answers("MODE", 200) && ftp_reply_answers("STRU", 200) &&
	       ftp_reply_answers("MDTM", 213) && ftp_reply_answers("MFMT", 213) &&
	       ftp_reply_answers("MLST", 250) && ftp_reply_answers("QUIT", 221),
	   "informational commands");
	ok(!ftp_reply_answers("SYST", 200) && !ftp_reply_answers("FEAT", 200) &&
	       !ftp_reply_answers("QUIT", 200) && !ftp_reply_answers("NOOP", 227),
	   "informational commands: not 200/227");
	ok(ftp_reply_answers("AUTH", 234) && ftp_reply_answers("PBSZ", 200) &&
	       ftp_reply_answers("PROT", 200) && ftp_reply_answers("CCC", 200) &&
	       !ftp_reply_answers("AUTH", 200),
	   "RFC 2228: AUTH 234, PBSZ/PROT/CCC 200");
	ok(ftp_reply_answers("PORT", 200) && ftp_reply_answers("EPRT", 200) &&
	       !ftp_reply_answers("PORT", 227),
	   "PORT/EPRT: 200");
	/* verbs the table does not know: any 2xx/3xx, no 1xx */
	ok(ftp_reply_answers("SITE", 200) && ftp_reply_answers("SITE", 214) &&
	       ftp_reply_answers("SITE", 350) && ftp_reply_answers("XCRC", 250) &&
	       !ftp_reply_answers("SITE", 150),
	   "SITE and unknown verbs: any 2xx/3xx");
	/* bounds */
	ok(!ftp_reply_answers("TYPE", 0) && !ftp_reply_answers("TYPE", 99) &&
	       !ftp_reply_answers("TYPE", 600) && !ftp_reply_answers("XYZZY", -1),
	   "codes outside 100..599 answer nothing");
	ok(!ftp_reply_answers(NULL, 200) && ftp_reply_answers(NULL, 500), "no verb: only an error");
}

int main(void)
{
	test_single();
	test_bad_first();
	test_multi();
	test_bounds();
	test_answers();
	return tap_done();
}
