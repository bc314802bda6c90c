/* datachan: one data connection pair: accept / connect, the splice pump, EOF order. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "datachan.h"
#include "ftp_addr.h"
#include "log.h"
#include "portpool.h"
#include "tls.h"
#include "util.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define DC_PIPE_SIZE (1024 * 1024)
#define DC_ROUNDS 8 /* pipe loads per callback, so one transfer cannot starve the loop */

enum side_state { SIDE_NONE = 0, SIDE_LISTEN, SIDE_CONNECTING, SIDE_UP, SIDE_FAILED };

struct dc_end {
	struct datachan *dc;
	enum dc_side idx;
	enum side_state state;
	int fd;  /* connected (or connecting) socket */
	int lfd; /* listening socket */
	struct event *ev_rd, *ev_wr;
	struct event *ev_retry; /* re-listen after running out of descriptors */
	int rd_on, wr_on;
	struct sockaddr_storage allowed;
	uint16_t port; /* listening port, for logs */
	/* TLS sides (and, in a pair with any TLS side, every side) use a bufferevent. */
	SSL *ssl;
	int tls_server;
	int require_reuse;
	int hs_done; /* TLS handshake complete (always 1 without TLS) */
	struct bufferevent *bev;
};

/* dir[0]: client -> backend, dir[1]: backend -> client. Source side of dir d is d. */
struct dc_dir {
	int pipe[2];
	size_t pipe_size;
	size_t in_pipe;
	int src_eof;
	int done;
	int finish_pending; /* EOF to pass on once the sink's handshake is done */
	uint64_t bytes;
};

struct datachan {
	struct event_base *base;
	unsigned timeout_s;
	struct datachan_cbs cbs;
	void *arg;
	char tag[48];
	struct dc_end side[2];
	struct dc_dir dir[2];
	struct event *timer;
	int started;
	int pumping;
	uint64_t progress_mark;
	int ticks_waiting;
	char reason[160];
	uint64_t *refused; /* counter of strangers turned away, or NULL */
};

static const char *const side_name[] = {"client", "backend"};

static void side_rd_cb(evutil_socket_t fd, short what, void *arg);
static void side_wr_cb(evutil_socket_t fd, short what, void *arg);

static void side_close(struct dc_end *s)
{
	if (s->ev_retry) {
		event_free(s->ev_retry);
		s->ev_retry = NULL;
	}
	if (s->bev) {
		/* Owns the socket and the SSL. */
		bufferevent_free(s->bev);
		s->bev = NULL;
		s->ssl = NULL;
		s->fd = -1;
	}
	if (s->ssl) {
		SSL_free(s->ssl);
		s->ssl = NULL;
	}
	if (s->ev_rd)
		event_free(s->ev_rd);
	if (s->ev_wr)
		event_free(s->ev_wr);
	s->ev_rd = s->ev_wr = NULL;
	s->rd_on = s->wr_on = 0;
	if (s->fd >= 0)
		close(s->fd);
	if (s->lfd >= 0)
		close(s->lfd);
	s->fd = s->lfd = -1;
}

static void dir_close(struct dc_dir *d)
{
	if (d->pipe[0] >= 0)
		close(d->pipe[0]);
	if (d->pipe[1] >= 0)
		close(d->pipe[1]);
	d->pipe[0] = d->pipe[1] = -1;
}

/* Release every descriptor and event; the object itself stays until datachan_free. */
static void dc_release(struct datachan *dc)
{
	for (int i = 0; i < 2; i++) {
		side_close(&dc->side[i]);
		dir_close(&dc->dir[i]);
	}
	if (dc->timer) {
		event_free(dc->timer);
		dc->timer = NULL;
	}
}

/* Finish the pair; the callback is the last thing that touches dc. */
static void dc_finish(struct datachan *dc, int ok)
{
	dc_release(dc);
	dc->pumping = 0;
	dc->cbs.done(dc, ok, ok ? NULL : dc->reason, dc->arg);
}

static void dc_fail(struct datachan *dc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void dc_fail(struct datachan *dc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(dc->reason, sizeof(dc->reason), fmt, ap);
	va_end(ap);
	dc_finish(dc, 0);
}

static void set_rd(struct dc_end *s, int on)
{
	if (on == s->rd_on || !s->ev_rd)
		return;
	if (on)
		event_add(s->ev_rd, NULL);
	else
		event_del(s->ev_rd);
	s->rd_on = on;
}

static void set_wr(struct dc_end *s, int on)
{
	if (on == s->wr_on || !s->ev_wr)
		return;
	if (on)
		event_add(s->ev_wr, NULL);
	else
		event_del(s->ev_wr);
	s->wr_on = on;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct datachan *dc = arg;
	(void)fd;
	(void)what;

	if (dc->side[0].state != SIDE_UP || dc->side[1].state != SIDE_UP) {
		for (int i = 0; i < 2; i++)
			if (dc->side[i].state == SIDE_LISTEN ||
			    dc->side[i].state == SIDE_CONNECTING) {
				dc_fail(dc, "timed out waiting for the %s data connection",
				        side_name[i]);
				return;
			}
		return;
	}
	uint64_t total = dc->dir[0].bytes + dc->dir[1].bytes;
	if (total == dc->progress_mark) {
		dc_fail(dc, "data connection idle for %u s", dc->timeout_s);
		return;
	}
	dc->progress_mark = total;
}

struct datachan *datachan_new(struct event_base *base, unsigned timeout_s,
                              const struct datachan_cbs *cbs, void *arg, const char *tag)
{
	struct datachan *dc = calloc(1, sizeof(*dc));
	if (!dc)
		return NULL;
	dc->base = base;
	dc->timeout_s = timeout_s;
	dc->cbs = *cbs;
	dc->arg = arg;
	snprintf(dc->tag, sizeof(dc->tag), "%s", tag);
	for (int i = 0; i < 2; i++) {
		dc->side[i].dc = dc;
		dc->side[i].idx = (enum dc_side)i;
		dc->side[i].fd = dc->side[i].lfd = -1;
		dc->dir[i].pipe[0] = dc->dir[i].pipe[1] = -1;
	}
	if (timeout_s == 0)
		return dc; /* no timeout: the owner watches */
	dc->timer = event_new(base, -1, EV_PERSIST, tick_cb, dc);
	struct timeval tv = {(time_t)timeout_s, 0};
	if (!dc->timer || event_add(dc->timer, &tv) < 0) {
		datachan_free(dc);
		return NULL;
	}
	return dc;
}

void datachan_free(struct datachan *dc)
{
	if (!dc)
		return;
	dc_release(dc);
	free(dc);
}

static int bev_pump_begin(struct datachan *dc);

/* The stall timeout counts from now, not from when the pair was set up. */
static void restart_timer(struct datachan *dc)
{
	if (dc->timer) {
		struct timeval tv = {(time_t)dc->timeout_s, 0};
		event_add(dc->timer, &tv);
	}
}

/*
 * Start moving bytes. Returns 0, or -1 when it failed: then the done
 * callback has run and dc may be gone.
 */
static int pump_begin(struct datachan *dc)
{
	restart_timer(dc);
	if (dc->side[0].ssl || dc->side[1].ssl)
		return bev_pump_begin(dc);
	dc->pumping = 1;
	dc->progress_mark = 0;
	for (int i = 0; i < 2; i++) {
		struct dc_end *s = &dc->side[i];
		s->ev_rd = event_new(dc->base, s->fd, EV_READ | EV_PERSIST, side_rd_cb, s);
		s->ev_wr = event_new(dc->base, s->fd, EV_WRITE | EV_PERSIST, side_wr_cb, s);
		if (!s->ev_rd || !s->ev_wr) {
			dc_fail(dc, "out of memory");
			return -1;
		}
	}
	set_rd(&dc->side[0], 1);
	set_rd(&dc->side[1], 1);
	return 0;
}

/* A side is up: start pumping if everything is ready, then tell the owner. */
static void side_up(struct datachan *dc, struct dc_end *s)
{
	s->state = SIDE_UP;
	if (dc->started && dc->side[0].state == SIDE_UP && dc->side[1].state == SIDE_UP &&
	    pump_begin(dc) < 0)
		return; /* failed, reported, dc may be gone */
	dc->cbs.side_ready(dc, s->idx, 1, NULL, dc->arg);
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dc_end *s = arg;
	(void)fd;
	(void)what;
	if (s->state == SIDE_LISTEN)
		set_rd(s, 1);
}

static void accept_cb(evutil_socket_t lfd, short what, void *arg)
{
	struct dc_end *s = arg;
	struct datachan *dc = s->dc;
	(void)what;

	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage peer;
		socklen_t plen = sizeof(peer);
		int fd =
		    accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
				return;
			/* Out of descriptors: the pending connection stays queued;
			 * listen again in a second instead of spinning on it. */
			log_warn("%s: accept on data port %u: %s; pausing 1 s", dc->tag, s->port,
			         strerror(errno));
			set_rd(s, 0);
			if (!s->ev_retry)
				s->ev_retry = evtimer_new(dc->base, accept_retry_cb, s);
			struct timeval tv = {1, 0};
			if (s->ev_retry)
				evtimer_add(s->ev_retry, &tv);
			return;
		}
		ftp_addr_unmap(&peer);
		if (!ftp_addr_same_ip((struct sockaddr *)&peer, (struct sockaddr *)&s->allowed)) {
			char a[ADDR_STR_MAX], b[ADDR_STR_MAX];
			log_warn("%s: refused data connection from %s on port %u: not the "
			         "session's %s %s",
			         dc->tag, addr_str((struct sockaddr *)&peer, a, sizeof(a), 1),
			         s->port, side_name[s->idx],
			         addr_str((struct sockaddr *)&s->allowed, b, sizeof(b), 0));
			close(fd);
			if (dc->refused)
				(*dc->refused)++;
			continue;
		}
		/* The right peer: the listener has served its purpose. */
		event_free(s->ev_rd);
		s->ev_rd = NULL;
		s->rd_on = 0;
		close(s->lfd);
		s->lfd = -1;
		s->fd = fd;
		log_debug("%s: %s data connection accepted on port %u", dc->tag, side_name[s->idx],
		          s->port);
		side_up(dc, s);
		return;
	}
}

int datachan_listen(struct datachan *dc, enum dc_side side, const struct sockaddr *addr,
                    uint16_t lo, uint16_t hi, const struct sockaddr *allowed, uint16_t *port)
{
	struct dc_end *s = &dc->side[side];
	if (s->state != SIDE_NONE)
		return -1;
	s->lfd = portpool_listen(lo, hi, addr, port);
	if (s->lfd < 0)
		return -1;
	s->port = *port;
	memcpy(&s->allowed, allowed, addr_len(allowed));
	ftp_addr_unmap(&s->allowed);
	s->ev_rd = event_new(dc->base, s->lfd, EV_READ | EV_PERSIST, accept_cb, s);
	if (!s->ev_rd) {
		side_close(s);
		return -1;
	}
	set_rd(s, 1);
	s->state = SIDE_LISTEN;
	return 0;
}

static void connect_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dc_end *s = arg;
	struct datachan *dc = s->dc;
	int err = 0;
	socklen_t len = sizeof(err);
	(void)what;

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	event_free(s->ev_wr);
	s->ev_wr = NULL;
	s->wr_on = 0;
	if (err) {
		snprintf(dc->reason, sizeof(dc->reason), "connect to %s data port: %s",
		         side_name[s->idx], strerror(err));
		close(s->fd);
		s->fd = -1;
		s->state = SIDE_FAILED;
		dc->cbs.side_ready(dc, s->idx, 0, dc->reason, dc->arg);
		return;
	}
	side_up(dc, s);
}

int datachan_connect(struct datachan *dc, enum dc_side side, const struct sockaddr *addr,
                     const struct sockaddr *src)
{
	struct dc_end *s = &dc->side[side];
	if (s->state != SIDE_NONE)
		return -1;
	s->fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd < 0)
		return -1;
	if (src && src->sa_family == addr->sa_family) {
		struct sockaddr_storage b;
		memcpy(&b, src, addr_len(src));
		addr_set_port((struct sockaddr *)&b, 0);
		int one = 1;
		setsockopt(s->fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (bind(s->fd, (struct sockaddr *)&b, addr_len(src)) < 0) {
			int e = errno;
			close(s->fd);
			s->fd = -1;
			errno = e;
			return -1;
		}
	}
	if (connect(s->fd, addr, addr_len(addr)) < 0 && errno != EINPROGRESS) {
		int e = errno;
		close(s->fd);
		s->fd = -1;
		errno = e;
		return -1;
	}
	s->ev_wr = event_new(dc->base, s->fd, EV_WRITE, connect_cb, s);
	if (!s->ev_wr) {
		close(s->fd);
		s->fd = -1;
		return -1;
	}
	event_add(s->ev_wr, NULL);
	s->wr_on = 1;
	s->state = SIDE_CONNECTING;
	return 0;
}

void datachan_count_refused(struct datachan *dc, uint64_t *counter)
{
	dc->refused = counter;
}

int datachan_adopt(struct datachan *dc, enum dc_side side, int fd)
{
	struct dc_end *s = &dc->side[side];
	if (s->state != SIDE_NONE)
		return -1;
	s->fd = fd;
	s->state = SIDE_UP;
	return 0;
}

int datachan_side_connected(const struct datachan *dc, enum dc_side side)
{
	return dc->side[side].state == SIDE_UP;
}

void datachan_start(struct datachan *dc)
{
	dc->started = 1;
	if (!dc->pumping && dc->side[0].state == SIDE_UP && dc->side[1].state == SIDE_UP)
		pump_begin(dc);
}

uint64_t datachan_bytes(const struct datachan *dc, int dir)
{
	return dc->dir[dir].bytes;
}

static int make_pipe(struct dc_dir *d)
{
	if (pipe2(d->pipe, O_NONBLOCK | O_CLOEXEC) < 0)
		return -1;
	/* Big pipes mean fewer, larger splices (measured: 1 MiB costs about
	 * 30 % less CPU per GiB than 256 KiB). An unprivileged user past
	 * pipe-user-pages-soft gets smaller ones: take what is allowed. */
	int sz = fcntl(d->pipe[1], F_SETPIPE_SZ, DC_PIPE_SIZE);
	if (sz < 0)
		sz = fcntl(d->pipe[1], F_SETPIPE_SZ, DC_PIPE_SIZE / 4);
	if (sz < 0)
		sz = fcntl(d->pipe[1], F_GETPIPE_SZ);
	d->pipe_size = sz > 0 ? (size_t)sz : 65536;
	return 0;
}

/* Move bytes of direction d until the source is empty or the sink is full. */
static void pump(struct datachan *dc, int d)
{
	struct dc_dir *dr = &dc->dir[d];
	struct dc_end *src = &dc->side[d], *dst = &dc->side[1 - d];
	ssize_t n;

	if (dr->done)
		return;
	for (int round = 0; round < DC_ROUNDS; round++) {
		while (dr->in_pipe > 0) {
			n = splice(dr->pipe[0], NULL, dst->fd, NULL, dr->in_pipe,
			           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n > 0) {
				dr->in_pipe -= (size_t)n;
				dr->bytes += (uint64_t)n;
				continue;
			}
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno == EAGAIN) {
				set_rd(src, 0);
				set_wr(dst, 1);
				return;
			}
			dc_fail(dc, "write to %s: %s", side_name[dst->idx],
			        n < 0 ? strerror(errno) : "no progress");
			return;
		}
		if (dr->src_eof) {
			/* Every byte delivered: pass the EOF on. */
			shutdown(dst->fd, SHUT_WR);
			dr->done = 1;
			set_rd(src, 0);
			set_wr(dst, 0);
			dir_close(dr);
			if (dc->dir[0].done && dc->dir[1].done)
				dc_finish(dc, 1);
			return;
		}
		if (dr->pipe[0] < 0) {
			/* No pipe yet: most pairs carry one direction only, so a
			 * pipe is made only once the first byte arrives. */
			char c;
			n = recv(src->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
			if (n == 0) {
				dr->src_eof = 1;
				continue;
			}
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					goto wait_src;
				dc_fail(dc, "read from %s: %s", side_name[src->idx],
				        strerror(errno));
				return;
			}
			if (make_pipe(dr) < 0) {
				dc_fail(dc, "pipe: %s", strerror(errno));
				return;
			}
		}
		n = splice(src->fd, NULL, dr->pipe[1], NULL, dr->pipe_size,
		           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n > 0) {
			dr->in_pipe = (size_t)n;
			continue;
		}
		if (n == 0) {
			dr->src_eof = 1;
			continue;
		}
		if (errno == EAGAIN || errno == EINTR)
			goto wait_src;
		dc_fail(dc, "read from %s: %s", side_name[src->idx], strerror(errno));
		return;
	}
	/* Budget used up: come back from the loop (both events are level-triggered). */
	if (dr->in_pipe > 0) {
		set_rd(src, 0);
		set_wr(dst, 1);
		return;
	}
wait_src:
	set_wr(dst, 0);
	set_rd(src, 1);
}

static void side_rd_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dc_end *s = arg;
	(void)fd;
	(void)what;
	pump(s->dc, (int)s->idx);
}

static void side_wr_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dc_end *s = arg;
	(void)fd;
	(void)what;
	pump(s->dc, 1 - (int)s->idx);
}

/* ---- TLS pairs: bufferevents through OpenSSL ----------------------------------------------- */

#define DC_BEV_HIGH (256 * 1024)

void datachan_set_tls(struct datachan *dc, enum dc_side side, SSL *ssl, int server,
                      int require_reuse)
{
	struct dc_end *s = &dc->side[side];
	if (s->ssl)
		SSL_free(s->ssl);
	s->ssl = ssl;
	s->tls_server = server;
	s->require_reuse = require_reuse;
}

static void bev_finish_dir(struct datachan *dc, int d)
{
	struct dc_end *dst = &dc->side[1 - d];
	struct dc_dir *dr = &dc->dir[d];

	if (dst->ssl && !dst->hs_done) {
		/* Never send close_notify before the handshake is through. */
		dr->finish_pending = 1;
		return;
	}
	dr->finish_pending = 0;
	if (dst->ssl)
		SSL_shutdown(dst->ssl); /* close_notify */
	shutdown(bufferevent_getfd(dst->bev), SHUT_WR);
	dr->done = 1;
	if (dc->dir[0].done && dc->dir[1].done)
		dc_finish(dc, 1);
}

static void bev_read_cb(struct bufferevent *bev, void *arg)
{
	struct dc_end *s = arg;
	struct datachan *dc = s->dc;
	struct dc_end *dst = &dc->side[1 - s->idx];
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t n = evbuffer_get_length(in);

	evbuffer_add_buffer(bufferevent_get_output(dst->bev), in);
	dc->dir[s->idx].bytes += n;
	if (evbuffer_get_length(bufferevent_get_output(dst->bev)) >= DC_BEV_HIGH)
		bufferevent_disable(bev, EV_READ);
}

/* The output toward this side drained below the low mark. */
static void bev_write_cb(struct bufferevent *bev, void *arg)
{
	struct dc_end *s = arg;
	struct datachan *dc = s->dc;
	int d = 1 - (int)s->idx; /* the direction that writes to s */

	if (dc->dir[d].done)
		return;
	if (dc->dir[d].src_eof) {
		if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
			bev_finish_dir(dc, d);
		return;
	}
	bufferevent_enable(dc->side[d].bev, EV_READ);
}

static void bev_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct dc_end *s = arg;
	struct datachan *dc = s->dc;
	char e[256];

	if (what & BEV_EVENT_CONNECTED) {
		s->hs_done = 1;
		if (s->tls_server && s->require_reuse && !SSL_session_reused(s->ssl)) {
			dc_fail(dc,
			        "the %s data connection did not resume the control connection's "
			        "TLS session",
			        side_name[s->idx]);
			return;
		}
		/* An EOF that waited for this handshake can go on now. */
		int d = 1 - (int)s->idx;
		if (dc->dir[d].finish_pending &&
		    evbuffer_get_length(bufferevent_get_output(bev)) == 0)
			bev_finish_dir(dc, d);
		return;
	}
	if (what & BEV_EVENT_EOF) {
		int d = (int)s->idx;
		struct dc_end *dst = &dc->side[1 - d];
		if (!s->hs_done && s->ssl) {
			dc_fail(dc, "%s closed the data connection during the TLS handshake",
			        side_name[s->idx]);
			return;
		}
		dc->dir[d].src_eof = 1;
		bufferevent_disable(bev, EV_READ);
		if (!dc->dir[d].done && evbuffer_get_length(bufferevent_get_output(dst->bev)) == 0)
			bev_finish_dir(dc, d);
		return;
	}
	unsigned long err = s->ssl ? bufferevent_get_openssl_error(bev) : 0;
	if (err)
		tls_error_string(err, "TLS error", e, sizeof(e));
	else
		snprintf(e, sizeof(e), "%s",
		         EVUTIL_SOCKET_ERROR()
		             ? evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR())
		             : "connection error");
	while ((err = bufferevent_get_openssl_error(bev)) != 0)
		;
	dc_fail(dc, "%s data connection: %s", side_name[s->idx], e);
}

static int bev_pump_begin(struct datachan *dc)
{
	dc->pumping = 1;
	dc->progress_mark = 0;
	for (int i = 0; i < 2; i++) {
		struct dc_end *s = &dc->side[i];
		if (s->ssl) {
			s->bev = bufferevent_openssl_socket_new(
			    dc->base, s->fd, s->ssl,
			    s->tls_server ? BUFFEREVENT_SSL_ACCEPTING : BUFFEREVENT_SSL_CONNECTING,
			    BEV_OPT_CLOSE_ON_FREE);
			if (s->bev)
				bufferevent_openssl_set_allow_dirty_shutdown(s->bev, 1);
		} else {
			s->bev = bufferevent_socket_new(dc->base, s->fd, BEV_OPT_CLOSE_ON_FREE);
			s->hs_done = 1;
		}
		if (!s->bev) {
			/* libevent has freed the SSL (and may have closed the
			 * socket) on this failure: forget both, never twice. */
			s->ssl = NULL;
			s->fd = -1;
			dc_fail(dc, "out of memory");
			return -1;
		}
		s->fd = -1; /* the bufferevent owns it now */
		bufferevent_setcb(s->bev, bev_read_cb, bev_write_cb, bev_event_cb, s);
		bufferevent_setwatermark(s->bev, EV_WRITE, DC_BEV_HIGH / 2, 0);
	}
	for (int i = 0; i < 2; i++)
		bufferevent_enable(dc->side[i].bev, EV_READ | EV_WRITE);
	return 0;
}
