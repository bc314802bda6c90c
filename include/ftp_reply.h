/* ftp_reply: pure assembly of complete FTP replies (RFC 959 4.2). No I/O. */
#ifndef FTPGATE_FTP_REPLY_H
#define FTPGATE_FTP_REPLY_H

#include <stddef.h>

/* Bounds: a backend is as hostile as a client. */
#define FTP_REPLY_MAX_LINES 10000
#define FTP_REPLY_MAX_BYTES (1024 * 1024)

enum ftp_reply_status {
	FTP_REPLY_MORE = 0, /* line accepted, reply continues */
	FTP_REPLY_DONE = 1, /* line accepted, reply complete: code is valid */
	FTP_REPLY_BAD = -1, /* malformed first line, or a bound exceeded */
};

struct ftp_reply_asm {
	int code;      /* 100..599 once the first line is seen, else 0 */
	int multiline; /* first line was "ddd-" */
	size_t lines;  /* lines seen in this reply */
	size_t bytes;  /* bytes seen in this reply */
};

/* Reset for the next reply. */
void ftp_reply_reset(struct ftp_reply_asm *a);

/*
 * Feed one line (trailing CRLF / LF optional and ignored). First line: three
 * digits, first in 1..5, followed by ' ', '-' or end of line. A multi-line
 * reply ends at a line that starts with the same three digits followed by
 * ' ' or end of line. After FTP_REPLY_DONE the caller must call
 * ftp_reply_reset() before feeding the next reply. Lines inside a
 * multi-line reply may contain anything but NUL.
 */
enum ftp_reply_status ftp_reply_feed(struct ftp_reply_asm *a, const char *line, size_t len);

/*
 * May a reply with this code answer the command verb (upper-case,
 * NUL-terminated, as ftp_cmd_parse() names it)? From the command-reply
 * sequences of RFC 959 section 5.4, RFC 2228, 2389, 2428, 3659 and 7151,
 * widened to what vsftpd, ProFTPD, Pure-FTPd and pyftpdlib send:
 *  - 4xx and 5xx: always (any command may fail, and servers differ in
 *    which error they pick);
 *  - 1xx: only transfer commands (RETR STOR STOU APPE LIST NLST MLSD) and
 *    REIN;
 *  - 2xx and 3xx: the codes listed for the verb (e.g. TYPE 200, SIZE 213,
 *    PASV 227, transfers 225/226/250); SITE and verbs not in the table
 *    (vendor extensions) take any.
 * Returns 1 or 0; 0 also for a code outside 100..599.
 */
int ftp_reply_answers(const char *verb, int code);

/* Reply class helpers. */
static inline int ftp_reply_is_prelim(int code)
{
	return code >= 100 && code < 200;
}
static inline int ftp_reply_is_ok(int code)
{
	return code >= 200 && code < 400;
}

#endif
