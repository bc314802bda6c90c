/*
 * proxyproto: pure parse and emit of the PROXY protocol header v1/v2
 * (HAProxy's proxy-protocol.txt). No I/O, no allocation; owns nothing: it
 * reads the caller's buffer and fills the caller's structs.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "proxyproto.h"

/* Shortest v1 line: "PROXY UNKNOWN\r\n". */
#define V1_MIN 15

static const unsigned char v2sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                        0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static int need(struct pp_header *out, size_t want)
{
	out->want = want;
	return 0;
}

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/*
 * A decimal number of 1..maxdig digits at s[*pos] (before n), no leading zero
 * unless it is "0", at most max. Advances *pos.
 */
static int parse_num(const char *s, size_t n, size_t *pos, size_t maxdig, unsigned long max,
                     unsigned long *out)
{
	size_t i = *pos, d = 0;
	unsigned long v = 0;

	while (i < n && is_digit(s[i])) {
		if (++d > maxdig)
			return -1;
		v = v * 10 + (unsigned long)(s[i] - '0');
		i++;
	}
	if (d == 0 || v > max || (d > 1 && s[*pos] == '0'))
		return -1;
	*pos = i;
	*out = v;
	return 0;
}

/* Exactly four numbers 0..255 separated by single dots (spec 2.1). */
static int parse_ipv4(const char *s, size_t n, struct sockaddr_in *sin)
{
	size_t i = 0;
	uint32_t v = 0;

	for (int part = 0; part < 4; part++) {
		unsigned long x;

		if (part > 0) {
			if (i >= n || s[i] != '.')
				return -1;
			i++;
		}
		if (parse_num(s, n, &i, 3, 255, &x) != 0)
			return -1;
		v = v << 8 | (uint32_t)x;
	}
	if (i != n)
		return -1;
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(v);
	return 0;
}

/* Hex groups and colons (and a trailing dotted quad, as inet_pton takes it). */
static int parse_ipv6(const char *s, size_t n, struct sockaddr_in6 *sin6)
{
	char buf[INET6_ADDRSTRLEN];

	if (n == 0 || n >= sizeof(buf))
		return -1;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (!is_digit(c) && !(c >= 'a' && c <= 'f') && !(c >= 'A' && c <= 'F') &&
		    c != ':' && c != '.')
			return -1;
	}
	memcpy(buf, s, n);
	buf[n] = '\0';
	if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) != 1)
		return -1;
	sin6->sin6_family = AF_INET6;
	return 0;
}

static int parse_port(const char *s, size_t n, uint16_t *port)
{
	size_t i = 0;
	unsigned long x;

	if (parse_num(s, n, &i, 5, 65535, &x) != 0 || i != n)
		return -1;
	*port = htons((uint16_t)x);
	return 0;
}

/* The v1 line after "PROXY ", without its CRLF. */
static int v1_line(const char *s, size_t n, struct pp_header *out)
{
	const char *tok[6];
	size_t tlen[6], nt = 0, start = 0;
	struct sockaddr_in *s4 = (struct sockaddr_in *)&out->src;
	struct sockaddr_in *d4 = (struct sockaddr_in *)&out->dst;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&out->src;
	struct sockaddr_in6 *d6 = (struct sockaddr_in6 *)&out->dst;
	int fam;

	/* Fields are separated by exactly one space: an empty field is a field. */
	for (size_t i = 0; i <= n && nt < 6; i++) {
		if (i < n && s[i] != ' ')
			continue;
		tok[nt] = s + start;
		tlen[nt++] = i - start;
		start = i + 1;
	}
	if (tlen[0] == 7 && memcmp(tok[0], "UNKNOWN", 7) == 0)
		return 0; /* the rest of the line is to be ignored (spec 2.1) */
	if (tlen[0] == 4 && memcmp(tok[0], "TCP4", 4) == 0)
		fam = AF_INET;
	else if (tlen[0] == 4 && memcmp(tok[0], "TCP6", 4) == 0)
		fam = AF_INET6;
	else
		return PP_E_V1_PROTO;
	if (nt != 5)
		return PP_E_V1_FIELDS;
	if (fam == AF_INET) {
		if (parse_ipv4(tok[1], tlen[1], s4) != 0)
			return PP_E_V1_SRC_ADDR;
		if (parse_ipv4(tok[2], tlen[2], d4) != 0)
			return PP_E_V1_DST_ADDR;
		if (parse_port(tok[3], tlen[3], &s4->sin_port) != 0)
			return PP_E_V1_SRC_PORT;
		if (parse_port(tok[4], tlen[4], &d4->sin_port) != 0)
			return PP_E_V1_DST_PORT;
	} else {
		if (parse_ipv6(tok[1], tlen[1], s6) != 0)
			return PP_E_V1_SRC_ADDR;
		if (parse_ipv6(tok[2], tlen[2], d6) != 0)
			return PP_E_V1_DST_ADDR;
		if (parse_port(tok[3], tlen[3], &s6->sin6_port) != 0)
			return PP_E_V1_SRC_PORT;
		if (parse_port(tok[4], tlen[4], &d6->sin6_port) != 0)
			return PP_E_V1_DST_PORT;
	}
	out->family = fam;
	return 0;
}

static int parse_v1(const unsigned char *b, size_t len, unsigned accept, struct pp_header *out)
{
	size_t i, want;
	int r;

	if (memcmp(b, "PROXY ", len < 6 ? len : 6) != 0)
		return PP_E_SIGNATURE;
	if (len < 6)
		return need(out, V1_MIN - len);
	if (!(accept & PP_ACCEPT_V1))
		return PP_E_NOT_ACCEPTED;
	for (i = 6; i < len && i < PP_V1_MAX; i++) {
		if (b[i] == '\n')
			return PP_E_V1_BARE_CRLF;
		if (b[i] != '\r')
			continue;
		if (i + 1 >= PP_V1_MAX)
			return PP_E_V1_TOO_LONG; /* its LF would be byte 108 */
		if (i + 1 == len)
			return need(out, 1);
		if (b[i + 1] != '\n')
			return PP_E_V1_BARE_CRLF;
		memset(out, 0, sizeof(*out));
		out->version = 1;
		out->command = PP_CMD_PROXY;
		out->family = AF_UNSPEC;
		r = v1_line((const char *)b + 6, i - 6, out);
		return r < 0 ? r : (int)(i + 2);
	}
	if (len >= PP_V1_MAX)
		return PP_E_V1_TOO_LONG;
	/* No CR yet: the CRLF ends at len + 2 at the earliest. */
	want = len + 2 < V1_MIN ? V1_MIN - len : 2;
	if (len + want > PP_V1_MAX)
		want = PP_V1_MAX - len;
	return need(out, want);
}

/* Bytes of the v2 address block for the family/transport byte, 0 if not checked. */
static size_t v2_addr_len(unsigned char fam)
{
	switch (fam) {
	case 0x11: /* TCP over IPv4 */
	case 0x12: /* UDP over IPv4 */
		return 12;
	case 0x21: /* TCP over IPv6 */
	case 0x22: /* UDP over IPv6 */
		return 36;
	case 0x31: /* UNIX stream */
	case 0x32: /* UNIX datagram */
		return 216;
	default: /* UNSPEC in either nibble: the address block is to be ignored */
		return 0;
	}
}

static int parse_v2(const unsigned char *b, size_t len, unsigned accept, struct pp_header *out)
{
	size_t total, alen, p;
	unsigned cmd;

	if (memcmp(b, v2sig, len < 12 ? len : 12) != 0)
		return PP_E_SIGNATURE;
	if (len < 12)
		return need(out, PP_V2_FIXED - len);
	if (!(accept & PP_ACCEPT_V2))
		return PP_E_NOT_ACCEPTED;
	if (len < 13)
		return need(out, PP_V2_FIXED - len);
	if (b[12] >> 4 != 2)
		return PP_E_V2_VERSION;
	cmd = b[12] & 0x0F;
	if (cmd > PP_CMD_PROXY)
		return PP_E_V2_COMMAND;
	if (len < 14)
		return need(out, PP_V2_FIXED - len);
	/* LOCAL: the family is ignored along with the whole address block. */
	if (cmd == PP_CMD_PROXY && b[13] >> 4 > 3)
		return PP_E_V2_FAMILY;
	if (cmd == PP_CMD_PROXY && (b[13] & 0x0F) > 2)
		return PP_E_V2_TRANSPORT;
	if (len < PP_V2_FIXED)
		return need(out, PP_V2_FIXED - len);
	total = PP_V2_FIXED + ((size_t)b[14] << 8 | b[15]);
	if (total > PP_MAX_HEADER)
		return PP_E_V2_TOO_LONG;
	if (len < total)
		return need(out, total - len);

	memset(out, 0, sizeof(*out));
	out->version = 2;
	out->command = (enum pp_command)cmd;
	out->family = AF_UNSPEC;
	if (cmd == PP_CMD_LOCAL)
		return (int)total;
	alen = v2_addr_len(b[13]);
	if (alen == 0)
		return (int)total;
	if (total - PP_V2_FIXED < alen)
		return PP_E_V2_ADDR_SHORT;
	/* TLVs: type (1), length (2, big-endian), value; skipped, each within the header. */
	for (p = PP_V2_FIXED + alen; p < total;) {
		size_t vlen;

		if (total - p < 3)
			return PP_E_V2_TLV_HEADER;
		vlen = (size_t)b[p + 1] << 8 | b[p + 2];
		if (vlen > total - p - 3)
			return PP_E_V2_TLV_LENGTH;
		p += 3 + vlen;
	}
	if (b[13] == 0x11) {
		struct sockaddr_in *s = (struct sockaddr_in *)&out->src;
		struct sockaddr_in *d = (struct sockaddr_in *)&out->dst;

		s->sin_family = d->sin_family = AF_INET;
		memcpy(&s->sin_addr, b + 16, 4);
		memcpy(&d->sin_addr, b + 20, 4);
		memcpy(&s->sin_port, b + 24, 2);
		memcpy(&d->sin_port, b + 26, 2);
		out->family = AF_INET;
	} else if (b[13] == 0x21) {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&out->src;
		struct sockaddr_in6 *d = (struct sockaddr_in6 *)&out->dst;

		s->sin6_family = d->sin6_family = AF_INET6;
		memcpy(&s->sin6_addr, b + 16, 16);
		memcpy(&d->sin6_addr, b + 32, 16);
		memcpy(&s->sin6_port, b + 48, 2);
		memcpy(&d->sin6_port, b + 50, 2);
		out->family = AF_INET6;
	}
	/* UDP and AF_UNIX: valid, but no address ftpgate can use (spec: fall back to UNSPEC). */
	return (int)total;
}

int pp_parse(const void *buf, size_t len, unsigned accept, struct pp_header *out)
{
	const unsigned char *b = buf;

	if (out == NULL || (buf == NULL && len > 0))
		return PP_E_ARG;
	if (len == 0)
		return need(out, (accept & PP_ACCEPT_V1) ? V1_MIN : PP_V2_FIXED);
	/* The two signatures differ in their first byte. */
	if (b[0] == 'P')
		return parse_v1(b, len, accept, out);
	if (b[0] == v2sig[0])
		return parse_v2(b, len, accept, out);
	return PP_E_SIGNATURE;
}

const char *pp_strerror(int code)
{
	switch (code) {
	case PP_E_ARG:
		return "bad arguments";
	case PP_E_SIGNATURE:
		return "not a PROXY protocol header";
	case PP_E_NOT_ACCEPTED:
		return "PROXY protocol header of a version this site does not accept";
	case PP_E_TRUNCATED:
		return "truncated PROXY protocol header";
	case PP_E_V1_TOO_LONG:
		return "PROXY v1 line without CRLF in its first 107 bytes";
	case PP_E_V1_BARE_CRLF:
		return "PROXY v1 line with a CR or LF outside its closing CRLF";
	case PP_E_V1_PROTO:
		return "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN";
	case PP_E_V1_FIELDS:
		return "PROXY v1 line does not have exactly 4 fields after its protocol";
	case PP_E_V1_SRC_ADDR:
		return "PROXY v1 source address malformed";
	case PP_E_V1_DST_ADDR:
		return "PROXY v1 destination address malformed";
	case PP_E_V1_SRC_PORT:
		return "PROXY v1 source port malformed";
	case PP_E_V1_DST_PORT:
		return "PROXY v1 destination port malformed";
	case PP_E_V2_VERSION:
		return "PROXY v2 header with a version other than 2";
	case PP_E_V2_COMMAND:
		return "PROXY v2 command is neither LOCAL nor PROXY";
	case PP_E_V2_FAMILY:
		return "PROXY v2 address family unknown";
	case PP_E_V2_TRANSPORT:
		return "PROXY v2 transport protocol unknown";
	case PP_E_V2_TOO_LONG:
		return "PROXY v2 header longer than 4096 bytes";
	case PP_E_V2_ADDR_SHORT:
		return "PROXY v2 header too short for its address family";
	case PP_E_V2_TLV_HEADER:
		return "PROXY v2 TLV cut off in its type or length";
	case PP_E_V2_TLV_LENGTH:
		return "PROXY v2 TLV value runs past the end of the header";
	default:
		return code >= 0 ? "ok" : "unknown PROXY protocol error";
	}
}

/* Both AF_INET: AF_INET; both AF_INET or AF_INET6: AF_INET6; else AF_UNSPEC. */
static int pair_family(const struct sockaddr *src, const struct sockaddr *dst)
{
	int sf, df;

	if (src == NULL || dst == NULL)
		return AF_UNSPEC;
	sf = src->sa_family;
	df = dst->sa_family;
	if (sf == AF_INET && df == AF_INET)
		return AF_INET;
	if ((sf == AF_INET || sf == AF_INET6) && (df == AF_INET || df == AF_INET6))
		return AF_INET6;
	return AF_UNSPEC;
}

/* An AF_INET or AF_INET6 address as IPv6 (IPv4 mapped: ::ffff:a.b.c.d), port in network order. */
static void as_v6(const struct sockaddr *sa, struct in6_addr *a, uint16_t *port)
{
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;

		*a = s6->sin6_addr;
		*port = s6->sin6_port;
		return;
	}
	const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

	memset(a, 0, sizeof(*a));
	a->s6_addr[10] = 0xff;
	a->s6_addr[11] = 0xff;
	memcpy(&a->s6_addr[12], &s4->sin_addr, 4);
	*port = s4->sin_port;
}

int pp_emit_v1(char *buf, size_t size, const struct sockaddr *src, const struct sockaddr *dst)
{
	char sa[INET6_ADDRSTRLEN] = "", da[INET6_ADDRSTRLEN] = "";
	int fam = pair_family(src, dst), n;
	uint16_t sp = 0, dp = 0;

	if (buf == NULL)
		return -1;
	if (fam == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)src;
		const struct sockaddr_in *d = (const struct sockaddr_in *)dst;

		inet_ntop(AF_INET, &s->sin_addr, sa, sizeof(sa));
		inet_ntop(AF_INET, &d->sin_addr, da, sizeof(da));
		sp = s->sin_port;
		dp = d->sin_port;
	} else if (fam == AF_INET6) {
		struct in6_addr s, d;

		as_v6(src, &s, &sp);
		as_v6(dst, &d, &dp);
		inet_ntop(AF_INET6, &s, sa, sizeof(sa));
		inet_ntop(AF_INET6, &d, da, sizeof(da));
	}
	if (fam == AF_UNSPEC)
		n = snprintf(buf, size, "PROXY UNKNOWN\r\n");
	else
		n = snprintf(buf, size, "PROXY %s %s %s %u %u\r\n",
		             fam == AF_INET ? "TCP4" : "TCP6", sa, da, (unsigned)ntohs(sp),
		             (unsigned)ntohs(dp));
	if (n < 0 || (size_t)n >= size)
		return -1;
	return n;
}

int pp_emit_v2(void *buf, size_t size, const struct sockaddr *src, const struct sockaddr *dst)
{
	unsigned char *b = buf;
	int fam = pair_family(src, dst);
	size_t alen = fam == AF_INET ? 12 : fam == AF_INET6 ? 36 : 0;

	if (buf == NULL || size < PP_V2_FIXED + alen)
		return -1;
	memcpy(b, v2sig, sizeof(v2sig));
	b[12] = 0x20 | (src == NULL && dst == NULL ? PP_CMD_LOCAL : PP_CMD_PROXY);
	b[13] = fam == AF_INET ? 0x11 : fam == AF_INET6 ? 0x21 : 0x00;
	b[14] = 0;
	b[15] = (unsigned char)alen;
	if (fam == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)src;
		const struct sockaddr_in *d = (const struct sockaddr_in *)dst;

		memcpy(b + 16, &s->sin_addr, 4);
		memcpy(b + 20, &d->sin_addr, 4);
		memcpy(b + 24, &s->sin_port, 2);
		memcpy(b + 26, &d->sin_port, 2);
	} else if (fam == AF_INET6) {
		struct in6_addr s, d;
		uint16_t sp, dp;

		as_v6(src, &s, &sp);
		as_v6(dst, &d, &dp);
		memcpy(b + 16, &s, 16);
		memcpy(b + 32, &d, 16);
		memcpy(b + 48, &sp, 2);
		memcpy(b + 50, &dp, 2);
	}
	return (int)(PP_V2_FIXED + alen);
}
