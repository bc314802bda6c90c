/* util: small socket-address and system helpers shared by the modules. */
#ifndef FTPGATE_UTIL_H
#define FTPGATE_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Longest "[addr]:port" text, with NUL. */
#define ADDR_STR_MAX 64

/* "192.0.2.1:21" or "[2001:db8::1]:21"; port omitted if with_port is 0. */
const char *addr_str(const struct sockaddr *sa, char *buf, size_t size, int with_port);
socklen_t addr_len(const struct sockaddr *sa);
uint16_t addr_port(const struct sockaddr *sa);
void addr_set_port(struct sockaddr *sa, uint16_t port);

/*
 * Parse "ADDR:PORT", "[V6ADDR]:PORT", or with default_port >= 0 also a bare
 * "ADDR"/"[V6ADDR]"/"HOST". Numeric addresses only unless resolve is 1, in
 * which case a host name is resolved (blocking; start-up only). Returns 0 or
 * -1 with a message in err.
 */
int addr_parse(const char *text, int default_port, int resolve, struct sockaddr_storage *ss,
               char *err, size_t errsize);

/* An address prefix: 192.0.2.0/24, 2001:db8::/32, or one address (/32, /128). */
struct cidr {
	int family; /* AF_INET or AF_INET6 */
	unsigned char addr[16];
	unsigned prefix;
};

/*
 * Parse "ADDR/LEN" or "ADDR" (numeric only; host bits must be zero).
 * Returns 0, or -1 with why in err.
 */
int cidr_parse(const char *text, struct cidr *out, char *err, size_t errsize);

/* "192.0.2.0/24", "2001:db8::/32" (buf of ADDR_STR_MAX is enough). */
const char *cidr_str(const struct cidr *c, char *buf, size_t size);

/* 1 if sa's IP (IPv4-mapped IPv6 counts as IPv4) is inside c. */
int cidr_match(const struct cidr *c, const struct sockaddr *sa);

/* Uniform random integer in [0, n) from getrandom(2). */
uint32_t rand_uniform(uint32_t n);

/* Monotonic clock in milliseconds. */
uint64_t now_ms(void);

#endif
