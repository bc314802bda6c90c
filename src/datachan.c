/* datachan: one data connection pair: accept / connect, the splice pump, the TLS pump (with
 * kernel TLS for sending where the kernel has it), EOF order. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

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
#define DC_ROUNDS 8          /* pipe loads or copies per callback: no transfer starves the loop */
#define DC_SMALL (16 * 1024) /* plain pairs copy reads of up to this much until one fills it */

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
	/* TLS pairs (any side with TLS): OpenSSL on the socket, see tls_service(). */
	SSL *ssl;
	int tls_server;
	int require_reuse;
	int hs_done;          /* TLS handshake complete (always 1 without TLS) */
	int want_rd, want_wr; /* TLS pump: what the last attempts waited for */
	int hs_hold;          /* TLS client: do not start the handshake yet */
	int rd_starved;       /* TLS: the last read wanted bytes from the socket */
	int ktls_tx;          /* the kernel encrypts: plaintext goes straight to the socket */
};

/* dir[0]: client -> backend, dir[1]: backend -> client. Source side of dir d is d. */
struct dc_dir {
	int pipe[2];
	size_t pipe_size;
	size_t in_pipe;
	int src_eof;
	int done;
	char *buf; /* TLS pump: bytes read from the source, not yet written */
	size_t buf_off, buf_len;
	char *small; /* plain pump, copying: the part of a read the sink did not take yet */
	size_t small_off, small_len;
	int big; /* a read was DC_SMALL: what follows goes through a pipe if one can be had */
	uint64_t bytes;
	uint64_t last_ms;   /* when bytes last moved (now_ms), 0 never */
	int notified;       /* TLS: close_notify sent, the EOF not passed on yet (kTLS sink) */
	unsigned settle_ms; /* kTLS sink: the next look at its send queue, 0 none yet */
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
	char reason[400];
	struct event *kick;            /* TLS pump: run again from the loop */
	stat_counter *refused;         /* counter of strangers turned away, or NULL */
	struct log_limit *refused_log; /* pace of their log lines, or NULL */
	int finish_dir;                /* delivering this direction ends the pair, or -1 */
	struct event *drain;           /* polls the sink's send queue of finish_dir */
	unsigned drain_ms;             /* the next poll's delay */
	int drain_outq;                /* unacknowledged bytes at the last poll, -1 none */
};

static const char *const side_name[] = {"client", "backend"};

/* [global] ktls: offer kernel TLS to OpenSSL on data connections. */
static _Atomic int use_ktls = 1;

void datachan_set_ktls(int on)
{
	use_ktls = on;
}

int datachan_ktls_available(char *why, size_t whylen)
{
	/* The tls ULP on a socket that is not connected: ENOTCONN means the
	 * kernel has it (and loaded the module, when it may), ENOENT not. */
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(why, whylen, "socket: %s", strerror(errno));
		return -1;
	}
	int r = setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls"));
	int e = errno;
	close(fd);
	if (r == 0 || e == ENOTCONN)
		return 1;
	snprintf(why, whylen, "%s", strerror(e));
	return e == ENOENT ? 0 : -1;
}

static void side_rd_cb(evutil_socket_t fd, short what, void *arg);
static void side_wr_cb(evutil_socket_t fd, short what, void *arg);

static void side_close(struct dc_end *s)
{
	if (s->ev_retry) {
		event_free(s->ev_retry);
		s->ev_retry = NULL;
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
	free(d->buf);
	d->buf = NULL;
	d->buf_off = d->buf_len = 0;
	free(d->small);
	d->small = NULL;
	d->small_off = d->small_len = 0;
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
	if (dc->kick) {
		event_free(dc->kick);
		dc->kick = NULL;
	}
	if (dc->drain) {
		event_free(dc->drain);
		dc->drain = NULL;
	}
}

/* Finish the pair; the callback is the last thing that touches dc. */
static void dc_finish(struct datachan *dc, int ok)
{
	/* Ended cleanly: the backend's new tickets may be used from now on. */
	for (int i = 0; ok && i < 2; i++)
		if (dc->side[i].ssl)
			tls_keep_sessions(dc->side[i].ssl);
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

static void drain_cb(evutil_socket_t fd, short what, void *arg);

/*
 * Direction finish_dir has passed its EOF on. The pair ends once its sink
 * has acknowledged every byte and the FIN (its send queue, SIOCOUTQ, is
 * empty), without waiting for the other direction's EOF: a client may wait
 * for the 226 before it closes its data connection. Polled, from 1 ms up
 * to 64 ms apart. Returns -1 if the pair finished (dc may be gone).
 */
static int drain_check(struct datachan *dc)
{
	struct dc_end *dst = &dc->side[1 - dc->finish_dir];
	int outq = 0, err = 0;
	socklen_t len = sizeof(err);

	if (ioctl(dst->fd, SIOCOUTQ, &outq) < 0 || outq <= 0) {
		/* The other direction ends here too: a TLS sink gets its
		 * close_notify (best effort), or OpenSSL takes the session for
		 * a broken one and the backend's next data connection cannot
		 * resume it. */
		struct dc_end *o = &dc->side[dc->finish_dir];
		if (!dc->dir[1 - dc->finish_dir].done && o->ssl && o->hs_done) {
			SSL_shutdown(o->ssl);
			ERR_clear_error();
		}
		dc_finish(dc, 1);
		return -1;
	}
	/* A reset peer never acknowledges the rest. */
	if (getsockopt(dst->fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err) {
		dc_fail(dc, "write to %s: %s", side_name[dst->idx], strerror(err));
		return -1;
	}
	if (!dc->drain) {
		dc->drain = evtimer_new(dc->base, drain_cb, dc);
		if (!dc->drain) {
			dc_fail(dc, "out of memory");
			return -1;
		}
		dc->drain_ms = 1;
	} else if (dc->drain_ms < 64) {
		dc->drain_ms *= 2;
	}
	dc->drain_outq = outq;
	struct timeval tv = {0, (suseconds_t)dc->drain_ms * 1000};
	evtimer_add(dc->drain, &tv);
	return 0;
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	drain_check(arg);
}

/* Direction d is done: finish the pair if that was all it waited for. Returns -1 if it did. */
static int dir_done(struct datachan *dc, int d)
{
	if (dc->dir[0].done && dc->dir[1].done) {
		dc_finish(dc, 1);
		return -1;
	}
	if (d == dc->finish_dir && !dc->drain)
		return drain_check(dc);
	return 0;
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
	/* Waiting for the send queue to drain: bytes acknowledged count as progress. */
	uint64_t total = dc->dir[0].bytes + dc->dir[1].bytes +
	                 (dc->drain_outq >= 0 ? (uint64_t)INT_MAX - (uint64_t)dc->drain_outq : 0);
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
	dc->finish_dir = -1;
	dc->drain_outq = -1;
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

static int tls_pump_begin(struct datachan *dc);

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
		return tls_pump_begin(dc);
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
			log_warn_limited(dc->refused_log, now_ms(),
			                 "%s: refused data connection from %s on port %u: not the "
			                 "session's %s %s",
			                 dc->tag,
			                 addr_str((struct sockaddr *)&peer, a, sizeof(a), 1),
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

void datachan_count_refused(struct datachan *dc, stat_counter *counter, struct log_limit *lim)
{
	dc->refused = counter;
	dc->refused_log = lim;
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

void datachan_finish_on(struct datachan *dc, int dir)
{
	dc->finish_dir = dir;
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

uint64_t datachan_last_ms(const struct datachan *dc, int dir)
{
	return dc->dir[dir].last_ms;
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

/*
 * The result n of one write (send or splice) into the sink of direction d:
 * 1 go on (bytes counted, or EINTR), 0 the sink is full (wait until it is
 * writable), -1 failed (reported, dc may be gone).
 */
static int sink_took(struct datachan *dc, int d, ssize_t n)
{
	struct dc_dir *dr = &dc->dir[d];
	struct dc_end *src = &dc->side[d], *dst = &dc->side[1 - d];
	if (n > 0) {
		dr->bytes += (uint64_t)n;
		dr->last_ms = now_ms();
		return 1;
	}
	if (n < 0 && errno == EINTR)
		return 1;
	if (n < 0 && errno == EAGAIN) {
		set_rd(src, 0);
		set_wr(dst, 1);
		return 0;
	}
	dc_fail(dc, "write to %s: %s", side_name[dst->idx],
	        n < 0 ? strerror(errno) : "no progress");
	return -1;
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
		/* What the sink did not take of a copy goes out before anything else. */
		while (dr->small_len > dr->small_off) {
			n = send(dst->fd, dr->small + dr->small_off, dr->small_len - dr->small_off,
			         MSG_NOSIGNAL | MSG_DONTWAIT);
			if (n > 0)
				dr->small_off += (size_t)n;
			if (sink_took(dc, d, n) <= 0)
				return;
		}
		free(dr->small); /* nothing is held between reads */
		dr->small = NULL;
		dr->small_off = dr->small_len = 0;
		while (dr->in_pipe > 0) {
			n = splice(dr->pipe[0], NULL, dst->fd, NULL, dr->in_pipe,
			           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n > 0)
				dr->in_pipe -= (size_t)n;
			if (sink_took(dc, d, n) <= 0)
				return;
		}
		if (dr->src_eof) {
			/* Every byte delivered: pass the EOF on. */
			shutdown(dst->fd, SHUT_WR);
			dr->done = 1;
			set_rd(src, 0);
			set_wr(dst, 0);
			dir_close(dr);
			dir_done(dc, d);
			return;
		}
		if (dr->pipe[0] < 0 && dr->big)
			(void)make_pipe(dr); /* tried after each full read; without one, copy on */
		if (dr->pipe[0] < 0) {
			/* No pipe (yet). Most pairs carry one direction only, and
			 * many transfers are small (a listing, a small file): they
			 * are copied (recv, then send), with no pipe. A read that
			 * fills the buffer means more is coming: from then on the
			 * direction splices through a pipe. The bytes are taken
			 * off the source at once, as splice does, so a pair torn
			 * down never leaves them unread in a socket. Without a
			 * pipe (out of descriptors: EMFILE) the copy goes on: a
			 * transfer already running is never cut for want of one
			 * (the soak's emfile fault found that). */
			char buf[DC_SMALL];
			n = recv(src->fd, buf, sizeof(buf), MSG_DONTWAIT);
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
			dr->big = (size_t)n == sizeof(buf);
			ssize_t k = send(dst->fd, buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (k < 0 && errno != EAGAIN && errno != EINTR) {
				sink_took(dc, d, k); /* fails the pair */
				return;
			}
			size_t put = k > 0 ? (size_t)k : 0;
			if (put)
				sink_took(dc, d, k);
			if (put < (size_t)n) {
				/* The sink is full: keep the rest and wait until it is
				 * writable (the loop's first step then sends it). */
				dr->small = malloc((size_t)n - put);
				if (!dr->small) {
					dc_fail(dc, "out of memory");
					return;
				}
				memcpy(dr->small, buf + put, (size_t)n - put);
				dr->small_len = (size_t)n - put;
				set_rd(src, 0);
				set_wr(dst, 1);
				return;
			}
			continue;
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
	if (dr->in_pipe > 0 || dr->small_len > dr->small_off) {
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

/* ---- TLS pairs: OpenSSL on the sockets, one buffer per direction ---------------------------- */

/*
 * A pair with a TLS side cannot splice: bytes pass through user space. Each
 * direction has one buffer, filled from its source (read(2) or SSL_read,
 * record after record) and drained into its sink (write(2) or SSL_write,
 * large writes cut into full 16 KiB records). One service routine runs on
 * every event of either socket and moves what it can; OpenSSL's WANT_READ /
 * WANT_WRITE decide which events to wait for next.
 */
#define DC_TLS_BUF (256 * 1024)
#define DC_TLS_ROUNDS 16
/* OpenSSL's socket I/O: one read(2) takes this much (many records, with
 * read-ahead), and records are gathered into writes of up to this much
 * (a buffering BIO): fewer system calls and larger TCP segments. */
#define DC_TLS_IO (128 * 1024)

void datachan_set_tls(struct datachan *dc, enum dc_side side, SSL *ssl, int server,
                      int require_reuse)
{
	struct dc_end *s = &dc->side[side];
	if (s->ssl)
		SSL_free(s->ssl);
	s->ssl = ssl;
	s->tls_server = server;
	s->require_reuse = require_reuse;
	/* As a TLS client the proxy speaks first; wait for datachan_tls_go(). */
	s->hs_hold = !server;
	/* Tickets from the backend count only once the pair ended cleanly
	 * (dc_finish); without memory for that they count at once. */
	if (!server)
		(void)tls_hold_sessions(ssl);
}

void datachan_tls_go(struct datachan *dc)
{
	int held = 0;
	for (int i = 0; i < 2; i++) {
		held |= dc->side[i].hs_hold;
		dc->side[i].hs_hold = 0;
	}
	/* Run from the loop, not from inside the caller's callback. By the
	 * kick timer: an event made active by hand is not put into epoll by
	 * an event_add() before its callback ran, and the pump's own
	 * bookkeeping would then wait for it for ever. */
	if (held && dc->pumping && dc->kick) {
		struct timeval now = {0, 0};
		evtimer_add(dc->kick, &now);
	}
}

/* IO_TRUNC: the TLS peer closed the TCP connection without close_notify. */
enum io_result { IO_OK, IO_EOF, IO_TRUNC, IO_WANT_READ, IO_WANT_WRITE, IO_ERROR };

/* Record why an OpenSSL call failed, for dc->reason. */
static enum io_result ssl_result(struct datachan *dc, struct dc_end *s, int r, const char *what)
{
	char e[200];
	int err = SSL_get_error(s->ssl, r);
	switch (err) {
	case SSL_ERROR_WANT_READ:
		return IO_WANT_READ;
	case SSL_ERROR_WANT_WRITE:
		return IO_WANT_WRITE;
	case SSL_ERROR_ZERO_RETURN:
		return IO_EOF;
	case SSL_ERROR_SYSCALL:
		if (errno == EAGAIN)
			return IO_WANT_READ;
		if (errno == 0) {
			ERR_clear_error();
			return IO_TRUNC;
		}
		snprintf(dc->reason, sizeof(dc->reason), "%s %s: %s", what, side_name[s->idx],
		         strerror(errno));
		break;
	case SSL_ERROR_SSL:
		if (ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
			ERR_clear_error();
			return IO_TRUNC;
		}
		/* fall through */
	default:
		tls_error_string(ERR_peek_last_error(), "TLS error", e, sizeof(e));
		snprintf(dc->reason, sizeof(dc->reason), "%s %s data connection: %s", what,
		         side_name[s->idx], e);
		break;
	}
	ERR_clear_error();
	return IO_ERROR;
}

static enum io_result end_read(struct datachan *dc, struct dc_end *s, char *buf, size_t len,
                               size_t *got)
{
	if (s->ssl) {
		int r = SSL_read(s->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
		if (r > 0) {
			*got = (size_t)r;
			return IO_OK;
		}
		return ssl_result(dc, s, r, "read from");
	}
	ssize_t r = read(s->fd, buf, len);
	if (r > 0) {
		*got = (size_t)r;
		return IO_OK;
	}
	if (r == 0)
		return IO_EOF;
	if (errno == EAGAIN || errno == EINTR)
		return IO_WANT_READ;
	snprintf(dc->reason, sizeof(dc->reason), "read from %s: %s", side_name[s->idx],
	         strerror(errno));
	return IO_ERROR;
}

static enum io_result end_write(struct datachan *dc, struct dc_end *s, const char *buf, size_t len,
                                size_t *put)
{
	/* With kernel TLS sending, application data is written as plaintext
	 * and the kernel cuts and encrypts the records (OpenSSL would write
	 * one 16 KiB record per write(2)); alerts still go through OpenSSL. */
	if (s->ssl && !s->ktls_tx) {
		int r = SSL_write(s->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
		if (r > 0) {
			*put = (size_t)r;
			return IO_OK;
		}
		return ssl_result(dc, s, r, "write to");
	}
	ssize_t r = send(s->fd, buf, len, MSG_NOSIGNAL);
	if (r >= 0) {
		*put = (size_t)r;
		return IO_OK;
	}
	if (errno == EAGAIN || errno == EINTR)
		return IO_WANT_WRITE;
	snprintf(dc->reason, sizeof(dc->reason), "write to %s: %s", side_name[s->idx],
	         strerror(errno));
	return IO_ERROR;
}

static void want(struct dc_end *s, enum io_result r)
{
	if (r == IO_WANT_READ)
		s->want_rd = 1;
	else if (r == IO_WANT_WRITE)
		s->want_wr = 1;
}

/*
 * A TLS peer closed direction d without close_notify. That loses nothing
 * only when d carried no byte and it is the answer to a transfer the other
 * way that has been delivered in full: a client that hangs up after its
 * download (with close_notify from the proxy) without saying goodbye.
 */
static int truncation_harmless(const struct datachan *dc, int d)
{
	const struct dc_dir *dr = &dc->dir[d], *other = &dc->dir[1 - d];
	return dr->bytes == 0 && dr->buf_len == 0 && other->done && other->bytes > 0;
}

/*
 * Push the records gathered in a TLS side's write buffer to its socket.
 * Returns IO_OK when none is left, IO_WANT_WRITE, or IO_ERROR (reason set).
 */
static enum io_result tls_flush(struct datachan *dc, struct dc_end *s)
{
	BIO *w = s->ssl ? SSL_get_wbio(s->ssl) : NULL;
	if (!w || BIO_wpending(w) == 0)
		return IO_OK;
	if (BIO_flush(w) > 0 && BIO_wpending(w) == 0)
		return IO_OK;
	if (BIO_should_retry(w))
		return IO_WANT_WRITE;
	snprintf(dc->reason, sizeof(dc->reason), "write to %s: %s", side_name[s->idx],
	         errno ? strerror(errno) : "failed");
	ERR_clear_error();
	return IO_ERROR;
}

/*
 * A plain source and a sink whose sending the kernel does (kTLS): the
 * bytes need not pass through user space, they are spliced through a
 * pipe into the TLS socket and the kernel encrypts them from the pages
 * (an offload download: plain backend, TLS client). Decided when the
 * pump first fills the direction; without a pipe (EMFILE) the direction
 * copies through its buffer as any TLS direction.
 */
static int ktls_splices(struct datachan *dc, int d)
{
	struct dc_dir *dr = &dc->dir[d];
	struct dc_end *src = &dc->side[d], *dst = &dc->side[1 - d];
	if (src->ssl || !dst->ktls_tx || dr->buf)
		return 0;
	return dr->pipe[0] >= 0 || make_pipe(dr) == 0;
}

/* One splice from the source into the pipe. IO_OK: go on; IO_WANT_READ: wait; IO_EOF: the
 * source ended (src_eof set); IO_ERROR: the pair failed (reported, dc is gone). */
static enum io_result ktls_splice_in(struct datachan *dc, int d, int *moved)
{
	struct dc_dir *dr = &dc->dir[d];
	struct dc_end *src = &dc->side[d];
	ssize_t n = splice(src->fd, NULL, dr->pipe[1], NULL, dr->pipe_size,
	                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	if (n > 0) {
		dr->in_pipe = (size_t)n;
		*moved = 1;
		return IO_OK;
	}
	if (n == 0) {
		dr->src_eof = 1;
		*moved = 1;
		return IO_EOF;
	}
	if (errno == EAGAIN || errno == EINTR) {
		src->want_rd = 1;
		return IO_WANT_READ;
	}
	snprintf(dc->reason, sizeof(dc->reason), "read from %s: %s", side_name[src->idx],
	         strerror(errno));
	dc_finish(dc, 0);
	return IO_ERROR;
}

/* Empty the pipe into the kTLS sink. IO_OK: empty; IO_WANT_WRITE: the sink is full; IO_ERROR:
 * the pair failed (reported, dc is gone). */
static enum io_result ktls_splice_out(struct datachan *dc, int d, int *moved)
{
	struct dc_dir *dr = &dc->dir[d];
	struct dc_end *dst = &dc->side[1 - d];
	while (dr->in_pipe > 0) {
		ssize_t n = splice(dr->pipe[0], NULL, dst->fd, NULL, dr->in_pipe,
		                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n > 0) {
			dr->in_pipe -= (size_t)n;
			dr->bytes += (uint64_t)n;
			dr->last_ms = now_ms();
			*moved = 1;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			dst->want_wr = 1;
			return IO_WANT_WRITE;
		}
		snprintf(dc->reason, sizeof(dc->reason), "write to %s: %s", side_name[dst->idx],
		         n < 0 ? strerror(errno) : "no progress");
		dc_finish(dc, 0);
		return IO_ERROR;
	}
	return IO_OK;
}

/*
 * Before the EOF goes to a kTLS sink: the kernel's TLS layer keeps records
 * it encrypted but could not hand to a full TCP send queue, and pushes them
 * from a work item once there is room; send(2) and splice(2) counted them
 * as written, SIOCOUTQ does not count them. A FIN before them makes their
 * push fail (EPIPE): the end of the transfer is lost (a review reproduced it
 * with a slow client). So the EOF waits until the send queue is empty at
 * two looks at least 1 ms apart (the work item runs as soon as an ACK makes
 * room). IO_OK: settled; IO_WANT_WRITE: look again (the kick timer is set).
 */
static enum io_result ktls_settled(struct datachan *dc, int d)
{
	struct dc_dir *dr = &dc->dir[d];
	struct dc_end *dst = &dc->side[1 - d];
	int outq = 0;
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	/* Only an open connection can still send: a peer that reset or closed
	 * it (an upload's client hangs up) leaves a queue that never empties;
	 * whether the bytes got there is for the drain to tell, as without. */
	if (getsockopt(dst->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ||
	    (ti.tcpi_state != TCP_ESTABLISHED && ti.tcpi_state != TCP_CLOSE_WAIT))
		return IO_OK;
	if (ioctl(dst->fd, SIOCOUTQ, &outq) < 0)
		return IO_OK; /* cannot tell: as before */
	if (outq > 0)
		dc->drain_outq = outq; /* acknowledged bytes are progress (tick_cb) */
	if (outq == 0 && dr->settle_ms == 1)
		return IO_OK; /* empty now and at the last look, a millisecond ago */
	if (outq > 0)
		dr->settle_ms = dr->settle_ms == 0   ? 2
		                : dr->settle_ms < 64 ? dr->settle_ms * 2
		                                     : 64;
	else
		dr->settle_ms = 1; /* empty: look once more */
	struct timeval tv = {0, (suseconds_t)dr->settle_ms * 1000};
	evtimer_add(dc->kick, &tv);
	return IO_WANT_WRITE;
}

/* Returns 1 if it moved something, 0 if it must wait, -1 if the pair failed (reported). */
static int tls_dir_step(struct datachan *dc, int d)
{
	struct dc_dir *dr = &dc->dir[d];
	struct dc_end *src = &dc->side[d], *dst = &dc->side[1 - d];
	int moved = 0;
	enum io_result r;

	if (dr->done)
		return 0;
	/* Drain what is buffered. */
	while (dr->buf_len > dr->buf_off && dst->hs_done) {
		size_t put = 0;
		r = end_write(dc, dst, dr->buf + dr->buf_off, dr->buf_len - dr->buf_off, &put);
		if (r == IO_OK) {
			dr->buf_off += put;
			dr->bytes += put;
			dr->last_ms = now_ms();
			moved = 1;
			continue;
		}
		if (r == IO_ERROR || r == IO_EOF || r == IO_TRUNC) {
			if (r != IO_ERROR)
				snprintf(dc->reason, sizeof(dc->reason),
				         "%s closed the data connection", side_name[dst->idx]);
			dc_finish(dc, 0);
			return -1;
		}
		want(dst, r);
		return moved;
	}
	if (dr->buf_len > dr->buf_off)
		return moved; /* the sink's handshake is not through yet */
	dr->buf_off = dr->buf_len = 0;
	/* What a spliced direction has in its pipe goes next. */
	if ((r = ktls_splice_out(dc, d, &moved)) != IO_OK)
		return r == IO_ERROR ? -1 : moved;
	/* Nothing more to write for now: what is gathered goes out. */
	if (dst->hs_done && (r = tls_flush(dc, dst)) != IO_OK) {
		if (r == IO_ERROR) {
			dc_finish(dc, 0);
			return -1;
		}
		want(dst, r);
		return moved;
	}
	if (dr->src_eof) {
		if (!dst->hs_done)
			return moved; /* never close_notify before the handshake is through */
		if (dst->ssl && !dr->notified)
			SSL_shutdown(dst->ssl); /* close_notify; best effort */
		dr->notified = 1;
		if (dst->ktls_tx && (r = ktls_settled(dc, d)) != IO_OK)
			return r == IO_ERROR ? -1 : moved;
		shutdown(dst->fd, SHUT_WR);
		dr->done = 1;
		dir_close(dr); /* its buffer or pipe */
		return dir_done(dc, d) < 0 ? -1 : 1;
	}
	if (!src->hs_done)
		return moved;
	/* A plain source waits for its TLS sink's handshake: whether the
	 * kernel took the sink's sending decides how the bytes move. */
	if (!src->ssl && dst->ssl && !dst->hs_done)
		return moved;
	if (ktls_splices(dc, d)) {
		/* Fill the pipe, then empty it into the kernel's TLS: one pipe
		 * load per step, tls_service's rounds are the budget. */
		if ((r = ktls_splice_in(dc, d, &moved)) == IO_OK)
			r = ktls_splice_out(dc, d, &moved);
		return r == IO_ERROR ? -1 : moved;
	}
	if (!dr->buf) {
		dr->buf = malloc(DC_TLS_BUF);
		if (!dr->buf) {
			snprintf(dc->reason, sizeof(dc->reason), "out of memory");
			dc_finish(dc, 0);
			return -1;
		}
	}
	/* Fill: several records per turn, so that writes are large. */
	while (dr->buf_len < DC_TLS_BUF) {
		size_t got = 0;
		r = end_read(dc, src, dr->buf + dr->buf_len, DC_TLS_BUF - dr->buf_len, &got);
		src->rd_starved = r == IO_WANT_READ;
		if (r == IO_OK) {
			dr->buf_len += got;
			moved = 1;
			continue;
		}
		if (r == IO_TRUNC && !truncation_harmless(dc, d)) {
			/* Whoever cut the connection may have cut the data: the
			 * transfer failed, and the other side gets no close_notify. */
			snprintf(dc->reason, sizeof(dc->reason),
			         "the %s closed its TLS data connection without close_notify "
			         "(truncated)",
			         side_name[src->idx]);
			dc_finish(dc, 0);
			return -1;
		}
		if (r == IO_EOF || r == IO_TRUNC) {
			dr->src_eof = 1;
			moved = 1;
			break;
		}
		if (r == IO_ERROR) {
			dc_finish(dc, 0);
			return -1;
		}
		want(src, r);
		break;
	}
	return moved;
}

/*
 * After the handshake: did OpenSSL hand the sending keys to the kernel
 * (kTLS)? Then the buffering BIO goes (the kernel takes plaintext, there
 * is nothing to gather) and the pump writes to the socket itself.
 */
static void ktls_check(struct datachan *dc, struct dc_end *s)
{
#ifdef SSL_OP_ENABLE_KTLS
	BIO *w = SSL_get_wbio(s->ssl);
	if (!w || !BIO_get_ktls_send(w))
		return;
	/* Only with nothing gathered: what is there must leave first, and
	 * OpenSSL's own writes keep the order then. */
	if (BIO_method_type(w) == BIO_TYPE_BUFFER && BIO_wpending(w) == 0 && BIO_next(w)) {
		BIO *sock = BIO_pop(w);      /* the chain's reference is ours now */
		SSL_set0_wbio(s->ssl, sock); /* frees the buffering BIO alone */
		w = sock;
	}
	s->ktls_tx = BIO_method_type(w) == BIO_TYPE_SOCKET;
	if (s->ktls_tx)
		log_debug("%s: data connection: kTLS on the %s side (the kernel encrypts)", dc->tag,
		          side_name[s->idx]);
#else
	(void)dc;
	(void)s;
#endif
}

/* Returns 1 if the handshake moved, 0 if it waits, -1 if the pair failed (reported). */
static int tls_handshake_step(struct datachan *dc, struct dc_end *s)
{
	if (s->hs_done || s->hs_hold)
		return 0;
	int r = SSL_do_handshake(s->ssl);
	if (r == 1) {
		s->hs_done = 1;
		ktls_check(dc, s);
		if (s->tls_server && s->require_reuse && !SSL_session_reused(s->ssl)) {
			snprintf(dc->reason, sizeof(dc->reason), "%s", DATACHAN_NO_REUSE);
			dc_finish(dc, 0);
			return -1;
		}
		return 1;
	}
	enum io_result res = ssl_result(dc, s, r, "handshake with");
	if (res == IO_ERROR || res == IO_EOF || res == IO_TRUNC) {
		if (res != IO_ERROR)
			snprintf(dc->reason, sizeof(dc->reason),
			         "%s closed the data connection during the TLS handshake",
			         side_name[s->idx]);
		dc_finish(dc, 0);
		return -1;
	}
	want(s, res);
	return 0;
}

/* Move what can be moved. Returns -1 if the pair finished or failed (dc is gone). */
static int tls_service(struct datachan *dc)
{
	int round;

	for (round = 0; round < DC_TLS_ROUNDS; round++) {
		int moved = 0, r;
		for (int i = 0; i < 2; i++)
			dc->side[i].want_rd = dc->side[i].want_wr = 0;
		for (int i = 0; i < 2; i++) {
			if (dc->side[i].ssl && (r = tls_handshake_step(dc, &dc->side[i])) != 0) {
				if (r < 0)
					return -1; /* dc is gone */
				moved = 1;
			}
		}
		for (int d = 0; d < 2; d++) {
			if ((r = tls_dir_step(dc, d)) < 0)
				return -1; /* dc is gone */
			moved |= r;
		}
		if (dc->dir[0].done && dc->dir[1].done) {
			dc_finish(dc, 1);
			return -1;
		}
		if (!moved)
			break;
	}
	if (round == DC_TLS_ROUNDS) {
		/* Budget used: come back from the loop instead of starving it.
		 * Wait for everything that can make progress; the events are
		 * level-triggered, so whatever is ready fires at once. */
		for (int i = 0; i < 2; i++) {
			dc->side[i].want_rd = 1;
			dc->side[i].want_wr = dc->dir[1 - i].buf_len > dc->dir[1 - i].buf_off ||
			                      dc->dir[1 - i].in_pipe > 0;
		}
	}
	int again = round == DC_TLS_ROUNDS;
	for (int i = 0; i < 2; i++) {
		struct dc_end *s = &dc->side[i];
		struct dc_dir *dr = &dc->dir[i];
		set_rd(s, s->want_rd);
		set_wr(s, s->want_wr);
		/* With read-ahead, OpenSSL may hold records (or the close_notify)
		 * that it already took off the socket: no socket event will
		 * announce them, so come back for them. Not when the last read
		 * wanted more from the socket: what is held is part of a record,
		 * and the socket event brings the rest. */
		if (s->ssl && s->hs_done && !dr->src_eof && dr->buf_len == dr->buf_off &&
		    !s->rd_starved && SSL_has_pending(s->ssl))
			again = 1;
	}
	if (again) {
		struct timeval now = {0, 0};
		evtimer_add(dc->kick, &now);
	}
	return 0;
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	tls_service(arg);
}

static void tls_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dc_end *s = arg;
	(void)fd;
	(void)what;
	tls_service(s->dc);
}

/*
 * Where kTLS is offered, OpenSSL reads through this BIO instead of a
 * socket BIO: it refuses the kernel's receiving (BIO_CTRL_SET_KTLS), so
 * only sending is offloaded. OpenSSL 3.0's kTLS receiving does not work
 * with Linux 6.x: the kernel marks only records that are not data with
 * their type, and OpenSSL then takes plaintext for a record header (TLS
 * 1.2 uploads failed with "wrong version number"; tests/integration/
 * test_ktls.sh). Reads like a socket BIO: recv(2), retry on EAGAIN,
 * EOF remembered for BIO_eof (OpenSSL's "unexpected EOF").
 */
static BIO_METHOD *recv_method;
static pthread_once_t recv_method_once = PTHREAD_ONCE_INIT;

static int recv_bio_read(BIO *b, char *out, int len)
{
	int fd = (int)(intptr_t)BIO_get_data(b);
	BIO_clear_retry_flags(b);
	ssize_t n = recv(fd, out, len > 0 ? (size_t)len : 0, 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		BIO_set_retry_read(b);
	else if (n == 0)
		BIO_set_flags(b, BIO_FLAGS_IN_EOF);
	return (int)n;
}

static long recv_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	(void)num;
	switch (cmd) {
	case BIO_C_GET_FD:
		if (ptr)
			*(int *)ptr = (int)(intptr_t)BIO_get_data(b);
		return (int)(intptr_t)BIO_get_data(b);
	case BIO_CTRL_EOF:
		return BIO_test_flags(b, BIO_FLAGS_IN_EOF) != 0;
	case BIO_CTRL_FLUSH:
		return 1;
	default:
		return 0; /* BIO_CTRL_SET_KTLS among them: no kernel receiving */
	}
}

static void recv_method_make(void)
{
	int idx = BIO_get_new_index();
	BIO_METHOD *m = idx > 0 ? BIO_meth_new(idx | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
	                                       "ftpgate socket reader")
	                        : NULL;
	if (m && (!BIO_meth_set_read(m, recv_bio_read) || !BIO_meth_set_ctrl(m, recv_bio_ctrl))) {
		BIO_meth_free(m);
		m = NULL;
	}
	recv_method = m; /* lives as long as the process */
}

static int tls_recv_bio(SSL *ssl, int fd)
{
	pthread_once(&recv_method_once, recv_method_make);
	BIO *b = recv_method ? BIO_new(recv_method) : NULL;
	if (!b)
		return -1;
	BIO_set_data(b, (void *)(intptr_t)fd);
	BIO_set_init(b, 1);
	SSL_set0_rbio(ssl, b); /* drops the old rbio's reference; the wbio keeps the socket BIO */
	return 0;
}

/*
 * Records are written into a buffering BIO in front of the socket and
 * leave in writes of up to DC_TLS_IO bytes: OpenSSL would write each 16 KiB
 * record with a write(2) of its own. The pump flushes it (tls_flush)
 * whenever it has nothing more to write; OpenSSL flushes it after its
 * handshake messages and alerts (close_notify).
 */
static int tls_gather_writes(SSL *ssl)
{
	BIO *sock = SSL_get_wbio(ssl);
	BIO *buf = BIO_new(BIO_f_buffer());
	if (!sock || !buf || BIO_set_write_buffer_size(buf, DC_TLS_IO) <= 0 || !BIO_up_ref(sock)) {
		BIO_free(buf);
		return -1;
	}
	BIO_push(buf, sock);
	SSL_set0_wbio(ssl, buf); /* drops the old reference to sock; buf holds one */
	return 0;
}

static int tls_pump_begin(struct datachan *dc)
{
	dc->pumping = 1;
	dc->progress_mark = 0;
	dc->kick = evtimer_new(dc->base, kick_cb, dc);
	if (!dc->kick) {
		snprintf(dc->reason, sizeof(dc->reason), "out of memory");
		dc_finish(dc, 0);
		return -1;
	}
	int ktls = use_ktls; /* once: a reload may change it meanwhile */
	(void)ktls;
	for (int i = 0; i < 2; i++) {
		struct dc_end *s = &dc->side[i];
		s->ev_rd = event_new(dc->base, s->fd, EV_READ | EV_PERSIST, tls_event_cb, s);
		s->ev_wr = event_new(dc->base, s->fd, EV_WRITE | EV_PERSIST, tls_event_cb, s);
		if (!s->ev_rd || !s->ev_wr) {
			snprintf(dc->reason, sizeof(dc->reason), "out of memory");
			dc_finish(dc, 0);
			return -1;
		}
		if (!s->ssl) {
			s->hs_done = 1;
			continue;
		}
		/* Data connections: keep OpenSSL's buffers (no malloc per
		 * record) and read whole socket buffers at once. A TCP close
		 * without close_notify is not the end of the data but a cut
		 * (IO_TRUNC). */
		SSL_clear_mode(s->ssl, SSL_MODE_RELEASE_BUFFERS);
		SSL_set_read_ahead(s->ssl, 1);
		SSL_set_default_read_buffer_len(s->ssl, DC_TLS_IO);
		if (!SSL_set_fd(s->ssl, s->fd) || tls_gather_writes(s->ssl) < 0) {
			snprintf(dc->reason, sizeof(dc->reason), "TLS setup failed");
			dc_finish(dc, 0);
			return -1;
		}
#ifdef SSL_OP_ENABLE_KTLS
		/* Kernel TLS where the kernel has it (the tls module), for
		 * sending: OpenSSL falls back to its own record layer by itself
		 * where it has not. Only with the reader that refuses kernel
		 * receiving in place (without it, no kTLS: never a failure). */
		if (ktls && tls_recv_bio(s->ssl, s->fd) == 0)
			SSL_set_options(s->ssl, SSL_OP_ENABLE_KTLS);
#endif
		if (s->tls_server)
			SSL_set_accept_state(s->ssl);
		else
			SSL_set_connect_state(s->ssl);
	}
	/* Start: the client side of a TLS handshake speaks first. */
	return tls_service(dc);
}
