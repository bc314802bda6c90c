/* Unit tests for ftp_cmd (TAP). */
#include <stdlib.h>
#include <string.h>

#include "ftp_cmd.h"
#include "tap.h"
#include "testutil.h"

/* Parse the first n bytes of s from an exact-size buffer. */
static int parse_n(const char *s, size_t n, struct ftp_cmd *c, char *argbuf, size_t argsz)
{
	char *p = exact(s, n);
	int r = ftp_cmd_parse(p, n, c);

	argbuf[0] = '\0';
	if (r == 0 && c->arg_len < argsz) {
		memcpy(argbuf, c->arg, c->arg_len);
		argbuf[c->arg_len] = '\0';
	}
	free(p);
	return r;
}

static int parse(const char *s, struct ftp_cmd *c, char *argbuf, size_t argsz)
{
	return parse_n(s, strlen(s), c, argbuf, argsz);
}

static size_t strip(const char *in, size_t n, char *out)
{
	char *p = exact(in, n);
	size_t r = ftp_telnet_strip(p, n);

	memcpy(out, p, r);
	free(p);
	return r;
}

static void test_telnet(void)
{
	char out[64];
	size_t n;

	n = strip("ABOR\r\n", 6, out);
	ok(n == 6 && memcmp(out, "ABOR\r\n", 6) == 0, "telnet: plain text unchanged");
	n = strip("\xff\xf4\xff\xf2"
	          "ABOR\r\n",
	          10, out);
	ok(n == 6 && memcmp(out, "ABOR\r\n", 6) == 0, "telnet: IAC IP IAC DM before ABOR dropped");
	n = strip("RETR a\xff\xff"
	          "b",
	          9, out);
	ok(n == 8 && memcmp(out,
	                    "RETR a\xff"
	                    "b",
	                    8) == 0,
	   "telnet: IAC IAC -> one 0xFF");
	n = strip("A\xff\xfb\x01"
	          "B",
	          5, out);
	ok(n == 2 && memcmp(out, "AB", 2) == 0, "telnet: IAC WILL x dropped");
	n = strip("A\xff\xfc\x01"
	          "B",
	          5, out);
	ok(n == 2 && memcmp(out, "AB", 2) == 0, "telnet: IAC WONT x dropped");
	n = strip("A\xff\xfd\x01"
	          "B",
	          5, out);
	ok(n == 2 && memcmp(out, "AB", 2) == 0, "telnet: IAC DO x dropped");
	n = strip("A\xff\xfe\xff"
	          "B",
	          5, out);
	ok(n == 2 && memcmp(out, "AB", 2) == 0, "telnet: IAC DONT IAC drops option byte 0xFF too");
	n = strip("AB\xff", 3, out);
	ok(n == 2 && memcmp(out, "AB", 2) == 0, "telnet: lone trailing IAC dropped");
	n = strip("AB\xff\xfd", 4, out);
	ok(n == 2 && memcmp(out, "AB", 2) == 0, "telnet: truncated IAC DO dropped");
	n = strip("\xff\xff\xff", 3, out);
	ok(n == 1 && (unsigned char)out[0] == 0xff,
	   "telnet: IAC IAC IAC -> 0xFF, lone IAC dropped");
	is_int(strip("", 0, out), 0, "telnet: empty buffer");
	is_int(ftp_telnet_strip(NULL, 5), 0, "telnet: NULL buffer");
	{
		char buf[] = "XY\xff\xff";
		/* len 3 ends with a lone IAC: the 4th byte must not be consulted */
		n = ftp_telnet_strip(buf, 3);
		ok(n == 2 && memcmp(buf, "XY", 2) == 0, "telnet: respects len (no peek past end)");
	}
}

static void test_parse_valid(void)
{
	struct ftp_cmd c;
	char a[256];

	is_int(parse("USER anonymous\r\n", &c, a, sizeof(a)), 0, "USER with CRLF");
	is_int(c.verb, FTP_V_USER, "USER verb");
	is_str(c.name, "USER", "USER name");
	is_str(a, "anonymous", "USER arg");
	is_int(c.arg_len, 9, "USER arg_len");

	is_int(parse("pasv\r\n", &c, a, sizeof(a)), 0, "lower-case verb accepted");
	is_str(c.name, "PASV", "verb upper-cased");
	is_int(c.verb, FTP_V_PASV, "pasv -> FTP_V_PASV");
	is_int(c.arg_len, 0, "no arg -> arg_len 0");
	ok(c.arg != NULL && c.arg[0] == '\0', "no arg -> arg is \"\"");

	is_int(parse("ePrT |1|1.2.3.4|5|\n", &c, a, sizeof(a)), 0, "mixed case, LF only");
	is_int(c.verb, FTP_V_EPRT, "EPRT verb");
	is_str(a, "|1|1.2.3.4|5|", "EPRT arg");

	is_int(parse("NOOP", &c, a, sizeof(a)), 0, "no line terminator");
	is_int(c.verb, FTP_V_OTHER, "NOOP is FTP_V_OTHER");
	is_str(c.name, "NOOP", "NOOP name");

	is_int(parse("CWD \r\n", &c, a, sizeof(a)), 0, "bare 'CWD ' accepted");
	is_int(c.arg_len, 0, "bare 'CWD ' -> arg_len 0");

	is_int(parse("RETR my file.txt   \r\n", &c, a, sizeof(a)), 0, "trailing spaces");
	is_str(a, "my file.txt", "trailing spaces trimmed, inner kept");

	is_int(parse("RETR  lead\r\n", &c, a, sizeof(a)), 0, "two spaces: one is separator");
	is_str(a, " lead", "second space belongs to the argument");

	is_int(parse("MKD    \r\n", &c, a, sizeof(a)), 0, "verb plus spaces only");
	is_int(c.arg_len, 0, "spaces-only arg -> arg_len 0");

	is_int(parse("STOR caf\xc3\xa9\r\n", &c, a, sizeof(a)), 0, "UTF-8 bytes in arg allowed");
	is_str(a, "caf\xc3\xa9", "UTF-8 arg kept");

	is_int(parse("STOR x\r", &c, a, sizeof(a)), 0, "lone trailing CR trimmed");
	is_str(a, "x", "arg without CR");

	is_int(parse("ABCDEFGH x\r\n", &c, a, sizeof(a)), 0, "8-letter verb (FTP_VERB_MAX)");
	is_str(c.name, "ABCDEFGH", "8-letter name");
	is_int(parse("X\r\n", &c, a, sizeof(a)), 0, "1-letter verb");
	is_str(c.name, "X", "1-letter name");

	/* arg points into the input line */
	{
		const char *line = "PASS secret\r\n";
		struct ftp_cmd d;

		is_int(ftp_cmd_parse(line, strlen(line), &d), 0, "PASS parses");
		ok(d.arg == line + 5 && d.arg_len == 6, "arg points into the line");
	}
}

static void test_parse_bad(void)
{
	struct ftp_cmd c;
	char a[64];

	is_int(parse("", &c, a, sizeof(a)), -1, "empty line rejected");
	is_int(parse("\r\n", &c, a, sizeof(a)), -1, "CRLF only rejected");
	is_int(parse(" USER x\r\n", &c, a, sizeof(a)), -1, "leading space rejected");
	is_int(parse("ABCDEFGHI x\r\n", &c, a, sizeof(a)), -1, "9-letter verb rejected");
	is_int(parse("US3R x\r\n", &c, a, sizeof(a)), -1, "digit in verb rejected");
	is_int(parse("USER:x\r\n", &c, a, sizeof(a)), -1, "verb followed by ':' rejected");
	is_int(parse("USER\tx\r\n", &c, a, sizeof(a)), -1, "tab separator rejected");
	is_int(parse("USER x\ty\r\n", &c, a, sizeof(a)), -1, "tab in arg rejected");
	is_int(parse("USER x\x7f\r\n", &c, a, sizeof(a)), -1, "DEL in arg rejected");
	is_int(parse("USER x\ry\r\n", &c, a, sizeof(a)), -1, "CR inside arg rejected");
	is_int(parse("USER x\ny\r\n", &c, a, sizeof(a)), -1, "LF inside arg rejected");
	is_int(parse("USER x\r\r\n", &c, a, sizeof(a)), -1, "double CR rejected");
	is_int(parse("USER x\n\n", &c, a, sizeof(a)), -1, "double LF rejected");
	is_int(parse_n("USER a\0b\r\n", 10, &c, a, sizeof(a)), -1, "embedded NUL rejected");
	is_int(parse_n("US\0R\r\n", 6, &c, a, sizeof(a)), -1, "NUL in verb rejected");
	is_int(parse("\xc3\x89TAT\r\n", &c, a, sizeof(a)), -1, "non-ASCII verb rejected");
	is_int(ftp_cmd_parse(NULL, 4, &c), -1, "NULL line rejected");
	is_int(ftp_cmd_parse("USER", 4, NULL), -1, "NULL out rejected");
	ok(c.arg != NULL && c.arg_len == 0 && c.name[0] == '\0',
	   "failed parse leaves out in a defined state");
}

static void test_parse_len(void)
{
	struct ftp_cmd c;
	char a[64];

	/* len shorter than the string: must not look beyond it */
	is_int(parse_n("USER bob\r\n", 6, &c, a, sizeof(a)), 0, "len cut after 'USER b'");
	is_str(a, "b", "arg limited to len");
	is_int(parse_n("LIST\x01", 4, &c, a, sizeof(a)), 0, "control byte past len ignored");
	is_str(c.name, "LIST", "name limited to len");
	is_int(parse_n("ABCDEFGHIJ", 8, &c, a, sizeof(a)), 0, "long verb cut to 8 by len");
	is_str(c.name, "ABCDEFGH", "cut verb name");
	is_int(parse_n("USER", 0, &c, a, sizeof(a)), -1, "len 0 rejected");
}

static void test_lookup(void)
{
	static const struct {
		const char *n;
		enum ftp_verb v;
	} t[] = {
	    {"USER", FTP_V_USER}, {"PASS", FTP_V_PASS}, {"PASV", FTP_V_PASV}, {"EPSV", FTP_V_EPSV},
	    {"PORT", FTP_V_PORT}, {"EPRT", FTP_V_EPRT}, {"LPRT", FTP_V_LPRT}, {"LPSV", FTP_V_LPSV},
	    {"RETR", FTP_V_RETR}, {"STOR", FTP_V_STOR}, {"APPE", FTP_V_APPE}, {"STOU", FTP_V_STOU},
	    {"LIST", FTP_V_LIST}, {"NLST", FTP_V_NLST}, {"MLSD", FTP_V_MLSD}, {"REST", FTP_V_REST},
	    {"ABOR", FTP_V_ABOR}, {"QUIT", FTP_V_QUIT}, {"FEAT", FTP_V_FEAT}, {"AUTH", FTP_V_AUTH},
	    {"PBSZ", FTP_V_PBSZ}, {"PROT", FTP_V_PROT}, {"CCC", FTP_V_CCC},   {"REIN", FTP_V_REIN},
	};
	size_t k, good = 0;

	for (k = 0; k < sizeof(t) / sizeof(t[0]); k++)
		good += ftp_verb_lookup(t[k].n) == t[k].v;
	is_int(good, sizeof(t) / sizeof(t[0]), "all special verbs map to their enum");
	is_int(ftp_verb_lookup("NOOP"), FTP_V_OTHER, "NOOP -> OTHER");
	is_int(ftp_verb_lookup("USERX"), FTP_V_OTHER, "USERX -> OTHER (no prefix match)");
	is_int(ftp_verb_lookup("USE"), FTP_V_OTHER, "USE -> OTHER");
	is_int(ftp_verb_lookup("user"), FTP_V_OTHER, "lookup expects upper case");
	is_int(ftp_verb_lookup(""), FTP_V_OTHER, "empty -> OTHER");
	is_int(ftp_verb_lookup(NULL), FTP_V_OTHER, "NULL -> OTHER");

	ok(ftp_verb_is_transfer(FTP_V_RETR) && ftp_verb_is_transfer(FTP_V_STOR) &&
	       ftp_verb_is_transfer(FTP_V_APPE) && ftp_verb_is_transfer(FTP_V_STOU) &&
	       ftp_verb_is_transfer(FTP_V_LIST) && ftp_verb_is_transfer(FTP_V_NLST) &&
	       ftp_verb_is_transfer(FTP_V_MLSD),
	   "transfer verbs");
	ok(!ftp_verb_is_transfer(FTP_V_OTHER) && !ftp_verb_is_transfer(FTP_V_PASV) &&
	       !ftp_verb_is_transfer(FTP_V_PORT) && !ftp_verb_is_transfer(FTP_V_REST) &&
	       !ftp_verb_is_transfer(FTP_V_ABOR) && !ftp_verb_is_transfer(FTP_V_USER),
	   "non-transfer verbs");
}

int main(void)
{
	test_telnet();
	test_parse_valid();
	test_parse_bad();
	test_parse_len();
	test_lookup();
	return tap_done();
}
