/*
 * session_core: the protocol decisions of one control session (see
 * session_core.h). Owns struct core: the reply FIFO, the command handlers,
 * the transfer state (one enum, transitions in xfer_set()), the TLS state
 * of both control connections as the protocol sees it (AUTH, PBSZ, PROT,
 * the backend's PROT), and passthrough's policy before AUTH.
 *
 * May not touch: sockets, libevent, OpenSSL objects, counters or the
 * session's log line (all in the shell, session.c, reached only through
 * struct core_ops). It logs diagnostics through log.h, which is all the
 * outside world it sees.
 */
#include "config.h"

#include <errno.h>
#include <fnmatch.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "access.h"
#include "ftp_addr.h"
#include "ftp_reply.h"
#include "log.h"
#include "session_core.h"
#include "util.h"

const char *const xfer_state_names[XS_COUNT] = {
    "idle", "setup", "ready", "connecting", "running", "held", "data-done", "aborted",
};

/*
 * The transfer state and its transitions. Every change goes through
 * xfer_set(); one the drawing does not allow is a bug, logged and counted
 * (the unit tests check that none happens).
 *
 *            PASV/EPSV/PORT/EPRT                backend's data address
 *   IDLE ------------------------> SETUP --------------------------------> READY
 *    ^ ^ ^                           |  backend refuses, unusable reply,     | |
 *    | | |                           |  pair timed out: 4xx/425              | |
 *    | | +---------------------------+                                       | |
 *    | |    transfer command, connections not all up yet                    | |
 *    | |  +-----------------------------------------------------------------+ |
 *    | |  v                                                                   | transfer command,
 *    | | CONNECTING --- every connection up: command sent ----+              | connections up:
 *    | |  | a connection failed: 425; ABOR: 426               |              | command sent
 *    | +--+                                                    v              v
 *    |                                     +--------------- RUNNING <--------+
 *    |      final 4xx/5xx, pyftpdlib's 225  |   |      |
 *    +--------------------------------------+   |      | ABOR (pair dropped)
 *    |                       the pair finished  |      v
 *    |            +-----------------------------+   ABORTED --- final reply ---> IDLE
 *    |            v            final 2xx,           ^
 *    |        DATA_DONE        pair still busy      | ABOR
 *    |   final reply: relayed,        |             |
 *    +-- 426 if data incomplete ------+-- HELD -----+ (the held reply goes out first)
 *    |                                     |
 *    +------ the pair finished: release ---+
 *
 * READY also goes back to IDLE when the pair fails before the command, on
 * REIN, on a new data command (which then goes to SETUP), on ABOR, and when
 * require_data_tls refuses the transfer. Passthrough sites have no pair:
 * a transfer command goes IDLE -> RUNNING, ABOR RUNNING -> ABORTED, and its
 * final reply back to IDLE.
 */
static const unsigned xfer_allowed[XS_COUNT] = {
#define B(x) (1u << (x))
    [XS_IDLE] = B(XS_IDLE) | B(XS_SETUP) | B(XS_RUNNING),
    [XS_SETUP] = B(XS_IDLE) | B(XS_SETUP) | B(XS_READY),
    [XS_READY] = B(XS_IDLE) | B(XS_CONNECTING) | B(XS_RUNNING),
    [XS_CONNECTING] = B(XS_IDLE) | B(XS_RUNNING),
    [XS_RUNNING] = B(XS_IDLE) | B(XS_HELD) | B(XS_DATA_DONE) | B(XS_ABORTED),
    [XS_HELD] = B(XS_IDLE) | B(XS_ABORTED),
    [XS_DATA_DONE] = B(XS_IDLE) | B(XS_ABORTED),
    [XS_ABORTED] = B(XS_IDLE),
#undef B
};

static void xfer_set(struct core *c, enum xfer_state to)
{
	if (!(xfer_allowed[c->xs] & (1u << to))) {
		c->bad_transitions++;
		log_error("%s: internal error: transfer state %s -> %s", c->tag,
		          xfer_state_names[c->xs], xfer_state_names[to]);
	}
	c->xs = to;
}

/* A transfer command was sent and its final reply has not been answered yet. */
static int in_transfer(const struct core *c)
{
	return c->xs == XS_RUNNING || c->xs == XS_HELD || c->xs == XS_DATA_DONE ||
	       c->xs == XS_ABORTED;
}

int core_transferring(const struct core *c)
{
	return in_transfer(c);
}

/* ---- actions -------------------------------------------------------------------------------- */

/* One line, CRLF added, to the client (to_backend = 0) or the backend. */
static void send_linev(struct core *c, int to_backend, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static void send_linev(struct core *c, int to_backend, const char *fmt, va_list ap)
{
	char buf[2 * CORE_CMD_LINE_MAX + 32];
	int n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	if (n < 0)
		return;
	size_t len = (size_t)n < sizeof(buf) - 2 ? (size_t)n : sizeof(buf) - 3;
	buf[len++] = '\r';
	buf[len++] = '\n';
	(to_backend ? c->ops->send_backend : c->ops->send_client)(c->io, buf, len);
}

static void reply_client(struct core *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void reply_client(struct core *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	send_linev(c, 0, fmt, ap);
	va_end(ap);
}

static void send_backend(struct core *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void send_backend(struct core *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	send_linev(c, 1, fmt, ap);
	va_end(ap);
}

static void relay(struct core *c, const char *rep, size_t len)
{
	c->ops->send_client(c->io, rep, len);
}

static void close_after_flush(struct core *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void close_after_flush(struct core *c, const char *fmt, ...)
{
	char why[200];
	va_list ap;
	if (c->closing)
		return;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	c->closing = 1;
	c->ops->close(c->io, CORE_CLOSE_FLUSH, why);
}

void core_abort(struct core *c, const char *why)
{
	if (c->closing)
		return;
	log_warn("%s: %s", c->tag, why);
	reply_client(c, "421 Service not available, closing control connection.");
	close_after_flush(c, "%s", why);
}

static struct expect *fifo_push(struct core *c, enum exp_kind kind)
{
	if (c->fifo_len == CORE_FIFO_SIZE) {
		/* Cannot happen with one command at a time; never write past it. */
		core_abort(c, "internal error: too many outstanding replies");
		memset(&c->fifo_spare, 0, sizeof(c->fifo_spare));
		return &c->fifo_spare;
	}
	struct expect *e = &c->fifo[(c->fifo_head + c->fifo_len++) % CORE_FIFO_SIZE];
	memset(e, 0, sizeof(*e));
	e->kind = kind;
	return e;
}

static struct expect *fifo_peek(struct core *c)
{
	return c->fifo_len ? &c->fifo[c->fifo_head] : NULL;
}

static void fifo_pop(struct core *c)
{
	c->fifo_head = (c->fifo_head + 1) % CORE_FIFO_SIZE;
	c->fifo_len--;
}

/* Milliseconds left of login_timeout (0 once it has passed). */
static uint64_t login_left_ms(struct core *c)
{
	uint64_t limit = (uint64_t)c->conf->login_timeout * 1000u;
	uint64_t el = c->ops->now_ms(c->io) - c->start_ms;
	return el >= limit ? 0 : limit - el;
}

void core_arm_idle(struct core *c)
{
	if (c->closing || c->backend_up != 2)
		return;
	uint64_t ms = (uint64_t)c->conf->idle_timeout * 1000u;
	if (!c->logged_in) {
		uint64_t left = login_left_ms(c);
		if (left < ms)
			ms = left ? left : 1;
	}
	c->ops->set_timer(c->io, ms);
}

/*
 * Announce address for the client: public_address_for's address for the
 * most specific network the client is in, else public_address, else where
 * it connected to.
 */
static const struct sockaddr *announce_addr(const struct core *c)
{
	const struct public_for *best = NULL;
	for (size_t i = 0; i < c->conf->n_public_for; i++) {
		const struct public_for *pf = &c->conf->public_for[i];
		if (cidr_match(&pf->net, (const struct sockaddr *)&c->client_addr) &&
		    (!best || pf->net.prefix > best->net.prefix))
			best = pf;
	}
	if (best)
		return (const struct sockaddr *)&best->addr;
	if (c->conf->has_public_address)
		return (const struct sockaddr *)&c->conf->public_address;
	return (const struct sockaddr *)&c->local_addr;
}

/* Close the data pair, if any, and forget how it was set up. */
static void pair_drop(struct core *c)
{
	if (c->pair)
		c->ops->data_drop(c->io);
	c->pair = 0;
	c->side_up[0] = c->side_up[1] = 0;
	c->client_active = 0;
	c->backend_active = 0;
	free(c->pending_cmd);
	c->pending_cmd = NULL;
}

/* Drop the pair and go back to IDLE (the data setup or transfer did not happen). */
static void xfer_cancel(struct core *c)
{
	pair_drop(c);
	xfer_set(c, XS_IDLE);
}

static void drain_check(struct core *c);

/* The final reply of a transfer went to the client: account it and go back to IDLE. */
static void transfer_end(struct core *c, int code)
{
	enum xfer_result r = c->xs == XS_ABORTED ? XR_ABORTED : code / 100 == 2 ? XR_OK : XR_FAILED;
	pair_drop(c);
	free(c->held);
	c->held = NULL;
	c->held_len = 0;
	c->data_no_reuse = 0;
	xfer_set(c, XS_IDLE);
	c->ops->transfer_end(c->io, code, r);
	core_arm_idle(c);
}

static int reply_code(const char *rep, size_t len)
{
	if (len < 3)
		return 0;
	return (rep[0] - '0') * 100 + (rep[1] - '0') * 10 + (rep[2] - '0');
}

/* The pair is done and the final reply is in: it may go to the client now. */
static void release_held(struct core *c)
{
	int code = reply_code(c->held, c->held_len);
	if (c->data_no_reuse) {
		/* The proxy refused the data connection: say why (as vsftpd
		 * does), not what the backend made of the cut. */
		reply_client(c, "522 SSL connection failed: session reuse required (the TLS data "
		                "connection must resume the control connection's TLS session).");
		code = 522;
	} else if (c->data_ok || code / 100 != 2) {
		relay(c, c->held, c->held_len);
	} else {
		/* The backend says done but the client did not get every byte. */
		reply_client(c, "426 Connection closed; transfer aborted (%s).", c->data_reason);
		code = 426;
	}
	if (c->fifo_len)
		fifo_pop(c);
	transfer_end(c, code);
	drain_check(c);
}

/* Shutting down: a session with nothing running ends now, others once idle. */
static void drain_check(struct core *c)
{
	if (!c->draining || c->closing)
		return;
	if (c->xs == XS_CONNECTING || in_transfer(c) || c->fifo_len > 0 || c->pt_blind_pending ||
	    c->auth_pending)
		return;
	reply_client(c, "421 Service shutting down, closing control connection.");
	close_after_flush(c, "proxy shutting down");
}

void core_drain(struct core *c)
{
	c->draining = 1;
	drain_check(c);
}

/* ---- data connections ----------------------------------------------------------------------- */

/*
 * May the transfer command go to the backend? The backend side must be
 * connected (or be the backend's to connect: active toward the backend),
 * and in active mode the client must already be reachable.
 */
static int ready_to_forward(const struct core *c)
{
	if (!c->backend_active && !c->side_up[CORE_BACKEND])
		return 0;
	if (c->client_active && !c->side_up[CORE_CLIENT])
		return 0;
	return 1;
}

/*
 * The proxy answered a transfer command itself (425, 426, 521): the
 * backend never saw it, so a REST it accepted would still apply to the
 * next one and start it mid-file (found by the soak). Clear it.
 */
static void rest_forget(struct core *c)
{
	if (!c->rest_pending || c->closing)
		return;
	c->rest_pending = 0;
	send_backend(c, "REST 0");
	snprintf(fifo_push(c, EXP_BREST)->verb, FTP_VERB_MAX + 1, "REST");
}

static void transfer_forward(struct core *c, const char *cmd)
{
	c->rest_pending = 0;
	send_backend(c, "%s", cmd);
	snprintf(fifo_push(c, EXP_TRANSFER)->verb, FTP_VERB_MAX + 1, "%.*s", (int)strcspn(cmd, " "),
	         cmd);
	c->xfer_start_ms = c->ops->now_ms(c->io);
	xfer_set(c, XS_RUNNING);
	c->ops->data_start(c->io, c->xfer_download);
}

void core_data_side(struct core *c, enum core_side side, int ok, const char *reason)
{
	if (c->closing || !c->pair)
		return;
	if (!ok) {
		char why[sizeof(c->data_reason)];
		snprintf(why, sizeof(why), "%s", reason ? reason : "failed");
		log_warn("%s: %s data connection failed: %s", c->tag,
		         side == CORE_BACKEND ? "backend" : "client", why);
		if (c->xs == XS_CONNECTING) {
			/* The command never reached the backend: answer it here. */
			xfer_cancel(c);
			reply_client(c, "425 Can't open data connection: %s.", why);
			rest_forget(c);
			return;
		}
		pair_drop(c);
		if (c->xs == XS_RUNNING || c->xs == XS_HELD) {
			/* The command went out: the pair failed, its final reply
			 * becomes 426 (found by the random scripts: a backend that
			 * answered before its data connection came up). */
			c->data_ok = 0;
			snprintf(c->data_reason, sizeof(c->data_reason), "%s", why);
			if (c->xs == XS_HELD)
				release_held(c);
			else
				xfer_set(c, XS_DATA_DONE);
		} else if (c->xs == XS_READY) {
			xfer_set(c, XS_IDLE); /* the next transfer command gets 425 */
		}
		return;
	}
	c->side_up[side] = 1;
	if (c->xs == XS_CONNECTING && ready_to_forward(c)) {
		char *cmd = c->pending_cmd;
		c->pending_cmd = NULL;
		transfer_forward(c, cmd);
		free(cmd);
	}
}

void core_data_refused_no_reuse(struct core *c, const char *reason)
{
	if (!c->pair)
		return;
	c->data_no_reuse = 1;
	core_data_done(c, 0, reason);
}

void core_data_done(struct core *c, int ok, const char *reason)
{
	if (!c->pair)
		return;
	c->pair = 0; /* the shell freed it */
	c->side_up[0] = c->side_up[1] = 0;
	c->data_ok = ok;
	snprintf(c->data_reason, sizeof(c->data_reason), "%s", ok || !reason ? "" : reason);
	if (!ok)
		log_info("%s: data connection closed: %s", c->tag, c->data_reason);
	if (c->closing)
		return;
	switch (c->xs) {
	case XS_RUNNING:
		xfer_set(c, XS_DATA_DONE);
		break;
	case XS_HELD:
		release_held(c);
		break;
	case XS_CONNECTING:
		/* Timed out before the client sent or the connections came up. */
		xfer_cancel(c);
		reply_client(c, "425 Can't open data connection: %s.", c->data_reason);
		rest_forget(c);
		break;
	case XS_READY:
		xfer_cancel(c); /* the next transfer command gets 425 */
		break;
	default:
		/* XS_SETUP: the backend's answer will find no pair (425). */
		break;
	}
}

/* The backend side is ready: set up the client side and answer the client's data command. */
static void client_data_setup(struct core *c, enum ftp_verb verb)
{
	char buf[128];
	struct sockaddr_storage bound;

	if (verb == FTP_V_PORT || verb == FTP_V_EPRT) {
		/* The proxy connects to the client when the transfer command comes. */
		c->client_active = 1;
		xfer_set(c, XS_READY);
		reply_client(c, "200 %s command successful.", verb == FTP_V_PORT ? "PORT" : "EPRT");
		return;
	}
	if (c->ops->data_listen(c->io, CORE_CLIENT, &bound) < 0) {
		log_warn("%s: no passive port free in %u-%u on %s: %s", c->tag, c->conf->pasv_lo,
		         c->conf->pasv_hi,
		         addr_str((struct sockaddr *)&c->local_addr, buf, sizeof(buf), 0),
		         strerror(errno));
		xfer_cancel(c);
		reply_client(c, "425 Can't open passive connection: no free port.");
		return;
	}
	uint16_t cport = addr_port((struct sockaddr *)&bound);
	if (verb == FTP_V_EPSV) {
		ftp_format_229(buf, sizeof(buf), cport);
	} else {
		struct sockaddr_in sin;
		memcpy(&sin, announce_addr(c), sizeof(sin));
		sin.sin_port = htons(cport);
		ftp_format_227(buf, sizeof(buf), &sin);
	}
	xfer_set(c, XS_READY);
	relay(c, buf, strlen(buf));
	log_debug("%s: data: client %s port %u", c->tag, verb == FTP_V_EPSV ? "EPSV" : "PASV",
	          cport);
}

/* The backend answered the proxy's EPSV/PASV/PORT/EPRT. */
static void handle_setup_reply(struct core *c, const struct expect *e, int code, const char *rep,
                               size_t len)
{
	char text[512], esc[256], buf[128];
	struct sockaddr_storage baddr;
	uint16_t bport = 0;

	if (code < 400 && !c->pair) {
		/* The pair timed out while the backend took its time: nothing to
		 * announce any more. */
		xfer_cancel(c);
		reply_client(c, "425 Can't open data connection: timed out.");
		return;
	}
	if (e->sent == FTP_V_EPSV && c->pair &&
	    (code == 500 || code == 501 || code == 502 || code == 504 || code == 522)) {
		/* No EPSV on this backend: fall back to PASV for the rest of the session. */
		c->backend_no_epsv = 1;
		send_backend(c, "PASV");
		struct expect *n = fifo_push(c, EXP_DATA_SETUP);
		n->sent = FTP_V_PASV;
		n->client_verb = e->client_verb;
		return;
	}
	if (code >= 400) {
		/* The backend refuses (not logged in, PORT not allowed, ...): that
		 * answers the client too. */
		xfer_cancel(c);
		relay(c, rep, len);
		return;
	}
	if (e->sent == FTP_V_PORT || e->sent == FTP_V_EPRT) {
		client_data_setup(c, e->client_verb);
		return;
	}
	size_t n = len < sizeof(text) - 1 ? len : sizeof(text) - 1;
	memcpy(text, rep, n);
	text[n] = '\0';
	char *eol = strpbrk(text, "\r\n");
	size_t tlen = eol ? (size_t)(eol - text) : n;
	int rc = -1;
	if (code == 229) {
		rc = ftp_parse_229(text, tlen, &bport);
	} else if (code == 227) {
		struct sockaddr_in sin;
		rc = ftp_parse_227(text, tlen, &sin);
		if (rc == 0) {
			/* Only the port is used: the backend cannot steer the proxy
			 * to another host (and behind NAT the address is wrong anyway). */
			bport = ntohs(sin.sin_port);
			if (c->backend_addr.ss_family != AF_INET ||
			    sin.sin_addr.s_addr !=
			        ((const struct sockaddr_in *)&c->backend_addr)->sin_addr.s_addr)
				log_debug("%s: backend announced %s in 227; using its control "
				          "address",
				          c->tag,
				          addr_str((struct sockaddr *)&sin, buf, sizeof(buf), 1));
		}
	}
	if (rc < 0 || bport == 0) {
		log_warn("%s: unusable passive reply from backend: \"%s\"", c->tag,
		         log_escape(esc, sizeof(esc), text, tlen));
		xfer_cancel(c);
		reply_client(c, "425 Can't open data connection: bad reply from the server.");
		return;
	}
	memcpy(&baddr, &c->backend_addr, sizeof(baddr));
	addr_set_port((struct sockaddr *)&baddr, bport);
	if (c->ops->data_connect(c->io, CORE_BACKEND, (struct sockaddr *)&baddr) < 0) {
		log_warn("%s: connect to backend data port %s: %s", c->tag,
		         addr_str((struct sockaddr *)&baddr, buf, sizeof(buf), 1), strerror(errno));
		xfer_cancel(c);
		reply_client(c, "425 Can't open data connection to the server.");
		return;
	}
	log_debug("%s: data: backend port %u", c->tag, bport);
	client_data_setup(c, e->client_verb);
}

/*
 * Passthrough: the data port a 227/229 from the backend announces, or 0.
 * Only the port: the proxy forwards it 1:1 to the backend's control address.
 */
static uint16_t pt_announced_port(int code, const char *rep, size_t len)
{
	const char *eol = memchr(rep, '\n', len);
	size_t n = eol ? (size_t)(eol - rep) : len;
	uint16_t port = 0;

	if (n && rep[n - 1] == '\r')
		n--;
	if (code == 229) {
		if (ftp_parse_229(rep, n, &port) < 0)
			port = 0;
	} else if (code == 227) {
		struct sockaddr_in sin;
		if (ftp_parse_227(rep, n, &sin) == 0)
			port = ntohs(sin.sin_port);
	}
	return port;
}

/* ---- replies from the backend --------------------------------------------------------------- */

/* The backend greeted (and TLS toward it is up): the client gets the greeting, or, when
 * routing by user, the client had the proxy's own and the backend gets USER now. */
static void greeted(struct core *c, const char *rep, size_t len)
{
	c->backend_up = 2;
	if (c->route_state == RS_CONNECTING) {
		send_backend(c, "%s", c->route_user);
		fifo_push(c, EXP_ROUTE_USER)->sent = FTP_V_USER;
		return;
	}
	relay(c, rep, len);
	core_arm_idle(c);
}

/* The backend answered the proxy's USER: 331/332 lets the client's PASS through;
 * anything else is kept to answer that PASS (a wrong name looks like a wrong password). */
static void route_user_answered(struct core *c, int code, const char *rep, size_t len)
{
	c->route_state = RS_DONE;
	core_arm_idle(c);
	if (code == 331 || code == 332)
		return;
	c->route_reply = malloc(len);
	if (!c->route_reply) {
		core_abort(c, "out of memory");
		return;
	}
	memcpy(c->route_reply, rep, len);
	c->route_reply_len = len;
	if (code == 230) {
		c->logged_in = 1;
		core_arm_idle(c);
	}
	if (code == 230 || code == 530)
		c->ops->login_result(c->io, code == 230);
}

/*
 * Answer FEAT with what the proxy provides: the backend's features that pass
 * through a proxy unchanged, plus EPRT and EPSV, which the proxy always
 * handles itself. AUTH/PBSZ/PROT are listed when the site terminates TLS
 * (the backend's own are dropped), LPRT/LPSV never are.
 */
static void rewrite_feat(struct core *c, int code, const char *rep, size_t len)
{
	static const char *const drop[] = {"AUTH", "PBSZ", "PROT", "CCC",
	                                   "EPSV", "EPRT", "LPSV", "LPRT"};
	static const char head[] = "211-Features:\r\n";
	char *out = malloc(2 * len + 128); /* a kept line may gain a CR */
	size_t o = 0;

	if (!out) {
		core_abort(c, "out of memory");
		return;
	}
	memcpy(out, head, sizeof(head) - 1);
	o = sizeof(head) - 1;
	if (c->conf->tls == TLS_TERMINATE)
		o += (size_t)sprintf(out + o, " AUTH TLS\r\n");
	if (c->conf->tls != TLS_OFF)
		o += (size_t)sprintf(out + o, " PBSZ\r\n PROT\r\n");
	o += (size_t)sprintf(out + o, " EPRT\r\n EPSV\r\n");
	for (size_t i = 0; i < len;) {
		const char *line = rep + i, *nl = memchr(line, '\n', len - i);
		size_t n = nl ? (size_t)(nl - line) : len - i;
		i += n + (nl ? 1 : 0);
		if (n && line[n - 1] == '\r')
			n--;
		/* RFC 2389: feature lines start with a space. */
		if (code != 211 || n < 2 || line[0] != ' ')
			continue;
		char feat[16];
		size_t k = 0;
		while (k < sizeof(feat) - 1 && k + 1 < n && line[k + 1] != ' ') {
			feat[k] = line[k + 1];
			k++;
		}
		feat[k] = '\0';
		int keep = 1;
		for (size_t d = 0; d < sizeof(drop) / sizeof(drop[0]); d++)
			if (strcasecmp(feat, drop[d]) == 0)
				keep = 0;
		if (keep) {
			memcpy(out + o, line, n);
			o += n;
			out[o++] = '\r';
			out[o++] = '\n';
		}
	}
	o += (size_t)sprintf(out + o, "211 End\r\n");
	relay(c, out, o);
	free(out);
}

/* The command whose final reply e waits for ("": the greeting, not checked). */
static const char *exp_verb(const struct expect *e)
{
	switch (e->kind) {
	case EXP_DATA_SETUP:
		return e->sent == FTP_V_PASV   ? "PASV"
		       : e->sent == FTP_V_EPSV ? "EPSV"
		       : e->sent == FTP_V_PORT ? "PORT"
		                               : "EPRT";
	case EXP_BAUTH:
		return "AUTH";
	case EXP_BPBSZ:
		return "PBSZ";
	case EXP_BPROT:
		return "PROT";
	case EXP_BREST:
		return "REST";
	default:
		return e->verb; /* set by forward() and transfer_forward() */
	}
}

int core_wants_reply(const struct core *c)
{
	return !c->closing && c->xs != XS_HELD && !c->pt_blind_pending;
}

void core_backend_reply(struct core *c, int code, const char *rep, size_t len)
{
	struct expect *e = fifo_peek(c);
	char esc[160];

	if (c->closing)
		return;
	if (!e) {
		if (code == 421) {
			relay(c, rep, len);
			close_after_flush(c, "backend closed the session (421)");
			return;
		}
		log_warn("%s: dropped a reply that answers nothing: \"%s\"", c->tag,
		         log_escape(esc, sizeof(esc), rep, len < 128 ? len : 128));
		return;
	}
	const char *verb = exp_verb(e);
	if ((verb[0] && !ftp_reply_answers(verb, code)) ||
	    (e->kind == EXP_FENCE && ftp_reply_is_prelim(code))) {
		/* An extra reply: taken as the answer, it would put every later
		 * reply one late (RFC 959 5.4 says which codes answer what). */
		log_warn("%s: dropped a %d reply that cannot answer %s: \"%s\"", c->tag, code,
		         verb[0] ? verb : "the proxy's fence",
		         log_escape(esc, sizeof(esc), rep, len < 128 ? len : 128));
		return;
	}
	if (ftp_reply_is_prelim(code)) {
		if (e->kind == EXP_TRANSFER && e->prelims++ > 0 && !c->pair &&
		    !(c->xs == XS_DATA_DONE && c->data_ok)) {
			/* A second preliminary reply after the data pair was aborted
			 * or broke: Pure-FTPd ends such a transfer with its
			 * statistics under the last code it used ("150 0.003 seconds
			 * (measured here), ...") and no final reply. It is the
			 * transfer's end. */
			int broke = c->xs == XS_DATA_DONE;
			log_info("%s: backend ended the transfer with a %d reply", c->tag, code);
			fifo_pop(c);
			reply_client(c, "426 Connection closed; transfer aborted%s%s%s.",
			             broke ? " (" : "", broke ? c->data_reason : "",
			             broke ? ")" : "");
			transfer_end(c, 426);
			drain_check(c);
			return;
		}
		if (e->kind == EXP_TRANSFER && c->pair)
			c->ops->data_tls_go(
			    c->io); /* the backend is ready for the data handshake */
		relay(c, rep, len);
		return;
	}
	struct expect cur = *e;
	switch (cur.kind) {
	case EXP_GREETING:
		fifo_pop(c);
		if (code != 220) {
			relay(c, rep, len);
			close_after_flush(c, "backend refused the session (%d)", code);
			return;
		}
		if (c->conf->backend_tls != BTLS_OFF) {
			/* Negotiate TLS with the backend before the client sees the greeting. */
			c->greeting = malloc(len);
			if (!c->greeting) {
				core_abort(c, "out of memory");
				return;
			}
			memcpy(c->greeting, rep, len);
			c->greeting_len = len;
			if (c->conf->backend_tls == BTLS_ON) {
				send_backend(c, "AUTH TLS");
				fifo_push(c, EXP_BAUTH);
			} else {
				send_backend(c, "PBSZ 0");
				fifo_push(c, EXP_BPBSZ);
			}
			break;
		}
		greeted(c, rep, len);
		break;
	case EXP_BAUTH:
		fifo_pop(c);
		if (code != 234) {
			char why[160];
			snprintf(why, sizeof(why), "backend refused AUTH TLS (%d)", code);
			core_abort(c, why);
			return;
		}
		if (c->ops->backend_tls_start(c->io) < 0) {
			core_abort(c, "cannot start TLS with the backend");
			return;
		}
		c->backend_tls_up = 1;
		c->backend_prot_p = -1;
		send_backend(c, "PBSZ 0");
		fifo_push(c, EXP_BPBSZ);
		break;
	case EXP_BPBSZ:
		fifo_pop(c);
		if (code / 100 != 2) {
			char why[160];
			snprintf(why, sizeof(why), "backend refused PBSZ 0 (%d)", code);
			core_abort(c, why);
			return;
		}
		greeted(c, c->greeting, c->greeting_len);
		free(c->greeting);
		c->greeting = NULL;
		c->greeting_len = 0;
		break;
	case EXP_ROUTE_USER:
		fifo_pop(c);
		route_user_answered(c, code, rep, len);
		break;
	case EXP_ABOR:
		fifo_pop(c);
		relay(c, rep, len);
		break;
	case EXP_PT_AUTH:
		fifo_pop(c);
		relay(c, rep, len);
		if (code == 234) {
			/* From here on the bytes are TLS the proxy cannot read. */
			c->pt_blind_pending = 1;
			c->ops->go_blind_after_flush(c->io);
			return;
		}
		break;
	case EXP_PT_XFER:
		fifo_pop(c);
		relay(c, rep, len);
		transfer_end(c, code); /* data went through the 1:1 forwards */
		break;
	case EXP_PT_PASV: {
		fifo_pop(c);
		relay(c, rep, len);
		uint16_t port = pt_announced_port(code, rep, len);
		if (port)
			c->ops->pt_data_port(c->io, port);
		break;
	}
	case EXP_BREST:
		fifo_pop(c);
		if (code != 350)
			log_warn("%s: backend answered the proxy's REST 0 with %d", c->tag, code);
		break;
	case EXP_BPROT:
		fifo_pop(c);
		if (code / 100 != 2) {
			log_warn("%s: backend refused PROT: \"%s\"", c->tag,
			         log_escape(esc, sizeof(esc), rep, len < 128 ? len : 128));
			c->backend_prot_p = -1;
		}
		break;
	case EXP_RELAY:
		fifo_pop(c);
		relay(c, rep, len);
		if (code == 230 && !c->logged_in) {
			c->logged_in = 1;
			core_arm_idle(c);
		}
		if (code == 350 && strcmp(cur.verb, "REST") == 0)
			c->rest_pending = 1;
		/* The backend's verdict on a login (brute-force protection). */
		if ((cur.sent == FTP_V_USER || cur.sent == FTP_V_PASS) &&
		    (code == 230 || code == 530))
			c->ops->login_result(c->io, code == 230);
		if (cur.long_line && code >= 400) {
			/* The backend may have read the line in pieces and answer the
			 * rest too: nothing more goes to it before this command's
			 * success. NOOP is in every server once logged in (RFC 959
			 * 5.1); before, vsftpd refuses it and all answer FEAT. */
			send_backend(c, "%s", c->logged_in ? "NOOP" : "FEAT");
			fifo_push(c, EXP_FENCE);
		}
		break;
	case EXP_FENCE:
		if (code >= 400) {
			log_warn("%s: dropped an extra %d reply to a long command line", c->tag,
			         code);
			return;
		}
		fifo_pop(c);
		break;
	case EXP_QUIT:
		fifo_pop(c);
		relay(c, rep, len);
		close_after_flush(c, "client quit");
		return;
	case EXP_FEAT:
		fifo_pop(c);
		rewrite_feat(c, code, rep, len);
		break;
	case EXP_DATA_SETUP:
		fifo_pop(c);
		handle_setup_reply(c, &cur, code, rep, len);
		break;
	case EXP_TRANSFER:
		if (code == 225 && c->fifo_len > 1 &&
		    c->fifo[(c->fifo_head + 1) % CORE_FIFO_SIZE].kind == EXP_ABOR) {
			/* "225 ABOR successful; data channel closed": some backends
			 * (pyftpdlib) answer an ABOR that came before the transfer
			 * started with this one reply, for the transfer command and
			 * the ABOR together. */
			fifo_pop(c);
			fifo_pop(c);
			relay(c, rep, len);
			if (c->xs != XS_ABORTED)
				xfer_set(c, XS_ABORTED);
			transfer_end(c, code);
			break;
		}
		if (c->xs == XS_ABORTED && code / 100 == 2 && !c->data_ok) {
			/* ABOR cut the data before the backend's 226: the client
			 * did not get the whole file, so it must not hear "complete". */
			fifo_pop(c);
			reply_client(c, "426 Connection closed; transfer aborted.");
			transfer_end(c, 426);
			break;
		}
		if ((code >= 400 && !c->data_no_reuse) || c->xs == XS_ABORTED) {
			/* Failed, or the data pair is already gone (ABOR): relay as
			 * is. (A failure the proxy caused itself is answered as held.) */
			fifo_pop(c);
			relay(c, rep, len);
			transfer_end(c, code);
			break;
		}
		/* Success: hold it until the data pair has delivered every byte. */
		c->held = malloc(len);
		if (!c->held) {
			core_abort(c, "out of memory");
			return;
		}
		memcpy(c->held, rep, len);
		c->held_len = len;
		if (c->xs == XS_DATA_DONE)
			release_held(c);
		else
			xfer_set(c, XS_HELD);
		return;
	}
	drain_check(c);
}

/* ---- commands from the client --------------------------------------------------------------- */

/*
 * "NAME arg" for the backend, NUL-terminated, with every 0xFF byte doubled
 * again (Telnet IAC escaping, RFC 854/959): ftp_telnet_strip() undid it.
 */
static size_t cmd_line(const struct ftp_cmd *cmd, char *buf, size_t size)
{
	size_t o = (size_t)snprintf(buf, size, "%s", cmd->name);
	if (cmd->arg_len && o + 1 < size)
		buf[o++] = ' ';
	for (size_t i = 0; i < cmd->arg_len && o + 2 < size; i++) {
		buf[o++] = cmd->arg[i];
		if ((unsigned char)cmd->arg[i] == 0xff)
			buf[o++] = cmd->arg[i];
	}
	buf[o] = '\0';
	return o;
}

static void forward(struct core *c, const struct ftp_cmd *cmd, enum exp_kind kind)
{
	char line[2 * CORE_CMD_LINE_MAX + 16];
	size_t n = cmd_line(cmd, line, sizeof(line));
	send_backend(c, "%s", line);
	struct expect *e = fifo_push(c, kind);
	e->sent = cmd->verb;
	snprintf(e->verb, sizeof(e->verb), "%s", cmd->name);
	e->long_line = n + 2 > FTP_LINE_ONE_READ;
}

/* Check a PORT/EPRT argument; on success the address is in *out. */
static int check_active_addr(struct core *c, const struct ftp_cmd *cmd,
                             struct sockaddr_storage *out)
{
	char a[ADDR_STR_MAX], esc[128];
	int rc;

	memset(out, 0, sizeof(*out));
	if (cmd->verb == FTP_V_PORT)
		rc = ftp_parse_port(cmd->arg, cmd->arg_len, (struct sockaddr_in *)out);
	else
		rc = ftp_parse_eprt(cmd->arg, cmd->arg_len, out);
	if (rc == -2) {
		reply_client(c, "522 Network protocol not supported, use (1,2)");
		return -1;
	}
	if (rc < 0) {
		log_info("%s: malformed %s \"%s\"", c->tag, cmd->name,
		         log_escape(esc, sizeof(esc), cmd->arg, cmd->arg_len));
		reply_client(c, "501 Syntax error in %s argument.", cmd->name);
		return -1;
	}
	ftp_addr_unmap(out);
	if (!c->conf->allow_foreign_address &&
	    !ftp_addr_same_ip((struct sockaddr *)out, (struct sockaddr *)&c->client_addr)) {
		log_warn("%s: refused %s to %s: not the client's address (FTP bounce)", c->tag,
		         cmd->name, addr_str((struct sockaddr *)out, a, sizeof(a), 1));
		reply_client(c, "504 %s refused: the address must be your own.", cmd->name);
		return -1;
	}
	const char *why =
	    ftp_addr_same_ip((struct sockaddr *)out, (struct sockaddr *)&c->client_addr)
	        ? NULL
	        : ftp_addr_foreign_refused(
	              (struct sockaddr *)out, (struct sockaddr *)&c->client_addr,
	              (struct sockaddr *)&c->backend_addr, (struct sockaddr *)&c->local_addr,
	              c->conf->has_public_address ? (struct sockaddr *)&c->conf->public_address
	                                          : NULL);
	if (!why && !ftp_addr_same_ip((struct sockaddr *)out, (struct sockaddr *)&c->client_addr) &&
	    ftp_addr_same_ip((struct sockaddr *)out, announce_addr(c)))
		why = "the proxy's own address"; /* public_address_for's, for this client */
	if (why) {
		/* allow_foreign_address opens bounces to third hosts, never these. */
		log_warn("%s: refused %s to %s: %s", c->tag, cmd->name,
		         addr_str((struct sockaddr *)out, a, sizeof(a), 1), why);
		reply_client(c, "504 %s refused: not an address the proxy connects to.", cmd->name);
		return -1;
	}
	if (!acl_permits(c->conf, (struct sockaddr *)out)) {
		log_warn("%s: refused %s to %s: refused by allow/deny", c->tag, cmd->name,
		         addr_str((struct sockaddr *)out, a, sizeof(a), 1));
		reply_client(c, "504 %s refused: address not allowed.", cmd->name);
		return -1;
	}
	if (addr_port((struct sockaddr *)out) < 1024) {
		log_warn("%s: refused %s to privileged port %s", c->tag, cmd->name,
		         addr_str((struct sockaddr *)out, a, sizeof(a), 1));
		reply_client(c, "504 %s refused: ports below 1024 are not allowed.", cmd->name);
		return -1;
	}
	return 0;
}

/*
 * A new data pair: TLS toward the client per its PROT, toward the backend
 * per backend_data_protection (sending PROT first when the backend's level
 * must change).
 */
static int pair_open(struct core *c)
{
	int client_tls = c->client_tls && c->client_prot_p;
	int backend_tls = 0;
	if (c->backend_tls_up)
		backend_tls = c->conf->backend_data_protection == BPROT_PRIVATE ? 1
		              : c->conf->backend_data_protection == BPROT_CLEAR ? 0
		                                                                : c->client_prot_p;
	if (c->ops->data_new(c->io, client_tls, backend_tls) < 0) {
		reply_client(c, "425 Can't open data connection: out of memory.");
		return -1;
	}
	c->pair = 1;
	c->pair_client_tls = client_tls;
	c->data_no_reuse = 0;
	if (c->backend_tls_up && backend_tls != c->backend_prot_p) {
		send_backend(c, "PROT %c", backend_tls ? 'P' : 'C');
		fifo_push(c, EXP_BPROT);
		c->backend_prot_p = backend_tls;
	}
	return 0;
}

/* PASV, EPSV, PORT, EPRT: set up the backend side per backend_data_mode, then the client side. */
static void cmd_data(struct core *c, const struct ftp_cmd *cmd)
{
	int client_passive = cmd->verb == FTP_V_PASV || cmd->verb == FTP_V_EPSV;
	int fam = c->local_addr.ss_family == AF_INET6 ? 2 : 1;
	struct sockaddr_storage caddr;
	char buf[128];

	if (cmd->verb == FTP_V_EPSV && cmd->arg_len) {
		if (cmd->arg_len == 3 && strncasecmp(cmd->arg, "ALL", 3) == 0) {
			c->epsv_all = 1;
			reply_client(c, "200 EPSV ALL accepted.");
			return;
		}
		if (cmd->arg_len != 1 || (cmd->arg[0] != '1' && cmd->arg[0] != '2')) {
			reply_client(c, "501 Syntax error in EPSV argument.");
			return;
		}
		if (cmd->arg[0] - '0' != fam) {
			reply_client(c, "522 Network protocol not supported, use (%d)", fam);
			return;
		}
	}
	if (cmd->verb != FTP_V_EPSV && c->epsv_all) {
		reply_client(c, "503 %s not allowed after EPSV ALL.", cmd->name);
		return;
	}
	if (cmd->verb == FTP_V_PASV && c->local_addr.ss_family != AF_INET) {
		/* A 227 carries IPv4 only (RFC 2428). */
		reply_client(c, "425 PASV is IPv4 only on this connection; use EPSV.");
		return;
	}
	if (!client_passive && check_active_addr(c, cmd, &caddr) < 0)
		return;

	xfer_cancel(c); /* a new data command replaces a prepared pair */
	if (pair_open(c) < 0)
		return;
	if (!client_passive)
		memcpy(&c->client_data_addr, &caddr, sizeof(caddr));
	xfer_set(c, XS_SETUP);

	enum backend_data_mode mode = c->conf->backend_data_mode;
	if (mode == BDM_CLIENT)
		mode = client_passive ? BDM_PASSIVE : BDM_ACTIVE;
	struct expect *e;
	if (mode == BDM_PASSIVE) {
		send_backend(c, "%s", c->backend_no_epsv ? "PASV" : "EPSV");
		e = fifo_push(c, EXP_DATA_SETUP);
		e->sent = c->backend_no_epsv ? FTP_V_PASV : FTP_V_EPSV;
		e->client_verb = cmd->verb;
		return;
	}
	/* Active toward the backend: listen on the proxy's backend-side address. */
	struct sockaddr_storage local;
	if (c->ops->data_listen(c->io, CORE_BACKEND, &local) < 0) {
		log_warn("%s: cannot listen for the backend's data connection: %s", c->tag,
		         strerror(errno));
		xfer_cancel(c);
		reply_client(c, "425 Can't open data connection: no free port.");
		return;
	}
	c->backend_active = 1;
	e = fifo_push(c, EXP_DATA_SETUP);
	e->client_verb = cmd->verb;
	if (local.ss_family == AF_INET) {
		ftp_format_port(buf, sizeof(buf), (struct sockaddr_in *)&local);
		e->sent = FTP_V_PORT;
	} else {
		ftp_format_eprt(buf, sizeof(buf), (struct sockaddr *)&local);
		e->sent = FTP_V_EPRT;
	}
	c->ops->send_backend(c->io, buf, strlen(buf));
}

static void cmd_transfer(struct core *c, const struct ftp_cmd *cmd)
{
	char raw[2 * CORE_CMD_LINE_MAX + 16];

	if (c->xs != XS_READY) {
		reply_client(c, "425 Use PASV or EPSV first.");
		rest_forget(c);
		return;
	}
	if (c->conf->require_data_tls && !(c->client_tls && c->client_prot_p)) {
		xfer_cancel(c);
		reply_client(c, "521 Data connections must be protected: use PROT P.");
		rest_forget(c);
		return;
	}
	/* PBSZ/PROT may have come after PASV/PORT: the data connection gets
	 * the protection in force now, never the one of when it was prepared. */
	int want_tls = c->client_tls && c->client_prot_p;
	if (want_tls != c->pair_client_tls) {
		if (c->ops->data_client_tls(c->io, want_tls) < 0) {
			xfer_cancel(c);
			reply_client(c, "425 Can't open data connection: out of memory.");
			rest_forget(c);
			return;
		}
		c->pair_client_tls = want_tls;
	}
	size_t n = cmd_line(cmd, raw, sizeof(raw));
	log_escape(c->xfer_cmd, sizeof(c->xfer_cmd), raw, n);
	snprintf(c->xfer_path, sizeof(c->xfer_path), "%.*s", (int)cmd->arg_len, cmd->arg);
	c->xfer_download =
	    cmd->verb != FTP_V_STOR && cmd->verb != FTP_V_APPE && cmd->verb != FTP_V_STOU;
	if (c->client_active &&
	    c->ops->data_connect(c->io, CORE_CLIENT, (struct sockaddr *)&c->client_data_addr) < 0) {
		char a[ADDR_STR_MAX];
		log_warn("%s: connect to client data address %s: %s", c->tag,
		         addr_str((struct sockaddr *)&c->client_data_addr, a, sizeof(a), 1),
		         strerror(errno));
		xfer_cancel(c);
		reply_client(c, "425 Can't open data connection.");
		rest_forget(c);
		return;
	}
	if (ready_to_forward(c)) {
		transfer_forward(c, raw);
		return;
	}
	/* Open the data connections before sending the command: the backend
	 * may answer 425 before the proxy got to its port, and a client that
	 * cannot be reached (PORT to a closed port) gets 425 from the proxy
	 * while the backend never hears of the transfer. */
	c->pending_cmd = strdup(raw);
	if (!c->pending_cmd) {
		xfer_cancel(c);
		reply_client(c, "425 Can't open data connection: out of memory.");
		rest_forget(c);
		return;
	}
	xfer_set(c, XS_CONNECTING);
}

/* ABOR: what it does depends on where the transfer is (see the drawing at xfer_set()). */
static void cmd_abor(struct core *c, const struct ftp_cmd *cmd)
{
	switch (c->xs) {
	case XS_CONNECTING:
		/* The transfer command never reached the backend: answer it here. */
		xfer_cancel(c);
		reply_client(c, "426 Connection closed; transfer aborted.");
		rest_forget(c);
		break;
	case XS_SETUP:
	case XS_READY:
		xfer_cancel(c);
		break;
	case XS_RUNNING:
		pair_drop(c);
		c->data_ok = 0; /* cut before every byte was delivered */
		xfer_set(c, XS_ABORTED);
		break;
	case XS_DATA_DONE:
		xfer_set(c, XS_ABORTED);
		break;
	case XS_HELD:
		/* The backend had finished, but the client had not received
		 * every byte: the held 226 would call a cut file complete (found
		 * by the soak). The transfer's answer is 426, then ABOR's own. */
		pair_drop(c);
		fifo_pop(c);
		xfer_set(c, XS_ABORTED);
		reply_client(c, "426 Connection closed; transfer aborted.");
		transfer_end(c, 426);
		break;
	case XS_IDLE:
	case XS_ABORTED:
	case XS_COUNT:
		break;
	}
	forward(c, cmd, EXP_ABOR);
}

static void cmd_auth(struct core *c, const struct ftp_cmd *cmd)
{
	if (c->conf->tls == TLS_OFF) {
		reply_client(c, "502 TLS is not enabled on this proxy.");
		return;
	}
	if (c->client_tls) {
		reply_client(c, "503 Already using TLS.");
		return;
	}
	int p;
	if ((cmd->arg_len == 3 && strncasecmp(cmd->arg, "TLS", 3) == 0) ||
	    (cmd->arg_len == 5 && strncasecmp(cmd->arg, "TLS-C", 5) == 0))
		p = 0;
	else if ((cmd->arg_len == 3 && strncasecmp(cmd->arg, "SSL", 3) == 0) ||
	         (cmd->arg_len == 5 && strncasecmp(cmd->arg, "TLS-P", 5) == 0))
		p = 1; /* the old AUTH SSL meant protected data too */
	else {
		reply_client(c, "504 Unsupported security mechanism; use AUTH TLS.");
		return;
	}
	reply_client(c, "234 AUTH %s successful.", p ? "SSL" : "TLS");
	/* Read nothing more in plaintext; the handshake starts once the 234
	 * is on the wire. */
	c->auth_pending = 1;
	c->client_prot_p = p;
	c->ops->client_tls_after_flush(c->io);
}

void core_client_tls_started(struct core *c)
{
	c->client_tls = 1;
	c->auth_pending = 0;
}

static void cmd_tls_misc(struct core *c, const struct ftp_cmd *cmd)
{
	if (c->conf->tls == TLS_OFF) {
		reply_client(c, "502 TLS is not enabled on this proxy.");
		return;
	}
	if (cmd->verb == FTP_V_CCC) {
		reply_client(c, "534 CCC refused: the control connection stays protected.");
		return;
	}
	if (!c->client_tls) {
		reply_client(c, "503 %s requires AUTH TLS first.", cmd->name);
		return;
	}
	if (cmd->verb == FTP_V_PBSZ) {
		c->client_pbsz = 1;
		reply_client(c, "200 PBSZ=0");
		return;
	}
	/* PROT */
	if (!c->client_pbsz) {
		reply_client(c, "503 PBSZ first.");
		return;
	}
	char lvl = cmd->arg_len == 1 ? (char)(cmd->arg[0] & ~0x20) : '?';
	if (lvl == 'P') {
		c->client_prot_p = 1;
		reply_client(c, "200 Protection level set to Private.");
	} else if (lvl == 'C') {
		if (c->conf->require_data_tls) {
			reply_client(c, "534 PROT C refused: data connections must be protected.");
			return;
		}
		c->client_prot_p = 0;
		reply_client(c, "200 Protection level set to Clear.");
	} else if (lvl == 'S' || lvl == 'E') {
		reply_client(c, "536 PROT %c is not supported; use P or C.", lvl);
	} else {
		reply_client(c, "504 Unknown protection level.");
	}
}

/* TLS passthrough, before AUTH: relay, except what cannot work through a blind proxy. */
static void cmd_passthrough(struct core *c, const struct ftp_cmd *cmd)
{
	switch (cmd->verb) {
	case FTP_V_AUTH:
		forward(c, cmd, EXP_PT_AUTH);
		break;
	case FTP_V_PASV:
	case FTP_V_EPSV:
		/* Relayed unchanged: the backend announces public_address and a
		 * port that the proxy forwards 1:1, for this session only. */
		forward(c, cmd, EXP_PT_PASV);
		break;
	case FTP_V_PORT:
	case FTP_V_EPRT:
	case FTP_V_LPRT:
		/* Under TLS the proxy could not rewrite the address, and the
		 * backend cannot reach the client from its private network. */
		log_warn("%s: refused %s: active mode does not work on a TLS passthrough site",
		         c->tag, cmd->name);
		reply_client(c, "502 Active mode is not available through this proxy; use "
		                "passive mode (PASV/EPSV).");
		break;
	case FTP_V_PROT:
		/* Before AUTH the proxy reads every command: require_data_tls
		 * holds here (after AUTH the proxy is blind). */
		if (c->conf->require_data_tls && cmd->arg_len == 1 &&
		    (cmd->arg[0] & ~0x20) == 'C') {
			reply_client(c, "534 PROT C refused: data connections must be protected.");
			break;
		}
		forward(c, cmd, EXP_RELAY);
		break;
	case FTP_V_USER:
	case FTP_V_PASS:
		if (c->conf->require_tls) {
			/* Every command seen here is before AUTH. */
			reply_client(c, "530 TLS required: use AUTH TLS first.");
			break;
		}
		if (cmd->verb == FTP_V_USER)
			log_escape(c->user, sizeof(c->user), cmd->arg, cmd->arg_len);
		forward(c, cmd, EXP_RELAY);
		break;
	case FTP_V_QUIT:
		forward(c, cmd, EXP_QUIT);
		break;
	case FTP_V_ABOR:
		if (c->xs == XS_RUNNING)
			xfer_set(c, XS_ABORTED); /* one ABOR may overtake the transfer, not more */
		forward(c, cmd, EXP_RELAY);
		break;
	case FTP_V_RETR:
	case FTP_V_STOR:
	case FTP_V_APPE:
	case FTP_V_STOU:
	case FTP_V_LIST:
	case FTP_V_NLST:
	case FTP_V_MLSD:
		if (c->conf->require_data_tls) {
			/* Before AUTH every data connection is clear. */
			reply_client(c, "521 Data connections must be protected: use AUTH TLS and "
			                "PROT P.");
			rest_forget(c);
			break;
		}
		log_escape(c->xfer_cmd, sizeof(c->xfer_cmd), cmd->name, strlen(cmd->name));
		forward(c, cmd, EXP_PT_XFER);
		c->rest_pending = 0;
		xfer_set(c, XS_RUNNING);
		c->xfer_start_ms = c->ops->now_ms(c->io);
		break;
	default:
		forward(c, cmd, EXP_RELAY);
		break;
	}
}

int core_route_match(const struct site_conf *conf, const char *user)
{
	for (size_t i = 0; i < conf->n_routes; i++)
		if (fnmatch(conf->routes[i].pattern, user, 0) == 0)
			return (int)i;
	return -1;
}

/*
 * USER on a site that routes by user: the proxy answers 331 itself, picks
 * the route by the whole name (user@host included: @host can only select a
 * configured route, never a host), and asks the shell to connect; the
 * backend's greeting is consumed and it gets USER without @host (unless
 * route_keep_host).
 */
static void route_user(struct core *c, const struct ftp_cmd *cmd)
{
	char name[256], esc[160], line[2 * sizeof(name) + 16];

	if (cmd->arg_len == 0 || cmd->arg_len >= sizeof(name) ||
	    memchr(cmd->arg, '\0', cmd->arg_len)) {
		reply_client(c, "501 Bad user name.");
		return;
	}
	memcpy(name, cmd->arg, cmd->arg_len);
	name[cmd->arg_len] = '\0';
	int r = core_route_match(c->conf, name);
	struct ftp_cmd user = *cmd;
	const char *at = strrchr(name, '@');
	if (at && !c->conf->route_keep_host)
		user.arg_len = (size_t)(at - name);
	cmd_line(&user, line, sizeof(line));
	c->route_user = strdup(line);
	if (!c->route_user) {
		core_abort(c, "out of memory");
		return;
	}
	log_escape(c->user, sizeof(c->user), user.arg, user.arg_len);
	log_escape(esc, sizeof(esc), name, strlen(name));
	if (r >= 0)
		log_info("%s: user \"%s\" routed by \"%s\" (line %d)", c->tag, esc,
		         c->conf->routes[r].pattern, c->conf->routes[r].line);
	else
		log_info("%s: user \"%s\": no route matches, the site's backend", c->tag, esc);
	c->route_state = RS_CONNECTING;
	reply_client(c, "331 User name okay, need password.");
	fifo_push(c, EXP_GREETING);
	c->ops->set_timer(c->io, (uint64_t)c->conf->connect_timeout * 1000u);
	c->ops->route_connect(c->io, r);
}

/* Before USER on a routing site there is no backend: the proxy answers. 1 if handled,
 * 0 for the usual handler (AUTH, PBSZ, PROT, CCC are the proxy's anyway). */
static int route_cmd(struct core *c, const struct ftp_cmd *cmd)
{
	switch (cmd->verb) {
	case FTP_V_AUTH:
	case FTP_V_PBSZ:
	case FTP_V_PROT:
	case FTP_V_CCC:
		return 0;
	case FTP_V_USER:
		if (c->conf->require_tls && !c->client_tls)
			reply_client(c, "530 TLS required: use AUTH TLS first.");
		else
			route_user(c, cmd);
		return 1;
	case FTP_V_PASS:
		reply_client(c, "503 Login with USER first.");
		return 1;
	case FTP_V_QUIT:
		reply_client(c, "221 Goodbye.");
		close_after_flush(c, "client quit");
		return 1;
	case FTP_V_FEAT:
		rewrite_feat(c, 211, "211 End\r\n", 9); /* what the proxy offers by itself */
		return 1;
	default:
		if (strcmp(cmd->name, "NOOP") == 0)
			reply_client(c, "200 NOOP ok.");
		else
			reply_client(c, "530 Please login with USER and PASS.");
		return 1;
	}
}

void core_client_line(struct core *c, char *line, size_t n)
{
	struct ftp_cmd cmd;
	char esc[128];

	if (c->closing)
		return;
	core_arm_idle(c);
	n = ftp_telnet_strip(line, n);
	if (ftp_cmd_parse(line, n, &cmd) < 0) {
		log_debug("%s: bad command \"%s\"", c->tag,
		          log_escape(esc, sizeof(esc), line, ftp_cmd_log_len(line, n)));
		reply_client(c, "500 Syntax error, command unrecognized.");
		return;
	}
	if (cmd.verb == FTP_V_PASS)
		log_debug("%s: command PASS ****", c->tag);
	else
		log_debug("%s: command %s%s%s", c->tag, cmd.name, cmd.arg_len ? " " : "",
		          log_escape(esc, sizeof(esc), cmd.arg, cmd.arg_len));
	if (tls_is_passthrough(c->conf->tls)) {
		cmd_passthrough(c, &cmd);
		return;
	}
	if (c->route_state == RS_USER && route_cmd(c, &cmd))
		return;
	if (c->route_reply) {
		/* The backend did not want the routed USER: that answers PASS. */
		int pass = cmd.verb == FTP_V_PASS;
		if (pass)
			relay(c, c->route_reply, c->route_reply_len);
		free(c->route_reply);
		c->route_reply = NULL;
		if (pass)
			return;
	}

	switch (cmd.verb) {
	case FTP_V_USER:
	case FTP_V_PASS:
		if (c->conf->require_tls && !c->client_tls) {
			reply_client(c, "530 TLS required: use AUTH TLS first.");
			break;
		}
		if (cmd.verb == FTP_V_USER)
			log_escape(c->user, sizeof(c->user), cmd.arg, cmd.arg_len);
		forward(c, &cmd, EXP_RELAY);
		break;
	case FTP_V_PASV:
	case FTP_V_EPSV:
	case FTP_V_PORT:
	case FTP_V_EPRT:
		cmd_data(c, &cmd);
		break;
	case FTP_V_LPRT:
	case FTP_V_LPSV:
		reply_client(c, "502 %s is not supported; use EPSV, PASV, EPRT or PORT.", cmd.name);
		break;
	case FTP_V_AUTH:
		cmd_auth(c, &cmd);
		break;
	case FTP_V_PBSZ:
	case FTP_V_PROT:
	case FTP_V_CCC:
		cmd_tls_misc(c, &cmd);
		break;
	case FTP_V_RETR:
	case FTP_V_STOR:
	case FTP_V_APPE:
	case FTP_V_STOU:
	case FTP_V_LIST:
	case FTP_V_NLST:
	case FTP_V_MLSD:
		cmd_transfer(c, &cmd);
		break;
	case FTP_V_ABOR:
		cmd_abor(c, &cmd);
		break;
	case FTP_V_QUIT:
		forward(c, &cmd, EXP_QUIT);
		break;
	case FTP_V_FEAT:
		forward(c, &cmd, EXP_FEAT);
		break;
	case FTP_V_REIN:
		xfer_cancel(c);
		c->epsv_all = 0;
		c->user[0] = '\0';
		c->logged_in = 0;
		c->type_ascii = 0;
		forward(c, &cmd, EXP_RELAY);
		break;
	default:
		if (strcmp(cmd.name, "TYPE") == 0 && cmd.arg_len > 0)
			c->type_ascii = (cmd.arg[0] & ~0x20) == 'A';
		forward(c, &cmd, EXP_RELAY);
		break;
	}
}

void core_client_line_too_long(struct core *c)
{
	if (c->closing)
		return;
	log_info("%s: command line too long, refused", c->tag);
	reply_client(c, "500 Command line too long.");
}

/* Is line an ABOR? */
static int line_is_abor(const char *line, size_t len)
{
	char buf[32];
	struct ftp_cmd cmd;
	const char *lf = memchr(line, '\n', len);
	if (!lf || (size_t)(lf - line) >= sizeof(buf))
		return 0;
	size_t n = (size_t)(lf - line) + 1;
	memcpy(buf, line, n);
	n = ftp_telnet_strip(buf, n);
	return ftp_cmd_parse(buf, n, &cmd) == 0 && cmd.verb == FTP_V_ABOR;
}

int core_may_take_command(const struct core *c, const char *line, size_t len)
{
	if (c->closing || c->auth_pending || c->pt_blind_pending)
		return 0;
	/* One command at a time: the next is taken once the previous one is answered. */
	if (c->route_state == RS_USER)
		return 1; /* the proxy answers everything itself until USER */
	if (c->route_state == RS_CONNECTING)
		return 0; /* PASS waits for the backend's answer to USER */
	if (c->fifo_len == 0 && c->xs != XS_CONNECTING && c->xs != XS_HELD && c->backend_up == 2)
		return 1;
	/* ABOR may overtake a transfer that is waiting or running, once. */
	if (c->xs != XS_CONNECTING && c->xs != XS_RUNNING && c->xs != XS_HELD &&
	    c->xs != XS_DATA_DONE)
		return 0;
	return line_is_abor(line, len);
}

/* ---- life cycle ----------------------------------------------------------------------------- */

void core_init(struct core *c, const struct site_conf *conf, const struct core_ops *ops, void *io,
               const char *tag, const struct sockaddr *client, const struct sockaddr *local)
{
	memset(c, 0, sizeof(*c));
	c->conf = conf;
	c->ops = ops;
	c->io = io;
	c->tag = tag;
	memcpy(&c->client_addr, client, addr_len(client));
	memcpy(&c->local_addr, local, addr_len(local));
	c->route_state = conf->n_routes ? RS_USER : RS_OFF;
	c->backend_prot_p = -1;
	c->xs = XS_IDLE;
}

void core_set_backend(struct core *c, const struct sockaddr *backend)
{
	memset(&c->backend_addr, 0, sizeof(c->backend_addr));
	memcpy(&c->backend_addr, backend, addr_len(backend));
}

void core_free(struct core *c)
{
	free(c->pending_cmd);
	free(c->held);
	free(c->greeting);
	free(c->route_user);
	free(c->route_reply);
	c->pending_cmd = c->held = c->greeting = c->route_user = c->route_reply = NULL;
}

void core_start(struct core *c)
{
	c->start_ms = c->ops->now_ms(c->io);
	if (c->conf->tls == TLS_IMPLICIT) {
		c->client_pbsz = 1;
		c->client_prot_p = 1; /* implicit FTPS protects data unless told PROT C */
	}
	if (c->route_state == RS_USER) {
		/* No backend before USER names the user: the proxy greets. */
		reply_client(c, "220 Service ready for new user.");
		core_arm_idle(c);
		return;
	}
	if (c->conf->tls != TLS_PASSTHROUGH_IMPLICIT)
		fifo_push(c, EXP_GREETING);
	c->ops->set_timer(c->io, (uint64_t)c->conf->connect_timeout * 1000u);
}

void core_backend_connected(struct core *c)
{
	if (c->closing)
		return;
	c->backend_up = 1;
	if (c->conf->tls == TLS_PASSTHROUGH_IMPLICIT) {
		c->pt_blind_pending = 1;
		c->ops->go_blind_after_flush(c->io);
		return;
	}
	if (c->conf->backend_tls == BTLS_IMPLICIT) {
		if (c->ops->backend_tls_start(c->io) < 0) {
			core_abort(c, "cannot start TLS with the backend");
			return;
		}
		c->backend_tls_up = 1;
		c->backend_prot_p = -1;
	}
}

void core_timer(struct core *c)
{
	char b[ADDR_STR_MAX], why[160];

	if (c->closing)
		return;
	if (c->backend_up < 2 && c->route_state != RS_USER) {
		snprintf(why, sizeof(why), "backend %s: %s within %u s",
		         addr_str((struct sockaddr *)&c->backend_addr, b, sizeof(b), 1),
		         c->backend_up ? "no greeting" : "no connection", c->conf->connect_timeout);
		core_abort(c, why);
		return;
	}
	if (!c->logged_in && login_left_ms(c) == 0) {
		log_info("%s: not logged in after %u s", c->tag, c->conf->login_timeout);
		reply_client(c, "421 Login timeout (%u seconds): closing control connection.",
		             c->conf->login_timeout);
		close_after_flush(c, "login timeout");
		return;
	}
	if (c->fifo_len > 0) {
		snprintf(why, sizeof(why), "backend did not reply within %u s",
		         c->conf->idle_timeout);
		core_abort(c, why);
		return;
	}
	if (!c->logged_in) {
		core_arm_idle(c);
		return;
	}
	log_info("%s: idle for %u s", c->tag, c->conf->idle_timeout);
	reply_client(c, "421 Timeout (%u seconds): closing control connection.",
	             c->conf->idle_timeout);
	close_after_flush(c, "idle timeout");
}
