/*
 * ftp_reply: pure assembly of complete FTP replies (RFC 959 4.2), and which
 * reply codes can answer which command. No I/O.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <string.h>

#include "ftp_reply.h"

void ftp_reply_reset(struct ftp_reply_asm *a)
{
	if (a != NULL)
		memset(a, 0, sizeof(*a));
}

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

enum ftp_reply_status ftp_reply_feed(struct ftp_reply_asm *a, const char *line, size_t len)
{
	size_t n = len;

	if (a == NULL || (line == NULL && len > 0))
		return FTP_REPLY_BAD;
	/* A single-line reply already completed: the caller forgot to reset. */
	if (a->code != 0 && !a->multiline)
		return FTP_REPLY_BAD;

	/* Bounds count the bytes as given, terminators included. */
	if (a->lines >= FTP_REPLY_MAX_LINES || len > FTP_REPLY_MAX_BYTES - a->bytes)
		return FTP_REPLY_BAD;
	a->lines++;
	a->bytes += len;

	if (n > 0 && line[n - 1] == '\n')
		n--;
	if (n > 0 && line[n - 1] == '\r')
		n--;
	if (n > 0 && memchr(line, '\0', n) != NULL)
		return FTP_REPLY_BAD;

	if (a->code == 0) {
		if (n < 3 || line[0] < '1' || line[0] > '5' || !is_digit(line[1]) ||
		    !is_digit(line[2]))
			return FTP_REPLY_BAD;
		if (n > 3 && line[3] != ' ' && line[3] != '-')
			return FTP_REPLY_BAD;
		a->code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
		if (n > 3 && line[3] == '-') {
			a->multiline = 1;
			return FTP_REPLY_MORE;
		}
		return FTP_REPLY_DONE;
	}

	/* Inside a multi-line reply: only "ddd" or "ddd ..." with the same code ends it. */
	if (n >= 3 && line[0] - '0' == a->code / 100 && line[1] - '0' == a->code / 10 % 10 &&
	    line[2] - '0' == a->code % 10 && (n == 3 || line[3] == ' '))
		return FTP_REPLY_DONE;
	return FTP_REPLY_MORE;
}

/*
 * The 2xx/3xx codes each verb may get (0-terminated). RFC 959 5.4 and its
 * extensions, plus what real servers send: CDUP/XCUP 250 (vsftpd, ProFTPD,
 * Pure-FTPd, pyftpdlib), REIN 230 (pyftpdlib), EPSV ALL 200, MDTM 253 (set
 * the time), ALLO 202, MKD 250 (older servers), EPSV ALL 220 (pyftpdlib), 200
 * for the action commands
 * whose RFC code is 250.
 */
static const struct {
	const char *verb;
	int prelim; /* 1xx allowed: before a transfer's data, REIN's 120 */
	short codes[5];
} answers[] = {
    {"USER", 0, {230, 232, 331, 332, 336}},
    {"PASS", 0, {202, 230, 332}},
    {"ACCT", 0, {202, 230}},
    {"CWD", 0, {200, 250}},
    {"XCWD", 0, {200, 250}},
    {"CDUP", 0, {200, 250}},
    {"XCUP", 0, {200, 250}},
    {"SMNT", 0, {202, 250}},
    {"REIN", 1, {220, 230}},
    {"QUIT", 0, {221}},
    {"PORT", 0, {200}},
    {"EPRT", 0, {200}},
    {"LPRT", 0, {200}},
    {"PASV", 0, {227}},
    {"EPSV", 0, {200, 220, 229}},
    {"LPSV", 0, {228}},
    {"MODE", 0, {200}},
    {"TYPE", 0, {200}},
    {"STRU", 0, {200}},
    {"ALLO", 0, {200, 202}},
    {"REST", 0, {350}},
    {"RETR", 1, {225, 226, 250}},
    {"STOR", 1, {225, 226, 250}},
    {"STOU", 1, {225, 226, 250}},
    {"APPE", 1, {225, 226, 250}},
    {"LIST", 1, {225, 226, 250}},
    {"NLST", 1, {225, 226, 250}},
    {"MLSD", 1, {225, 226, 250}},
    {"RNFR", 0, {350}},
    {"RNTO", 0, {200, 250}},
    {"DELE", 0, {200, 250}},
    {"RMD", 0, {200, 250}},
    {"XRMD", 0, {200, 250}},
    {"MKD", 0, {250, 257}},
    {"XMKD", 0, {250, 257}},
    {"PWD", 0, {257}},
    {"XPWD", 0, {257}},
    {"ABOR", 0, {225, 226}},
    {"SYST", 0, {215}},
    {"STAT", 0, {211, 212, 213}},
    {"HELP", 0, {211, 214}},
    {"NOOP", 0, {200}},
    {"AUTH", 0, {234, 334}},
    {"ADAT", 0, {235, 335}},
    {"PBSZ", 0, {200}},
    {"PROT", 0, {200}},
    {"CCC", 0, {200}},
    {"FEAT", 0, {211}},
    {"OPTS", 0, {200}},
    {"LANG", 0, {200}},
    {"SIZE", 0, {213}},
    {"MDTM", 0, {213, 253}},
    {"MFMT", 0, {213}},
    {"MFCT", 0, {213}},
    {"MFF", 0, {213}},
    {"MLST", 0, {250}},
    {"HOST", 0, {220}},
};

int ftp_reply_answers(const char *verb, int code)
{
	size_t k;

	if (code < 100 || code > 599)
		return 0;
	if (code >= 400)
		return 1;
	if (verb == NULL)
		return 0;
	for (k = 0; k < sizeof(answers) / sizeof(answers[0]); k++) {
		if (strcmp(verb, answers[k].verb) != 0)
			continue;
		if (code < 200)
			return answers[k].prelim;
		for (size_t i = 0; i < sizeof(answers[k].codes) / sizeof(answers[k].codes[0]) &&
		                   answers[k].codes[i] != 0;
		     i++)
			if (answers[k].codes[i] == code)
				return 1;
		return 0;
	}
	return code >= 200; /* SITE, vendor extensions: cannot tell */
}
