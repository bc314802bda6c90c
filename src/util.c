#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "util.h"

const char *addr_str(const struct sockaddr *sa, char *buf, size_t size, int with_port)
{
	char ip[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
		if (with_port)
			snprintf(buf, size, "%s:%u", ip, ntohs(sin->sin_port));
		else
			snprintf(buf, size, "%s", ip);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
		if (with_port)
			snprintf(buf, size, "[%s]:%u", ip, ntohs(sin6->sin6_port));
		else
			snprintf(buf, size, "%s", ip);
	} else {
		snprintf(buf, size, "(unknown family %d)", sa->sa_family);
	}
	return buf;
}

socklen_t addr_len(const struct sockaddr *sa)
{
	return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

uint16_t addr_port(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	return ntohs(((const struct sockaddr_in *)sa)->sin_port);
}

void addr_set_port(struct sockaddr *sa, uint16_t port)
{
	if (sa->sa_family == AF_INET6)
		((struct sockaddr_in6 *)sa)->sin6_port = htons(port);
	else
		((struct sockaddr_in *)sa)->sin_port = htons(port);
}

int addr_parse(const char *text, int default_port, int resolve, struct sockaddr_storage *ss,
               char *err, size_t errsize)
{
	char host[256];
	const char *port_s = NULL;
	size_t hlen;

	while (*text == ' ' || *text == '\t')
		text++;
	if (*text == '[') {
		const char *end = strchr(text, ']');
		if (!end) {
			snprintf(err, errsize, "missing ']' in \"%s\"", text);
			return -1;
		}
		hlen = (size_t)(end - text - 1);
		if (hlen >= sizeof(host)) {
			snprintf(err, errsize, "address too long");
			return -1;
		}
		memcpy(host, text + 1, hlen);
		host[hlen] = '\0';
		if (end[1] == ':')
			port_s = end + 2;
		else if (end[1] != '\0') {
			snprintf(err, errsize, "unexpected text after ']' in \"%s\"", text);
			return -1;
		}
	} else {
		const char *colon = strrchr(text, ':');
		if (colon && strchr(text, ':') != colon) {
			snprintf(err, errsize, "IPv6 address must be in brackets: \"[%s]\"", text);
			return -1;
		}
		hlen = colon ? (size_t)(colon - text) : strlen(text);
		if (hlen >= sizeof(host)) {
			snprintf(err, errsize, "address too long");
			return -1;
		}
		memcpy(host, text, hlen);
		host[hlen] = '\0';
		if (colon)
			port_s = colon + 1;
	}
	if (host[0] == '\0') {
		snprintf(err, errsize, "empty address");
		return -1;
	}

	long port = default_port;
	if (port_s) {
		char *endp;
		errno = 0;
		port = strtol(port_s, &endp, 10);
		if (*port_s < '0' || *port_s > '9' || *endp != '\0' || errno || port < 1 ||
		    port > 65535) {
			snprintf(err, errsize, "bad port \"%s\" (want 1-65535)", port_s);
			return -1;
		}
	} else if (default_port < 0) {
		snprintf(err, errsize, "missing port in \"%s\" (want ADDRESS:PORT)", text);
		return -1;
	}

	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		return 0;
	}
	if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		return 0;
	}
	if (!resolve) {
		snprintf(err, errsize, "\"%s\" is not a numeric IPv4 or IPv6 address", host);
		return -1;
	}
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	int rc = getaddrinfo(host, NULL, &hints, &res);
	if (rc != 0 || !res) {
		snprintf(err, errsize, "cannot resolve \"%s\": %s", host, gai_strerror(rc));
		return -1;
	}
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	freeaddrinfo(res);
	addr_set_port((struct sockaddr *)ss, (uint16_t)port);
	return 0;
}

uint32_t rand_uniform(uint32_t n)
{
	uint32_t r;

	if (n < 2)
		return 0;
	/* Rejection sampling: avoid modulo bias. */
	uint32_t limit = UINT32_MAX - (UINT32_MAX % n);
	do {
		if (getrandom(&r, sizeof(r), 0) != sizeof(r))
			r = (uint32_t)random();
	} while (r >= limit);
	return r % n;
}

uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

const char *cidr_str(const struct cidr *c, char *buf, size_t size)
{
	char ip[INET6_ADDRSTRLEN];
	inet_ntop(c->family, c->addr, ip, sizeof(ip));
	snprintf(buf, size, "%s/%u", ip, c->prefix);
	return buf;
}

int cidr_parse(const char *text, struct cidr *out, char *err, size_t errsize)
{
	char buf[64];
	const char *slash = strchr(text, '/');
	size_t n = slash ? (size_t)(slash - text) : strlen(text);
	unsigned long len;

	memset(out, 0, sizeof(*out));
	if (n == 0 || n >= sizeof(buf)) {
		snprintf(err, errsize, "\"%s\" is not an address or ADDRESS/PREFIX", text);
		return -1;
	}
	memcpy(buf, text, n);
	buf[n] = '\0';
	if (inet_pton(AF_INET, buf, out->addr) == 1) {
		out->family = AF_INET;
		len = 32;
	} else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
		out->family = AF_INET6;
		len = 128;
	} else {
		snprintf(err, errsize, "\"%s\" is not an IPv4 or IPv6 address", buf);
		return -1;
	}
	unsigned long max = len;
	if (slash) {
		char *end;
		errno = 0;
		len = strtoul(slash + 1, &end, 10);
		if (slash[1] < '0' || slash[1] > '9' || *end || errno || len > max) {
			snprintf(err, errsize, "\"%s\": the prefix length must be 0-%lu", text,
			         max);
			return -1;
		}
	}
	out->prefix = (unsigned)len;
	for (unsigned i = out->prefix; i < max; i++) {
		if (out->addr[i / 8] & (0x80 >> (i % 8))) {
			snprintf(err, errsize,
			         "\"%s\": bits set after the prefix (want %s/%u style)", text,
			         out->family == AF_INET ? "192.0.2.0" : "2001:db8::", out->prefix);
			return -1;
		}
	}
	return 0;
}

int cidr_match(const struct cidr *c, const struct sockaddr *sa)
{
	const unsigned char *a;
	if (sa->sa_family == AF_INET) {
		if (c->family != AF_INET)
			return 0;
		a = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *in6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(in6)) {
			if (c->family != AF_INET)
				return 0;
			a = (const unsigned char *)in6 + 12;
		} else {
			if (c->family != AF_INET6)
				return 0;
			a = (const unsigned char *)in6;
		}
	} else {
		return 0;
	}
	unsigned full = c->prefix / 8, rest = c->prefix % 8;
	if (memcmp(a, c->addr, full) != 0)
		return 0;
	if (rest) {
		unsigned char mask = (unsigned char)(0xff << (8 - rest));
		if ((a[full] & mask) != (c->addr[full] & mask))
			return 0;
	}
	return 1;
}
