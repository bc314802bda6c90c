/*
 * backend: the servers of every site's pool (struct backend_server, one per
 * site name and HOST:PORT for the life of the process), the choice of a
 * server for a new session, and the health checks that speak FTP (struct
 * hcheck: the check's connection and its timer, owned by its server).
 */
#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "backend.h"
#include "ftp_reply.h"
#include "ftpgate.h"
#include "log.h"
#include "proxyproto.h"
#include "tls.h"
#include "util.h"

#define HC_LINE_MAX 8192

/* A choice and its count are one step for every worker thread (site->turn, ->open). */
static pthread_mutex_t pick_lock = PTHREAD_MUTEX_INITIALIZER;

struct backends {
	struct event_base *base;
	struct backend_server *servers;
};

/* ---- choice (pure) -------------------------------------------------------------------------- */

int backend_choose(enum balance how, const struct backend_cand *c, size_t n, uint32_t turn,
                   uint32_t hash)
{
	if (n == 0)
		return -1;
	size_t start = (how == BAL_SOURCE ? hash : turn) % n;
	int best = -1;
	for (size_t k = 0; k < n; k++) {
		size_t i = (start + k) % n;
		if (!c[i].up || c[i].tried)
			continue;
		if (how != BAL_LEASTCONN)
			return (int)i;
		if (best < 0 || c[i].open < c[best].open)
			best = (int)i;
	}
	return best;
}

uint32_t backend_addr_hash(const struct sockaddr *sa)
{
	const unsigned char *p;
	size_t n;
	if (sa->sa_family == AF_INET) {
		p = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
		n = 4;
	} else if (sa->sa_family == AF_INET6) {
		p = (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
		n = 16;
	} else {
		return 0;
	}
	uint32_t h = 2166136261u; /* FNV-1a */
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

/* ---- sessions ------------------------------------------------------------------------------- */

struct backend_server *backend_pick(struct site *site, int route, const struct sockaddr *client,
                                    uint32_t *tried)
{
	const struct site_conf *sc = site->conf;
	struct backend_cand c[CONF_MAX_BACKENDS];
	struct backend_server **pool =
	    route < 0 ? site->pool : &site->route_pool[(size_t)route * CONF_MAX_ROUTE_BACKENDS];
	size_t n = route < 0 ? sc->n_backends : sc->routes[route].n_backends;

	pthread_mutex_lock(&pick_lock);
	for (size_t i = 0; i < n; i++) {
		c[i].up = pool[i] && pool[i]->up;
		c[i].tried = (*tried >> i) & 1u;
		c[i].open = pool[i] ? pool[i]->open : 0;
	}
	int i = backend_choose(sc->balance, c, n, site->turn, backend_addr_hash(client));
	if (i < 0) {
		pthread_mutex_unlock(&pick_lock);
		return NULL;
	}
	if (sc->balance != BAL_SOURCE && !*tried)
		site->turn = (uint32_t)i + 1; /* the next session (or tie) starts after this one */
	*tried |= 1u << i;
	pool[i]->open++;
	pthread_mutex_unlock(&pick_lock);
	return pool[i];
}

void backend_carry_turn(struct site *to, const struct site *from)
{
	pthread_mutex_lock(&pick_lock);
	to->turn = from->turn;
	pthread_mutex_unlock(&pick_lock);
}

void backend_name(const struct backend_server *s, char *out, size_t size)
{
	pthread_mutex_lock(&pick_lock);
	snprintf(out, size, "%s", s->bc.name);
	pthread_mutex_unlock(&pick_lock);
}

void backend_addr(const struct backend_server *s, struct sockaddr_storage *out)
{
	pthread_mutex_lock(&pick_lock);
	memcpy(out, &s->bc.addr, sizeof(*out));
	pthread_mutex_unlock(&pick_lock);
}

void backend_connected(struct backend_server *s)
{
	s->sessions_total++;
}

void backend_failed(struct backend_server *s)
{
	s->failures++;
}

void backend_release(struct backend_server *s)
{
	pthread_mutex_lock(&pick_lock);
	if (s->open)
		s->open--;
	pthread_mutex_unlock(&pick_lock);
}

/* ---- health checks -------------------------------------------------------------------------- */

enum hc_stage { HC_IDLE, HC_CONNECT, HC_GREETING, HC_AUTH, HC_HANDSHAKE, HC_QUIT };

struct hcheck {
	struct backend_server *s;
	struct event *timer; /* next check, or the running check's deadline */
	struct bufferevent *bev;
	enum hc_stage stage;
	struct ftp_reply_asm rasm;
};

static void hc_close(struct hcheck *h)
{
	if (h->bev)
		bufferevent_free(h->bev);
	h->bev = NULL;
	h->stage = HC_IDLE;
}

static void hc_arm(struct hcheck *h, unsigned seconds)
{
	struct timeval tv = {(time_t)seconds, 0};
	event_add(h->timer, &tv);
}

/* A check is over: count it, change the state after fall or rise in a row. */
static void hc_result(struct hcheck *h, int ok, const char *why)
{
	struct backend_server *s = h->s;

	if (ok) {
		s->fails_in_row = 0;
		if (!s->up && ++s->oks_in_row >= s->rise) {
			s->up = 1;
			s->oks_in_row = 0;
			log_info("site %s: backend server %s is up (%u good health checks)",
			         s->site, s->bc.name, s->rise);
		}
	} else {
		s->check_failures++;
		s->oks_in_row = 0;
		log_debug("site %s: backend server %s: health check failed: %s", s->site,
		          s->bc.name, why);
		if (s->up && ++s->fails_in_row >= s->fall) {
			s->up = 0;
			s->fails_in_row = 0;
			log_warn("site %s: backend server %s is down: %s (%u failed health checks)",
			         s->site, s->bc.name, why, s->fall);
		}
	}
	if (ok && h->bev && h->stage != HC_QUIT) {
		/* Say goodbye; the connection closes once QUIT is written. */
		evbuffer_add(bufferevent_get_output(h->bev), "QUIT\r\n", 6);
		h->stage = HC_QUIT;
	} else {
		hc_close(h);
	}
	hc_arm(h, s->interval);
}

static void hc_event_cb(struct bufferevent *bev, short what, void *arg);
static void hc_read_cb(struct bufferevent *bev, void *arg);
static void hc_write_cb(struct bufferevent *bev, void *arg);

/* Implicit TLS at connect, or the 234 is in: the handshake runs over the plain connection. */
static int hc_start_tls(struct hcheck *h)
{
	struct backend_server *s = h->s;
	SSL *ssl = s->tls_ctx ? tls_backend_ssl(s->tls_ctx, s->tls_verify, s->bc.host, NULL) : NULL;
	if (!ssl)
		return -1;
	struct bufferevent *f = bufferevent_openssl_filter_new(
	    s->base, h->bev, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (!f)
		return -1; /* libevent freed ssl */
	bufferevent_openssl_set_allow_dirty_shutdown(f, 1);
	h->bev = f;
	bufferevent_setcb(f, hc_read_cb, hc_write_cb, hc_event_cb, h);
	bufferevent_enable(f, EV_READ | EV_WRITE);
	return 0;
}

static void hc_read_cb(struct bufferevent *bev, void *arg)
{
	struct hcheck *h = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	char line[HC_LINE_MAX], esc[128], why[200];
	size_t n;

	while (h->bev == bev && (h->stage == HC_GREETING || h->stage == HC_AUTH)) {
		size_t eol = 0;
		struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol, EVBUFFER_EOL_LF);
		if (p.pos < 0) {
			if (evbuffer_get_length(in) >= sizeof(line))
				hc_result(h, 0, "reply line too long");
			return;
		}
		n = (size_t)p.pos + eol;
		if (n > sizeof(line)) {
			hc_result(h, 0, "reply line too long");
			return;
		}
		evbuffer_remove(in, line, n);
		enum ftp_reply_status st = ftp_reply_feed(&h->rasm, line, n);
		if (st == FTP_REPLY_BAD) {
			snprintf(why, sizeof(why), "malformed reply \"%s\"",
			         log_escape(esc, sizeof(esc), line, n));
			hc_result(h, 0, why);
			return;
		}
		if (st != FTP_REPLY_DONE)
			continue;
		int code = h->rasm.code;
		ftp_reply_reset(&h->rasm);
		if (h->stage == HC_GREETING && code == 120)
			continue; /* ready in a while: wait for the 220 */
		if (h->stage == HC_GREETING && code == 220) {
			if (h->s->tls != BTLS_ON) {
				hc_result(h, 1, "");
				return;
			}
			evbuffer_add(bufferevent_get_output(bev), "AUTH TLS\r\n", 10);
			h->stage = HC_AUTH;
			continue;
		}
		if (h->stage == HC_AUTH && code == 234) {
			/* Nothing may follow the 234 in plaintext. */
			evbuffer_drain(in, evbuffer_get_length(in));
			h->stage = HC_HANDSHAKE;
			if (hc_start_tls(h) < 0)
				hc_result(h, 0, "cannot start TLS (out of memory)");
			return;
		}
		snprintf(why, sizeof(why), "%s answered %d",
		         h->stage == HC_GREETING ? "greeting" : "AUTH TLS", code);
		hc_result(h, 0, why);
		return;
	}
}

static void hc_write_cb(struct bufferevent *bev, void *arg)
{
	struct hcheck *h = arg;
	if (h->bev == bev && h->stage == HC_QUIT)
		hc_close(h);
}

/*
 * backend_proxy_protocol: the server expects a header first; a check is the
 * proxy's own connection (v1 "PROXY UNKNOWN", v2 LOCAL). Returns 0, or -1
 * when the check failed.
 */
static int hc_proxy_header(struct hcheck *h, struct bufferevent *bev)
{
	unsigned char hdr[PP_EMIT_MAX];
	int n = h->s->proxy_protocol == 1 ? pp_emit_v1((char *)hdr, sizeof(hdr), NULL, NULL)
	                                  : pp_emit_v2(hdr, sizeof(hdr), NULL, NULL);
	if (n < 0 ||
	    send(bufferevent_getfd(bev), hdr, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n) {
		hc_result(h, 0, "cannot send the PROXY protocol header");
		return -1;
	}
	return 0;
}

static void hc_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct hcheck *h = arg;
	char why[400], e[256];

	if (h->stage == HC_QUIT) {
		hc_close(h);
		return;
	}
	if (what & BEV_EVENT_CONNECTED) {
		if (bufferevent_openssl_get_ssl(bev)) {
			/* The handshake is through, the certificate passed. */
			if (h->stage == HC_HANDSHAKE)
				hc_result(h, 1, "");
			return; /* implicit: the greeting comes now */
		}
		h->stage = HC_GREETING;
		ftp_reply_reset(&h->rasm);
		if (h->s->proxy_protocol && hc_proxy_header(h, bev) < 0)
			return;
		if (h->s->tls == BTLS_IMPLICIT) {
			if (hc_start_tls(h) < 0)
				hc_result(h, 0, "cannot start TLS (out of memory)");
			return;
		}
		bufferevent_enable(bev, EV_READ);
		return;
	}
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	unsigned long err = ssl ? bufferevent_get_openssl_error(bev) : 0;
	if (err) {
		long vr = SSL_get_verify_result(ssl);
		snprintf(why, sizeof(why), "TLS: %s%s%s",
		         tls_error_string(err, "error", e, sizeof(e)), vr != X509_V_OK ? ": " : "",
		         vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "");
		while (bufferevent_get_openssl_error(bev))
			;
	} else if (what & BEV_EVENT_EOF) {
		snprintf(why, sizeof(why), "closed the connection");
	} else {
		snprintf(why, sizeof(why), "%s",
		         evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
	}
	hc_result(h, 0, why);
}

static void hc_start(struct hcheck *h)
{
	struct backend_server *s = h->s;
	h->bev = bufferevent_socket_new(s->base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!h->bev) {
		hc_result(h, 0, "out of memory");
		return;
	}
	h->stage = HC_CONNECT;
	bufferevent_setcb(h->bev, hc_read_cb, hc_write_cb, hc_event_cb, h);
	hc_arm(h, s->timeout);
	if (bufferevent_socket_connect(h->bev, (struct sockaddr *)&s->bc.addr,
	                               (int)addr_len((struct sockaddr *)&s->bc.addr)) < 0) {
		char why[200];
		snprintf(why, sizeof(why), "connect: %s", strerror(errno));
		hc_result(h, 0, why);
	}
}

static void hc_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hcheck *h = arg;
	char why[64];
	(void)fd;
	(void)what;

	if (h->stage == HC_QUIT) {
		hc_close(h);
		hc_arm(h, h->s->interval);
		return;
	}
	if (h->stage != HC_IDLE) {
		snprintf(why, sizeof(why), "no %s within %u s",
		         h->stage == HC_CONNECT    ? "connection"
		         : h->stage == HC_GREETING ? "220 greeting"
		                                   : "TLS",
		         h->s->timeout);
		hc_result(h, 0, why);
		return;
	}
	hc_start(h);
}

static void hc_free(struct hcheck *h)
{
	if (!h)
		return;
	hc_close(h);
	if (h->timer)
		event_free(h->timer);
	free(h);
}

/* Checks per the server's settings: started (the first one now), or stopped. */
static void hc_sync(struct backend_server *s)
{
	if (!s->listed || s->interval == 0) {
		hc_free(s->hc);
		s->hc = NULL;
		s->up = 1; /* nothing checks it: nothing can say it is down */
		return;
	}
	if (s->hc)
		return; /* running: the new interval applies from the next check */
	struct hcheck *h = calloc(1, sizeof(*h));
	if (h)
		h->timer = evtimer_new(s->base, hc_timer_cb, h);
	if (!h || !h->timer) {
		log_error("site %s: backend server %s: out of memory for health checks", s->site,
		          s->bc.name);
		hc_free(h);
		return;
	}
	h->s = s;
	s->hc = h;
	hc_arm(h, 0);
}

/* ---- the registry --------------------------------------------------------------------------- */

struct backends *backends_new(struct event_base *base)
{
	struct backends *b = calloc(1, sizeof(*b));
	if (b)
		b->base = base;
	return b;
}

void backends_free(struct backends *b)
{
	if (!b)
		return;
	while (b->servers) {
		struct backend_server *s = b->servers;
		b->servers = s->next;
		hc_free(s->hc);
		SSL_CTX_free(s->tls_ctx);
		free(s);
	}
	free(b);
}

static struct backend_server *find_or_add(struct backends *b, const char *site,
                                          const struct backend_conf *bc)
{
	for (struct backend_server *s = b->servers; s; s = s->next)
		if (strcmp(s->site, site) == 0 && strcmp(s->bc.name, bc->name) == 0)
			return s;
	struct backend_server *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	snprintf(s->site, sizeof(s->site), "%s", site);
	s->up = 1;
	s->base = b->base;
	struct backend_server **tail = &b->servers; /* in the order first configured */
	while (*tail)
		tail = &(*tail)->next;
	*tail = s;
	return s;
}

int backends_apply(struct backends *b, struct site *sites, size_t n_sites)
{
	int rc = 0;
	/* Workers read a server's settings while they run (backend_addr()). */
	pthread_mutex_lock(&pick_lock);
	for (struct backend_server *s = b->servers; s; s = s->next)
		s->listed = 0;
	for (size_t i = 0; i < n_sites; i++) {
		struct site *site = &sites[i];
		const struct site_conf *sc = site->conf;
		size_t np = sc->n_backends, nr = sc->n_routes * CONF_MAX_ROUTE_BACKENDS;
		for (size_t j = 0; j < np + nr; j++) {
			const struct backend_conf *bc;
			struct backend_server **slot;
			if (j < np) {
				bc = &sc->backends[j];
				slot = &site->pool[j];
			} else {
				size_t r = (j - np) / CONF_MAX_ROUTE_BACKENDS;
				size_t k = (j - np) % CONF_MAX_ROUTE_BACKENDS;
				if (k >= sc->routes[r].n_backends)
					continue;
				bc = &sc->routes[r].backends[k];
				slot = &site->route_pool[j - np];
			}
			struct backend_server *s = find_or_add(b, sc->name, bc);
			*slot = s;
			if (!s) {
				log_error("site %s: out of memory for backend %s", sc->name,
				          bc->name);
				rc = -1;
				continue;
			}
			s->bc = *bc; /* the address as resolved by this load */
			s->listed = 1;
			s->interval = sc->health_interval;
			s->timeout = sc->health_timeout;
			s->fall = sc->health_fall;
			s->rise = sc->health_rise;
			s->tls = sc->backend_tls;
			s->tls_verify = sc->backend_tls_verify;
			s->proxy_protocol = sc->backend_proxy_protocol;
			if (s->tls_ctx != site->tls_client) {
				SSL_CTX_free(s->tls_ctx);
				s->tls_ctx = site->tls_client;
				if (s->tls_ctx)
					SSL_CTX_up_ref(s->tls_ctx);
			}
		}
	}
	pthread_mutex_unlock(&pick_lock);
	for (struct backend_server *s = b->servers; s; s = s->next)
		hc_sync(s);
	return rc;
}
