/* Helpers shared by the unit tests: exact-size copies and socket addresses. */
#ifndef FTPGATE_TESTUTIL_H
#define FTPGATE_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

/*
 * Copy n bytes into a heap block of exactly n bytes (no NUL terminator), so
 * that AddressSanitizer flags any read past len. The caller frees it.
 */
static inline char *exact(const char *s, size_t n)
{
	char *p = malloc(n ? n : 1);

	if (p == NULL)
		abort();
	memcpy(p, s, n);
	return p;
}

/* "a.b.c.d:port" of an AF_INET address, for easy comparison. */
static inline const char *v4str(const struct sockaddr_in *sin)
{
	static char out[64];
	char ip[INET_ADDRSTRLEN];

	if (sin->sin_family != AF_INET || !inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip)))
		return "(bad)";
	snprintf(out, sizeof(out), "%s:%u", ip, (unsigned)ntohs(sin->sin_port));
	return out;
}

/* "a.b.c.d:port" or "[v6]:port". */
static inline const char *ssstr(const struct sockaddr_storage *ss)
{
	static char out[96];
	char ip[INET6_ADDRSTRLEN];

	if (ss->ss_family == AF_INET) {
		struct sockaddr_in sin;

		memcpy(&sin, ss, sizeof(sin));
		return v4str(&sin);
	}
	if (ss->ss_family == AF_INET6) {
		struct sockaddr_in6 sin6;

		memcpy(&sin6, ss, sizeof(sin6));
		if (!inet_ntop(AF_INET6, &sin6.sin6_addr, ip, sizeof(ip)))
			return "(bad)";
		snprintf(out, sizeof(out), "[%s]:%u", ip, (unsigned)ntohs(sin6.sin6_port));
		return out;
	}
	return "(bad family)";
}

static inline struct sockaddr_in mk4(const char *ip, uint16_t port)
{
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(port);
	if (inet_pton(AF_INET, ip, &sin.sin_addr) != 1)
		abort();
	return sin;
}

static inline struct sockaddr_in6 mk6(const char *ip, uint16_t port)
{
	struct sockaddr_in6 sin6;

	memset(&sin6, 0, sizeof(sin6));
	sin6.sin6_family = AF_INET6;
	sin6.sin6_port = htons(port);
	if (inet_pton(AF_INET6, ip, &sin6.sin6_addr) != 1)
		abort();
	return sin6;
}

#endif
