/* ftp_cmd: pure parsing of FTP command lines (RFC 959). No I/O, no allocation. */
#ifndef FTPGATE_FTP_CMD_H
#define FTPGATE_FTP_CMD_H

#include <stddef.h>

/* Longest verb accepted (RFC 959 verbs are 3-4 letters; extensions up to 4). */
#define FTP_VERB_MAX 8

/*
 * Longest command line (CRLF included) that every server we know reads as
 * one command. Longer lines, up to the proxy's own limit, are read in
 * pieces by some: pyftpdlib answers a line of more than 2048 bytes with
 * "500 Command too long." and then with a second 500 for what is left of it.
 */
#define FTP_LINE_ONE_READ 2050

enum ftp_verb {
	FTP_V_OTHER = 0, /* anything else: passed through to the backend */
	FTP_V_USER,
	FTP_V_PASS,
	FTP_V_PASV,
	FTP_V_EPSV,
	FTP_V_PORT,
	FTP_V_EPRT,
	FTP_V_LPRT,
	FTP_V_LPSV,
	FTP_V_RETR,
	FTP_V_STOR,
	FTP_V_APPE,
	FTP_V_STOU,
	FTP_V_LIST,
	FTP_V_NLST,
	FTP_V_MLSD,
	FTP_V_REST,
	FTP_V_ABOR,
	FTP_V_QUIT,
	FTP_V_FEAT,
	FTP_V_AUTH,
	FTP_V_PBSZ,
	FTP_V_PROT,
	FTP_V_CCC,
	FTP_V_REIN,
};

struct ftp_cmd {
	enum ftp_verb verb;
	char name[FTP_VERB_MAX + 1]; /* verb, upper-cased, NUL-terminated */
	const char *arg;             /* points into the parsed line; "" if none */
	size_t arg_len;              /* arg length, trailing CR/LF/spaces removed */
};

/*
 * Remove Telnet IAC sequences in place (RFC 854 as used by RFC 959):
 * IAC IAC -> one 0xFF byte; IAC WILL/WONT/DO/DONT x -> dropped (3 bytes);
 * IAC any-other -> dropped (2 bytes, e.g. IP and DM before ABOR); a lone
 * IAC at the very end is dropped. Returns the new length.
 */
size_t ftp_telnet_strip(char *buf, size_t len);

/*
 * Parse one command line (without or with its trailing CRLF / LF).
 * The verb is 1..FTP_VERB_MAX ASCII letters, case-insensitive, followed by
 * end of line or a single space and the argument. Trailing CR/LF are
 * removed from the argument. Returns 0 on success, -1 for a malformed line:
 * empty, verb too long or not letters, NUL or other control bytes (other
 * than trailing CR/LF) anywhere in the line.
 */
int ftp_cmd_parse(const char *line, size_t len, struct ftp_cmd *out);

/*
 * How many leading bytes of a command line, well-formed or not, may go to a
 * log: all of it, except when its first word (after any bytes that are not
 * letters) starts with PASS in any case: a password follows, so only up to
 * the end of those four letters.
 */
size_t ftp_cmd_log_len(const char *line, size_t len);

/* Map an upper-case verb to its enum (FTP_V_OTHER if not special). */
enum ftp_verb ftp_verb_lookup(const char *name);

/* 1 if the verb opens a data connection (RETR STOR APPE STOU LIST NLST MLSD). */
int ftp_verb_is_transfer(enum ftp_verb v);

#endif
