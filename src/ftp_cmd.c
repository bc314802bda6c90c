/* ftp_cmd: pure parsing of FTP command lines (RFC 959). No I/O, no allocation. */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <string.h>
#include <strings.h>

#include "ftp_cmd.h"

#define TN_IAC 255
#define TN_WILL 251
#define TN_WONT 252
#define TN_DO 253
#define TN_DONT 254

size_t ftp_telnet_strip(char *buf, size_t len)
{
	size_t i = 0, j = 0;

	if (buf == NULL)
		return 0;
	while (i < len) {
		unsigned char c = (unsigned char)buf[i];

		if (c != TN_IAC) {
			buf[j++] = buf[i++];
			continue;
		}
		if (i + 1 >= len) /* lone IAC at the very end */
			break;
		c = (unsigned char)buf[i + 1];
		if (c == TN_IAC) {
			buf[j++] = (char)TN_IAC;
			i += 2;
		} else if (c >= TN_WILL && c <= TN_DONT) {
			/* option negotiation: IAC cmd option; a truncated one is dropped */
			i = (len - i > 3) ? i + 3 : len;
		} else {
			i += 2;
		}
	}
	return j;
}

static int is_alpha(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static int is_ctl(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

int ftp_cmd_parse(const char *line, size_t len, struct ftp_cmd *out)
{
	size_t i, n;

	if (out == NULL)
		return -1;
	memset(out, 0, sizeof(*out));
	out->verb = FTP_V_OTHER;
	out->arg = "";
	if (line == NULL)
		return -1;

	/* Trim one trailing LF, then one trailing CR ("\r\n", "\n", "\r"). */
	if (len > 0 && line[len - 1] == '\n')
		len--;
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (len == 0)
		return -1;

	for (i = 0; i < len; i++)
		if (is_ctl((unsigned char)line[i]))
			return -1;

	for (n = 0; n < len && is_alpha((unsigned char)line[n]); n++)
		if (n >= FTP_VERB_MAX)
			return -1;
	if (n == 0)
		return -1;
	if (n < len && line[n] != ' ')
		return -1;

	for (i = 0; i < n; i++) {
		char c = line[i];

		out->name[i] = (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
	}
	out->name[n] = '\0';
	out->verb = ftp_verb_lookup(out->name);

	if (n < len) {
		/* exactly one separator space; the rest (even leading spaces) is the argument */
		const char *arg = line + n + 1;
		size_t alen = len - n - 1;

		while (alen > 0 && arg[alen - 1] == ' ')
			alen--;
		if (alen > 0) {
			out->arg = arg;
			out->arg_len = alen;
		}
	}
	return 0;
}

size_t ftp_cmd_log_len(const char *line, size_t len)
{
	size_t i = 0;

	if (line == NULL)
		return 0;
	while (i < len && !is_alpha((unsigned char)line[i]))
		i++;
	if (len - i >= 4 && strncasecmp(line + i, "PASS", 4) == 0)
		return i + 4;
	return len;
}

static const struct {
	const char *name;
	enum ftp_verb verb;
} verb_table[] = {
    {"USER", FTP_V_USER}, {"PASS", FTP_V_PASS}, {"PASV", FTP_V_PASV}, {"EPSV", FTP_V_EPSV},
    {"PORT", FTP_V_PORT}, {"EPRT", FTP_V_EPRT}, {"LPRT", FTP_V_LPRT}, {"LPSV", FTP_V_LPSV},
    {"RETR", FTP_V_RETR}, {"STOR", FTP_V_STOR}, {"APPE", FTP_V_APPE}, {"STOU", FTP_V_STOU},
    {"LIST", FTP_V_LIST}, {"NLST", FTP_V_NLST}, {"MLSD", FTP_V_MLSD}, {"REST", FTP_V_REST},
    {"ABOR", FTP_V_ABOR}, {"QUIT", FTP_V_QUIT}, {"FEAT", FTP_V_FEAT}, {"AUTH", FTP_V_AUTH},
    {"PBSZ", FTP_V_PBSZ}, {"PROT", FTP_V_PROT}, {"CCC", FTP_V_CCC},   {"REIN", FTP_V_REIN},
};

enum ftp_verb ftp_verb_lookup(const char *name)
{
	size_t k;

	if (name == NULL)
		return FTP_V_OTHER;
	for (k = 0; k < sizeof(verb_table) / sizeof(verb_table[0]); k++)
		if (strncmp(name, verb_table[k].name, FTP_VERB_MAX + 1) == 0)
			return verb_table[k].verb;
	return FTP_V_OTHER;
}

int ftp_verb_is_transfer(enum ftp_verb v)
{
	switch (v) {
	case FTP_V_RETR:
	case FTP_V_STOR:
	case FTP_V_APPE:
	case FTP_V_STOU:
	case FTP_V_LIST:
	case FTP_V_NLST:
	case FTP_V_MLSD:
		return 1;
	default:
		return 0;
	}
}
