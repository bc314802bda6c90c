/* config: inih handler -> one immutable struct conf; every error names file, line and key. */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <ini.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <grp.h>
#include <pwd.h>
#include <syslog.h>

#include <openssl/ssl.h>

#include "conf.h"
#include "ftp_addr.h"
#include "proxyproto.h"
#include "util.h"

struct parse_ctx {
	struct conf *conf;
	FILE *fp;
	int line;      /* line being parsed (counted by our reader) */
	int long_line; /* line of the first over-long line, if any */
	char err[512]; /* first error, "line: key: msg" without the file */
	int err_line;
	struct site_conf *cur; /* current [site:NAME], or NULL in [global] */
	long route_site;       /* current [route:NAME]: index of its site, else -1 */
	int have_section;
	char section[CONF_NAME_MAX + 8];
	int global_line; /* line of [global], 0 before it */
	/* Keys of the current section with their lines: each key once. */
	struct {
		char key[32];
		int line;
	} seen[48];
	size_t n_seen;
};

static void site_defaults(struct site_conf *s)
{
	memset(s, 0, sizeof(*s));
	struct sockaddr_in *sin = (struct sockaddr_in *)&s->listen[0];
	sin->sin_family = AF_INET;
	sin->sin_port = htons(21);
	s->n_listen = 1;
	s->pasv_lo = 50000;
	s->pasv_hi = 50999;
	s->connect_timeout = 10;
	s->idle_timeout = 900;
	s->data_timeout = 60;
	s->login_timeout = 60;
	s->max_sessions = 0;
	/* FileZilla's most parallel transfers (10) plus browsing, with room. */
	s->max_sessions_per_ip = 16;
	s->backend_data_mode = BDM_PASSIVE;
	s->allow_foreign_address = 0;
	s->tls = TLS_OFF;
	snprintf(s->tls_cert, sizeof(s->tls_cert), "%s", PKGSYSCONFDIR "/cert.pem");
	snprintf(s->tls_key, sizeof(s->tls_key), "%s", PKGSYSCONFDIR "/key.pem");
	s->tls_min_version = TLS1_2_VERSION;
	s->tls_ciphers[0] = '\0';
	s->require_tls = 0;
	s->require_data_tls = 0;
	s->tls_require_session_reuse = 1;
	s->backend_tls = BTLS_OFF;
	s->backend_tls_verify = 1;
	s->backend_ca[0] = '\0';
	s->backend_data_protection = BPROT_PRIVATE;
	s->balance = BAL_ROUNDROBIN;
	s->health_interval = 0;
	s->health_timeout = 5;
	s->health_fall = 3;
	s->health_rise = 2;
	s->login_failure_window = 300;
	s->ban_time = 900;
}

static void vfail_at(struct parse_ctx *p, int line, const char *key, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

static void vfail_at(struct parse_ctx *p, int line, const char *key, const char *fmt, va_list ap)
{
	if (p->err[0] == '\0') {
		char msg[384];
		vsnprintf(msg, sizeof(msg), fmt, ap);
		p->err_line = line;
		snprintf(p->err, sizeof(p->err), "%s: %s", key, msg);
	}
}

static int fail(struct parse_ctx *p, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_at(struct parse_ctx *p, int line, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The error of the line being parsed. */
static int fail(struct parse_ctx *p, const char *key, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfail_at(p, p->line, key, fmt, ap);
	va_end(ap);
	return 0; /* inih: error */
}

/* An error found later than its line (checks across keys). */
static void fail_at(struct parse_ctx *p, int line, const char *key, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfail_at(p, line, key, fmt, ap);
	va_end(ap);
}

/* Unsigned integer in [lo, hi], digits only. */
static int parse_uint(const char *v, unsigned long lo, unsigned long hi, unsigned long *out)
{
	char *end;
	if (*v < '0' || *v > '9')
		return -1;
	errno = 0;
	unsigned long x = strtoul(v, &end, 10);
	if (errno || *end != '\0' || x < lo || x > hi)
		return -1;
	*out = x;
	return 0;
}

/* yes/no, true/false, on/off, 1/0. */
static int parse_bool(const char *v)
{
	static const char *const t[] = {"yes", "true", "on", "1"};
	static const char *const f[] = {"no", "false", "off", "0"};
	for (int i = 0; i < 4; i++) {
		if (strcasecmp(v, t[i]) == 0)
			return 1;
		if (strcasecmp(v, f[i]) == 0)
			return 0;
	}
	return -1;
}

/*
 * value must be one of names[0..n): its index in *idx, or the error
 * "\"value\" is not one of a, b, c" (the names listed in order).
 */
static int choose(struct parse_ctx *p, const char *key, const char *v, const char *const *names,
                  int n, int *idx)
{
	char list[256];
	size_t o = 0;
	for (int i = 0; i < n; i++) {
		if (strcmp(v, names[i]) == 0) {
			*idx = i;
			return 1;
		}
		o += (size_t)snprintf(list + o, o < sizeof(list) ? sizeof(list) - o : 0, "%s%s",
		                      i ? ", " : "", names[i]);
	}
	return fail(p, key, "\"%s\" is not one of %s", v, list);
}

/* In a key handler (p, key, v in scope): set dst to the index of v among the
 * names, or fail naming them; either way return to inih. */
#define CHOOSE_RETURN(dst, type, ...)                                                              \
	do {                                                                                       \
		static const char *const names_[] = {__VA_ARGS__};                                 \
		int i_ = 0;                                                                        \
		int r_ =                                                                           \
		    choose(p, key, v, names_, (int)(sizeof(names_) / sizeof(names_[0])), &i_);     \
		if (r_)                                                                            \
			dst = (type)i_;                                                            \
		return r_;                                                                         \
	} while (0)

static int set_seconds(struct parse_ctx *p, const char *key, const char *v, unsigned *dst)
{
	unsigned long x;
	if (parse_uint(v, 1, 86400 * 7, &x) < 0)
		return fail(p, key, "\"%s\" is not a number of seconds (1-604800)", v);
	*dst = (unsigned)x;
	return 1;
}

static int set_listen(struct parse_ctx *p, const char *key, const char *v, struct site_conf *s)
{
	char buf[1024], err[256];
	if (strlen(v) >= sizeof(buf))
		return fail(p, key, "value too long");
	strcpy(buf, v);
	s->n_listen = 0;
	char *save = NULL;
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *end = tok + strlen(tok);
		while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
			*--end = '\0';
		if (s->n_listen == CONF_MAX_LISTEN)
			return fail(p, key, "more than %d addresses", CONF_MAX_LISTEN);
		if (addr_parse(tok, -1, 0, &s->listen[s->n_listen], err, sizeof(err)) < 0)
			return fail(p, key, "%s", err);
		s->n_listen++;
	}
	if (s->n_listen == 0)
		return fail(p, key, "empty list (want ADDRESS:PORT[, ...])");
	return 1;
}

static int set_ports(struct parse_ctx *p, const char *key, const char *v, struct site_conf *s)
{
	unsigned long lo, hi;
	char buf[64];
	const char *dash = strchr(v, '-');
	if (!dash || (size_t)(dash - v) >= sizeof(buf))
		return fail(p, key, "\"%s\" is not a range LOW-HIGH", v);
	memcpy(buf, v, (size_t)(dash - v));
	buf[dash - v] = '\0';
	char *e = buf + strlen(buf);
	while (e > buf && e[-1] == ' ')
		*--e = '\0';
	const char *hs = dash + 1;
	while (*hs == ' ')
		hs++;
	if (parse_uint(buf, 1024, 65535, &lo) < 0 || parse_uint(hs, 1024, 65535, &hi) < 0)
		return fail(p, key, "\"%s\": ports must be numbers in 1024-65535", v);
	if (lo > hi)
		return fail(p, key, "\"%s\": LOW is greater than HIGH", v);
	s->pasv_lo = (uint16_t)lo;
	s->pasv_hi = (uint16_t)hi;
	return 1;
}

/* Is key one of the NULL-terminated names? */
static int key_in(const char *key, const char *const *names)
{
	for (; *names; names++)
		if (strcmp(key, *names) == 0)
			return 1;
	return 0;
}

/* Strip blanks at both ends, in place. */
static char *trim(char *tok)
{
	while (*tok == ' ' || *tok == '\t')
		tok++;
	char *end = tok + strlen(tok);
	while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
		*--end = '\0';
	return tok;
}

/* The next item of a comma-separated list at *cur (trimmed, cut in place; "" for an
 * empty one), or NULL after the last. */
static char *next_item(char **cur)
{
	char *tok = *cur;
	if (!tok)
		return NULL;
	char *comma = strchr(tok, ',');
	if (comma)
		*comma++ = '\0';
	*cur = comma;
	return trim(tok);
}

/* A comma-separated list of prefixes into out[0 .. max-1]; *n set. 0 on error (reported). */
static int set_cidr_list(struct parse_ctx *p, const char *key, const char *v, struct cidr *out,
                         size_t max, size_t *n)
{
	char buf[4096], err[256];
	if (strlen(v) >= sizeof(buf))
		return fail(p, key, "value too long");
	strcpy(buf, v);
	*n = 0;
	char *tok, *cur = buf;
	while ((tok = next_item(&cur)) != NULL) {
		if (*tok == '\0')
			return fail(p, key, "empty prefix in the list (want PREFIX[, ...])");
		if (*n == max)
			return fail(p, key, "more than %zu prefixes", max);
		if (cidr_parse(tok, &out[*n], err, sizeof(err)) < 0)
			return fail(p, key, "%s", err);
		(*n)++;
	}
	return 1;
}

/* proxy_protocol, proxy_trusted, backend_proxy_protocol. */
static int proxy_key(struct parse_ctx *p, struct site_conf *s, const char *key, const char *v)
{

	if (strcmp(key, "proxy_protocol") == 0) {
		static const struct {
			const char *name;
			unsigned mask;
		} names[] = {
		    {"off", 0}, {"v1", PP_ACCEPT_V1}, {"v2", PP_ACCEPT_V2}, {"any", PP_ACCEPT_ANY}};
		s->proxy_protocol_line = p->line;
		for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
			if (strcmp(v, names[i].name) == 0) {
				s->proxy_protocol = names[i].mask;
				return 1;
			}
		return fail(p, key, "\"%s\" is not one of off, v1, v2, any", v);
	}
	if (strcmp(key, "backend_proxy_protocol") == 0) {
		CHOOSE_RETURN(s->backend_proxy_protocol, int, "off", "v1", "v2");
	}
	/* proxy_trusted: a comma-separated list of prefixes. */
	if (set_cidr_list(p, key, v, s->proxy_trusted, CONF_MAX_TRUSTED, &s->n_proxy_trusted) == 0)
		return 0;
	if (s->n_proxy_trusted == 0)
		return fail(p, key, "empty list (want PREFIX[, ...], e.g. 192.0.2.10/32)");
	return 1;
}

/* One server (HOST[:PORT], port 21 by default), resolved now, into list[*n]. */
static int add_backend(struct parse_ctx *p, const char *key, char *tok, struct backend_conf *list,
                       size_t *n, size_t max)
{
	char err[256];
	if (*n == max)
		return fail(p, key, "more than %zu servers", max);
	struct backend_conf *b = &list[*n];
	if (addr_parse(tok, 21, 1, &b->addr, err, sizeof(err)) < 0)
		return fail(p, key, "%s", err);
	/* The host part, for checking the server's certificate. */
	const char *h = tok, *e;
	if (*h == '[') {
		h++;
		e = strchr(h, ']');
	} else {
		e = strrchr(h, ':');
	}
	size_t hl = e ? (size_t)(e - h) : strlen(h);
	if (hl >= sizeof(b->host))
		return fail(p, key, "host name too long");
	memcpy(b->host, h, hl);
	b->host[hl] = '\0';
	snprintf(b->name, sizeof(b->name), strchr(b->host, ':') ? "[%s]:%u" : "%s:%u", b->host,
	         (unsigned)addr_port((struct sockaddr *)&b->addr));
	for (size_t i = 0; i < *n; i++)
		if (strcmp(list[i].name, b->name) == 0)
			return fail(p, key, "%s is listed twice", b->name);
	(*n)++;
	return 1;
}

/* public_address_for = PREFIX ADDRESS, PREFIX ADDRESS, ... */
static int public_for_key(struct parse_ctx *p, struct site_conf *s, const char *key, const char *v)
{
	char buf[4096], err[256];
	if (strlen(v) >= sizeof(buf))
		return fail(p, key, "value too long");
	strcpy(buf, v);
	s->n_public_for = 0;
	char *tok, *cur = buf;
	while ((tok = next_item(&cur)) != NULL) {
		char *sp = tok + strcspn(tok, " \t");
		if (*tok == '\0' || *sp == '\0')
			return fail(p, key,
			            "\"%s\": want PREFIX ADDRESS (e.g. 192.0.2.0/24 192.0.2.10)",
			            tok);
		*sp++ = '\0';
		char *addr = trim(sp);
		if (s->n_public_for == CONF_MAX_PUBLIC_FOR)
			return fail(p, key, "more than %d networks", CONF_MAX_PUBLIC_FOR);
		struct public_for *pf = &s->public_for[s->n_public_for];
		if (cidr_parse(tok, &pf->net, err, sizeof(err)) < 0)
			return fail(p, key, "%s", err);
		if (addr_parse(addr, 0, 0, &pf->addr, err, sizeof(err)) < 0)
			return fail(p, key, "%s", err);
		if (pf->addr.ss_family != AF_INET || addr_port((struct sockaddr *)&pf->addr) != 0)
			return fail(
			    p, key,
			    "\"%s\": an IPv4 address without a port (227 replies carry IPv4 "
			    "only)",
			    addr);
		s->n_public_for++;
	}
	return 1;
}

/* A comma-separated list of servers into list[0 .. max-1]; *n set. 0 on error (reported). */
static int set_backends(struct parse_ctx *p, const char *key, const char *v,
                        struct backend_conf *list, size_t *n, size_t max)
{
	char buf[4096];
	if (strlen(v) >= sizeof(buf))
		return fail(p, key, "value too long");
	strcpy(buf, v);
	*n = 0;
	char *tok, *cur = buf;
	while ((tok = next_item(&cur)) != NULL) {
		if (*tok == '\0')
			return fail(p, key, "empty server in the list (want HOST[:PORT][, ...])");
		if (!add_backend(p, key, tok, list, n, max))
			return 0;
	}
	return 1;
}

/* A line of [route:SITE]: USER-PATTERN = HOST[:PORT], ... */
static int route_key(struct parse_ctx *p, struct site_conf *s, const char *key, const char *v)
{
	if (strlen(key) >= sizeof(s->routes[0].pattern))
		return fail(p, key, "user pattern too long (at most %zu characters)",
		            sizeof(s->routes[0].pattern) - 1);
	if (s->n_routes == CONF_MAX_ROUTES)
		return fail(p, key, "more than %d routes in [%s]", CONF_MAX_ROUTES, p->section);
	for (size_t i = 0; i < s->n_routes; i++)
		if (strcmp(s->routes[i].pattern, key) == 0)
			return fail(p, key, "listed twice in [%s] (first at line %d)", p->section,
			            s->routes[i].line);
	struct route *nr = realloc(s->routes, (s->n_routes + 1) * sizeof(*nr));
	if (!nr)
		return fail(p, key, "out of memory");
	s->routes = nr;
	struct route *r = &s->routes[s->n_routes];
	memset(r, 0, sizeof(*r));
	snprintf(r->pattern, sizeof(r->pattern), "%s", key);
	r->line = p->line;
	if (!set_backends(p, key, v, r->backends, &r->n_backends, CONF_MAX_ROUTE_BACKENDS))
		return 0;
	s->n_routes++;
	return 1;
}

/* backend, balance, health_interval, health_timeout, health_fall, health_rise. */
static int pool_key(struct parse_ctx *p, struct site_conf *s, const char *key, const char *v)
{
	unsigned long x;

	if (strcmp(key, "backend") == 0)
		return set_backends(p, key, v, s->backends, &s->n_backends, CONF_MAX_BACKENDS);
	if (strcmp(key, "route_keep_host") == 0) {
		int b = parse_bool(v);
		if (b < 0)
			return fail(p, key, "\"%s\" is not yes or no", v);
		s->route_keep_host = b;
		return 1;
	}
	if (strcmp(key, "balance") == 0) {
		CHOOSE_RETURN(s->balance, enum balance, "roundrobin", "leastconn", "source");
	}
	if (strcmp(key, "health_interval") == 0) {
		if (parse_uint(v, 0, 86400, &x) < 0)
			return fail(p, key,
			            "\"%s\" is not a number of seconds (0 = off, up to 86400)", v);
		s->health_interval = (unsigned)x;
		return 1;
	}
	if (strcmp(key, "health_timeout") == 0)
		return set_seconds(p, key, v, &s->health_timeout);
	unsigned *dst = strcmp(key, "health_fall") == 0 ? &s->health_fall : &s->health_rise;
	if (parse_uint(v, 1, 100, &x) < 0)
		return fail(p, key, "\"%s\" is not a number in 1-100", v);
	*dst = (unsigned)x;
	return 1;
}

/* allow, deny, max_login_failures, login_failure_window, ban_time. */
static int access_key(struct parse_ctx *p, struct site_conf *s, const char *key, const char *v)
{
	unsigned long x;

	if (strcmp(key, "allow") == 0 || strcmp(key, "deny") == 0) {
		int allow = key[0] == 'a';
		size_t *n = allow ? &s->n_allow : &s->n_deny;
		if (set_cidr_list(p, key, v, allow ? s->allow : s->deny, CONF_MAX_ACL, n) == 0)
			return 0;
		if (*n == 0)
			return fail(p, key, "empty list (want PREFIX[, ...], e.g. 192.0.2.0/24)");
		return 1;
	}
	if (strcmp(key, "max_login_failures") == 0) {
		if (parse_uint(v, 0, 1000000, &x) < 0)
			return fail(p, key, "\"%s\" is not a number in 0-1000000 (0 = off)", v);
		s->max_login_failures = (unsigned)x;
		return 1;
	}
	if (strcmp(key, "login_failure_window") == 0)
		return set_seconds(p, key, v, &s->login_failure_window);
	return set_seconds(p, key, v, &s->ban_time);
}

static int site_key(struct parse_ctx *p, struct site_conf *s, const char *key, const char *v)
{
	char err[256];
	unsigned long x;

	if (strcmp(key, "listen") == 0) {
		s->listen_line = p->line;
		return set_listen(p, key, v, s);
	}
	if (strcmp(key, "public_address") == 0) {
		if (addr_parse(v, 0, 0, &s->public_address, err, sizeof(err)) < 0)
			return fail(p, key, "%s", err);
		if (addr_port((struct sockaddr *)&s->public_address) != 0)
			return fail(p, key, "an address only, without a port");
		if (s->public_address.ss_family != AF_INET)
			return fail(p, key,
			            "must be an IPv4 address (227 replies carry IPv4 only)");
		s->has_public_address = 1;
		s->public_address_line = p->line;
		return 1;
	}
	if (strcmp(key, "passive_ports") == 0) {
		s->passive_ports_line = p->line;
		return set_ports(p, key, v, s);
	}
	if (strcmp(key, "connect_timeout") == 0)
		return set_seconds(p, key, v, &s->connect_timeout);
	if (strcmp(key, "idle_timeout") == 0)
		return set_seconds(p, key, v, &s->idle_timeout);
	if (strcmp(key, "data_timeout") == 0)
		return set_seconds(p, key, v, &s->data_timeout);
	if (strcmp(key, "login_timeout") == 0)
		return set_seconds(p, key, v, &s->login_timeout);
	if (strcmp(key, "max_sessions_per_ip") == 0) {
		if (parse_uint(v, 0, 1000000, &x) < 0)
			return fail(p, key, "\"%s\" is not a number in 0-1000000", v);
		s->max_sessions_per_ip = (unsigned)x;
		return 1;
	}
	if (strcmp(key, "backend_data_mode") == 0) {
		CHOOSE_RETURN(s->backend_data_mode, enum backend_data_mode, "passive", "active",
		              "client");
	}
	if (strcmp(key, "tls") == 0) {
		s->tls_line = p->line;
		CHOOSE_RETURN(s->tls, enum tls_mode, "off", "terminate", "implicit", "passthrough",
		              "passthrough_implicit");
	}
	if (strcmp(key, "tls_cert") == 0 || strcmp(key, "tls_key") == 0 ||
	    strcmp(key, "backend_ca") == 0) {
		char *dst = key[4] == 'c'   ? s->tls_cert
		            : key[4] == 'k' ? s->tls_key
		                            : s->backend_ca;
		if (strlen(v) >= CONF_PATH_MAX)
			return fail(p, key, "path too long");
		snprintf(dst, CONF_PATH_MAX, "%s", v);
		if (key[4] == 'c')
			s->tls_cert_line = p->line;
		else if (key[4] == 'k')
			s->tls_key_line = p->line;
		else
			s->backend_ca_line = p->line;
		return 1;
	}
	if (strcmp(key, "tls_min_version") == 0) {
		if (strcmp(v, "1.2") == 0 || strcasecmp(v, "TLSv1.2") == 0)
			s->tls_min_version = TLS1_2_VERSION;
		else if (strcmp(v, "1.3") == 0 || strcasecmp(v, "TLSv1.3") == 0)
			s->tls_min_version = TLS1_3_VERSION;
		else
			return fail(p, key, "\"%s\" is not 1.2 or 1.3", v);
		return 1;
	}
	if (strcmp(key, "tls_ciphers") == 0) {
		if (strlen(v) >= sizeof(s->tls_ciphers))
			return fail(p, key, "value too long");
		snprintf(s->tls_ciphers, sizeof(s->tls_ciphers), "%s", v);
		s->tls_ciphers_line = p->line;
		return 1;
	}
	if (strcmp(key, "require_tls") == 0 || strcmp(key, "require_data_tls") == 0 ||
	    strcmp(key, "tls_require_session_reuse") == 0 ||
	    strcmp(key, "backend_tls_verify") == 0) {
		int b = parse_bool(v);
		if (b < 0)
			return fail(p, key, "\"%s\" is not yes or no", v);
		if (strcmp(key, "require_tls") == 0)
			s->require_tls = b;
		else if (strcmp(key, "require_data_tls") == 0)
			s->require_data_tls = b;
		else if (strcmp(key, "tls_require_session_reuse") == 0)
			s->tls_require_session_reuse = b;
		else
			s->backend_tls_verify = b;
		return 1;
	}
	if (strcmp(key, "backend_tls") == 0) {
		CHOOSE_RETURN(s->backend_tls, enum backend_tls_mode, "off", "on", "implicit");
	}
	if (strcmp(key, "backend_data_protection") == 0) {
		CHOOSE_RETURN(s->backend_data_protection, enum backend_prot, "client", "private",
		              "clear");
	}
	if (strcmp(key, "allow_foreign_address") == 0) {
		int b = parse_bool(v);
		if (b < 0)
			return fail(p, key, "\"%s\" is not yes or no", v);
		s->allow_foreign_address = b;
		return 1;
	}
	if (strcmp(key, "max_sessions") == 0) {
		if (parse_uint(v, 0, 1000000, &x) < 0)
			return fail(p, key, "\"%s\" is not a number in 0-1000000", v);
		s->max_sessions = (unsigned)x;
		s->max_sessions_line = p->line;
		return 1;
	}
	if (strcmp(key, "proxy_protocol") == 0 || strcmp(key, "proxy_trusted") == 0 ||
	    strcmp(key, "backend_proxy_protocol") == 0)
		return proxy_key(p, s, key, v);
	static const char *const pool_keys[] = {"backend",         "balance",     "health_interval",
	                                        "health_timeout",  "health_fall", "health_rise",
	                                        "route_keep_host", NULL};
	static const char *const access_keys[] = {
	    "allow", "deny", "max_login_failures", "login_failure_window", "ban_time", NULL};
	if (key_in(key, pool_keys))
		return pool_key(p, s, key, v);
	if (key_in(key, access_keys))
		return access_key(p, s, key, v);
	if (strcmp(key, "public_address_for") == 0) {
		s->public_for_line = p->line;
		return public_for_key(p, s, key, v);
	}
	return fail(p, key, "unknown key in [%s]", p->section);
}

static int global_key(struct parse_ctx *p, const char *key, const char *v)
{
	unsigned long x;
	if (strcmp(key, "log_level") == 0) {
		CHOOSE_RETURN(p->conf->log_level, enum log_level, "error", "warn", "info", "debug");
	}
	if (strcmp(key, "max_sessions") == 0) {
		if (parse_uint(v, 1, 1000000, &x) < 0)
			return fail(p, key, "\"%s\" is not a number in 1-1000000", v);
		p->conf->max_sessions = (unsigned)x;
		p->conf->max_sessions_line = p->line;
		return 1;
	}
	if (strcmp(key, "user") == 0 || strcmp(key, "group") == 0) {
		int u = key[0] == 'u';
		char *dst = u ? p->conf->user : p->conf->group;
		if (strlen(v) >= sizeof(p->conf->user))
			return fail(p, key, "name too long");
		snprintf(dst, sizeof(p->conf->user), "%s", v);
		*(u ? &p->conf->user_line : &p->conf->group_line) = p->line;
		return 1;
	}
	if (strcmp(key, "log") == 0) {
		if (strcmp(v, "stderr") == 0) {
			p->conf->log = LOGT_STDERR;
		} else if (strcmp(v, "syslog") == 0) {
			p->conf->log = LOGT_SYSLOG;
		} else if (v[0] == '/') {
			if (strlen(v) >= CONF_PATH_MAX)
				return fail(p, key, "path too long");
			p->conf->log = LOGT_FILE;
			p->conf->log_line = p->line;
			snprintf(p->conf->log_file, sizeof(p->conf->log_file), "%s", v);
		} else {
			return fail(p, key, "\"%s\" is not stderr, syslog or an absolute file path",
			            v);
		}
		return 1;
	}
	if (strcmp(key, "log_facility") == 0) {
		static const struct {
			const char *name;
			int fac;
		} facs[] = {{"daemon", LOG_DAEMON}, {"ftp", LOG_FTP},       {"user", LOG_USER},
		            {"local0", LOG_LOCAL0}, {"local1", LOG_LOCAL1}, {"local2", LOG_LOCAL2},
		            {"local3", LOG_LOCAL3}, {"local4", LOG_LOCAL4}, {"local5", LOG_LOCAL5},
		            {"local6", LOG_LOCAL6}, {"local7", LOG_LOCAL7}};
		for (size_t i = 0; i < sizeof(facs) / sizeof(facs[0]); i++)
			if (strcmp(v, facs[i].name) == 0) {
				p->conf->log_facility = facs[i].fac;
				return 1;
			}
		return fail(p, key, "\"%s\" is not one of daemon, ftp, user, local0-local7", v);
	}
	if (strcmp(key, "xferlog") == 0) {
		if (v[0] != '/' || strlen(v) >= CONF_PATH_MAX)
			return fail(p, key, "\"%s\" is not an absolute file path", v);
		snprintf(p->conf->xferlog, sizeof(p->conf->xferlog), "%s", v);
		p->conf->xferlog_line = p->line;
		return 1;
	}
	if (strcmp(key, "metrics_listen") == 0) {
		char err[256];
		if (addr_parse(v, -1, 0, &p->conf->metrics_listen, err, sizeof(err)) < 0)
			return fail(p, key, "%s", err);
		p->conf->has_metrics = 1;
		p->conf->metrics_line = p->line;
		return 1;
	}
	if (strcmp(key, "shutdown_timeout") == 0)
		return set_seconds(p, key, v, &p->conf->shutdown_timeout);
	if (strcmp(key, "ktls") == 0) {
		int b = parse_bool(v);
		if (b < 0)
			return fail(p, key, "\"%s\" is not yes or no", v);
		p->conf->ktls = b;
		return 1;
	}
	if (strcmp(key, "workers") == 0) {
		p->conf->workers_line = p->line;
		if (strcmp(v, "auto") == 0) {
			p->conf->workers = 0;
			return 1;
		}
		if (parse_uint(v, 1, CONF_MAX_WORKERS, &x) < 0)
			return fail(p, key, "\"%s\" is not auto or a number in 1-%u", v,
			            CONF_MAX_WORKERS);
		p->conf->workers = (unsigned)x;
		return 1;
	}
	return fail(p, key, "unknown key in [global]");
}

/* Line of key in the current section, or 0 if it has not been given. */
static int seen_line(const struct parse_ctx *p, const char *key)
{
	for (size_t i = 0; i < p->n_seen; i++)
		if (strcmp(p->seen[i].key, key) == 0)
			return p->seen[i].line;
	return 0;
}

static void seen_add(struct parse_ctx *p, const char *key)
{
	if (p->n_seen < sizeof(p->seen) / sizeof(p->seen[0]) &&
	    strlen(key) < sizeof(p->seen[0].key)) {
		snprintf(p->seen[p->n_seen].key, sizeof(p->seen[0].key), "%s", key);
		p->seen[p->n_seen++].line = p->line;
	}
}

/*
 * Checks across the keys of the section that just ended. A passthrough site
 * relays the client's TLS to the backend untouched: keys that configure the
 * proxy's own TLS cannot work there. (require_tls and require_data_tls are
 * enforced on what the proxy sees before AUTH and stay allowed.)
 */
static void end_section(struct parse_ctx *p)
{
	static const char nokey[] = "a passthrough site holds no key: clients get the "
	                            "backend's certificate";
	static const char noterm[] = "a passthrough site does not terminate TLS: the "
	                             "backend's TLS settings apply";
	static const struct {
		const char *key, *why;
	} refused[] = {
	    {"tls_cert", nokey},
	    {"tls_key", nokey},
	    {"tls_min_version", noterm},
	    {"tls_ciphers", noterm},
	    {"tls_require_session_reuse", noterm},
	    {"backend_tls", "the client's TLS goes through to the backend; the proxy does not "
	                    "speak TLS to the backend itself"},
	};
	const struct site_conf *s = p->cur;

	if (!s || !tls_is_passthrough(s->tls))
		return;
	for (size_t i = 0; i < p->n_seen; i++) {
		for (size_t k = 0; k < sizeof(refused) / sizeof(refused[0]); k++) {
			if (strcmp(p->seen[i].key, refused[k].key) != 0)
				continue;
			if (strcmp(refused[k].key, "backend_tls") == 0 &&
			    s->backend_tls == BTLS_OFF)
				continue;
			fail_at(p, p->seen[i].line, refused[k].key, "not with tls = %s: %s",
			        s->tls == TLS_PASSTHROUGH ? "passthrough" : "passthrough_implicit",
			        refused[k].why);
			return;
		}
	}
}

/* A [route:NAME] header: the routes of the [site:NAME] above it. */
static void begin_route(struct parse_ctx *p, const char *name)
{
	for (size_t i = 0; i < p->conf->n_sites; i++)
		if (strcmp(p->conf->sites[i].name, name + 6) == 0) {
			if (p->conf->sites[i].n_routes) {
				fail(p, name, "duplicate section");
				return;
			}
			p->route_site = (long)i;
			return;
		}
	fail(p, name, "no [site:%s] above it", name + 6);
}

/* A "[name]" line (seen by our reader, so that empty sections count too). */
static void begin_section(struct parse_ctx *p, const char *name)
{
	struct conf *c = p->conf;

	end_section(p);
	p->n_seen = 0;
	snprintf(p->section, sizeof(p->section), "%s", name);
	p->have_section = 1;
	p->cur = NULL;
	p->route_site = -1;
	if (strcmp(name, "global") == 0) {
		if (p->global_line)
			fail(p, name, "duplicate section (first at line %d)", p->global_line);
		else
			p->global_line = p->line;
		return;
	}
	if (strncmp(name, "route:", 6) == 0) {
		begin_route(p, name);
		return;
	}
	if (strncmp(name, "site:", 5) != 0) {
		fail(p, name, "unknown section (want [global], [site:NAME] or [route:NAME])");
		return;
	}
	const char *site = name + 5;
	if (site[0] == '\0' || strlen(site) >= CONF_NAME_MAX) {
		fail(p, name, "site name must be 1-%d characters", CONF_NAME_MAX - 1);
		return;
	}
	for (size_t i = 0; i < c->n_sites; i++) {
		if (strcmp(c->sites[i].name, site) == 0) {
			fail(p, name, "duplicate section (first at line %d)", c->sites[i].line);
			return;
		}
	}
	struct site_conf *ns = realloc(c->sites, (c->n_sites + 1) * sizeof(*ns));
	if (!ns) {
		fail(p, name, "out of memory");
		return;
	}
	c->sites = ns;
	p->cur = &c->sites[c->n_sites++];
	site_defaults(p->cur);
	snprintf(p->cur->name, sizeof(p->cur->name), "%s", site);
	p->cur->line = p->line;
}

static int handler(void *user, const char *section, const char *key, const char *value)
{
	struct parse_ctx *p = user;
	(void)section; /* tracked by begin_section() from the reader */

	if (!p->have_section)
		return fail(p, key, "key outside any section (want [global] or [site:NAME] first)");
	if (value[0] == '\0')
		return fail(p, key, "empty value");
	if (p->route_site >= 0) /* user patterns: route_key() reports one listed twice */
		return route_key(p, &p->conf->sites[p->route_site], key, value);
	int first = seen_line(p, key);
	if (first)
		return fail(p, key, "given twice in [%s] (first at line %d)", p->section, first);
	int ok;
	if (strcmp(p->section, "global") == 0)
		ok = global_key(p, key, value);
	else if (!p->cur)
		return 0; /* the section is bad and already reported */
	else
		ok = site_key(p, p->cur, key, value);
	if (ok)
		seen_add(p, key);
	return ok;
}

/*
 * Comments and indentation, before inih sees a line: a ';' or '#' at the
 * start of the line or after a space or tab starts a comment; leading blanks
 * are removed, so that inih never takes a line for the continuation of the
 * previous value. Returns 1 for an indented line that is neither a key nor a
 * section (what inih would have appended to the previous value), else 0.
 */
static int clean_line(char *s)
{
	for (char *c = s; *c; c++) {
		if ((*c == ';' || *c == '#') && (c == s || c[-1] == ' ' || c[-1] == '\t')) {
			*c = '\0';
			break;
		}
	}
	size_t lead = strspn(s, " \t");
	memmove(s, s + lead, strlen(s + lead) + 1);
	size_t text = strcspn(s, "\r\n");
	return lead > 0 && text > 0 && s[0] != '[' && !memchr(s, '=', text);
}

/* Section headers are tracked here, as inih parses them, so that empty and
 * unknown sections are reported with their own line. str is cleaned already. */
static void track_header(struct parse_ctx *p, const char *str)
{
	if (str[0] != '[')
		return;
	const char *end = strchr(str + 1, ']');
	if (end) {
		char name[CONF_NAME_MAX + 8];
		size_t len = (size_t)(end - str - 1);
		if (len >= sizeof(name))
			len = sizeof(name) - 1;
		memcpy(name, str + 1, len);
		name[len] = '\0';
		begin_section(p, name);
	}
}

/* inih reader: fgets that counts lines, flags over-long ones, and cleans
 * comments and indentation (clean_line). */
static char *reader(char *str, int num, void *stream)
{
	struct parse_ctx *p = stream;
	if (!fgets(str, num, p->fp))
		return NULL;
	size_t n = strlen(str);
	if ((n > 0 && str[n - 1] == '\n') || feof(p->fp)) {
		p->line++;
		if (p->line == 1 && (unsigned char)str[0] == 0xEF &&
		    (unsigned char)str[1] == 0xBB && (unsigned char)str[2] == 0xBF)
			memmove(str, str + 3, n - 2); /* UTF-8 BOM */
		if (clean_line(str)) {
			char text[48];
			size_t len = strcspn(str, "\r\n");
			snprintf(text, sizeof(text), "%.*s%s", (int)(len < 40 ? len : 40), str,
			         len > 40 ? "..." : "");
			fail(p, "continuation line",
			     "\"%s\" is not KEY = VALUE (a value cannot continue on an indented "
			     "line)",
			     text);
			str[0] = '\0';
		}
		track_header(p, str);
	} else {
		/* Over-long line: report it and skip its remainder. */
		p->line++;
		if (!p->long_line)
			p->long_line = p->line;
		int ch;
		while ((ch = fgetc(p->fp)) != EOF && ch != '\n')
			;
		str[0] = '\0';
	}
	return str;
}

/* Something the proxy binds: a listen address, metrics_listen, or the
 * passive ports a passthrough site forwards on one of its listen addresses. */
struct bind {
	const struct sockaddr_storage *addr;
	unsigned lo, hi;              /* ports */
	const struct site_conf *site; /* NULL for metrics_listen */
	const char *key;
	int line;
};

static int addr_is_any(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
	return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

/* Both cannot be bound at once (IPv6 sockets are IPV6_V6ONLY). */
static int binds_clash(const struct bind *a, const struct bind *b)
{
	return a->addr->ss_family == b->addr->ss_family && a->lo <= b->hi && b->lo <= a->hi &&
	       (ftp_addr_same_ip((const struct sockaddr *)a->addr,
	                         (const struct sockaddr *)b->addr) ||
	        addr_is_any(a->addr) || addr_is_any(b->addr));
}

static const char *bind_str(const struct bind *b, char *buf, size_t size)
{
	char a[ADDR_STR_MAX];
	addr_str((const struct sockaddr *)b->addr, a, sizeof(a), b->lo == b->hi);
	if (b->lo != b->hi)
		snprintf(buf, size, "%s ports %u-%u of [site:%s] (passthrough)", a, b->lo, b->hi,
		         b->site->name);
	else if (b->site)
		snprintf(buf, size, "%s of [site:%s]", a, b->site->name);
	else
		snprintf(buf, size, "%s", a);
	return buf;
}

/* Two things bound to one address would pass -t and fail at bind: refuse. */
static int check_binds(const struct conf *c, char *err, size_t errsize)
{
	size_t max = 1, n = 0;
	for (size_t i = 0; i < c->n_sites; i++)
		max += c->sites[i].n_listen * 2;
	struct bind *b = calloc(max, sizeof(*b));
	if (!b) {
		snprintf(err, errsize, "%s: out of memory", c->path);
		return -1;
	}
	for (size_t i = 0; i < c->n_sites; i++) {
		const struct site_conf *s = &c->sites[i];
		for (size_t j = 0; j < s->n_listen; j++) {
			unsigned port = addr_port((const struct sockaddr *)&s->listen[j]);
			b[n].addr = &s->listen[j];
			b[n].lo = b[n].hi = port;
			b[n].site = s;
			b[n].key = "listen";
			b[n++].line = s->listen_line ? s->listen_line : s->line;
			if (!tls_is_passthrough(s->tls))
				continue;
			b[n].addr = &s->listen[j];
			b[n].lo = s->pasv_lo;
			b[n].hi = s->pasv_hi;
			b[n].site = s;
			b[n].key = "passive_ports";
			b[n++].line = s->passive_ports_line ? s->passive_ports_line : s->line;
		}
	}
	if (c->has_metrics) {
		b[n].addr = &c->metrics_listen;
		b[n].lo = b[n].hi = addr_port((const struct sockaddr *)&c->metrics_listen);
		b[n].key = "metrics_listen";
		b[n++].line = c->metrics_line;
	}
	int rc = 0;
	for (size_t j = 1; j < n && rc == 0; j++) {
		for (size_t i = 0; i < j; i++) {
			if (!binds_clash(&b[i], &b[j]))
				continue;
			/* Reported at the later line, naming the earlier. */
			const struct bind *x = b[i].line > b[j].line ? &b[i] : &b[j];
			const struct bind *y = x == &b[i] ? &b[j] : &b[i];
			char xs[CONF_NAME_MAX + 160], ys[CONF_NAME_MAX + 160];
			if (x->line == y->line && x->key == y->key &&
			    memcmp(x->addr, y->addr, sizeof(*x->addr)) == 0)
				snprintf(err, errsize, "%s:%d: %s: %s given twice", c->path,
				         x->line, x->key, bind_str(x, xs, sizeof(xs)));
			else
				snprintf(err, errsize,
				         "%s:%d: %s: %s clashes with %s %s (line %d): both cannot "
				         "be bound",
				         c->path, x->line, x->key, bind_str(x, xs, sizeof(xs)),
				         y->key, bind_str(y, ys, sizeof(ys)), y->line);
			rc = -1;
			break;
		}
	}
	free(b);
	return rc;
}

/* The ini text of fp (closed here), path naming it in messages. */
static struct conf *load_stream(const char *path, FILE *fp, char *err, size_t errsize)
{
	struct parse_ctx p;
	memset(&p, 0, sizeof(p));
	p.fp = fp;
	struct conf *c = calloc(1, sizeof(*c));
	if (!c) {
		fclose(p.fp);
		snprintf(err, errsize, "%s: out of memory", path);
		return NULL;
	}
	snprintf(c->path, sizeof(c->path), "%s", path);
	c->log_level = LOG_LVL_INFO;
	c->max_sessions = 10000;
	c->log = LOGT_DEFAULT;
	c->log_facility = LOG_DAEMON;
	c->shutdown_timeout = 30;
	c->ktls = 1;
	p.conf = c;
	p.route_site = -1;
	strcpy(p.section, "");

	int rc = ini_parse_stream(reader, &p, handler, &p);
	fclose(p.fp);
	end_section(&p);

	/* The first error in the file wins. */
	if (rc > 0 && (!p.err[0] || rc < p.err_line) && (!p.long_line || rc < p.long_line)) {
		snprintf(err, errsize, "%s:%d: syntax error (want KEY = VALUE or [SECTION])", path,
		         rc);
		goto bad;
	}
	if (p.long_line && (!p.err[0] || p.long_line < p.err_line)) {
		snprintf(err, errsize, "%s:%d: line too long (at most %d characters)", path,
		         p.long_line, INI_MAX_LINE - 2);
		goto bad;
	}
	if (p.err[0]) {
		snprintf(err, errsize, "%s:%d: %s", path, p.err_line, p.err);
		goto bad;
	}
	if (rc != 0) {
		snprintf(err, errsize, "%s:%d: syntax error (want KEY = VALUE or [SECTION])", path,
		         rc);
		goto bad;
	}
	if (c->user[0] && !getpwnam(c->user)) {
		snprintf(err, errsize, "%s:%d: user: no such user \"%s\"", path, c->user_line,
		         c->user);
		goto bad;
	}
	if (c->group[0] && !getgrnam(c->group)) {
		snprintf(err, errsize, "%s:%d: group: no such group \"%s\"", path, c->group_line,
		         c->group);
		goto bad;
	}
	if (c->n_sites == 0) {
		snprintf(err, errsize, "%s: no [site:NAME] section: nothing to proxy", path);
		goto bad;
	}
	for (size_t i = 0; i < c->n_sites; i++) {
		struct site_conf *s = &c->sites[i];
		/* Passthrough forwards each passive port 1:1: the port is the
		 * routing key, so its range may be shared with no other site. */
		for (size_t j = 0; j < c->n_sites; j++) {
			const struct site_conf *o = &c->sites[j];
			if (j == i || !(tls_is_passthrough(s->tls) || tls_is_passthrough(o->tls)))
				continue;
			if (s->pasv_lo <= o->pasv_hi && o->pasv_lo <= s->pasv_hi) {
				snprintf(
				    err, errsize,
				    "%s:%d: passive_ports: %u-%u of [site:%s] overlaps %u-%u of "
				    "[site:%s]; a passthrough site needs a range of its own",
				    path, s->passive_ports_line ? s->passive_ports_line : s->line,
				    s->pasv_lo, s->pasv_hi, s->name, o->pasv_lo, o->pasv_hi,
				    o->name);
				goto bad;
			}
		}
		if (s->proxy_protocol && s->n_proxy_trusted == 0) {
			snprintf(err, errsize,
			         "%s:%d: proxy_protocol: needs proxy_trusted in [site:%s] (the "
			         "addresses of the balancers that may send the header)",
			         path, s->proxy_protocol_line, s->name);
			goto bad;
		}
		if (s->n_routes && tls_is_passthrough(s->tls)) {
			snprintf(
			    err, errsize,
			    "%s:%d: route:%s: a passthrough site cannot route by user (USER may "
			    "come inside TLS the proxy cannot read)",
			    path, s->routes[0].line, s->name);
			goto bad;
		}
		if (s->n_backends == 0) {
			snprintf(err, errsize,
			         "%s:%d: backend: missing in [site:%s] (want HOST[:PORT][, ...])",
			         path, s->line, s->name);
			goto bad;
		}
	}
	if (check_binds(c, err, errsize) < 0)
		goto bad;
	return c;
bad:
	conf_free(c);
	return NULL;
}

struct conf *conf_load(const char *path, char *err, size_t errsize)
{
	FILE *fp = fopen(path, "r");
	if (!fp) {
		snprintf(err, errsize, "%s: cannot open: %s", path, strerror(errno));
		return NULL;
	}
	return load_stream(path, fp, err, errsize);
}

struct conf *conf_load_text(const char *name, const char *text, char *err, size_t errsize)
{
	/* The same reader as a file's: every check and message is the same. */
	FILE *fp = fmemopen((void *)text, strlen(text), "r");
	if (!fp) {
		snprintf(err, errsize, "%s: %s", name, strerror(errno));
		return NULL;
	}
	return load_stream(name, fp, err, errsize);
}

void conf_free(struct conf *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n_sites; i++)
		free(c->sites[i].routes);
	free(c->sites);
	free(c);
}
