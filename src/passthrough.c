/*
 * passthrough: what a TLS passthrough session does once the proxy can no
 * longer read it. Owns the blind relay of the control connection (after
 * the backend's 234, or from the first byte for implicit FTPS), the data
 * connections forwarded 1:1 to the backend's same port (struct pt_fwd, in
 * gw->pt_fwds), the choice of the session a forwarded connection belongs
 * to, and the record of failed forwards and bans per address (struct
 * pt_guard).
 *
 * Passthrough sessions all live in worker 0, the main thread's loop, with
 * the forwarded port listeners (worker_pick()): the choice of the session
 * a forwarded connection belongs to reads their state, so it stays in one
 * thread. The blind relay is a plain splice, cheap per byte.
 * May not touch: the protocol state (struct core: before the relay goes
 * blind, passthrough's command policy lives in session_core.c) or the
 * session's control bufferevents other than handing their sockets over.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "datachan.h"
#include "ftp_addr.h"
#include "log.h"
#include "session.h"
#include "session_int.h"
#include "util.h"
#include "worker.h"

#define PT_FWD_MAX 8           /* forwards credited to one session at once */
#define PT_WINDOW_MS 5000      /* blind: backend->client control bytes at most this old */
#define PT_GUARD_SLOTS 256     /* addresses whose failed forwards are remembered */
#define PT_FAIL_BURST 10       /* failed forwards an address may have in a row ... */
#define PT_FAIL_REFILL_MS 1000 /* ... and one more a second; then: */
#define PT_BAN_MS 60000        /* banned (blind forwards refused) this long */

/*
 * A data connection forwarded 1:1 to the backend's same port. Owned by
 * gw->pt_fwds, not by a session: the proxy cannot tell for sure which of
 * several blind sessions of one address a connection belongs to, so the
 * end of the session it was credited to must not cut it (the backend ends
 * a data connection its own session no longer wants; data_timeout bounds
 * the rest).
 */
struct pt_fwd {
	struct pt_fwd *next, *prev;
	struct ftpgate *gw;
	struct session *s;        /* credited with its bytes; NULL once that session ended */
	struct site_state *state; /* counters of the site's name */
	struct datachan *dc;
	struct sockaddr_storage ip; /* the client's address (failures count against it) */
	uint64_t counted[2];        /* bytes already credited */
	uint16_t port;
	char tag[96]; /* the credited session's, for log lines */
};

/* Failed forwards per client address: a token bucket, then a ban. Bounded. */
struct pt_guard_slot {
	struct sockaddr_storage ip; /* ss_family 0: free */
	unsigned tokens;
	uint64_t refill_ms;    /* when tokens were last topped up */
	uint64_t banned_until; /* now_ms() clock; 0: not banned */
};

struct pt_guard {
	struct pt_guard_slot slot[PT_GUARD_SLOTS];
};

static uint64_t blind_bytes(const struct session *s)
{
	return datachan_bytes(s->blind, 0) + datachan_bytes(s->blind, 1);
}

static void blind_side_ready(struct datachan *dc, enum dc_side side, int ok, const char *reason,
                             void *arg)
{
	(void)dc;
	(void)side;
	(void)ok;
	(void)reason;
	(void)arg;
}

static void blind_done(struct datachan *dc, int ok, const char *reason, void *arg)
{
	struct session *s = arg;
	char why[200];
	(void)dc;
	snprintf(why, sizeof(why), "control relay ended: %s", ok ? "closed by both sides" : reason);
	session_end(s, "%s", why);
}

/*
 * Hand both control sockets to a blind splice relay: after the backend's 234
 * (explicit) or from the start (implicit). What the client sent before the
 * handshake is dropped (plaintext injection); nothing is parsed any more.
 */
void pt_go_blind(struct session *s)
{
	static const struct datachan_cbs cbs = {blind_side_ready, blind_done};
	struct bufferevent *bevs[2] = {s->cbev, s->bbev};
	int fds[2];

	for (int i = 0; i < 2; i++) {
		struct evbuffer *in = bufferevent_get_input(bevs[i]);
		size_t junk = evbuffer_get_length(in);
		if (junk) {
			log_warn("%s: dropped %zu bytes the %s sent before the TLS handshake",
			         s->tag, junk, i ? "backend" : "client");
			evbuffer_drain(in, junk);
		}
		fds[i] = bufferevent_getfd(bevs[i]);
		bufferevent_disable(bevs[i], EV_READ | EV_WRITE);
		bufferevent_setfd(bevs[i], -1);
		bufferevent_free(bevs[i]);
	}
	s->cbev = s->bbev = NULL;
	s->blind_after_flush = 0;
	s->blind = datachan_new(s->w->base, 0, &cbs, s, s->tag);
	if (!s->blind) {
		close(fds[0]);
		close(fds[1]);
		session_end(s, "out of memory");
		return;
	}
	datachan_adopt(s->blind, DC_CLIENT, fds[0]);
	datachan_adopt(s->blind, DC_BACKEND, fds[1]);
	datachan_start(s->blind);
	s->blind_mark = 0;
	log_debug("%s: control connection relayed blindly from here on", s->tag);
	session_set_timer(s, s->conf->idle_timeout);
}

int pt_timer(struct session *s)
{
	if (!s->blind)
		return 0;
	/* Idle: no control byte and no forwarded data connection. */
	uint64_t moved = blind_bytes(s);
	if (moved == s->blind_mark && !s->n_fwds) {
		log_info("%s: idle for %u s", s->tag, s->conf->idle_timeout);
		session_end(s, "idle timeout");
		return 1;
	}
	s->blind_mark = moved;
	session_set_timer(s, s->conf->idle_timeout);
	return 1;
}

/* Credit a forward's new bytes to its session, or to the site's counters once it ended. */
static void fwd_account(struct pt_fwd *f)
{
	uint64_t now[2] = {datachan_bytes(f->dc, 0), datachan_bytes(f->dc, 1)};
	uint64_t up = now[0] - f->counted[0], down = now[1] - f->counted[1];
	f->counted[0] = now[0];
	f->counted[1] = now[1];
	if (f->s) {
		session_account_data(f->s, up, down);
	} else {
		f->state->stats.bytes_up += up;
		f->state->stats.bytes_down += down;
	}
}

/* The one end of a forward. */
static void fwd_remove(struct pt_fwd *f)
{
	struct session *s = f->s;
	fwd_account(f);
	if (f->prev)
		f->prev->next = f->next;
	else
		f->gw->pt_fwds = f->next;
	if (f->next)
		f->next->prev = f->prev;
	if (s)
		s->n_fwds--;
	f->state->stats.passive_ports_in_use--;
	datachan_free(f->dc);
	free(f);
	if (s)
		session_drain_check(s);
}

/* A live session of the same site name and address as s, or NULL. */
static struct session *pt_heir(const struct session *s)
{
	for (struct session *o = s->site->gw->workers[0].sessions; o; o = o->next)
		if (o != s && !o->dead && strcmp(o->conf->name, s->conf->name) == 0 &&
		    ftp_addr_same_ip((const struct sockaddr *)&o->client_addr,
		                     (const struct sockaddr *)&s->client_addr))
			return o;
	return NULL;
}

/*
 * Teardown of a session's passthrough part: the relay goes; its forwards
 * stay, credited from now on to another session of that address (which
 * may be their real owner), or to nobody.
 */
void pt_free(struct session *s)
{
	struct session *heir = s->n_fwds ? pt_heir(s) : NULL;
	for (struct pt_fwd *f = s->site->gw->pt_fwds; f && s->n_fwds; f = f->next) {
		if (f->s == s) {
			fwd_account(f);
			f->s = heir;
			s->n_fwds--;
			if (heir)
				heir->n_fwds++;
		}
	}
	if (s->blind) {
		s->ctrl_bytes = blind_bytes(s);
		datachan_free(s->blind);
		s->blind = NULL;
	}
}

void pt_close_all(struct ftpgate *gw)
{
	while (gw->pt_fwds)
		fwd_remove(gw->pt_fwds);
	free(gw->pt_guard);
	gw->pt_guard = NULL;
}

void pt_data_port(struct session *s, uint16_t port)
{
	s->pt_port = port;
	s->pt_port_ms = now_ms();
}

/* ---- failed forwards per address ------------------------------------------------------------ */

static void guard_refill(struct pt_guard_slot *g, uint64_t now)
{
	uint64_t add = (now - g->refill_ms) / PT_FAIL_REFILL_MS;
	if (add >= PT_FAIL_BURST - g->tokens) {
		g->tokens = PT_FAIL_BURST;
		g->refill_ms = now;
	} else {
		g->tokens += (unsigned)add;
		g->refill_ms += add * PT_FAIL_REFILL_MS;
	}
}

/* Nothing to remember: no ban running, every token back. */
static int guard_idle(struct pt_guard_slot *g, uint64_t now)
{
	if (!g->ip.ss_family)
		return 1;
	guard_refill(g, now);
	return g->banned_until <= now && g->tokens == PT_FAIL_BURST;
}

/* The slot of ip; with create, a new one (reusing an idle or the least useful slot). */
static struct pt_guard_slot *guard_slot(struct ftpgate *gw, const struct sockaddr *ip, uint64_t now,
                                        int create)
{
	struct pt_guard_slot *free_slot = NULL, *victim = NULL;

	if (!gw->pt_guard) {
		if (!create)
			return NULL;
		gw->pt_guard = calloc(1, sizeof(*gw->pt_guard));
		if (!gw->pt_guard)
			return NULL;
	}
	for (size_t i = 0; i < PT_GUARD_SLOTS; i++) {
		struct pt_guard_slot *g = &gw->pt_guard->slot[i];
		if (g->ip.ss_family && ftp_addr_same_ip((struct sockaddr *)&g->ip, ip))
			return g;
		if (!create)
			continue;
		if (!free_slot && guard_idle(g, now))
			free_slot = g;
		/* Else the one whose ban ends first (unbanned ones end "now"). */
		if (!victim || g->banned_until < victim->banned_until)
			victim = g;
	}
	if (!create)
		return NULL;
	struct pt_guard_slot *g = free_slot ? free_slot : victim;
	memset(g, 0, sizeof(*g));
	memcpy(&g->ip, ip, addr_len(ip));
	g->tokens = PT_FAIL_BURST;
	g->refill_ms = now;
	return g;
}

static int guard_banned(struct ftpgate *gw, const struct sockaddr *ip, uint64_t now)
{
	struct pt_guard_slot *g = guard_slot(gw, ip, now, 0);
	return g && g->banned_until > now;
}

/* A forward from ip failed (nobody expected it, or the backend was not listening). */
static void guard_fail(struct ftpgate *gw, const char *site, const struct sockaddr *ip)
{
	char a[ADDR_STR_MAX];
	uint64_t now = now_ms();
	struct pt_guard_slot *g = guard_slot(gw, ip, now, 1);

	if (!g || g->banned_until > now)
		return;
	guard_refill(g, now);
	if (g->tokens > 1) {
		g->tokens--;
		return;
	}
	g->tokens = 0;
	g->refill_ms = now + PT_BAN_MS; /* the bucket refills after the ban */
	g->banned_until = now + PT_BAN_MS;
	log_warn("site %s: banned %s for %u s: %u failed passthrough data connections in a row",
	         site, addr_str(ip, a, sizeof(a), 0), PT_BAN_MS / 1000, PT_FAIL_BURST);
}

/* ---- forwards ------------------------------------------------------------------------------- */

static void fwd_side_ready(struct datachan *dc, enum dc_side side, int ok, const char *reason,
                           void *arg)
{
	struct pt_fwd *f = arg;
	(void)dc;
	(void)side;
	if (!ok) {
		log_warn("%s: passthrough data port %u: %s", f->tag, f->port, reason);
		guard_fail(f->gw, f->state->name, (struct sockaddr *)&f->ip);
		fwd_remove(f);
	}
}

static void fwd_done(struct datachan *dc, int ok, const char *reason, void *arg)
{
	struct pt_fwd *f = arg;
	(void)dc;
	log_info("%s: passthrough data port %u: %s, up %llu down %llu", f->tag, f->port,
	         ok ? "done" : reason, (unsigned long long)datachan_bytes(f->dc, 0),
	         (unsigned long long)datachan_bytes(f->dc, 1));
	fwd_remove(f);
}

/*
 * Which session of the client's address may take a connection to port:
 * the one the backend announced that port to before AUTH; else, among the
 * blind sessions (past AUTH, where the proxy sees no 227/229), those with
 * backend->client control bytes in the last PT_WINDOW_MS, preferring one
 * that got a reply since its last forward, then the most recent reply.
 * Sessions of older configurations with the same site name count too.
 */
static struct session *pt_owner(struct site *site, const struct sockaddr *ip, uint16_t port,
                                uint64_t now, int *exact, int *known)
{
	struct session *best = NULL;
	uint64_t best_ms = 0;
	int best_fresh = 0;

	*exact = *known = 0;
	for (struct session *s = site->gw->workers[0].sessions; s; s = s->next) {
		if (s->dead || strcmp(s->conf->name, site->conf->name) != 0 ||
		    !ftp_addr_same_ip((struct sockaddr *)&s->client_addr, ip))
			continue;
		*known = 1;
		if (port < s->conf->pasv_lo || port > s->conf->pasv_hi)
			continue;
		if (s->pt_port == port &&
		    now - s->pt_port_ms <= (uint64_t)s->conf->data_timeout * 1000u) {
			*exact = 1;
			return s;
		}
		if (!s->blind || s->n_fwds >= PT_FWD_MAX)
			continue;
		uint64_t b2c = datachan_last_ms(s->blind, 1);
		if (!b2c || now - b2c > PT_WINDOW_MS)
			continue;
		int fresh = b2c > s->pt_claim_ms;
		if (!best || fresh > best_fresh || (fresh == best_fresh && b2c > best_ms)) {
			best = s;
			best_ms = b2c;
			best_fresh = fresh;
		}
	}
	return best;
}

int session_pt_data(struct site *site, int fd, const struct sockaddr *peer, uint16_t port,
                    const char **why)
{
	static const struct datachan_cbs cbs = {fwd_side_ready, fwd_done};
	struct ftpgate *gw = site->gw;
	struct sockaddr_storage ip, baddr;
	uint64_t now = now_ms();
	int exact, known;

	memcpy(&ip, peer, addr_len(peer));
	ftp_addr_unmap(&ip);
	struct session *s = pt_owner(site, (struct sockaddr *)&ip, port, now, &exact, &known);
	if (!exact && guard_banned(gw, (struct sockaddr *)&ip, now)) {
		*why = "banned after too many failed data connections";
		return -1;
	}
	if (!s) {
		*why = known ? "no session from that address expects it"
		             : "no control session from that address";
		guard_fail(gw, site->conf->name, (struct sockaddr *)&ip);
		return -1;
	}
	if (s->n_fwds >= PT_FWD_MAX) {
		*why = "the session has too many data connections open";
		return -1;
	}
	if (exact)
		s->pt_port = 0; /* one connection per announcement */
	struct pt_fwd *f = calloc(1, sizeof(*f));
	if (!f) {
		*why = "out of memory";
		return -1;
	}
	f->gw = gw;
	f->s = s;
	f->state = s->site->state;
	f->port = port;
	memcpy(&f->ip, &ip, sizeof(ip));
	snprintf(f->tag, sizeof(f->tag), "%s", s->tag);
	f->dc = datachan_new(s->w->base, s->conf->data_timeout, &cbs, f, s->tag);
	memcpy(&baddr, &s->core.backend_addr, sizeof(baddr));
	addr_set_port((struct sockaddr *)&baddr, port);
	if (!f->dc || datachan_connect(f->dc, DC_BACKEND, (struct sockaddr *)&baddr, NULL) < 0) {
		log_warn("%s: passthrough data port %u: cannot connect to the backend: %s", s->tag,
		         port, strerror(errno));
		datachan_free(f->dc);
		free(f);
		guard_fail(gw, site->conf->name, (struct sockaddr *)&ip);
		*why = NULL; /* logged */
		return -1;
	}
	datachan_adopt(f->dc, DC_CLIENT, fd);
	datachan_start(f->dc);
	f->next = gw->pt_fwds;
	if (f->next)
		f->next->prev = f;
	gw->pt_fwds = f;
	f->state->stats.passive_ports_in_use++;
	s->n_fwds++;
	s->pt_claim_ms = now;
	log_debug("%s: passthrough data port %u forwarded (%s)", s->tag, port,
	          exact ? "announced before AUTH" : "blind session");
	return 0;
}
