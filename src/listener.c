/*
 * listener: control listeners, accept, global and per-site session limits,
 * and the PROXY protocol header a balancer sends before anything else
 * (struct pp_wait: one connection whose header is still being read).
 */
#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "access.h"
#include "ftp_addr.h"
#include "listener.h"
#include "log.h"
#include "proxyproto.h"
#include "session.h"
#include "util.h"
#include "worker.h"

static void refuse(evutil_socket_t fd, const char *why)
{
	static const char msg[] = "421 Too many connections, try again later.\r\n";
	/* Best effort: a fresh socket has room for one line. */
	ssize_t r = send(fd, msg, sizeof(msg) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
	(void)r;
	(void)why;
	close(fd);
}

/* A client may start a session: the limits, with its real address. */
static void admit(struct site *site, evutil_socket_t fd, const struct sockaddr *peer,
                  const struct sockaddr *dst)
{
	struct ftpgate *gw = site->gw;
	char a[ADDR_STR_MAX];

	if (gw->draining) {
		close(fd);
		return;
	}
	if (!acl_permits(site->conf, peer)) {
		/* Not a byte: a refused address learns nothing, not even that FTP is here. */
		log_debug("site %s: closed %s: refused by allow/deny", site->conf->name,
		          addr_str(peer, a, sizeof(a), 1));
		site->state->stats.acl_refused++;
		close(fd);
		return;
	}
	/* Checked and counted under the lock: the limits are exact whichever
	 * worker the sessions run in (only this thread admits). */
	pthread_mutex_lock(&gw->lock);
	const char *limit = NULL;
	unsigned open_now = 0;
	if (site->conf->max_login_failures && gw->bans &&
	    bans_check(gw->bans, site->conf->name, peer, now_ms(), NULL)) {
		pthread_mutex_unlock(&gw->lock);
		/* Logged once, when the ban began. */
		log_debug("site %s: closed %s: banned", site->conf->name,
		          addr_str(peer, a, sizeof(a), 1));
		site->state->stats.ban_refused++;
		close(fd);
		return;
	}
	if (gw->n_sessions >= gw->conf->max_sessions) {
		limit = "global max_sessions";
		open_now = gw->n_sessions;
	} else if (site->conf->max_sessions && site->n_sessions >= site->conf->max_sessions) {
		limit = "site max_sessions";
		open_now = site->n_sessions;
	} else if (site->conf->max_sessions_per_ip &&
	           (open_now = sessions_count_ip(site, peer)) >= site->conf->max_sessions_per_ip) {
		limit = "max_sessions_per_ip";
	}
	if (limit) {
		pthread_mutex_unlock(&gw->lock);
		if (strcmp(limit, "max_sessions_per_ip") == 0)
			log_warn("site %s: refused %s: max_sessions_per_ip (%u) reached",
			         site->conf->name, addr_str(peer, a, sizeof(a), 1),
			         site->conf->max_sessions_per_ip);
		else
			log_warn("site %s: refused %s: %u sessions open (%s)", site->conf->name,
			         addr_str(peer, a, sizeof(a), 1), open_now, limit);
		site->state->stats.sessions_refused++;
		refuse(fd, limit);
		return;
	}
	struct worker *w = worker_pick(gw, site);
	struct session *s = session_new(site, w, fd, peer, (int)addr_len(peer), dst);
	pthread_mutex_unlock(&gw->lock);
	if (s)
		worker_hand(w, s);
}

/* ---- PROXY protocol header ------------------------------------------------------------------ */

/* A connection from a trusted balancer whose PROXY header is being read. */
struct pp_wait {
	struct pp_wait *next, *prev; /* in gw->pp_waits */
	struct site *site;
	evutil_socket_t fd;
	struct event *ev; /* readable, or connect_timeout */
	struct sockaddr_storage peer;
	unsigned char buf[PP_MAX_HEADER];
	size_t len;
	size_t want; /* bytes the parser may read next without reading past the header */
};

static void pp_wait_free(struct pp_wait *w, int close_fd)
{
	struct ftpgate *gw = w->site->gw;
	struct gen *gen = w->site->gen;
	if (w->prev)
		w->prev->next = w->next;
	else
		gw->pp_waits = w->next;
	if (w->next)
		w->next->prev = w->prev;
	if (w->ev)
		event_free(w->ev);
	if (close_fd)
		close(w->fd);
	free(w);
	gen_release(gw, gen);
}

static void pp_refuse(struct pp_wait *w, const char *why)
{
	char a[ADDR_STR_MAX];
	log_warn("site %s: closed %s: PROXY protocol: %s", w->site->conf->name,
	         addr_str((struct sockaddr *)&w->peer, a, sizeof(a), 1), why);
	w->site->state->stats.proxy_refused++;
	pp_wait_free(w, 1);
}

static void pp_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pp_wait *w = arg;
	struct pp_header h;

	if (what & EV_TIMEOUT) {
		pp_refuse(w, w->len ? "header incomplete within connect_timeout"
		                    : "no header within connect_timeout");
		return;
	}
	/* Read no byte past the header: what follows is the client's (FTP or TLS). */
	ssize_t n = recv(fd, w->buf + w->len, w->want, 0);
	if (n == 0) {
		pp_refuse(w, w->len ? pp_strerror(PP_E_TRUNCATED) : "closed before the header");
		return;
	}
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return;
		pp_refuse(w, strerror(errno));
		return;
	}
	w->len += (size_t)n;
	int rc = pp_parse(w->buf, w->len, w->site->conf->proxy_protocol, &h);
	if (rc == 0) {
		w->want = h.want;
		return;
	}
	if (rc < 0) {
		pp_refuse(w, pp_strerror(rc));
		return;
	}
	struct site *site = w->site;
	struct sockaddr_storage src, dst;
	const struct sockaddr *dstp = NULL;
	if (h.command == PP_CMD_PROXY && (h.family == AF_INET || h.family == AF_INET6)) {
		memcpy(&src, &h.src, sizeof(src));
		memcpy(&dst, &h.dst, sizeof(dst));
		ftp_addr_unmap(&src);
		ftp_addr_unmap(&dst);
		dstp = (const struct sockaddr *)&dst;
	} else {
		/* LOCAL (the balancer's own health check) or no address: the
		 * connection is the balancer's own. */
		memcpy(&src, &w->peer, sizeof(src));
	}
	pthread_mutex_lock(&site->gw->lock);
	site->gen->refs++; /* w's reference goes with w */
	pthread_mutex_unlock(&site->gw->lock);
	pp_wait_free(w, 0);
	admit(site, fd, (const struct sockaddr *)&src, dstp);
	gen_release(site->gw, site->gen);
}

/* A connection to a proxy_protocol site: only trusted balancers may send a header. */
static void pp_wait_start(struct site *site, evutil_socket_t fd, const struct sockaddr *peer)
{
	const struct site_conf *sc = site->conf;
	struct pp_wait *w = calloc(1, sizeof(*w));
	char a[ADDR_STR_MAX];

	int trusted = 0;
	for (size_t i = 0; i < sc->n_proxy_trusted && !trusted; i++)
		trusted = cidr_match(&sc->proxy_trusted[i], peer);
	if (!trusted) {
		log_warn("site %s: closed %s: not in proxy_trusted (PROXY protocol site)", sc->name,
		         addr_str(peer, a, sizeof(a), 1));
		site->state->stats.proxy_refused++;
		free(w);
		close(fd);
		return;
	}
	if (!w) {
		close(fd);
		return;
	}
	w->site = site;
	w->fd = fd;
	struct pp_header h0;
	pp_parse(w->buf, 0, sc->proxy_protocol, &h0); /* how much to read first */
	w->want = h0.want ? h0.want : 1;
	memcpy(&w->peer, peer, addr_len(peer));
	w->ev = event_new(site->gw->base, fd, EV_READ | EV_PERSIST, pp_read_cb, w);
	struct timeval tv = {(time_t)sc->connect_timeout, 0};
	if (!w->ev || event_add(w->ev, &tv) < 0) {
		if (w->ev)
			event_free(w->ev);
		free(w);
		close(fd);
		return;
	}
	w->next = site->gw->pp_waits;
	if (w->next)
		w->next->prev = w;
	site->gw->pp_waits = w;
	pthread_mutex_lock(&site->gw->lock);
	site->gen->refs++;
	pthread_mutex_unlock(&site->gw->lock);
}

void listeners_close_pending(struct ftpgate *gw)
{
	while (gw->pp_waits)
		pp_wait_free(gw->pp_waits, 1);
}

static void accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *peer,
                      int peerlen, void *arg)
{
	struct site *site = arg;
	struct sockaddr_storage p;
	(void)lev;

	memcpy(&p, peer, (size_t)peerlen < sizeof(p) ? (size_t)peerlen : sizeof(p));
	ftp_addr_unmap(&p);
	if (site->conf->proxy_protocol)
		pp_wait_start(site, fd, (struct sockaddr *)&p);
	else
		admit(site, fd, (struct sockaddr *)&p, NULL);
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct site *site = arg;
	(void)fd;
	(void)what;
	for (size_t i = 0; i < site->n_listeners; i++)
		if (site->listeners[i])
			evconnlistener_enable(site->listeners[i]);
	for (size_t i = 0; i < site->n_pt_ports; i++)
		if (site->pt_ports[i].lev)
			evconnlistener_enable(site->pt_ports[i].lev);
}

/* accept() failed: out of descriptors slows accepting down instead of spinning. */
static void error_cb(struct evconnlistener *lev, void *arg)
{
	struct site *site = arg;
	int err = EVUTIL_SOCKET_ERROR();
	(void)lev;

	log_warn("site %s: accept: %s; pausing new connections for 1 s", site->conf->name,
	         evutil_socket_error_to_string(err));
	for (size_t i = 0; i < site->n_listeners; i++)
		if (site->listeners[i])
			evconnlistener_disable(site->listeners[i]);
	struct timeval tv = {1, 0};
	event_add(site->resume_accept, &tv);
}

static int open_one(struct site *site, const struct sockaddr *addr)
{
	char a[ADDR_STR_MAX];
	int one = 1;

	int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (addr->sa_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, addr, addr_len(addr)) < 0 || listen(fd, 511) < 0)
		goto fail;
	struct evconnlistener *lev =
	    evconnlistener_new(site->gw->base, accept_cb, site, LEV_OPT_CLOSE_ON_FREE, -1, fd);
	if (!lev)
		goto fail;
	evconnlistener_set_error_cb(lev, error_cb);
	site->listeners[site->n_listeners++] = lev;
	log_info("site %s: listening on %s", site->conf->name, addr_str(addr, a, sizeof(a), 1));
	return 0;
fail:
	log_error("site %s: cannot listen on %s: %s", site->conf->name,
	          addr_str(addr, a, sizeof(a), 1), strerror(errno));
	if (fd >= 0)
		close(fd);
	return -1;
}

/* Passthrough data port: forward to the backend's same port, for known clients only. */
static void pt_accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *peer,
                         int peerlen, void *arg)
{
	struct pt_port *pp = arg;
	char a[ADDR_STR_MAX];
	(void)lev;
	(void)peerlen;

	if (!acl_permits(pp->site->conf, peer)) {
		log_debug("site %s: closed data connection from %s: refused by allow/deny",
		          pp->site->conf->name, addr_str(peer, a, sizeof(a), 1));
		pp->site->state->stats.acl_refused++;
		close(fd);
		return;
	}
	const char *why = NULL;
	if (session_pt_data(pp->site, fd, peer, pp->port, &why) == 0)
		return;
	if (why) {
		pp->site->state->stats.data_refused++;
		log_warn_limited(&pp->site->state->refused_log, now_ms(),
		                 "site %s: refused data connection from %s to port %u: %s",
		                 pp->site->conf->name, addr_str(peer, a, sizeof(a), 1), pp->port,
		                 why);
	}
	close(fd);
}

/* accept() on a passthrough data port failed: pause those ports too, never spin. */
static void pt_error_cb(struct evconnlistener *lev, void *arg)
{
	struct pt_port *pp = arg;
	struct site *site = pp->site;
	(void)lev;

	log_warn("site %s: accept on passthrough data port %u: %s; pausing 1 s", site->conf->name,
	         pp->port, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
	for (size_t i = 0; i < site->n_pt_ports; i++)
		if (site->pt_ports[i].lev)
			evconnlistener_disable(site->pt_ports[i].lev);
	struct timeval tv = {1, 0};
	event_add(site->resume_accept, &tv);
}

/* One passthrough data port listener on ss (address and port), or NULL (logged). */
static struct evconnlistener *open_pt_port(struct site *site, const struct sockaddr_storage *ss)
{
	char a[ADDR_STR_MAX];
	int one = 1;
	struct pt_port *pp = &site->pt_ports[site->n_pt_ports];

	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss->ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)ss, addr_len((const struct sockaddr *)ss)) < 0 ||
	    listen(fd, 64) < 0)
		goto fail;
	struct evconnlistener *lev =
	    evconnlistener_new(site->gw->base, pt_accept_cb, pp, LEV_OPT_CLOSE_ON_FREE, -1, fd);
	if (lev) {
		evconnlistener_set_error_cb(lev, pt_error_cb);
		return lev;
	}
fail:
	log_error("site %s: cannot listen on passthrough data port %s: %s", site->conf->name,
	          addr_str((const struct sockaddr *)ss, a, sizeof(a), 1), strerror(errno));
	if (fd >= 0)
		close(fd);
	return NULL;
}

static int same_addr(const struct sockaddr *a, const struct sockaddr *b)
{
	return ftp_addr_same_ip(a, b) && addr_port(a) == addr_port(b);
}

/* A passthrough port listener of `from` bound to ss, taken away from it, or NULL. */
static struct evconnlistener *take_pt_port(struct gen *from, const struct sockaddr_storage *ss)
{
	for (size_t k = 0; from && k < from->n_sites; k++) {
		struct site *os = &from->sites[k];
		for (size_t m = 0; m < os->n_pt_ports; m++) {
			struct pt_port *op = &os->pt_ports[m];
			if (op->lev && same_addr((const struct sockaddr *)&op->addr,
			                         (const struct sockaddr *)ss)) {
				struct evconnlistener *lev = op->lev;
				op->lev = NULL;
				return lev;
			}
		}
	}
	return NULL;
}

/*
 * Listen on every passive port of a passthrough site, on every listen
 * address, taking over the listeners `from` (a reload's old configuration,
 * or NULL) already has. With strict, the first port that cannot be bound is
 * an error (start-up); otherwise it is logged and skipped (reload).
 */
static int open_pt_ports(struct site *site, struct gen *from, int strict)
{
	const struct site_conf *sc = site->conf;
	size_t n = (size_t)(sc->pasv_hi - sc->pasv_lo + 1) * sc->n_listen;

	site->pt_ports = calloc(n, sizeof(*site->pt_ports));
	if (!site->pt_ports) {
		log_error("site %s: out of memory for passthrough ports", sc->name);
		return -1;
	}
	for (size_t j = 0; j < sc->n_listen; j++) {
		for (unsigned p = sc->pasv_lo; p <= sc->pasv_hi; p++) {
			struct pt_port *pp = &site->pt_ports[site->n_pt_ports];
			memcpy(&pp->addr, &sc->listen[j], sizeof(pp->addr));
			addr_set_port((struct sockaddr *)&pp->addr, (uint16_t)p);
			pp->site = site;
			pp->port = (uint16_t)p;
			pp->lev = take_pt_port(from, &pp->addr);
			if (pp->lev) {
				evconnlistener_set_cb(pp->lev, pt_accept_cb, pp);
				evconnlistener_set_error_cb(pp->lev, pt_error_cb);
				/* It may be paused (EMFILE): the old site's resume
				 * timer goes with the old site. */
				evconnlistener_enable(pp->lev);
			} else {
				pp->lev = open_pt_port(site, &pp->addr);
				if (!pp->lev && strict)
					return -1;
			}
			site->n_pt_ports++;
		}
	}
	log_info("site %s: forwarding passive ports %u-%u 1:1 to the backend", sc->name,
	         sc->pasv_lo, sc->pasv_hi);
	return 0;
}

int listeners_open(struct ftpgate *gw)
{
	for (size_t i = 0; i < gw->n_sites; i++) {
		struct site *site = &gw->sites[i];
		site->resume_accept = evtimer_new(gw->base, resume_cb, site);
		if (!site->resume_accept)
			return -1;
		for (size_t j = 0; j < site->conf->n_listen; j++)
			if (open_one(site, (const struct sockaddr *)&site->conf->listen[j]) < 0)
				return -1;
		if (tls_is_passthrough(site->conf->tls) && open_pt_ports(site, NULL, 1) < 0)
			return -1;
	}
	return 0;
}

void listeners_close(struct ftpgate *gw)
{
	for (size_t i = 0; i < gw->n_sites; i++) {
		struct site *site = &gw->sites[i];
		for (size_t j = 0; j < site->n_listeners; j++)
			if (site->listeners[j])
				evconnlistener_free(site->listeners[j]);
		site->n_listeners = 0;
		for (size_t j = 0; j < site->n_pt_ports; j++)
			if (site->pt_ports[j].lev)
				evconnlistener_free(site->pt_ports[j].lev);
		free(site->pt_ports);
		site->pt_ports = NULL;
		site->n_pt_ports = 0;
		if (site->resume_accept)
			event_free(site->resume_accept);
		site->resume_accept = NULL;
	}
}

void listeners_move(struct ftpgate *gw, struct gen *from, struct gen *to)
{
	(void)gw;
	for (size_t i = 0; i < to->n_sites; i++) {
		struct site *site = &to->sites[i];
		site->resume_accept = evtimer_new(site->gw->base, resume_cb, site);
		for (size_t j = 0; j < site->conf->n_listen; j++) {
			const struct sockaddr *want =
			    (const struct sockaddr *)&site->conf->listen[j];
			struct evconnlistener *got = NULL;
			for (size_t k = 0; k < from->n_sites && !got; k++) {
				struct site *os = &from->sites[k];
				for (size_t m = 0; m < os->n_listeners; m++) {
					if (os->listeners[m] &&
					    same_addr(
					        want,
					        (const struct sockaddr *)&os->conf->listen[m])) {
						got = os->listeners[m];
						os->listeners[m] = NULL;
						break;
					}
				}
			}
			if (got) {
				evconnlistener_set_cb(got, accept_cb, site);
				evconnlistener_set_error_cb(got, error_cb);
				evconnlistener_enable(got);
				site->listeners[site->n_listeners++] = got;
			} else if (open_one(site, want) < 0) {
				/* Keep the slot index = listen index for later reloads. */
				site->listeners[site->n_listeners++] = NULL;
			}
		}
		if (!tls_is_passthrough(site->conf->tls))
			continue;
		/* Passthrough data ports: take over the same (address, port). */
		open_pt_ports(site, from, 0);
	}
	/* Whatever was not taken over closes now. */
	struct ftpgate tmp;
	memset(&tmp, 0, sizeof(tmp));
	tmp.sites = from->sites;
	tmp.n_sites = from->n_sites;
	listeners_close(&tmp);
}
