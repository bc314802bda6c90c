/*
 * confwarn: warnings about a configuration that loads but will probably not
 * do what the operator wants (a private address announced to the Internet,
 * too few passive ports, a certificate about to expire, a passthrough range
 * the kernel also hands out to outgoing connections). Pure: the facts that
 * need I/O (the host's addresses, the kernel's port ranges, the
 * certificates' dates) are gathered by the caller (hostwarn.c).
 *
 * Warnings never make a configuration fail: -t still exits 0.
 */
#ifndef FTPGATE_CONFWARN_H
#define FTPGATE_CONFWARN_H

#include <stdint.h>
#include <time.h>

#include "conf.h"

#define CERT_WARN_DAYS 30 /* a certificate expiring within this many days is reported */

struct warn_facts {
	/* 1: the host has IPv4 addresses besides loopback, all private (it
	 * looks like it sits behind NAT); 0: not, or unknown. */
	int host_all_private;
	/* The kernel's ephemeral ports (ip_local_port_range); 0-0 unknown. */
	unsigned eph_lo, eph_hi;
	/* ip_local_reserved_ports as a bitmap of 65536 bits, or NULL (none). */
	const uint8_t *reserved;
	time_t now;
	/* Per site of the conf: the client-facing certificate's notAfter, 0 none. */
	const time_t *cert_not_after;
};

/* One warning: line (0: the section's or the file's), key, the text. */
typedef void (*conf_warn_fn)(void *arg, int line, const char *key, const char *text);

/* Call fn once per warning about c; returns how many. */
unsigned conf_warnings(const struct conf *c, const struct warn_facts *f, conf_warn_fn fn,
                       void *arg);

/* The certificate warning alone (also the daily log line): 1 if written. */
int conf_cert_warning(const struct site_conf *s, time_t not_after, time_t now, char *buf,
                      size_t size);

/* 1 if the IPv4 (4 bytes) or IPv6 (16 bytes) address is private: RFC 1918,
 * 100.64.0.0/10, link-local (169.254.0.0/16, fe80::/10), fc00::/7; an
 * IPv4-mapped IPv6 address counts as its IPv4. */
int ip_is_private(int family, const unsigned char *ip);

#endif
