/* metrics: Prometheus exposition of the per-site counters over evhttp. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "metrics.h"

/* ---- rendering (pure) ---------------------------------------------------- */

/* An evbuffer writer that remembers the first failure. */
struct out {
	struct evbuffer *b;
	int err;
};

static void put(struct out *o, const char *s, size_t n)
{
	if (!o->err && n && evbuffer_add(o->b, s, n) < 0)
		o->err = 1;
}

static void put_str(struct out *o, const char *s)
{
	put(o, s, strlen(s));
}

static void put_u64(struct out *o, uint64_t v)
{
	char b[24];
	int n = snprintf(b, sizeof(b), "%" PRIu64, v);
	put(o, b, (size_t)n);
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if it is invalid. */
size_t utf8_len(const unsigned char *s)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	if (c == 0xe0)
		lo = 0xa0; /* overlong */
	else if (c == 0xed)
		hi = 0x9f; /* surrogates */
	else if (c == 0xf0)
		lo = 0x90; /* overlong */
	else if (c == 0xf4)
		hi = 0x8f; /* above U+10FFFF */
	if (s[1] < lo || s[1] > hi)
		return 0;
	/* A NUL fails the test, so nothing past the string is read. */
	for (size_t i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

/* A label value between double quotes: \ " and LF escaped, bad UTF-8 -> U+FFFD. */
static void put_label_value(struct out *o, const char *v)
{
	const unsigned char *s = (const unsigned char *)(v ? v : "");
	const unsigned char *run = s;

	put(o, "\"", 1);
	while (*s) {
		const char *esc = NULL;
		size_t n = utf8_len(s);
		if (*s == '\\')
			esc = "\\\\";
		else if (*s == '"')
			esc = "\\\"";
		else if (*s == '\n')
			esc = "\\n";
		else if (n == 0)
			esc = "\xef\xbf\xbd";
		if (!esc) {
			s += n;
			continue;
		}
		put(o, (const char *)run, (size_t)(s - run));
		put_str(o, esc);
		s += n ? n : 1;
		run = s;
	}
	put(o, (const char *)run, (size_t)(s - run));
	put(o, "\"", 1);
}

static void family(struct out *o, const char *name, const char *type, const char *help)
{
	put_str(o, "# HELP ");
	put_str(o, name);
	put(o, " ", 1);
	put_str(o, help);
	put_str(o, "\n# TYPE ");
	put_str(o, name);
	put(o, " ", 1);
	put_str(o, type);
	put(o, "\n", 1);
}

/* name{site="..." -- then label() for more labels, then value(). */
static void sample(struct out *o, const char *name, const struct metrics_site *s)
{
	put_str(o, name);
	put_str(o, "{site=");
	put_label_value(o, s->name);
}

static void label(struct out *o, const char *key, const char *val)
{
	put(o, ",", 1);
	put_str(o, key);
	put(o, "=", 1);
	put_label_value(o, val);
}

static void value(struct out *o, uint64_t v)
{
	put(o, "} ", 2);
	put_u64(o, v);
	put(o, "\n", 1);
}

/* The per-site families that have one sample per site and no other label. */
enum simple {
	F_SESSIONS_OPEN,
	F_SESSIONS_TOTAL,
	F_SESSIONS_REFUSED,
	F_BACKEND_CONNECT_FAILURES,
	F_TLS_HANDSHAKE_FAILURES,
	F_DATA_REFUSED,
	F_PROXY_REFUSED,
	F_ACL_REFUSED,
	F_BANS,
	F_BAN_REFUSED,
	F_PASV_IN_USE,
	F_PASV_FREE,
};

static const struct {
	const char *name, *type, *help;
} simple_families[] = {
    [F_SESSIONS_OPEN] = {"ftpgate_sessions_open", "gauge", "Client sessions open now."},
    [F_SESSIONS_TOTAL] = {"ftpgate_sessions_total", "counter",
                          "Client sessions accepted since start."},
    [F_SESSIONS_REFUSED] = {"ftpgate_sessions_refused_total", "counter",
                            "Client connections refused by a session limit."},
    [F_BACKEND_CONNECT_FAILURES] = {"ftpgate_backend_connect_failures_total", "counter",
                                    "Control connections to the backend that failed."},
    [F_TLS_HANDSHAKE_FAILURES] = {"ftpgate_tls_handshake_failures_total", "counter",
                                  "TLS handshakes that failed, client or backend side."},
    [F_DATA_REFUSED] = {"ftpgate_data_connections_refused_total", "counter",
                        "Data connections refused because they came from a stranger."},
    [F_PROXY_REFUSED] = {"ftpgate_proxy_protocol_refused_total", "counter",
                         "Connections closed for a PROXY protocol header that was missing, "
                         "malformed, slow, or from an address outside proxy_trusted."},
    [F_ACL_REFUSED] = {"ftpgate_access_refused_total", "counter",
                       "Control and data connections closed because allow or deny refuses "
                       "their address."},
    [F_BANS] = {"ftpgate_bans_total", "counter",
                "Client addresses banned after max_login_failures failed logins."},
    [F_BAN_REFUSED] = {"ftpgate_banned_refused_total", "counter",
                       "Connections closed because their address is banned."},
    [F_PASV_IN_USE] = {"ftpgate_passive_ports_in_use", "gauge",
                       "Passive ports listening or connected now."},
    [F_PASV_FREE] = {"ftpgate_passive_ports_free", "gauge",
                     "Passive ports of the range not in use now."},
};

static uint64_t simple_value(enum simple f, const struct metrics_site *s,
                             const struct site_stats *st)
{
	switch (f) {
	case F_SESSIONS_OPEN:
		return s->sessions_open;
	case F_SESSIONS_TOTAL:
		return st->sessions_total;
	case F_SESSIONS_REFUSED:
		return st->sessions_refused;
	case F_BACKEND_CONNECT_FAILURES:
		return st->backend_connect_failures;
	case F_TLS_HANDSHAKE_FAILURES:
		return st->tls_handshake_failures;
	case F_DATA_REFUSED:
		return st->data_refused;
	case F_PROXY_REFUSED:
		return st->proxy_refused;
	case F_ACL_REFUSED:
		return st->acl_refused;
	case F_BANS:
		return st->bans;
	case F_BAN_REFUSED:
		return st->ban_refused;
	case F_PASV_IN_USE:
		return st->passive_ports_in_use;
	case F_PASV_FREE:
		return st->passive_ports_total > st->passive_ports_in_use
		           ? st->passive_ports_total - st->passive_ports_in_use
		           : 0;
	}
	return 0;
}

static const struct site_stats zero_stats;

static const struct site_stats *stats_of(const struct metrics_site *s)
{
	return s->stats ? s->stats : &zero_stats;
}

static void render_simple(struct out *o, enum simple f, const struct metrics_site *sites, size_t n)
{
	family(o, simple_families[f].name, simple_families[f].type, simple_families[f].help);
	for (size_t i = 0; i < n; i++) {
		sample(o, simple_families[f].name, &sites[i]);
		value(o, simple_value(f, &sites[i], stats_of(&sites[i])));
	}
}

/* The per-server families: one sample per server of each site's pool. */
static void render_servers(struct out *o, const struct metrics_site *sites, size_t n)
{
	static const struct {
		const char *name, *type, *help;
	} fams[] = {
	    {"ftpgate_backend_up", "gauge",
	     "1 if the server takes new sessions, 0 while health checks mark it down."},
	    {"ftpgate_backend_sessions_open", "gauge", "Sessions using the server now."},
	    {"ftpgate_backend_sessions_total", "counter",
	     "Sessions whose control connection to the server succeeded."},
	    {"ftpgate_backend_failures_total", "counter",
	     "Session control connections to the server that were refused or timed out."},
	    {"ftpgate_backend_health_check_failures_total", "counter",
	     "Health checks of the server that failed."},
	};
	for (size_t f = 0; f < sizeof(fams) / sizeof(fams[0]); f++) {
		family(o, fams[f].name, fams[f].type, fams[f].help);
		for (size_t i = 0; i < n; i++)
			for (size_t j = 0; j < sites[i].n_servers; j++) {
				const struct metrics_server *m = &sites[i].servers[j];
				uint64_t v = f == 0   ? (uint64_t)(m->up != 0)
				             : f == 1 ? m->sessions_open
				             : f == 2 ? m->sessions_total
				             : f == 3 ? m->failures
				                      : m->check_failures;
				sample(o, fams[f].name, &sites[i]);
				label(o, "server", m->name);
				value(o, v);
			}
	}
}

int metrics_render(struct evbuffer *out, const struct metrics_site *sites, size_t n,
                   const char *version)
{
	struct out o = {out, 0};
	const char *name;

	family(&o, "ftpgate_build_info", "gauge", "Build information; the value is always 1.");
	put_str(&o, "ftpgate_build_info{version=");
	put_label_value(&o, version);
	put_str(&o, "} 1\n");

	render_simple(&o, F_SESSIONS_OPEN, sites, n);
	render_simple(&o, F_SESSIONS_TOTAL, sites, n);
	render_simple(&o, F_SESSIONS_REFUSED, sites, n);

	name = "ftpgate_sessions_ended_total";
	family(&o, name, "counter", "Client sessions ended, by reason.");
	for (size_t i = 0; i < n; i++)
		for (int r = 0; r < END_REASON_MAX; r++) {
			sample(&o, name, &sites[i]);
			label(&o, "reason", end_reason_names[r]);
			value(&o, stats_of(&sites[i])->sessions_ended[r]);
		}

	name = "ftpgate_data_bytes_total";
	family(&o, name, "counter",
	       "Data connection bytes relayed; up is client to backend, down backend to client.");
	for (size_t i = 0; i < n; i++) {
		sample(&o, name, &sites[i]);
		label(&o, "direction", "up");
		value(&o, stats_of(&sites[i])->bytes_up);
		sample(&o, name, &sites[i]);
		label(&o, "direction", "down");
		value(&o, stats_of(&sites[i])->bytes_down);
	}

	name = "ftpgate_transfers_total";
	family(&o, name, "counter", "Data transfers finished, by command and result.");
	for (size_t i = 0; i < n; i++)
		for (int c = 0; c < XC_MAX; c++)
			for (int r = 0; r < XR_MAX; r++) {
				sample(&o, name, &sites[i]);
				label(&o, "command", xfer_cmd_names[c]);
				label(&o, "result", xfer_result_names[r]);
				value(&o, stats_of(&sites[i])->transfers[c][r]);
			}

	render_simple(&o, F_BACKEND_CONNECT_FAILURES, sites, n);
	render_simple(&o, F_TLS_HANDSHAKE_FAILURES, sites, n);
	render_simple(&o, F_DATA_REFUSED, sites, n);
	render_simple(&o, F_PROXY_REFUSED, sites, n);
	render_simple(&o, F_ACL_REFUSED, sites, n);
	render_simple(&o, F_BANS, sites, n);
	render_simple(&o, F_BAN_REFUSED, sites, n);
	render_simple(&o, F_PASV_IN_USE, sites, n);
	render_simple(&o, F_PASV_FREE, sites, n);
	render_servers(&o, sites, n);

	name = "ftpgate_ban_seconds_remaining";
	family(&o, name, "gauge",
	       "Client addresses banned now, with the seconds their ban has left.");
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < sites[i].n_bans; j++) {
			sample(&o, name, &sites[i]);
			label(&o, "address", sites[i].bans[j].address);
			value(&o, sites[i].bans[j].seconds_left);
		}
	return o.err ? -1 : 0;
}

/* ---- HTTP endpoint --------------------------------------------------------- */

struct metrics {
	struct evhttp *http;        /* owns the listener, its socket, the connections */
	struct evconnlistener *lev; /* borrowed from http, to pause accepting */
	struct event *resume;       /* re-enables lev after an accept error */
	metrics_sites_fn fn;
	void *arg;
	metrics_sessions_fn sessions_fn; /* GET /sessions, or NULL */
	void *sessions_arg;
	struct metrics_site *sites; /* scratch array for fn, grown on demand */
	size_t cap;
	struct sockaddr_storage local;
	struct metrics *next; /* in live_metrics */
};

/*
 * evhttp keeps the listener's callback argument for itself, so the accept
 * error callback finds its struct metrics here, by listener.
 */
static struct metrics *live_metrics;

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *body)
{
	struct evbuffer *b = evbuffer_new();

	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
	                  "text/plain; charset=utf-8");
	if (b && evbuffer_add(b, body, strlen(body)) == 0)
		evhttp_send_reply(req, code, reason, b);
	else
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
	if (b)
		evbuffer_free(b);
}

/* Ask the callback for the sites, growing the scratch array once if needed. */
static int get_sites(struct metrics *m, size_t *n)
{
	*n = m->fn(m->arg, m->sites, m->cap);
	if (*n <= m->cap)
		return 0;
	struct metrics_site *p = reallocarray(m->sites, *n, sizeof(*p));
	if (!p)
		return -1;
	m->sites = p;
	m->cap = *n;
	*n = m->fn(m->arg, m->sites, m->cap);
	if (*n > m->cap)
		*n = m->cap;
	return 0;
}

/* Send body (GET), or only its length (HEAD: evhttp would send a HEAD reply's body). */
static void send_body(struct evhttp_request *req, struct evbuffer *body)
{
	if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
		char clen[24];
		snprintf(clen, sizeof(clen), "%zu", evbuffer_get_length(body));
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Length", clen);
		evbuffer_drain(body, evbuffer_get_length(body));
	}
	evhttp_send_reply(req, HTTP_OK, "OK", body);
}

/* GET /sessions[?format=json|table]. */
static void sessions_request(struct metrics *m, struct evhttp_request *req,
                             const struct evhttp_uri *uri)
{
	struct evkeyvalq *hdrs = evhttp_request_get_output_headers(req);
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	const char *query = evhttp_uri_get_query(uri);
	int table = 0;

	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(hdrs, "Allow", "GET, HEAD");
		reply_text(req, 405, "Method Not Allowed", "Method not allowed\n");
		return;
	}
	if (query && *query) {
		struct evkeyvalq q;
		TAILQ_INIT(&q);
		const char *f = evhttp_parse_query_str(query, &q) == 0
		                    ? evhttp_find_header(&q, "format")
		                    : NULL;
		if (f && strcmp(f, "table") == 0)
			table = 1;
		else if (!f || strcmp(f, "json") != 0)
			table = -1;
		evhttp_clear_headers(&q);
		if (table < 0) {
			reply_text(req, HTTP_BADREQUEST, "Bad Request",
			           "Bad request; want /sessions or /sessions?format=table\n");
			return;
		}
	}
	struct evbuffer *body = evbuffer_new();
	if (!body || m->sessions_fn(m->sessions_arg, body, table) < 0) {
		if (body)
			evbuffer_free(body);
		reply_text(req, HTTP_INTERNAL, "Internal Server Error", "Out of memory\n");
		return;
	}
	evhttp_add_header(hdrs, "Content-Type",
	                  table ? "text/plain; charset=utf-8" : "application/json");
	evhttp_add_header(hdrs, "Cache-Control", "no-store");
	send_body(req, body);
	evbuffer_free(body);
}

static void request_cb(struct evhttp_request *req, void *arg)
{
	struct metrics *m = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	struct evkeyvalq *hdrs = evhttp_request_get_output_headers(req);
	size_t n;

	if (path && strcmp(path, "/sessions") == 0 && m->sessions_fn) {
		sessions_request(m, req, uri);
		return;
	}
	if (!path || strcmp(path, "/metrics") != 0) {
		reply_text(req, HTTP_NOTFOUND, "Not Found",
		           "Not found; the metrics are at /metrics\n");
		return;
	}
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(hdrs, "Allow", "GET, HEAD");
		reply_text(req, 405, "Method Not Allowed", "Method not allowed\n");
		return;
	}
	struct evbuffer *body = evbuffer_new();
	if (!body || get_sites(m, &n) < 0 ||
	    metrics_render(body, m->sites, n, PACKAGE_VERSION) < 0) {
		if (body)
			evbuffer_free(body);
		reply_text(req, HTTP_INTERNAL, "Internal Server Error", "Out of memory\n");
		return;
	}
	evhttp_add_header(hdrs, "Content-Type", METRICS_CONTENT_TYPE);
	evhttp_add_header(hdrs, "Cache-Control", "no-store");
	send_body(req, body);
	evbuffer_free(body);
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct metrics *m = arg;
	(void)fd;
	(void)what;
	evconnlistener_enable(m->lev);
}

/* accept() failed (out of descriptors): pause for a second instead of spinning. */
static void accept_error_cb(struct evconnlistener *lev, void *arg)
{
	struct timeval tv = {1, 0};
	(void)arg; /* the struct evhttp */

	for (struct metrics *m = live_metrics; m; m = m->next)
		if (m->lev == lev) {
			evconnlistener_disable(lev);
			event_add(m->resume, &tv);
			return;
		}
}

static void set_err(char *err, size_t errsize, const char *what, int e)
{
	if (err && errsize)
		snprintf(err, errsize, "%s: %s", what, strerror(e));
}

struct metrics *metrics_new(struct event_base *base, const struct sockaddr *addr,
                            metrics_sites_fn fn, void *arg, char *err, size_t errsize)
{
	const int one = 1;
	socklen_t len;
	int fd = -1;

	if (addr->sa_family == AF_INET) {
		len = sizeof(struct sockaddr_in);
	} else if (addr->sa_family == AF_INET6) {
		len = sizeof(struct sockaddr_in6);
	} else {
		set_err(err, errsize, "metrics address", EAFNOSUPPORT);
		return NULL;
	}

	struct metrics *m = calloc(1, sizeof(*m));
	if (!m) {
		set_err(err, errsize, "metrics", ENOMEM);
		return NULL;
	}
	m->fn = fn;
	m->arg = arg;
	m->http = evhttp_new(base);
	m->resume = evtimer_new(base, resume_cb, m);
	if (!m->http || !m->resume) {
		set_err(err, errsize, "metrics", ENOMEM);
		goto fail;
	}
	evhttp_set_timeout(m->http, 10);
	evhttp_set_max_headers_size(m->http, 8192);
	evhttp_set_max_body_size(m->http, 4096);
	/* Let every method reach request_cb, which answers 405 itself. */
	evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
	                                        EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	                                        EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
	                                        EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
	evhttp_set_gencb(m->http, request_cb, m);

	fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		set_err(err, errsize, "metrics socket", errno);
		goto fail;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (addr->sa_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, addr, len) < 0) {
		set_err(err, errsize, "metrics bind", errno);
		goto fail;
	}
	if (listen(fd, 64) < 0) {
		set_err(err, errsize, "metrics listen", errno);
		goto fail;
	}
	len = sizeof(m->local);
	if (getsockname(fd, (struct sockaddr *)&m->local, &len) < 0) {
		set_err(err, errsize, "metrics getsockname", errno);
		goto fail;
	}
	/* From here the listener owns fd, and once bound, http owns the listener. */
	m->lev = evconnlistener_new(base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE, 0, fd);
	if (!m->lev) {
		set_err(err, errsize, "metrics listener", ENOMEM);
		goto fail;
	}
	fd = -1;
	if (!evhttp_bind_listener(m->http, m->lev)) {
		evconnlistener_free(m->lev);
		m->lev = NULL;
		set_err(err, errsize, "metrics listener", ENOMEM);
		goto fail;
	}
	evconnlistener_set_error_cb(m->lev, accept_error_cb);
	m->next = live_metrics;
	live_metrics = m;
	return m;
fail:
	if (fd >= 0)
		close(fd);
	metrics_free(m);
	return NULL;
}

void metrics_set_sessions(struct metrics *m, metrics_sessions_fn fn, void *arg)
{
	m->sessions_fn = fn;
	m->sessions_arg = arg;
}

int metrics_local_addr(const struct metrics *m, struct sockaddr_storage *ss)
{
	*ss = m->local;
	return 0;
}

void metrics_free(struct metrics *m)
{
	if (!m)
		return;
	for (struct metrics **p = &live_metrics; *p; p = &(*p)->next)
		if (*p == m) {
			*p = m->next;
			break;
		}
	if (m->http)
		evhttp_free(m->http);
	if (m->resume)
		event_free(m->resume);
	free(m->sites);
	free(m);
}
