/*
 * core_harness: drives struct core (session_core.c) without a socket, for
 * tests/unit/test_session_core.c and tests/fuzz/fuzz_session_core.c. A
 * recording core_ops writes every action as one line of a transcript
 * ("C:" to the client, "B:" to the backend, "data_new", "listen client",
 * "end 226 ok", ...). pump() stands in for the shell's framing: it offers
 * the client's queued lines and the backend's queued replies to the core
 * whenever the core says it takes them (pipelining, held replies).
 * Owns nothing but struct t's fixed buffers.
 */
#ifndef FTPGATE_CORE_HARNESS_H
#define FTPGATE_CORE_HARNESS_H

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session_core.h"

struct t {
	struct core core;
	struct site_conf conf;
	char log[65536]; /* transcript since the last check */
	size_t len;
	char cin[8192]; /* client bytes not yet taken */
	size_t cin_len;
	char bin[8][1024]; /* backend replies not yet taken */
	int bin_n;
	uint64_t now;
	uint64_t timer_ms;
	uint16_t next_port;
	int fail_listen, fail_connect, fail_new;
	int closed;
	unsigned after_close; /* actions taken after the core asked to close */
};

static inline void rec(struct t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void rec(struct t *t, const char *fmt, ...)
{
	va_list ap;
	if (t->closed)
		t->after_close++;
	va_start(ap, fmt);
	int n = vsnprintf(t->log + t->len, sizeof(t->log) - t->len, fmt, ap);
	va_end(ap);
	if (n > 0)
		t->len += (size_t)n;
	if (t->len >= sizeof(t->log))
		t->len = sizeof(t->log) - 1; /* truncated: an exact check fails */
}

/* Each line of bytes (CRLF dropped) as "P:line\n". */
static inline void rec_lines(struct t *t, char p, const char *buf, size_t len)
{
	size_t i = 0;
	while (i < len) {
		const char *nl = memchr(buf + i, '\n', len - i);
		size_t n = nl ? (size_t)(nl - (buf + i)) : len - i;
		size_t m = n && buf[i + n - 1] == '\r' ? n - 1 : n;
		rec(t, "%c:%.*s\n", p, (int)m, buf + i);
		i += n + (nl ? 1 : 0);
	}
}

static inline void op_send_client(void *io, const char *buf, size_t len)
{
	rec_lines(io, 'C', buf, len);
}
static inline void op_send_backend(void *io, const char *buf, size_t len)
{
	rec_lines(io, 'B', buf, len);
}
static inline int op_data_new(void *io, int ctls, int btls)
{
	struct t *t = io;
	if (t->fail_new) {
		errno = ENOMEM;
		return -1;
	}
	rec(t, "data_new %d %d\n", ctls, btls);
	return 0;
}
static inline int op_data_listen(void *io, enum core_side side, struct sockaddr_storage *bound)
{
	struct t *t = io;
	if (t->fail_listen) {
		errno = EADDRINUSE;
		return -1;
	}
	struct sockaddr_in *sin = (struct sockaddr_in *)bound;
	memset(bound, 0, sizeof(*bound));
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(0x7f000001);
	sin->sin_port = htons(t->next_port);
	rec(t, "listen %s %u\n", side == CORE_CLIENT ? "client" : "backend", t->next_port++);
	return 0;
}
static inline int op_data_connect(void *io, enum core_side side, const struct sockaddr *addr)
{
	struct t *t = io;
	const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;
	if (t->fail_connect) {
		errno = ECONNREFUSED;
		return -1;
	}
	rec(t, "connect %s %u\n", side == CORE_CLIENT ? "client" : "backend", ntohs(sin->sin_port));
	return 0;
}
static inline int op_data_client_tls(void *io, int on)
{
	rec(io, "data_client_tls %d\n", on);
	return 0;
}
static inline void op_data_start(void *io, int download)
{
	(void)download;
	rec(io, "start\n");
}
static inline void op_data_tls_go(void *io)
{
	rec(io, "tls_go\n");
}
static inline void op_data_drop(void *io)
{
	rec(io, "drop\n");
}
static inline void op_client_tls(void *io)
{
	rec(io, "client_tls\n");
}
static inline int op_backend_tls(void *io)
{
	rec(io, "backend_tls\n");
	return 0;
}
static inline void op_blind(void *io)
{
	rec(io, "blind\n");
}
static inline void op_set_timer(void *io, uint64_t ms)
{
	((struct t *)io)->timer_ms = ms;
}
static inline void op_close(void *io, enum core_close how, const char *reason)
{
	struct t *t = io;
	rec(t, "close %s: %s\n", how == CORE_CLOSE_NOW ? "now" : "flush", reason);
	t->closed = 1;
}
static inline void op_transfer_end(void *io, int code, enum xfer_result r)
{
	static const char *const names[] = {"ok", "failed", "aborted"};
	rec(io, "end %d %s\n", code, names[r]);
}
static inline void op_pt_port(void *io, uint16_t port)
{
	rec(io, "pt_port %u\n", port);
}
static inline void op_route_connect(void *io, int route)
{
	rec(io, "route %d\n", route);
}
static inline void op_login_result(void *io, int ok)
{
	rec(io, "login %s\n", ok ? "ok" : "failed");
}
static inline uint64_t op_now(void *io)
{
	return ((struct t *)io)->now;
}

static const struct core_ops ops = {
    .send_client = op_send_client,
    .send_backend = op_send_backend,
    .data_new = op_data_new,
    .data_listen = op_data_listen,
    .data_connect = op_data_connect,
    .data_client_tls = op_data_client_tls,
    .data_start = op_data_start,
    .data_tls_go = op_data_tls_go,
    .data_drop = op_data_drop,
    .client_tls_after_flush = op_client_tls,
    .backend_tls_start = op_backend_tls,
    .go_blind_after_flush = op_blind,
    .set_timer = op_set_timer,
    .close = op_close,
    .transfer_end = op_transfer_end,
    .route_connect = op_route_connect,
    .login_result = op_login_result,
    .now_ms = op_now,
    .pt_data_port = op_pt_port,
};

static inline void conf_default(struct site_conf *sc)
{
	memset(sc, 0, sizeof(*sc));
	snprintf(sc->name, sizeof(sc->name), "t");
	struct sockaddr_in *b = (struct sockaddr_in *)&sc->backends[0].addr;
	sc->n_backends = 1;
	b->sin_family = AF_INET;
	b->sin_addr.s_addr = htonl(0x7f000002);
	b->sin_port = htons(2121);
	sc->pasv_lo = 50000;
	sc->pasv_hi = 50999;
	sc->connect_timeout = 10;
	sc->idle_timeout = 900;
	sc->data_timeout = 60;
	sc->login_timeout = 60;
	sc->backend_data_mode = BDM_PASSIVE;
	sc->tls_require_session_reuse = 1;
}

/* Offer queued client lines and backend replies to the core while it takes them. */
static inline void pump(struct t *t)
{
	for (int progress = 1; progress;) {
		progress = 0;
		while (t->bin_n && core_wants_reply(&t->core)) {
			char rep[1024];
			snprintf(rep, sizeof(rep), "%s", t->bin[0]);
			memmove(t->bin[0], t->bin[1], sizeof(t->bin[0]) * (size_t)(t->bin_n - 1));
			t->bin_n--;
			core_backend_reply(&t->core, atoi(rep), rep, strlen(rep));
			progress = 1;
		}
		while (t->cin_len && core_may_take_command(&t->core, t->cin, t->cin_len)) {
			char *lf = memchr(t->cin, '\n', t->cin_len);
			if (!lf)
				break;
			size_t n = (size_t)(lf - t->cin) + 1;
			char line[CORE_CMD_LINE_MAX + 1];
			if (n > CORE_CMD_LINE_MAX) {
				memmove(t->cin, t->cin + n, t->cin_len - n);
				t->cin_len -= n;
				core_client_line_too_long(&t->core);
				progress = 1;
				continue;
			}
			memcpy(line, t->cin, n);
			memmove(t->cin, t->cin + n, t->cin_len - n);
			t->cin_len -= n;
			core_client_line(&t->core, line, n);
			progress = 1;
		}
	}
}

static inline void client_n(struct t *t, const char *bytes, size_t n)
{
	if (n > sizeof(t->cin) - t->cin_len)
		return; /* the shell would stop reading */
	memcpy(t->cin + t->cin_len, bytes, n);
	t->cin_len += n;
	pump(t);
}

static inline void client(struct t *t, const char *bytes)
{
	client_n(t, bytes, strlen(bytes));
}

static inline void backend(struct t *t, const char *reply)
{
	if (t->bin_n == (int)(sizeof(t->bin) / sizeof(t->bin[0])))
		return; /* the shell would stop reading */
	snprintf(t->bin[t->bin_n++], sizeof(t->bin[0]), "%s", reply);
	pump(t);
}

static inline void data_side(struct t *t, enum core_side side, int ok, const char *why)
{
	core_data_side(&t->core, side, ok, why);
	pump(t);
}

static inline void data_done(struct t *t, int ok, const char *why)
{
	core_data_done(&t->core, ok, why);
	pump(t);
}

static inline void start(struct t *t, const struct site_conf *sc)
{
	memset(t, 0, sizeof(*t));
	if (sc)
		t->conf = *sc;
	else
		conf_default(&t->conf);
	t->next_port = 50000;
	t->now = 1000;
	struct sockaddr_in cl = {.sin_family = AF_INET}, lo = {.sin_family = AF_INET};
	cl.sin_addr.s_addr = htonl(0x7f000001);
	lo.sin_addr.s_addr = htonl(0x7f000001);
	core_init(&t->core, &t->conf, &ops, t, "t/1", (struct sockaddr *)&cl,
	          (struct sockaddr *)&lo);
	core_set_backend(&t->core, (struct sockaddr *)&t->conf.backends[0].addr);
	if (t->conf.tls == TLS_IMPLICIT)
		core_client_tls_started(&t->core); /* the shell's TLS starts at accept */
	core_start(&t->core);
	if (!t->conf.n_routes) /* routing by user: no backend before USER */
		core_backend_connected(&t->core);
}

/*
 * What must hold between any two events (a broken one is named in why):
 * no transition outside the drawing, the FIFO in bounds, a pending command
 * exactly while CONNECTING, a held reply exactly while HELD, a data pair
 * exactly in the states that have one, and no action after closing.
 */
static inline int core_invariants(const struct t *t, char *why, size_t size)
{
	const struct core *c = &t->core;
	int pt = tls_is_passthrough(c->conf->tls);
	enum xfer_state x = c->xs;
	if (c->bad_transitions)
		snprintf(why, size, "%u transitions outside the drawing", c->bad_transitions);
	else if (c->fifo_len > CORE_FIFO_SIZE)
		snprintf(why, size, "fifo_len %u", c->fifo_len);
	else if (t->after_close)
		snprintf(why, size, "%u actions after close", t->after_close);
	else if (c->closing)
		return 0; /* the shell drops the pair itself */
	else if ((c->pending_cmd != NULL) != (x == XS_CONNECTING))
		snprintf(why, size, "pending command in state %s", xfer_state_names[x]);
	else if ((c->held != NULL) != (x == XS_HELD))
		snprintf(why, size, "held reply in state %s", xfer_state_names[x]);
	else if (!pt && (x == XS_READY || x == XS_CONNECTING || x == XS_RUNNING || x == XS_HELD) &&
	         !c->pair)
		snprintf(why, size, "no data pair in state %s", xfer_state_names[x]);
	else if ((x == XS_IDLE || x == XS_DATA_DONE || x == XS_ABORTED || pt) && c->pair)
		snprintf(why, size, "a data pair in state %s", xfer_state_names[x]);
	else
		return 0;
	return -1;
}

/*
 * Run a script of events from bytes (the session fuzzer's input, or random
 * bytes in the unit test): the first two bytes pick the site's TLS and
 * data settings, then each byte pair is one event (a client command or raw
 * line, a backend reply, a data connection up or failed, the pair done, a
 * timer, TLS started, a drain, failures of listen/connect/new). Returns 0,
 * or -1 with the first broken invariant in why; counts the transfer states
 * seen after each event in reached[XS_COUNT] if not NULL.
 */
static inline int script_run(const uint8_t *d, size_t n, char *why, size_t size, unsigned *reached)
{
	static const char *const cmds[] = {
	    "USER u\r\n",
	    "PASS p\r\n",
	    "PASV\r\n",
	    "EPSV\r\n",
	    "EPSV ALL\r\n",
	    "EPSV 2\r\n",
	    "PORT 127,0,0,1,200,1\r\n",
	    "EPRT |1|127.0.0.1|51201|\r\n",
	    "RETR f\r\n",
	    "STOR f\r\n",
	    "LIST\r\n",
	    "ABOR\r\n",
	    "\377\364\377\362ABOR\r\n",
	    "QUIT\r\n",
	    "FEAT\r\n",
	    "REIN\r\n",
	    "AUTH TLS\r\n",
	    "AUTH SSL\r\n",
	    "PBSZ 0\r\n",
	    "PROT P\r\n",
	    "PROT C\r\n",
	    "CCC\r\n",
	    "TYPE A\r\n",
	    "NOOP\r\n",
	    "LPSV\r\n",
	    "REST 100\r\n",
	    "APPE f\r\n",
	    "MLSD\r\n",
	    "\r\n",
	    "X\x01Y\r\n",
	};
	static const char *const reps[] = {
	    "220 hi\r\n",
	    "230 in\r\n",
	    "331 pass\r\n",
	    "150 open\r\n",
	    "125 open\r\n",
	    "226 done\r\n",
	    "225 ABOR ok\r\n",
	    "426 aborted\r\n",
	    "229 Entering Extended Passive Mode (|||40000|)\r\n",
	    "227 Entering Passive Mode (10,0,0,1,156,64)\r\n",
	    "227 Entering Passive Mode (1,2,3)\r\n",
	    "200 ok\r\n",
	    "500 what\r\n",
	    "522 no\r\n",
	    "550 no\r\n",
	    "421 bye\r\n",
	    "234 go\r\n",
	    "211-Features:\r\n EPSV\r\n SIZE\r\n211 End\r\n",
	    "120 wait\r\n",
	    "530 denied\r\n",
	};
	struct site_conf sc;
	struct t *t = calloc(1, sizeof(*t));
	int rc = 0;

	if (!t)
		abort();
	conf_default(&sc);
	if (n >= 2) {
		sc.tls = (enum tls_mode)(d[0] % 5);
		sc.backend_tls = (enum backend_tls_mode)(d[0] / 5 % 3);
		sc.backend_data_mode = (enum backend_data_mode)(d[0] / 15 % 3);
		sc.require_tls = d[1] & 1;
		sc.require_data_tls = (d[1] >> 1) & 1;
		sc.backend_data_protection = (enum backend_prot)((d[1] >> 2) % 3);
		sc.allow_foreign_address = (d[1] >> 4) & 1;
		d += 2;
		n -= 2;
	}
	start(t, &sc);
	for (size_t i = 0; i + 1 < n && rc == 0; i += 2) {
		unsigned op = d[i] % 12, arg = d[i + 1];
		char buf[96];
		switch (op) {
		case 0:
		case 1:
			client(t, cmds[arg % (sizeof(cmds) / sizeof(cmds[0]))]);
			break;
		case 2: { /* raw bytes up to the end of the script or arg % 64 */
			size_t k = arg % 64;
			if (k > n - i - 2)
				k = n - i - 2;
			client_n(t, (const char *)d + i + 2, k);
			i += k;
			break;
		}
		case 3:
		case 4:
			backend(t, reps[arg % (sizeof(reps) / sizeof(reps[0]))]);
			break;
		case 5:
			snprintf(buf, sizeof(buf), "%03u x\r\n", 100 + (arg * 7u) % 500);
			backend(t, buf);
			break;
		case 6:
			data_side(t, (arg & 1) ? CORE_CLIENT : CORE_BACKEND, (arg >> 1) & 1, "x");
			break;
		case 7:
			data_done(t, arg & 1, "x");
			break;
		case 8:
			if (t->core.pt_blind_pending)
				break;
			t->now += (uint64_t)arg * 1000u;
			if (core_transferring(&t->core) && t->core.pair)
				core_arm_idle(&t->core);
			else
				core_timer(&t->core);
			pump(t);
			break;
		case 9:
			if (t->core.auth_pending) {
				t->cin_len = 0; /* the shell drops plaintext sent after AUTH */
				core_client_tls_started(&t->core);
				pump(t);
			}
			break;
		case 10:
			if (!t->core.pt_blind_pending) {
				core_drain(&t->core);
				pump(t);
			}
			break;
		case 11:
			t->fail_listen = arg & 1;
			t->fail_connect = (arg >> 1) & 1;
			t->fail_new = (arg >> 2) & 1;
			break;
		}
		t->len = 0;
		rc = core_invariants(t, why, size);
		if (reached)
			reached[t->core.xs]++;
	}
	core_free(&t->core);
	free(t);
	return rc;
}

#endif
