/*
 * session: the I/O shell of one client session. Owns struct session's life
 * cycle (new, end, the one teardown path through the reaper), both control
 * bufferevents and their framing (command lines in, complete replies in),
 * the session timer, the data pair (struct datachan) and the OpenSSL
 * objects of the session, the counters and the session's log lines.
 *
 * May not decide protocol matters: what a command or a reply means, what
 * is sent where, when a transfer is complete, what ABOR does. Those belong
 * to the core (session_core.c), which this file feeds with events and
 * whose actions (struct core_ops, below) it carries out.
 */
#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "access.h"
#include "backend.h"
#include "datachan.h"
#include "ftp_addr.h"
#include "ftp_reply.h"
#include "log.h"
#include "proxyproto.h"
#include "session.h"
#include "sessinfo.h"
#include "session_int.h"
#include "tls.h"
#include "util.h"
#include "worker.h"
#include "xferlog.h"

#define REPLY_LINE_MAX 8192  /* longest backend reply line */
#define CLIENT_IN_HIGH 65536 /* stop reading a client that pipelines this much */
#define OUT_HIGH 262144      /* stop reading the other side while output is this large */
#define FLUSH_TIMEOUT 10     /* seconds to deliver a last reply before closing */

static void session_pump(struct session *s);
static void client_read_cb(struct bufferevent *bev, void *arg);
static void client_write_cb(struct bufferevent *bev, void *arg);
static void client_event_cb(struct bufferevent *bev, short what, void *arg);
static void backend_read_cb(struct bufferevent *bev, void *arg);
static void backend_event_cb(struct bufferevent *bev, short what, void *arg);
static void connect_failed(struct session *s, const char *why);
static void connect_backend(struct session *s);

/* ---- accounting ----------------------------------------------------------------------------- */

/* Data bytes of a finished pair: the session's totals and the site's counters. */
void session_account_data(struct session *s, uint64_t up, uint64_t down)
{
	s->bytes_up += up;
	s->bytes_down += down;
	s->site->state->stats.bytes_up += up;
	s->site->state->stats.bytes_down += down;
}

/* Why a session ended, for the metrics (the reasons are the proxy's own words). */
static enum end_reason classify_end(const char *reason)
{
	static const struct {
		const char *prefix;
		enum end_reason r;
	} map[] = {
	    {"client quit", END_CLIENT_QUIT},
	    {"client TLS", END_TLS_ERROR},
	    {"client", END_CLIENT_CLOSED},
	    {"control relay ended", END_CLIENT_CLOSED},
	    {"idle", END_IDLE_TIMEOUT},
	    {"login timeout", END_LOGIN_TIMEOUT},
	    {"cannot connect to backend", END_BACKEND_CONNECT},
	    {"backend refused the session", END_BACKEND_CONNECT},
	    {"proxy shutting down", END_SHUTDOWN},
	    {"backend", END_BACKEND_ERROR},
	    {"malformed", END_BACKEND_ERROR},
	};
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strncmp(reason, map[i].prefix, strlen(map[i].prefix)) == 0)
			return map[i].r;
	if (strstr(reason, "no connection within") || strstr(reason, "no greeting within"))
		return END_BACKEND_CONNECT;
	return END_OTHER;
}

static enum xfer_cmd xfer_index(const char *cmd)
{
	for (int i = 0; i < XC_MAX; i++)
		if (strncmp(cmd, xfer_cmd_names[i], 4) == 0)
			return (enum xfer_cmd)i;
	return XC_RETR;
}

/* A transfer is over: count it, and write the xferlog line for a file transfer. */
static void count_transfer(struct session *s, enum xfer_result r)
{
	const struct core *c = &s->core;
	enum xfer_cmd x = xfer_index(c->xfer_cmd);
	struct xferlog *xl = s->site->gw->xferlog;
	char host[ADDR_STR_MAX];

	s->site->state->stats.transfers[x][r]++;
	if (!xl || (x != XC_RETR && x != XC_STOR && x != XC_APPE && x != XC_STOU))
		return;
	struct xferlog_entry e = {
	    .end = time(NULL),
	    .seconds = (double)(now_ms() - c->xfer_start_ms) / 1000.0,
	    .remote_host = addr_str((struct sockaddr *)&s->client_addr, host, sizeof(host), 0),
	    .bytes = x == XC_RETR ? s->xfer_down : s->xfer_up,
	    .path = c->xfer_path,
	    .type = c->type_ascii ? 'a' : 'b',
	    .direction = x == XC_RETR ? 'o' : 'i',
	    .access =
	        (strcmp(c->user, "anonymous") == 0 || strcmp(c->user, "ftp") == 0) ? 'a' : 'r',
	    .user = c->user,
	    .complete = r == XR_OK,
	};
	if (xferlog_write(xl, &e) < 0)
		log_warn("%s: xferlog: %s", s->tag, strerror(errno));
}

/* ---- teardown ------------------------------------------------------------------------------- */

/* The one end of a data pair (done or dropped): count what it moved, free it. */
static void dc_release(struct session *s)
{
	s->xfer_up = datachan_bytes(s->dc, 0);
	s->xfer_down = datachan_bytes(s->dc, 1);
	session_account_data(s, s->xfer_up, s->xfer_down);
	datachan_free(s->dc);
	s->dc = NULL;
	s->site->state->stats.passive_ports_in_use--;
}

/* Close the data pair now. */
static void dc_drop(struct session *s)
{
	if (s->dc)
		dc_release(s);
}

static void session_free(struct session *s)
{
	dc_drop(s);
	pt_free(s);
	core_free(&s->core);
	if (s->cbev)
		bufferevent_free(s->cbev);
	if (s->bbev)
		bufferevent_free(s->bbev);
	if (s->timer)
		event_free(s->timer);
	if (s->reaper)
		event_free(s->reaper);
	if (s->reply)
		evbuffer_free(s->reply);
	if (s->backend_sess)
		SSL_SESSION_free(s->backend_sess);
	if (s->srv)
		backend_release(s->srv);
	if (s->start_fd >= 0)
		close(s->start_fd); /* never started */
	struct ftpgate *gw = s->site->gw;
	struct gen *gen = s->site->gen;
	struct worker *w = s->w;
	pthread_mutex_lock(&gw->lock);
	s->site->n_sessions--;
	gw->n_sessions--;
	w->n_sessions--;
	if (s->prev)
		s->prev->next = s->next;
	else
		w->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	unsigned left = gw->n_sessions;
	pthread_mutex_unlock(&gw->lock);
	free(s);
	gen_release(gw, gen);
	if (gw->draining && left == 0)
		event_base_loopbreak(gw->base); /* the main loop's; thread-safe */
}

static void reaper_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	session_free(arg);
}

/* The one way a session ends: log, close both sides now, free from the loop. */
void session_end(struct session *s, const char *fmt, ...)
{
	va_list ap;
	char client[ADDR_STR_MAX], backend[ADDR_STR_MAX], reason[200];

	if (s->dead)
		return;
	s->dead = 1;
	s->core.closing = 1; /* the core hears nothing more */
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	if (s->end_reason[0])
		snprintf(reason, sizeof(reason), "%s", s->end_reason);
	enum end_reason why = classify_end(reason);
	s->site->state->stats.sessions_ended[why]++;
	if (why == END_BACKEND_CONNECT)
		s->site->state->stats.backend_connect_failures++;
	if (strstr(reason, "TLS error"))
		s->site->state->stats.tls_handshake_failures++;
	dc_drop(s);
	pt_free(s);
	char relayed[64] = "";
	if (tls_is_passthrough(s->conf->tls))
		snprintf(relayed, sizeof(relayed), "control relayed %llu bytes, ",
		         (unsigned long long)s->ctrl_bytes);
	log_info(
	    "%s: end: client %s backend %s user \"%s\" data up %llu down %llu bytes, "
	    "%s%.3f s: %s",
	    s->tag, addr_str((struct sockaddr *)&s->client_addr, client, sizeof(client), 1),
	    s->srv ? addr_str((struct sockaddr *)&s->core.backend_addr, backend, sizeof(backend), 1)
	           : "none",
	    s->core.user, (unsigned long long)s->bytes_up, (unsigned long long)s->bytes_down,
	    relayed, (double)(now_ms() - s->start_ms) / 1000.0, reason);
	if (s->cbev)
		bufferevent_disable(s->cbev, EV_READ | EV_WRITE);
	if (s->bbev)
		bufferevent_disable(s->bbev, EV_READ | EV_WRITE);
	event_del(s->timer);
	event_active(s->reaper, 0, 0);
}

/* Deliver what is queued for the client, then end. */
static void session_close_after_flush(struct session *s, const char *why)
{
	if (s->dead || s->closing)
		return;
	snprintf(s->end_reason, sizeof(s->end_reason), "%s", why);
	s->core.closing = 1;
	if (!s->cbev) {
		session_end(s, "%s", s->end_reason);
		return;
	}
	s->closing = 1;
	dc_drop(s);
	bufferevent_disable(s->cbev, EV_READ);
	if (s->bbev) {
		bufferevent_free(s->bbev);
		s->bbev = NULL;
	}
	if (evbuffer_get_length(bufferevent_get_output(s->cbev)) == 0) {
		session_end(s, "%s", s->end_reason);
		return;
	}
	bufferevent_enable(s->cbev, EV_WRITE);
	session_set_timer(s, FLUSH_TIMEOUT);
}

void session_set_timer(struct session *s, unsigned seconds)
{
	struct timeval tv = {(time_t)seconds, 0};
	event_add(s->timer, &tv);
}

void session_drain_check(struct session *s)
{
	if (!s->site->gw->draining || s->dead || s->closing)
		return;
	if (s->blind) {
		if (!s->n_fwds)
			session_end(s, "proxy shutting down");
		return;
	}
	core_drain(&s->core);
}

/* ---- TLS on the control connections --------------------------------------------------------- */

/*
 * Replace a plain socket bufferevent by a TLS one on the same socket. Its
 * output must be empty (already on the wire); its unread input is dropped.
 * Returns the new bufferevent, or NULL (the old one is untouched).
 */
static struct bufferevent *bev_start_tls(struct session *s, struct bufferevent *old, SSL *ssl,
                                         enum bufferevent_ssl_state state)
{
	evutil_socket_t fd = bufferevent_getfd(old);
	struct bufferevent *bev =
	    bufferevent_openssl_socket_new(s->w->base, fd, ssl, state, BEV_OPT_CLOSE_ON_FREE);
	if (!bev)
		return NULL; /* libevent freed ssl (BEV_OPT_CLOSE_ON_FREE) */
	/* The socket now belongs to the TLS bufferevent. */
	bufferevent_disable(old, EV_READ | EV_WRITE);
	bufferevent_setfd(old, -1);
	bufferevent_free(old);
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

/* Switch the client control connection to TLS (after 234 is out, or at once for implicit). */
static int client_start_tls(struct session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->cbev);
	size_t junk = evbuffer_get_length(in);
	if (junk) {
		/* Sent after AUTH, before the handshake: plaintext injection
		 * (CVE-2011-0411 style). Never executed. */
		log_warn("%s: dropped %zu bytes of plaintext sent after AUTH", s->tag, junk);
		evbuffer_drain(in, junk);
	}
	SSL *ssl = tls_client_ssl(s->site->tls_server, s->sid_ctx, sizeof(s->sid_ctx), NULL);
	struct bufferevent *bev =
	    ssl ? bev_start_tls(s, s->cbev, ssl, BUFFEREVENT_SSL_ACCEPTING) : NULL;
	if (!bev)
		return -1;
	s->cbev = bev;
	s->tls_after_flush = 0;
	core_client_tls_started(&s->core);
	bufferevent_setcb(bev, client_read_cb, client_write_cb, client_event_cb, s);
	bufferevent_setwatermark(bev, EV_READ, 0, CLIENT_IN_HIGH);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	return 0;
}

/* ---- the core's actions --------------------------------------------------------------------- */

/*
 * Send on a control connection: straight to the socket when nothing is
 * queued and the connection is plain, else (and whatever the socket did not
 * take) through the bufferevent. A reply or command then costs one send(2)
 * instead of arming EV_WRITE, a wakeup, writev and disarming (issue 17.5).
 * What waits for "output flushed" checks for an empty output when it starts
 * (session_close_after_flush, op_client_tls_after_flush, go blind).
 */
static void bev_send(struct bufferevent *bev, const char *buf, size_t len)
{
	struct evbuffer *out = bufferevent_get_output(bev);
	if (evbuffer_get_length(out) == 0 && !bufferevent_openssl_get_ssl(bev)) {
		ssize_t n = send(bufferevent_getfd(bev), buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			buf += n;
			len -= (size_t)n;
		}
		/* An error: queued, the bufferevent meets it and reports it. */
	}
	if (len)
		evbuffer_add(out, buf, len);
}

static void op_send_client(void *io, const char *buf, size_t len)
{
	struct session *s = io;
	if (s->cbev) /* blind relay: nothing can be said any more */
		bev_send(s->cbev, buf, len);
}

static void op_send_backend(void *io, const char *buf, size_t len)
{
	struct session *s = io;
	if (!s->bbev)
		return;
	if (s->core.backend_up)
		bev_send(s->bbev, buf, len);
	else /* still connecting: the bufferevent sends it once connected */
		evbuffer_add(bufferevent_get_output(s->bbev), buf, len);
}

static void dc_side_ready(struct datachan *dc, enum dc_side side, int ok, const char *reason,
                          void *arg);
static void dc_done(struct datachan *dc, int ok, const char *reason, void *arg);

static int op_data_new(void *io, int client_tls, int backend_tls)
{
	static const struct datachan_cbs cbs = {dc_side_ready, dc_done};
	struct session *s = io;

	dc_drop(s);
	s->dc = datachan_new(s->w->base, s->conf->data_timeout, &cbs, s, s->tag);
	if (!s->dc)
		return -1;
	s->site->state->stats.passive_ports_in_use++;
	datachan_count_refused(s->dc, &s->site->state->stats.data_refused,
	                       &s->site->state->refused_log);
	if (client_tls) {
		SSL *ssl = tls_client_ssl(s->site->tls_server, s->sid_ctx, sizeof(s->sid_ctx),
		                          bufferevent_openssl_get_ssl(s->cbev));
		if (!ssl)
			goto oom;
		datachan_set_tls(s->dc, DC_CLIENT, ssl, 1, s->conf->tls_require_session_reuse);
	}
	if (backend_tls) {
		SSL *ssl = tls_backend_ssl(s->site->tls_client, s->conf->backend_tls_verify,
		                           s->srv->bc.host, s->backend_sess);
		if (!ssl)
			goto oom;
		tls_track_session(ssl, &s->backend_sess);
		datachan_set_tls(s->dc, DC_BACKEND, ssl, 0, 0);
	}
	return 0;
oom:
	dc_drop(s);
	errno = ENOMEM;
	return -1;
}

static int op_data_listen(void *io, enum core_side side, struct sockaddr_storage *bound)
{
	struct session *s = io;
	const struct sockaddr *allowed;
	socklen_t len = sizeof(*bound);
	uint16_t port;

	if (side == CORE_CLIENT) {
		/* Listen where the client connected to: behind a 1:1 NAT that is
		 * the address public_address is translated to. */
		memcpy(bound, &s->core.local_addr, sizeof(*bound));
		allowed = (const struct sockaddr *)&s->client_addr;
	} else {
		/* Listen on the proxy's backend-side address. */
		if (getsockname(bufferevent_getfd(s->bbev), (struct sockaddr *)bound, &len) < 0)
			return -1;
		allowed = (const struct sockaddr *)&s->core.backend_addr;
	}
	if (datachan_listen(s->dc, (enum dc_side)side, (struct sockaddr *)bound, s->conf->pasv_lo,
	                    s->conf->pasv_hi, allowed, &port) < 0)
		return -1;
	addr_set_port((struct sockaddr *)bound, port);
	return 0;
}

static int op_data_connect(void *io, enum core_side side, const struct sockaddr *addr)
{
	struct session *s = io;
	/* Toward the client: from the address it connected to. */
	const struct sockaddr *src =
	    side == CORE_CLIENT ? (const struct sockaddr *)&s->core.local_addr : NULL;
	return datachan_connect(s->dc, (enum dc_side)side, addr, src);
}

static int op_data_client_tls(void *io, int on)
{
	struct session *s = io;
	SSL *ssl = NULL;
	if (on) {
		ssl = tls_client_ssl(s->site->tls_server, s->sid_ctx, sizeof(s->sid_ctx),
		                     bufferevent_openssl_get_ssl(s->cbev));
		if (!ssl) {
			errno = ENOMEM;
			return -1;
		}
	}
	datachan_set_tls(s->dc, DC_CLIENT, ssl, 1, s->conf->tls_require_session_reuse);
	return 0;
}

static void op_data_start(void *io, int download)
{
	struct session *s = io;
	s->xfer_up = s->xfer_down = 0;
	if (s->dc && download)
		datachan_finish_on(s->dc, 1);
	if (s->dc)
		datachan_start(s->dc);
}

static void op_data_tls_go(void *io)
{
	struct session *s = io;
	if (s->dc)
		datachan_tls_go(s->dc);
}

static void op_data_drop(void *io)
{
	dc_drop(io);
}

static void op_client_tls_after_flush(void *io)
{
	struct session *s = io;
	/* Read nothing more in plaintext; once the 234 is on the wire (now, or
	 * in client_write_cb) the handshake starts. */
	bufferevent_disable(s->cbev, EV_READ);
	s->tls_after_flush = 1;
	/* Already sent (bev_send): no write will call back, so ask the loop
	 * for the callback (not now: an action never calls into the core). */
	if (evbuffer_get_length(bufferevent_get_output(s->cbev)) == 0)
		bufferevent_trigger(s->cbev, EV_WRITE,
		                    BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

/* Switch the backend control connection to TLS (after 234, or at once for implicit). */
static int op_backend_tls_start(void *io)
{
	struct session *s = io;
	struct bufferevent *bev = NULL;
	/* Nothing may be queued behind AUTH TLS: the proxy waited for its 234. */
	if (evbuffer_get_length(bufferevent_get_output(s->bbev)) == 0) {
		SSL *ssl = tls_backend_ssl(s->site->tls_client, s->conf->backend_tls_verify,
		                           s->srv->bc.host, NULL);
		if (ssl) {
			tls_track_session(ssl, &s->backend_sess);
			bev = bev_start_tls(s, s->bbev, ssl, BUFFEREVENT_SSL_CONNECTING);
		}
	}
	if (!bev)
		return -1;
	s->bbev = bev;
	bufferevent_setcb(bev, backend_read_cb, NULL, backend_event_cb, s);
	bufferevent_setwatermark(bev, EV_READ, 0, CLIENT_IN_HIGH);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	return 0;
}

static void op_go_blind_after_flush(void *io)
{
	struct session *s = io;
	bufferevent_disable(s->cbev, EV_READ);
	bufferevent_disable(s->bbev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(s->cbev)) == 0) {
		pt_go_blind(s);
		return;
	}
	s->blind_after_flush = 1; /* client_write_cb goes blind */
}

static void op_set_timer(void *io, uint64_t ms)
{
	struct session *s = io;
	struct timeval tv = {(time_t)(ms / 1000u), (suseconds_t)(ms % 1000u) * 1000};
	event_add(s->timer, &tv);
}

static void op_close(void *io, enum core_close how, const char *reason)
{
	struct session *s = io;
	if (how == CORE_CLOSE_NOW)
		session_end(s, "%s", reason);
	else
		session_close_after_flush(s, reason);
}

static void op_transfer_end(void *io, int code, enum xfer_result r)
{
	struct session *s = io;
	const struct core *c = &s->core;
	count_transfer(s, r);
	log_info("%s: transfer %s: %d, %.3f s, data up %llu down %llu", s->tag, c->xfer_cmd, code,
	         (double)(now_ms() - c->xfer_start_ms) / 1000.0, (unsigned long long)s->xfer_up,
	         (unsigned long long)s->xfer_down);
}

/* Routing by user: the core picked the route (-1: the site's own backend). */
static void op_route_connect(void *io, int route)
{
	struct session *s = io;
	s->route = route;
	connect_backend(s);
}

/* Brute-force protection: count the backend's 530s per client address, ban after too many. */
static void op_login_result(void *io, int ok)
{
	struct session *s = io;
	const struct site_conf *sc = s->conf;
	const struct sockaddr *a = (const struct sockaddr *)&s->client_addr;
	struct bans *b = s->site->gw->bans;
	char ip[ADDR_STR_MAX];

	if (!sc->max_login_failures || !b)
		return;
	uint64_t now = now_ms();
	struct ftpgate *gw = s->site->gw;
	pthread_mutex_lock(&gw->lock);
	if (ok) {
		bans_success(b, sc->name, a, now);
		pthread_mutex_unlock(&gw->lock);
		return;
	}
	int banned = bans_failure(b, sc->name, a, now, sc->max_login_failures,
	                          (uint64_t)sc->login_failure_window * 1000u,
	                          (uint64_t)sc->ban_time * 1000u);
	pthread_mutex_unlock(&gw->lock);
	if (banned) {
		log_warn("site %s: banned %s for %u s: %u failed logins within %u s", sc->name,
		         addr_str(a, ip, sizeof(ip), 0), sc->ban_time, sc->max_login_failures,
		         sc->login_failure_window);
		s->site->state->stats.bans++;
	}
	if (bans_check(b, sc->name, a, now, NULL))
		/* The 530 is queued: deliver it, then no more guesses on this connection. */
		session_close_after_flush(s, "client address banned after failed logins");
}

static uint64_t op_now_ms(void *io)
{
	(void)io;
	return now_ms();
}

static void op_pt_data_port(void *io, uint16_t port)
{
	pt_data_port(io, port);
}

static const struct core_ops session_ops = {
    .send_client = op_send_client,
    .send_backend = op_send_backend,
    .data_new = op_data_new,
    .data_listen = op_data_listen,
    .data_connect = op_data_connect,
    .data_client_tls = op_data_client_tls,
    .data_start = op_data_start,
    .data_tls_go = op_data_tls_go,
    .data_drop = op_data_drop,
    .client_tls_after_flush = op_client_tls_after_flush,
    .backend_tls_start = op_backend_tls_start,
    .go_blind_after_flush = op_go_blind_after_flush,
    .set_timer = op_set_timer,
    .close = op_close,
    .transfer_end = op_transfer_end,
    .route_connect = op_route_connect,
    .login_result = op_login_result,
    .now_ms = op_now_ms,
    .pt_data_port = op_pt_data_port,
};

/* ---- data pair events ----------------------------------------------------------------------- */

static void dc_side_ready(struct datachan *dc, enum dc_side side, int ok, const char *reason,
                          void *arg)
{
	struct session *s = arg;
	char why[160];
	(void)dc;

	if (s->dead)
		return;
	/* reason lives in dc, which the core may drop: copy it first. */
	snprintf(why, sizeof(why), "%s", ok ? "" : reason);
	core_data_side(&s->core, (enum core_side)side, ok, why);
	session_pump(s);
}

static void dc_done(struct datachan *dc, int ok, const char *reason, void *arg)
{
	struct session *s = arg;
	char why[160];

	(void)dc; /* s->dc */
	/* reason lives in dc: copy it before dc goes. */
	snprintf(why, sizeof(why), "%s", ok ? "" : reason);
	dc_release(s);
	if (!ok && (strstr(why, "TLS") || strstr(why, "SSL")))
		s->site->state->stats.tls_handshake_failures++;
	if (!ok && strcmp(why, DATACHAN_NO_REUSE) == 0)
		core_data_refused_no_reuse(&s->core, why);
	else
		core_data_done(&s->core, ok, why);
	session_pump(s);
}

/* ---- control connections -------------------------------------------------------------------- */

/* Complete replies from the backend, one at a time, while the core takes them. */
static void process_backend(struct session *s)
{
	char line[REPLY_LINE_MAX];
	char esc[160];

	while (!s->dead && !s->closing && s->bbev && core_wants_reply(&s->core)) {
		/* Fetched each time: a TLS upgrade replaces the bufferevent. */
		struct evbuffer *in = bufferevent_get_input(s->bbev);
		if (evbuffer_get_length(in) == 0)
			break;
		size_t eol_len = 0;
		struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		if (p.pos < 0) {
			if (evbuffer_get_length(in) >= sizeof(line))
				core_abort(&s->core,
				           "backend sent a reply line longer than 8192 bytes");
			break;
		}
		size_t n = (size_t)p.pos + eol_len;
		if (n > sizeof(line)) {
			core_abort(&s->core, "backend sent a reply line longer than 8192 bytes");
			return;
		}
		evbuffer_remove(in, line, n);
		enum ftp_reply_status st = ftp_reply_feed(&s->rasm, line, n);
		if (st == FTP_REPLY_BAD) {
			char why[256];
			snprintf(why, sizeof(why),
			         "malformed or oversized reply from backend: \"%s\"",
			         log_escape(esc, sizeof(esc), line, n));
			core_abort(&s->core, why);
			return;
		}
		evbuffer_add(s->reply, line, n);
		if (st == FTP_REPLY_DONE) {
			int code = s->rasm.code;
			ftp_reply_reset(&s->rasm);
			size_t len = evbuffer_get_length(s->reply);
			const char *rep = (const char *)evbuffer_pullup(s->reply, -1);
			core_backend_reply(&s->core, code, rep, len);
			if (s->reply)
				evbuffer_drain(s->reply, evbuffer_get_length(s->reply));
		}
	}
	/* The client does not read its replies: read no more of the backend's. */
	if (!s->dead && !s->closing && s->cbev && s->bbev &&
	    evbuffer_get_length(bufferevent_get_output(s->cbev)) > OUT_HIGH)
		bufferevent_disable(s->bbev, EV_READ);
}

/* Command lines from the client, one at a time, while the core takes them. */
static void process_client(struct session *s)
{
	char line[CORE_CMD_LINE_MAX + 1];

	while (!s->dead && !s->closing && s->cbev) {
		if (evbuffer_get_length(bufferevent_get_output(s->cbev)) > OUT_HIGH) {
			/* The client does not read its replies: read no more of its
			 * commands until it does (client_write_cb resumes). */
			bufferevent_disable(s->cbev, EV_READ);
			s->client_throttled = 1;
			break;
		}
		/* Fetched each time: AUTH TLS replaces the bufferevent. */
		struct evbuffer *in = bufferevent_get_input(s->cbev);
		size_t have = evbuffer_get_length(in);
		if (have == 0)
			break;
		size_t peek = have < 32 ? have : 32;
		if (!core_may_take_command(&s->core,
		                           (const char *)evbuffer_pullup(in, (ssize_t)peek), peek))
			break;
		size_t eol_len = 0;
		struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		if (p.pos < 0) {
			if (have > CORE_CMD_LINE_MAX) {
				s->discarding = 1;
				evbuffer_drain(in, have);
			}
			break;
		}
		size_t n = (size_t)p.pos + eol_len;
		if (s->discarding || n > CORE_CMD_LINE_MAX) {
			evbuffer_drain(in, n);
			s->discarding = 0;
			core_client_line_too_long(&s->core);
			continue;
		}
		evbuffer_remove(in, line, n);
		core_client_line(&s->core, line, n);
	}
}

/* After any event: take what the core is now ready for, from both sides. */
static void session_pump(struct session *s)
{
	process_backend(s);
	process_client(s);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	(void)fd;
	(void)what;

	if (s->dead || pt_timer(s))
		return;
	if (s->closing) {
		session_end(s, "%s (client did not read the last reply)", s->end_reason);
		return;
	}
	if (s->srv && !s->core.backend_up && !s->core.closing) {
		char why[64];
		snprintf(why, sizeof(why), "no connection within %u s", s->conf->connect_timeout);
		connect_failed(s, why);
		return;
	}
	if (core_transferring(&s->core) && (s->dc || s->n_fwds)) {
		/* A running transfer is not idleness: the data pair has its own
		 * timeout. Once the pair is gone, the backend's final reply is
		 * due like any other. */
		core_arm_idle(&s->core);
		return;
	}
	core_timer(&s->core);
}

static void client_read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	session_pump(arg);
}

static void client_write_cb(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;
	(void)bev;
	if (s->dead)
		return;
	if (s->closing) {
		session_end(s, "%s", s->end_reason);
		return;
	}
	if (s->tls_after_flush) {
		if (client_start_tls(s) < 0)
			session_end(s, "cannot start TLS: out of memory");
		return;
	}
	if (s->blind_after_flush) {
		pt_go_blind(s);
		return;
	}
	/* Backpressure relieved; but never read a backend still connecting:
	 * its greeting must come after the connect event. */
	if (s->bbev && s->core.backend_up)
		bufferevent_enable(s->bbev, EV_READ);
	if (s->client_throttled) {
		s->client_throttled = 0;
		bufferevent_enable(s->cbev, EV_READ);
		process_client(s);
	}
}

static void client_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;
	if (s->dead)
		return;
	if (what & BEV_EVENT_CONNECTED) {
		SSL *ssl = bufferevent_openssl_get_ssl(bev);
		if (ssl)
			log_debug("%s: client TLS: %s, %s%s", s->tag, SSL_get_version(ssl),
			          SSL_get_cipher_name(ssl),
			          SSL_session_reused(ssl) ? ", resumed" : "");
		return;
	}
	if (what & BEV_EVENT_EOF) {
		session_end(s, "client closed the connection");
		return;
	}
	unsigned long err = s->core.client_tls ? bufferevent_get_openssl_error(bev) : 0;
	if (err) {
		char e[256];
		tls_error_string(err, "TLS error", e, sizeof(e));
		while (bufferevent_get_openssl_error(bev))
			;
		session_end(s, "client TLS error: %s", e);
		return;
	}
	session_end(s, "client connection error: %s",
	            evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static void backend_read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	session_pump(arg);
}

/*
 * backend_proxy_protocol: the header goes first on the fresh connection,
 * before any FTP or TLS byte (so it is written at once, not queued behind
 * a TLS bufferevent). Returns 0, or -1 when the session was aborted.
 */
static int send_proxy_header(struct session *s, evutil_socket_t fd)
{
	unsigned char hdr[PP_MAX_HEADER];
	const struct sockaddr *src = (const struct sockaddr *)&s->client_addr;
	const struct sockaddr *dst = (const struct sockaddr *)&s->client_dst;
	int n = s->conf->backend_proxy_protocol == 1
	            ? pp_emit_v1((char *)hdr, sizeof(hdr), src, dst)
	            : pp_emit_v2(hdr, sizeof(hdr), src, dst);
	/* A fresh connection's send buffer takes a hundred bytes at once. */
	if (n < 0 || send(fd, hdr, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n) {
		core_abort(&s->core, "cannot send the PROXY protocol header to the backend");
		return -1;
	}
	return 0;
}

static void backend_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;
	char b[ADDR_STR_MAX], why[512];

	if (s->dead)
		return;
	addr_str((struct sockaddr *)&s->core.backend_addr, b, sizeof(b), 1);
	if (what & BEV_EVENT_CONNECTED) {
		SSL *ssl = bufferevent_openssl_get_ssl(bev);
		if (ssl) {
			/* The TLS handshake is through (not the TCP connect). */
			log_debug("%s: backend TLS: %s, %s", s->tag, SSL_get_version(ssl),
			          SSL_get_cipher_name(ssl));
			return;
		}
		int one = 1;
		setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (s->conf->backend_proxy_protocol &&
		    send_proxy_header(s, bufferevent_getfd(bev)) < 0)
			return;
		bufferevent_enable(bev, EV_READ);
		backend_connected(s->srv);
		core_backend_connected(&s->core);
		return;
	}
	if (s->core.backend_tls_up && !(what & BEV_EVENT_EOF)) {
		unsigned long err = bufferevent_get_openssl_error(bev);
		if (err) {
			char e[256];
			tls_error_string(err, "TLS error", e, sizeof(e));
			while (bufferevent_get_openssl_error(bev))
				;
			long vr = SSL_get_verify_result(bufferevent_openssl_get_ssl(bev));
			snprintf(why, sizeof(why), "backend %s TLS error: %s%s%s", b, e,
			         vr != X509_V_OK ? ": " : "",
			         vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "");
			core_abort(&s->core, why);
			return;
		}
	}
	if (!s->core.backend_up) {
		/* Refused or unreachable: the client has seen nothing yet. */
		connect_failed(s, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		return;
	}
	/* Whatever arrived before the close is still answered. */
	session_pump(s);
	if (s->dead || s->closing)
		return;
	if (what & BEV_EVENT_EOF)
		snprintf(why, sizeof(why), "backend %s closed the control connection", b);
	else
		snprintf(why, sizeof(why), "backend %s control connection error: %s", b,
		         evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
	core_abort(&s->core, why);
}

/* ---- connecting to a server of the pool ----------------------------------------------------- */

/* Servers the session may try: the site's pool, or its route's. */
static size_t pool_size(const struct session *s)
{
	return s->route < 0 ? s->conf->n_backends : s->conf->routes[s->route].n_backends;
}

/*
 * Connect to a server of the site's pool that is up and not yet tried by
 * this session. None left: 421 (the client has seen no reply before).
 */
static void connect_backend(struct session *s)
{
	char b[ADDR_STR_MAX];

	if (s->bbev)
		bufferevent_free(s->bbev);
	s->bbev = NULL;
	if (s->srv)
		backend_release(s->srv);
	s->srv =
	    backend_pick(s->site, s->route, (const struct sockaddr *)&s->client_addr, &s->tried);
	if (!s->srv) {
		log_warn("site %s: no backend server up (%zu configured, %d tried): 421 to %s",
		         s->conf->name, pool_size(s), __builtin_popcount(s->tried),
		         addr_str((struct sockaddr *)&s->client_addr, b, sizeof(b), 1));
		core_abort(&s->core, "cannot connect to backend: no server of the pool is up");
		return;
	}
	struct sockaddr_storage srv_addr;
	backend_addr(s->srv, &srv_addr);
	const struct sockaddr *addr = (const struct sockaddr *)&srv_addr;
	core_set_backend(&s->core, addr);
	s->bbev = bufferevent_socket_new(s->w->base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!s->bbev) {
		core_abort(&s->core, "cannot connect to backend: out of memory");
		return;
	}
	bufferevent_setcb(s->bbev, backend_read_cb, NULL, backend_event_cb, s);
	bufferevent_setwatermark(s->bbev, EV_READ, 0, CLIENT_IN_HIGH);
	if (bufferevent_socket_connect(s->bbev, addr, (int)addr_len(addr)) < 0) {
		connect_failed(s, strerror(errno)); /* recurses at most once per server */
		return;
	}
	session_set_timer(s, s->conf->connect_timeout);
}

/* The TCP connection to the chosen server failed or timed out: the next one. */
static void connect_failed(struct session *s, const char *why)
{
	backend_failed(s->srv);
	log_warn("%s: backend server %s: %s%s", s->tag, s->srv->bc.name, why,
	         pool_size(s) > 1 ? "; trying the next" : "");
	connect_backend(s);
}

/* ---- sessions ------------------------------------------------------------------------------- */

struct session *session_new(struct site *site, struct worker *w, evutil_socket_t fd,
                            const struct sockaddr *peer, int peerlen, const struct sockaddr *dst)
{
	struct ftpgate *gw = site->gw;
	struct sockaddr_storage local;
	socklen_t len;

	struct session *s = calloc(1, sizeof(*s));
	if (!s) {
		close(fd);
		return NULL;
	}
	s->site = site;
	s->conf = site->conf;
	s->w = w;
	s->start_fd = fd;
	s->id = ++gw->next_session_id;
	snprintf(s->tag, sizeof(s->tag), "%s/%llu", site->conf->name, (unsigned long long)s->id);
	s->start_ms = now_ms();
	site->n_sessions++;
	gw->n_sessions++;
	w->n_sessions++;
	s->next = w->sessions;
	if (s->next)
		s->next->prev = s;
	w->sessions = s;
	site->gen->refs++;
	site->state->stats.sessions_total++;
	memcpy(&s->client_addr, peer, (size_t)peerlen);
	ftp_addr_unmap(&s->client_addr);
	memset(&local, 0, sizeof(local));
	len = sizeof(local);
	getsockname(fd, (struct sockaddr *)&local, &len);
	ftp_addr_unmap(&local);
	memcpy(&s->client_dst, dst ? dst : (const struct sockaddr *)&local,
	       addr_len(dst ? dst : (const struct sockaddr *)&local));
	addr_set_port((struct sockaddr *)&local, 0);
	core_init(&s->core, s->conf, &session_ops, s, s->tag, (struct sockaddr *)&s->client_addr,
	          (struct sockaddr *)&local);
	return s;
}

void session_start(struct session *s)
{
	char c[ADDR_STR_MAX], l[ADDR_STR_MAX];
	int one = 1;
	evutil_socket_t fd = s->start_fd;

	s->start_fd = -1; /* the client bufferevent's from now on */
	/* Telnet "urgent" bytes (IP/DM before ABOR) stay in the stream. */
	setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	s->cbev = bufferevent_socket_new(s->w->base, fd, BEV_OPT_CLOSE_ON_FREE);
	s->timer = event_new(s->w->base, -1, 0, timer_cb, s);
	s->reaper = event_new(s->w->base, -1, 0, reaper_cb, s);
	s->reply = evbuffer_new();
	if (!s->cbev || !s->timer || !s->reaper || !s->reply) {
		log_error("out of memory for a new session");
		if (!s->cbev)
			close(fd);
		s->dead = 1;
		session_free(s);
		return;
	}
	bufferevent_setcb(s->cbev, client_read_cb, client_write_cb, client_event_cb, s);
	bufferevent_setwatermark(s->cbev, EV_READ, 0, CLIENT_IN_HIGH);
	bufferevent_enable(s->cbev, EV_READ | EV_WRITE);
	if (getrandom(s->sid_ctx, sizeof(s->sid_ctx), 0) != (ssize_t)sizeof(s->sid_ctx))
		memcpy(s->sid_ctx, &s->id, sizeof(s->id));
	if (s->conf->tls == TLS_IMPLICIT && client_start_tls(s) < 0) {
		log_error("%s: cannot start TLS: out of memory", s->tag);
		s->dead = 1;
		session_free(s);
		return;
	}
	if (s->conf->tls == TLS_PASSTHROUGH_IMPLICIT)
		/* The ClientHello waits in the kernel until the backend is there. */
		bufferevent_disable(s->cbev, EV_READ);

	char wk[24] = "";
	if (s->site->gw->n_workers > 1)
		snprintf(wk, sizeof(wk), " (worker %u)", s->w->index);
	log_info("%s: start: client %s to %s%s", s->tag,
	         addr_str((struct sockaddr *)&s->client_addr, c, sizeof(c), 1),
	         addr_str((struct sockaddr *)&s->core.local_addr, l, sizeof(l), 0), wk);
	s->route = -1;
	core_start(&s->core);
	if (s->core.route_state == RS_OFF)
		connect_backend(s); /* else once USER names the route */
	if (s->site->gw->draining)
		session_drain_check(s); /* handed over just before the shutdown began */
}

void session_discard(struct session *s)
{
	s->dead = 1;
	session_free(s);
}

void sessions_close_all(struct worker *w)
{
	while (w->sessions) {
		struct session *s = w->sessions;
		if (s->start_fd >= 0) {
			session_discard(s);
			continue;
		}
		session_end(s, "proxy shutting down");
		session_free(s);
	}
	if (w->index == 0)
		pt_close_all(w->gw);
}

unsigned sessions_count_ip(const struct site *site, const struct sockaddr *ip)
{
	const struct ftpgate *gw = site->gw;
	struct sockaddr_storage a;
	unsigned n = 0;

	memcpy(&a, ip, addr_len(ip));
	ftp_addr_unmap(&a);
	for (unsigned i = 0; i < gw->n_workers; i++)
		for (const struct session *s = gw->workers[i].sessions; s; s = s->next)
			if (s->site == site &&
			    ftp_addr_same_ip((const struct sockaddr *)&s->client_addr,
			                     (const struct sockaddr *)&a))
				n++;
	return n;
}

void sessions_drain(struct worker *w)
{
	struct session *next;
	/* The main thread links new sessions in at the head (under the lock);
	 * only this worker unlinks them. */
	pthread_mutex_lock(&w->gw->lock);
	struct session *first = w->sessions;
	pthread_mutex_unlock(&w->gw->lock);
	for (struct session *s = first; s; s = next) {
		next = s->next; /* ending does not unlink (the reaper does) */
		if (s->start_fd < 0)
			session_drain_check(s);
	}
}

/* ---- GET /sessions -------------------------------------------------------------------------- */

/* A transfer command is in hand: its data connections come up or move bytes. */
static int in_transfer(const struct core *c)
{
	return c->xs == XS_CONNECTING || core_transferring(c);
}

static const char *session_state(const struct session *s)
{
	const struct core *c = &s->core;
	if (s->dead || s->closing || c->closing)
		return "closing";
	if (s->blind)
		return "relay";
	if (c->route_state == RS_USER || (c->backend_up == 2 && !c->logged_in))
		return "login";
	if (c->backend_up < 2)
		return "connecting";
	return in_transfer(c) ? "transfer" : "idle";
}

/* What /sessions shows of one session, as of now (now_ms()). */
void session_info(const struct session *s, struct session_info *si, uint64_t now)
{
	const struct core *c = &s->core;
	memset(si, 0, sizeof(*si));
	si->id = s->id;
	snprintf(si->site, sizeof(si->site), "%s", s->conf->name);
	addr_str((const struct sockaddr *)&s->client_addr, si->client, sizeof(si->client), 1);
	snprintf(si->user, sizeof(si->user), "%s", c->user);
	if (s->srv)
		backend_name(s->srv, si->backend, sizeof(si->backend));
	si->state = session_state(s);
	si->tls = c->client_tls || s->blind || s->conf->tls == TLS_PASSTHROUGH_IMPLICIT;
	si->data_tls = c->client_prot_p;
	si->backend_tls = c->backend_tls_up;
	si->age_ms = now - s->start_ms;
	uint64_t up = s->dc ? datachan_bytes(s->dc, 0) : 0;
	uint64_t down = s->dc ? datachan_bytes(s->dc, 1) : 0;
	si->bytes_up = s->bytes_up + up;
	si->bytes_down = s->bytes_down + down;
	if (in_transfer(c) && !s->blind) {
		snprintf(si->xfer_cmd, sizeof(si->xfer_cmd), "%s", c->xfer_cmd);
		si->xfer_bytes = up + down;
		si->xfer_ms =
		    c->xfer_start_ms && now > c->xfer_start_ms ? now - c->xfer_start_ms : 0;
	}
}

/* The sessions of every worker, described each in its own thread. */
struct report {
	struct session_info *v;
	size_t n, cap;
	uint64_t now;
	int oom;
};

static void report_worker(struct worker *w, void *arg)
{
	struct report *r = arg;
	for (const struct session *s = w->sessions; s && !r->oom; s = s->next) {
		if (s->start_fd >= 0)
			continue; /* not started yet */
		if (r->n == r->cap) {
			size_t cap = r->cap ? 2 * r->cap : 64;
			struct session_info *v = realloc(r->v, cap * sizeof(*v));
			if (!v) {
				r->oom = 1;
				return;
			}
			r->v = v;
			r->cap = cap;
		}
		session_info(s, &r->v[r->n++], r->now);
	}
}

static int by_id(const void *a, const void *b)
{
	uint64_t x = ((const struct session_info *)a)->id, y = ((const struct session_info *)b)->id;
	return x < y ? -1 : x > y;
}

int sessions_report(void *arg, struct evbuffer *out, int table)
{
	struct ftpgate *gw = arg;
	struct report r = {.now = now_ms()};
	workers_run(gw, report_worker, &r);
	if (r.oom) {
		free(r.v);
		return -1;
	}
	if (r.n)
		qsort(r.v, r.n, sizeof(*r.v), by_id); /* oldest first */
	int rc = table ? sessinfo_table_head(out) : sessinfo_json_begin(out, PACKAGE_VERSION);
	for (size_t i = 0; i < r.n && rc == 0; i++)
		rc = table ? sessinfo_table_row(out, &r.v[i]) : sessinfo_json(out, &r.v[i], i == 0);
	if (rc == 0 && !table)
		rc = sessinfo_json_end(out, (unsigned)r.n);
	free(r.v);
	return rc;
}
