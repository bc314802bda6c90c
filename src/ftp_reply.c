/* ftp_reply: pure assembly of complete FTP replies (RFC 959 4.2). No I/O. */
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
