/*
 * passthrough: what a TLS passthrough session does once the proxy can no
 * longer read it. Owns the blind relay of the control connection (after
 * the backend's 234, or from the first byte for implicit FTPS) and the data
 * connections forwarded 1:1 to the backend's same port (struct pt_fwd, the
 * session's fwds list).
 *
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

#define PT_FWD_MAX 8 /* passthrough data connections open at once per session */

/* A data connection forwarded 1:1 to the backend's same port. */
struct pt_fwd {
	struct pt_fwd *next;
	struct session *s;
	struct datachan *dc;
	uint16_t port;
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
	s->blind = datachan_new(s->site->gw->base, 0, &cbs, s, s->tag);
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
	if (moved == s->blind_mark && !s->fwds) {
		log_info("%s: idle for %u s", s->tag, s->conf->idle_timeout);
		session_end(s, "idle timeout");
		return 1;
	}
	s->blind_mark = moved;
	session_set_timer(s, s->conf->idle_timeout);
	return 1;
}

/* Free the relay and every forward (teardown), counting their bytes. */
void pt_free(struct session *s)
{
	while (s->fwds) {
		struct pt_fwd *f = s->fwds;
		s->fwds = f->next;
		session_account_data(s, datachan_bytes(f->dc, 0), datachan_bytes(f->dc, 1));
		datachan_free(f->dc);
		free(f);
	}
	if (s->blind) {
		s->ctrl_bytes = blind_bytes(s);
		datachan_free(s->blind);
		s->blind = NULL;
	}
}

unsigned pt_open_forwards(const struct session *s)
{
	unsigned n = 0;
	for (const struct pt_fwd *f = s->fwds; f; f = f->next)
		n++;
	return n;
}

static void fwd_remove(struct pt_fwd *f)
{
	struct session *s = f->s;
	for (struct pt_fwd **pp = &s->fwds; *pp; pp = &(*pp)->next) {
		if (*pp == f) {
			*pp = f->next;
			break;
		}
	}
	session_account_data(s, datachan_bytes(f->dc, 0), datachan_bytes(f->dc, 1));
	datachan_free(f->dc);
	free(f);
	session_drain_check(s);
}

static void fwd_side_ready(struct datachan *dc, enum dc_side side, int ok, const char *reason,
                           void *arg)
{
	struct pt_fwd *f = arg;
	(void)dc;
	(void)side;
	if (!ok) {
		log_warn("%s: passthrough data port %u: %s", f->s->tag, f->port, reason);
		fwd_remove(f);
	}
}

static void fwd_done(struct datachan *dc, int ok, const char *reason, void *arg)
{
	struct pt_fwd *f = arg;
	(void)dc;
	log_info("%s: passthrough data port %u: %s, up %llu down %llu", f->s->tag, f->port,
	         ok ? "done" : reason, (unsigned long long)datachan_bytes(f->dc, 0),
	         (unsigned long long)datachan_bytes(f->dc, 1));
	fwd_remove(f);
}

int session_pt_data(struct site *site, int fd, const struct sockaddr *peer, uint16_t port)
{
	static const struct datachan_cbs cbs = {fwd_side_ready, fwd_done};
	struct sockaddr_storage ip, baddr;
	struct session *s;

	memcpy(&ip, peer, addr_len(peer));
	ftp_addr_unmap(&ip);
	/* The newest live session from that address owns the connection. */
	for (s = site->gw->sessions; s; s = s->next)
		if (s->site == site && !s->dead &&
		    ftp_addr_same_ip((struct sockaddr *)&s->client_addr, (struct sockaddr *)&ip))
			break;
	if (!s)
		return -1;
	unsigned n = pt_open_forwards(s);
	if (n >= PT_FWD_MAX) {
		log_warn("%s: refused data connection to port %u: %u already open for this session",
		         s->tag, port, n);
		return -3;
	}
	struct pt_fwd *f = calloc(1, sizeof(*f));
	if (!f)
		return -1;
	f->s = s;
	f->port = port;
	f->dc = datachan_new(site->gw->base, s->conf->data_timeout, &cbs, f, s->tag);
	memcpy(&baddr, &s->core.backend_addr, sizeof(baddr));
	addr_set_port((struct sockaddr *)&baddr, port);
	if (!f->dc || datachan_connect(f->dc, DC_BACKEND, (struct sockaddr *)&baddr, NULL) < 0) {
		log_warn("%s: passthrough data port %u: cannot connect to the backend: %s", s->tag,
		         port, strerror(errno));
		datachan_free(f->dc);
		free(f);
		return -2;
	}
	datachan_adopt(f->dc, DC_CLIENT, fd);
	datachan_start(f->dc);
	f->next = s->fwds;
	s->fwds = f;
	log_debug("%s: passthrough data port %u forwarded", s->tag, port);
	return 0;
}
