/*
 * confwarn: warnings about a configuration that loads but will probably not
 * work as meant (see include/confwarn.h). Pure: no I/O; the caller passes
 * the facts about the host. Owns nothing.
 */
#include "config.h"

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "confwarn.h"
#include "util.h"

struct range {
	unsigned char addr[16];
	unsigned prefix;
};

static const struct range private4[] = {
    {{10}, 8}, {{172, 16}, 12}, {{192, 168}, 16}, {{100, 64}, 10}, {{169, 254}, 16},
};
static const struct range private6[] = {{{0xfc}, 7}, {{0xfe, 0x80}, 10}};
static const struct range loop4 = {{127}, 8};
static const struct range loop6 = {{[15] = 1}, 128};

/* The first bits of a and b agree. */
static int same_bits(const unsigned char *a, const unsigned char *b, unsigned bits)
{
	unsigned bytes = bits / 8, rest = bits % 8;
	if (memcmp(a, b, bytes) != 0)
		return 0;
	if (!rest)
		return 1;
	unsigned char mask = (unsigned char)(0xff << (8 - rest));
	return (a[bytes] & mask) == (b[bytes] & mask);
}

static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* An IPv4-mapped IPv6 address or prefix as IPv4: family, ip, prefix adjusted. */
static void unmap(int *family, const unsigned char **ip, unsigned *prefix)
{
	if (*family == AF_INET6 && memcmp(*ip, v4mapped, 12) == 0 && *prefix >= 96) {
		*family = AF_INET;
		*ip += 12;
		*prefix -= 96;
	}
}

/* The prefix ip/prefix lies inside one of the ranges. */
static int inside(int family, const unsigned char *ip, unsigned prefix, int with_loopback)
{
	unmap(&family, &ip, &prefix);
	const struct range *r = family == AF_INET ? private4 : private6;
	size_t n = family == AF_INET ? sizeof(private4) / sizeof(private4[0])
	                             : sizeof(private6) / sizeof(private6[0]);
	for (size_t i = 0; i < n; i++)
		if (prefix >= r[i].prefix && same_bits(ip, r[i].addr, r[i].prefix))
			return 1;
	const struct range *l = family == AF_INET ? &loop4 : &loop6;
	return with_loopback && prefix >= l->prefix && same_bits(ip, l->addr, l->prefix);
}

int ip_is_private(int family, const unsigned char *ip)
{
	return inside(family, ip, family == AF_INET ? 32 : 128, 0);
}

static const unsigned char *sa_ip(const struct sockaddr_storage *ss, int *family)
{
	*family = ss->ss_family;
	if (ss->ss_family == AF_INET)
		return (const unsigned char *)&((const struct sockaddr_in *)ss)->sin_addr;
	return (const unsigned char *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
}

static int sa_private(const struct sockaddr_storage *ss)
{
	int family;
	const unsigned char *ip = sa_ip(ss, &family);
	return ip_is_private(family, ip);
}

/* Clients from public addresses can connect: allow is empty or admits some. */
static int public_clients(const struct site_conf *s)
{
	if (s->n_allow == 0)
		return 1;
	for (size_t i = 0; i < s->n_allow; i++)
		if (!inside(s->allow[i].family, s->allow[i].addr, s->allow[i].prefix, 1))
			return 1;
	return 0;
}

static int is_wildcard4(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET &&
	       ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
}

struct emit {
	conf_warn_fn fn;
	void *arg;
	unsigned n;
};

static void say(struct emit *e, int line, const char *key, const char *text)
{
	e->fn(e->arg, line, key, text);
	e->n++;
}

/* Private addresses announced to clients from public ones. */
static void warn_announce(struct emit *e, const struct site_conf *s, int all_private)
{
	char t[512], a[ADDR_STR_MAX], b[ADDR_STR_MAX];

	if (tls_is_passthrough(s->tls) || !public_clients(s))
		return;
	if (s->has_public_address && sa_private(&s->public_address)) {
		snprintf(t, sizeof(t),
		         "%s is a private address: clients from public addresses are told it in "
		         "227 replies and cannot connect (give it to the LAN with "
		         "public_address_for)",
		         addr_str((const struct sockaddr *)&s->public_address, a, sizeof(a), 0));
		say(e, s->public_address_line, "public_address", t);
	}
	for (size_t i = 0; i < s->n_public_for; i++) {
		const struct public_for *pf = &s->public_for[i];
		if (inside(pf->net.family, pf->net.addr, pf->net.prefix, 1) ||
		    !sa_private(&pf->addr))
			continue;
		snprintf(t, sizeof(t),
		         "clients in %s (not a private network) are told the private address %s",
		         cidr_str(&pf->net, b, sizeof(b)),
		         addr_str((const struct sockaddr *)&pf->addr, a, sizeof(a), 0));
		say(e, s->public_for_line, "public_address_for", t);
	}
	if (s->has_public_address)
		return;
	int line = s->listen_line ? s->listen_line : s->line;
	for (size_t i = 0; i < s->n_listen; i++) {
		const struct sockaddr_storage *l = &s->listen[i];
		addr_str((const struct sockaddr *)l, a, sizeof(a), 1);
		if (is_wildcard4(l) && all_private) {
			snprintf(t, sizeof(t),
			         "%s with public_address unset, and every address of this host is "
			         "private (it looks like it sits behind NAT): clients from public "
			         "addresses are told the private address they reached; set "
			         "public_address",
			         a);
			say(e, line, "listen", t);
		} else if (l->ss_family == AF_INET && sa_private(l)) {
			snprintf(t, sizeof(t),
			         "%s is a private address and public_address is unset: clients "
			         "from public addresses (through NAT) are told it in 227 replies; "
			         "set public_address",
			         a);
			say(e, line, "listen", t);
		}
	}
}

/* Fewer passive ports than the sessions the limits allow could hold at once. */
static void warn_ports(struct emit *e, const struct conf *c, const struct site_conf *s)
{
	char t[512];
	unsigned limit = s->max_sessions;
	const char *which = "max_sessions";
	if (!limit && c->max_sessions_line) {
		limit = c->max_sessions;
		which = "[global] max_sessions";
	}
	if (!limit)
		return; /* the built-in global limit is a cap, not a plan */
	/* Passive client plus, with an active backend, the backend's connection. */
	unsigned per = (!tls_is_passthrough(s->tls) && s->backend_data_mode != BDM_PASSIVE) ? 2 : 1;
	unsigned long need = (unsigned long)limit * per;
	unsigned have = (unsigned)s->pasv_hi - s->pasv_lo + 1;
	if (have >= need)
		return;
	snprintf(t, sizeof(t),
	         "%u-%u has %u port%s; %s = %u could need %lu at once (one per session in a "
	         "transfer%s): sessions beyond get 425",
	         s->pasv_lo, s->pasv_hi, have, have == 1 ? "" : "s", which, limit, need,
	         per == 2 ? ", two with backend_data_mode active or client" : "");
	say(e, s->passive_ports_line ? s->passive_ports_line : s->line, "passive_ports", t);
}

/* A passthrough range the kernel may give to outgoing connections. */
static void warn_ephemeral(struct emit *e, const struct site_conf *s, const struct warn_facts *f)
{
	char t[512];
	if (!tls_is_passthrough(s->tls) || !f->eph_hi)
		return;
	unsigned n = 0, lo = 0, hi = 0;
	for (unsigned p = s->pasv_lo; p <= s->pasv_hi; p++) {
		if (p < f->eph_lo || p > f->eph_hi)
			continue;
		if (f->reserved && (f->reserved[p / 8] & (1u << (p % 8))))
			continue;
		if (!n++)
			lo = p;
		hi = p;
	}
	if (!n)
		return;
	snprintf(t, sizeof(t),
	         "%u port%s of %u-%u (passthrough) %s in the kernel's ephemeral range %u-%u: an "
	         "outgoing connection can hold one and binding it fails; reserve them "
	         "(sysctl net.ipv4.ip_local_reserved_ports=%u-%u)",
	         n, n == 1 ? "" : "s", s->pasv_lo, s->pasv_hi, n == 1 ? "is" : "are", f->eph_lo,
	         f->eph_hi, lo, hi);
	say(e, s->passive_ports_line ? s->passive_ports_line : s->line, "passive_ports", t);
}

int conf_cert_warning(const struct site_conf *s, time_t not_after, time_t now, char *buf,
                      size_t size)
{
	if (!not_after || (s->tls != TLS_TERMINATE && s->tls != TLS_IMPLICIT))
		return 0;
	long long left = (long long)not_after - (long long)now;
	if (left >= (long long)CERT_WARN_DAYS * 86400)
		return 0;
	char when[32] = "?";
	struct tm tm;
	if (gmtime_r(&not_after, &tm))
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M UTC", &tm);
	if (left < 0)
		snprintf(buf, size, "certificate \"%s\" of [site:%s] expired %lld day%s ago (%s)",
		         s->tls_cert, s->name, -left / 86400, -left / 86400 == 1 ? "" : "s", when);
	else if (left < 86400)
		snprintf(buf, size,
		         "certificate \"%s\" of [site:%s] expires in less than a day (%s)",
		         s->tls_cert, s->name, when);
	else
		snprintf(buf, size, "certificate \"%s\" of [site:%s] expires in %lld day%s (%s)",
		         s->tls_cert, s->name, left / 86400, left / 86400 == 1 ? "" : "s", when);
	return 1;
}

unsigned conf_warnings(const struct conf *c, const struct warn_facts *f, conf_warn_fn fn, void *arg)
{
	struct emit e = {fn, arg, 0};
	char t[CONF_PATH_MAX + 256];

	for (size_t i = 0; i < c->n_sites; i++) {
		const struct site_conf *s = &c->sites[i];
		warn_announce(&e, s, f->host_all_private);
		warn_ports(&e, c, s);
		if (f->cert_not_after &&
		    conf_cert_warning(s, f->cert_not_after[i], f->now, t, sizeof(t)))
			say(&e, s->tls_cert_line ? s->tls_cert_line : s->line, "tls_cert", t);
		warn_ephemeral(&e, s, f);
	}
	return e.n;
}
