/* ftp_addr: pure parse/format of FTP data addresses (RFC 959, RFC 2428). */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>

#include "ftp_addr.h"

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/*
 * Parse 1..maxdig decimal digits at s[*pos], never past len. No sign, no
 * spaces. maxdig <= 9 keeps the value far from overflow. Advances *pos.
 */
static int parse_dec(const char *s, size_t len, size_t *pos, size_t maxdig, unsigned long *out)
{
	size_t i = *pos, n = 0;
	unsigned long v = 0;

	while (i < len && is_digit(s[i])) {
		if (++n > maxdig)
			return -1;
		v = v * 10 + (unsigned long)(s[i] - '0');
		i++;
	}
	if (n == 0)
		return -1;
	*pos = i;
	*out = v;
	return 0;
}

/* "h1,h2,h3,h4,p1,p2" at s[*pos]: six numbers 0..255 of 1..3 digits. */
static int parse_six(const char *s, size_t len, size_t *pos, unsigned v[6])
{
	size_t p = *pos;
	int k;

	for (k = 0; k < 6; k++) {
		unsigned long x;

		if (k > 0) {
			if (p >= len || s[p] != ',')
				return -1;
			p++;
		}
		if (parse_dec(s, len, &p, 3, &x) != 0 || x > 255)
			return -1;
		v[k] = (unsigned)x;
	}
	*pos = p;
	return 0;
}

/* Port 1..65535 of 1..5 digits. */
static int parse_port_num(const char *s, size_t len, size_t *pos, uint16_t *port)
{
	unsigned long x;

	if (parse_dec(s, len, pos, 5, &x) != 0 || x == 0 || x > 65535)
		return -1;
	*port = (uint16_t)x;
	return 0;
}

static int six_to_sin(const unsigned v[6], struct sockaddr_in *sin)
{
	unsigned port = v[4] * 256 + v[5];

	if (port == 0)
		return -1;
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl((uint32_t)v[0] << 24 | (uint32_t)v[1] << 16 |
	                             (uint32_t)v[2] << 8 | (uint32_t)v[3]);
	sin->sin_port = htons((uint16_t)port);
	return 0;
}

/* The reply must start with exactly the three digits of code. */
static int has_code(const char *text, size_t len, const char *code)
{
	return len > 3 && memcmp(text, code, 3) == 0 && !is_digit(text[3]);
}

int ftp_parse_227(const char *text, size_t len, struct sockaddr_in *sin)
{
	size_t i;

	if (text == NULL || sin == NULL || !has_code(text, len, "227"))
		return -1;
	for (i = 4; i < len; i++) {
		char prev = text[i - 1];
		size_t pos = i;
		unsigned v[6];

		/* A run starts at a digit not preceded by a digit, comma or sign. */
		if (!is_digit(text[i]) || is_digit(prev) || prev == ',' || prev == '-' ||
		    prev == '+')
			continue;
		if (parse_six(text, len, &pos, v) != 0)
			continue;
		if (pos < len && (text[pos] == ',' || is_digit(text[pos])))
			continue; /* more than six numbers */
		return six_to_sin(v, sin);
	}
	return -1;
}

static int is_delim(char c)
{
	return c >= 33 && c <= 126;
}

int ftp_parse_229(const char *text, size_t len, uint16_t *port)
{
	size_t i;

	if (text == NULL || port == NULL || !has_code(text, len, "229"))
		return -1;
	for (i = 4; i < len; i++) {
		size_t p = i + 1;
		char d;
		uint16_t v;

		if (text[i] != '(')
			continue;
		/* (<d><d><d>port<d>) */
		if (len - p < 6)
			return -1;
		d = text[p];
		if (!is_delim(d) || is_digit(d) || text[p + 1] != d || text[p + 2] != d)
			continue;
		p += 3;
		if (parse_port_num(text, len, &p, &v) != 0)
			continue;
		if (len - p < 2 || text[p] != d || text[p + 1] != ')')
			continue;
		*port = v;
		return 0;
	}
	return -1;
}

int ftp_parse_port(const char *arg, size_t len, struct sockaddr_in *sin)
{
	size_t pos = 0;
	unsigned v[6];
	struct sockaddr_in tmp;

	if (arg == NULL || sin == NULL)
		return -1;
	if (parse_six(arg, len, &pos, v) != 0 || pos != len)
		return -1;
	if (six_to_sin(v, &tmp) != 0)
		return -1;
	*sin = tmp;
	return 0;
}

int ftp_parse_eprt(const char *arg, size_t len, struct sockaddr_storage *ss)
{
	size_t dpos[4], nd = 0, i, alen, p;
	char d, abuf[INET6_ADDRSTRLEN];
	const char *proto;
	size_t plen;
	uint16_t port;

	if (arg == NULL || ss == NULL || len < 1)
		return -1;
	d = arg[0];
	if (!is_delim(d))
		return -1;
	/* <d>proto<d>addr<d>port<d>: exactly four delimiters, the last ends the argument */
	for (i = 0; i < len; i++) {
		if (!is_delim(arg[i]))
			return -1; /* NUL, space, control or non-ASCII */
		if (arg[i] == d) {
			if (nd == 4)
				return -1;
			dpos[nd++] = i;
		}
	}
	if (nd != 4 || dpos[3] != len - 1)
		return -1;

	p = dpos[2] + 1;
	if (parse_port_num(arg, dpos[3], &p, &port) != 0 || p != dpos[3])
		return -1;

	proto = arg + dpos[0] + 1;
	plen = dpos[1] - dpos[0] - 1;
	if (plen == 0)
		return -1;
	for (i = 0; i < plen; i++)
		if (!is_digit(proto[i]))
			return -1;
	if (plen != 1 || (proto[0] != '1' && proto[0] != '2'))
		return -2;

	alen = dpos[2] - dpos[1] - 1;
	if (alen == 0 || alen >= sizeof(abuf))
		return -1;
	memcpy(abuf, arg + dpos[1] + 1, alen);
	abuf[alen] = '\0';

	if (proto[0] == '1') {
		struct sockaddr_in sin;

		memset(&sin, 0, sizeof(sin));
		sin.sin_family = AF_INET;
		sin.sin_port = htons(port);
		if (inet_pton(AF_INET, abuf, &sin.sin_addr) != 1)
			return -1;
		memset(ss, 0, sizeof(*ss));
		memcpy(ss, &sin, sizeof(sin));
	} else {
		struct sockaddr_in6 sin6;

		memset(&sin6, 0, sizeof(sin6));
		sin6.sin6_family = AF_INET6;
		sin6.sin6_port = htons(port);
		if (inet_pton(AF_INET6, abuf, &sin6.sin6_addr) != 1)
			return -1;
		memset(ss, 0, sizeof(*ss));
		memcpy(ss, &sin6, sizeof(sin6));
	}
	return 0;
}

/* snprintf result check: -1 on error or truncation. */
static int fmt_result(int n, size_t size)
{
	if (n < 0 || (size_t)n >= size)
		return -1;
	return n;
}

static int get_family(const struct sockaddr *sa)
{
	sa_family_t f;

	memcpy(&f, (const char *)sa + offsetof(struct sockaddr, sa_family), sizeof(f));
	return f;
}

int ftp_format_227(char *buf, size_t size, const struct sockaddr_in *sin)
{
	uint32_t ip;
	unsigned port;

	if (buf == NULL || size == 0)
		return -1;
	buf[0] = '\0';
	if (sin == NULL || sin->sin_family != AF_INET)
		return -1;
	ip = ntohl(sin->sin_addr.s_addr);
	port = ntohs(sin->sin_port);
	return fmt_result(snprintf(buf, size, "227 Entering Passive Mode (%u,%u,%u,%u,%u,%u).\r\n",
	                           (unsigned)(ip >> 24), (unsigned)(ip >> 16 & 255),
	                           (unsigned)(ip >> 8 & 255), (unsigned)(ip & 255), port >> 8,
	                           port & 255),
	                  size);
}

int ftp_format_229(char *buf, size_t size, uint16_t port)
{
	if (buf == NULL || size == 0)
		return -1;
	return fmt_result(
	    snprintf(buf, size, "229 Entering Extended Passive Mode (|||%u|)\r\n", (unsigned)port),
	    size);
}

int ftp_format_port(char *buf, size_t size, const struct sockaddr_in *sin)
{
	uint32_t ip;
	unsigned port;

	if (buf == NULL || size == 0)
		return -1;
	buf[0] = '\0';
	if (sin == NULL || sin->sin_family != AF_INET)
		return -1;
	ip = ntohl(sin->sin_addr.s_addr);
	port = ntohs(sin->sin_port);
	return fmt_result(snprintf(buf, size, "PORT %u,%u,%u,%u,%u,%u\r\n", (unsigned)(ip >> 24),
	                           (unsigned)(ip >> 16 & 255), (unsigned)(ip >> 8 & 255),
	                           (unsigned)(ip & 255), port >> 8, port & 255),
	                  size);
}

int ftp_format_eprt(char *buf, size_t size, const struct sockaddr *sa)
{
	char abuf[INET6_ADDRSTRLEN];

	if (buf == NULL || size == 0)
		return -1;
	buf[0] = '\0';
	if (sa == NULL)
		return -1;
	switch (get_family(sa)) {
	case AF_INET: {
		struct sockaddr_in sin;

		memcpy(&sin, sa, sizeof(sin));
		if (inet_ntop(AF_INET, &sin.sin_addr, abuf, sizeof(abuf)) == NULL)
			return -1;
		return fmt_result(
		    snprintf(buf, size, "EPRT |1|%s|%u|\r\n", abuf, (unsigned)ntohs(sin.sin_port)),
		    size);
	}
	case AF_INET6: {
		struct sockaddr_in6 sin6;

		memcpy(&sin6, sa, sizeof(sin6));
		if (inet_ntop(AF_INET6, &sin6.sin6_addr, abuf, sizeof(abuf)) == NULL)
			return -1;
		return fmt_result(snprintf(buf, size, "EPRT |2|%s|%u|\r\n", abuf,
		                           (unsigned)ntohs(sin6.sin6_port)),
		                  size);
	}
	default:
		return -1;
	}
}

static int is_v4mapped(const struct in6_addr *a)
{
	static const unsigned char prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

	return memcmp(a->s6_addr, prefix, sizeof(prefix)) == 0;
}

int ftp_addr_unmap(struct sockaddr_storage *ss)
{
	struct sockaddr_in6 sin6;
	struct sockaddr_in sin;

	if (ss == NULL || ss->ss_family != AF_INET6)
		return 0;
	memcpy(&sin6, ss, sizeof(sin6));
	if (!is_v4mapped(&sin6.sin6_addr))
		return 0;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = sin6.sin6_port;
	memcpy(&sin.sin_addr, &sin6.sin6_addr.s6_addr[12], 4);
	memset(ss, 0, sizeof(*ss));
	memcpy(ss, &sin, sizeof(sin));
	return 1;
}

int ftp_addr_same_ip(const struct sockaddr *a, const struct sockaddr *b)
{
	int fa, fb;

	if (a == NULL || b == NULL)
		return 0;
	fa = get_family(a);
	fb = get_family(b);
	if (fa != fb)
		return 0;
	if (fa == AF_INET) {
		struct sockaddr_in x, y;

		memcpy(&x, a, sizeof(x));
		memcpy(&y, b, sizeof(y));
		return x.sin_addr.s_addr == y.sin_addr.s_addr;
	}
	if (fa == AF_INET6) {
		struct sockaddr_in6 x, y;

		memcpy(&x, a, sizeof(x));
		memcpy(&y, b, sizeof(y));
		return memcmp(&x.sin6_addr, &y.sin6_addr, sizeof(x.sin6_addr)) == 0;
	}
	return 0;
}

enum { A_LOOPBACK = 1, A_UNSPEC = 2, A_MULTI = 4 };

/* A_* flags of an address (loopback 127/8 or ::1; unspecified 0/8 or ::;
 * multicast or 255.255.255.255), -1 if neither IPv4 nor IPv6. */
static int addr_class(const struct sockaddr *a)
{
	int f = a ? get_family(a) : -1;

	if (f == AF_INET) {
		struct sockaddr_in x;

		memcpy(&x, a, sizeof(x));
		uint32_t ip = ntohl(x.sin_addr.s_addr);
		return ((ip >> 24) == 127 ? A_LOOPBACK : 0) | ((ip >> 24) == 0 ? A_UNSPEC : 0) |
		       ((ip >> 28) == 0xe || ip == 0xffffffffu ? A_MULTI : 0);
	}
	if (f == AF_INET6) {
		struct sockaddr_in6 x;

		memcpy(&x, a, sizeof(x));
		return (IN6_IS_ADDR_LOOPBACK(&x.sin6_addr) ? A_LOOPBACK : 0) |
		       (IN6_IS_ADDR_UNSPECIFIED(&x.sin6_addr) ? A_UNSPEC : 0) |
		       (IN6_IS_ADDR_MULTICAST(&x.sin6_addr) ? A_MULTI : 0);
	}
	return -1;
}

const char *ftp_addr_foreign_refused(const struct sockaddr *a, const struct sockaddr *client,
                                     const struct sockaddr *backend, const struct sockaddr *local,
                                     const struct sockaddr *pub)
{
	int c = addr_class(a), cc = addr_class(client);

	if (c < 0)
		return "not an IPv4 or IPv6 address";
	if (c & A_UNSPEC)
		return "the unspecified address";
	if (c & A_MULTI)
		return "a multicast or broadcast address";
	if ((c & A_LOOPBACK) && (cc < 0 || !(cc & A_LOOPBACK)))
		return "a loopback address";
	if (ftp_addr_same_ip(a, backend))
		return "the backend's address";
	if (ftp_addr_same_ip(a, local) || ftp_addr_same_ip(a, pub))
		return "the proxy's own address";
	return NULL;
}
