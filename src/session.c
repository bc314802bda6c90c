/* session: one client session: both control connections, its state, one teardown path. */
#include "config.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "datachan.h"
#include "ftp_addr.h"
#include "ftp_cmd.h"
#include "ftp_reply.h"
#include "log.h"
#include "session.h"
#include "tls.h"
#include "util.h"
#include "xferlog.h"

#define CMD_LINE_MAX 4096    /* longest client command line, CRLF included */
#define REPLY_LINE_MAX 8192  /* longest backend reply line */
#define CLIENT_IN_HIGH 65536 /* stop reading a client that pipelines this much */
#define OUT_HIGH 262144      /* stop reading the other side while output is this large */
#define FLUSH_TIMEOUT 10     /* seconds to deliver a last reply before closing */
#define FIFO_SIZE 8
#define PT_FWD_MAX 8 /* passthrough data connections open at once per session */

/* What the proxy expects the next backend reply to answer. */
enum exp_kind {
	EXP_GREETING,   /* 220 (maybe after 120) */
	EXP_RELAY,      /* pass the reply through */
	EXP_DATA_SETUP, /* the proxy's own EPSV/PASV/PORT/EPRT for the client's data command */
	EXP_TRANSFER,   /* RETR/STOR/...: 1xx relayed, final reply held until data is done */
	EXP_FEAT,       /* rewritten to what the proxy provides */
	EXP_QUIT,       /* relay, then close */
	EXP_BAUTH,      /* the proxy's AUTH TLS to the backend */
	EXP_BPBSZ,      /* the proxy's PBSZ 0 to the backend; then the greeting goes out */
	EXP_BPROT,      /* the proxy's PROT to the backend before a data command */
	EXP_PT_AUTH,    /* passthrough: the client's AUTH; after 234 the relay goes blind */
	EXP_PT_XFER,    /* passthrough: a transfer command, relayed */
	EXP_ABOR,       /* the client's ABOR: relayed */
};

struct expect {
	enum exp_kind kind;
	enum ftp_verb sent;        /* EXP_DATA_SETUP: what the proxy sent the backend */
	enum ftp_verb client_verb; /* EXP_DATA_SETUP: what the client asked */
};

/* A data connection forwarded 1:1 to the backend's same port (passthrough). */
struct pt_fwd {
	struct pt_fwd *next;
	struct session *s;
	struct datachan *dc;
	uint16_t port;
};

struct session {
	struct session *next, *prev; /* in gw->sessions */
	struct site *site;
	const struct site_conf *conf;
	uint64_t id;
	char tag[96];
	int dead;
	struct event *reaper; /* frees the session from the loop, after callbacks unwind */

	struct bufferevent *cbev; /* client control */
	struct bufferevent *bbev; /* backend control */
	struct sockaddr_storage client_addr;
	struct sockaddr_storage local_addr; /* where the client connected to */
	struct event *timer;                /* connect / idle / flush timeout */
	int backend_up;
	int closing; /* delivering a last reply, then close */

	struct expect fifo[FIFO_SIZE];
	struct expect fifo_spare; /* returned on overflow, never queued */
	unsigned fifo_head, fifo_len;

	struct ftp_reply_asm rasm;
	struct evbuffer *reply; /* the reply being assembled */
	int discarding;         /* client line too long: skip to the next LF */

	/* Data connection state. */
	struct datachan *dc;
	int dc_done;         /* the pair finished (dc freed) */
	int dc_ok;           /* ... and delivered every byte */
	char dc_reason[160]; /* ... or why not */
	char *pending_cmd;   /* transfer command waiting for the backend data connect */
	int client_active;   /* the client asked PORT/EPRT: connect to client_data_addr */
	int backend_active;  /* the backend connects to the proxy (PORT/EPRT sent) */
	struct sockaddr_storage client_data_addr;
	uint64_t xfer_up, xfer_down; /* bytes of the current transfer */
	int transfer;                /* a transfer command was sent and its final reply is due */
	struct evbuffer *held;       /* final transfer reply held until the data is done */
	char xfer_cmd[96];           /* for the transfer log line (escaped) */
	char xfer_path[512];         /* argument of the transfer command, for xferlog */
	uint64_t xfer_start_ms;
	int type_ascii; /* TYPE A in effect */
	int epsv_all;
	int backend_no_epsv;
	int logged_in; /* a 230 went through */
	int aborted;   /* ABOR during the transfer in progress */
	int draining;  /* proxy shutting down: close once idle */

	/* TLS. */
	int client_tls;            /* the client control connection is TLS */
	int auth_pending;          /* 234 sent: TLS starts once it is on the wire */
	int client_throttled;      /* commands not read: the client is not reading replies */
	int client_pbsz;           /* PBSZ seen */
	int client_prot_p;         /* PROT P: client data connections are TLS */
	unsigned char sid_ctx[16]; /* ties data-connection TLS sessions to this control one */
	int backend_tls_up;        /* the backend control connection is TLS */
	int backend_prot_p;        /* PROT the backend has now: 1 P, 0 C, -1 unknown */
	SSL_SESSION *backend_sess; /* latest TLS session of the backend control connection */
	struct evbuffer *greeting; /* held while TLS to the backend is negotiated */

	/* TLS passthrough. */
	int pt_blind_pending;   /* 234 relayed: go blind once it is on the wire */
	struct datachan *blind; /* blind relay of the control connection */
	uint64_t blind_mark;    /* control bytes at the last idle check */
	struct pt_fwd *fwds;    /* forwarded data connections of this session */

	/* For the session log line. */
	char user[64];
	uint64_t start_ms;
	uint64_t bytes_up, bytes_down; /* data bytes client->backend, backend->client */
	uint64_t ctrl_bytes;           /* control bytes relayed blindly (passthrough) */
	char end_reason[160];
};

static void session_end(struct session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void process_client(struct session *s);
static void process_backend(struct session *s);
static void arm_idle(struct session *s);
static void account_data(struct session *s, uint64_t up, uint64_t down);
static void count_transfer(struct session *s, enum xfer_result r);
static void drain_check(struct session *s);
static void client_read_cb(struct bufferevent *bev, void *arg);
static void client_write_cb(struct bufferevent *bev, void *arg);
static void client_event_cb(struct bufferevent *bev, short what, void *arg);
static void backend_read_cb(struct bufferevent *bev, void *arg);
static void backend_event_cb(struct bufferevent *bev, short what, void *arg);
static struct bufferevent *bev_start_tls(struct session *s, struct bufferevent *old, SSL *ssl,
                                         enum bufferevent_ssl_state state);

/* ---- helpers -------------------------------------------------------------------------------- */

static void reply_client(struct session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void reply_client(struct session *s, const char *fmt, ...)
{
	va_list ap;
	if (!s->cbev)
		return; /* blind relay: nothing can be said any more */
	struct evbuffer *out = bufferevent_get_output(s->cbev);
	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

static void relay_reply(struct session *s, struct evbuffer *rep)
{
	evbuffer_add_buffer(bufferevent_get_output(s->cbev), rep);
}

static void send_backend(struct session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void send_backend(struct session *s, const char *fmt, ...)
{
	va_list ap;
	struct evbuffer *out = bufferevent_get_output(s->bbev);
	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

static void session_abort(struct session *s, const char *why);

static struct expect *fifo_push(struct session *s, enum exp_kind kind)
{
	if (s->fifo_len == FIFO_SIZE) {
		/* Cannot happen with one command at a time; never write past it. */
		session_abort(s, "internal error: too many outstanding replies");
		memset(&s->fifo_spare, 0, sizeof(s->fifo_spare));
		return &s->fifo_spare;
	}
	struct expect *e = &s->fifo[(s->fifo_head + s->fifo_len++) % FIFO_SIZE];
	memset(e, 0, sizeof(*e));
	e->kind = kind;
	return e;
}

static struct expect *fifo_peek(struct session *s)
{
	return s->fifo_len ? &s->fifo[s->fifo_head] : NULL;
}

static void fifo_pop(struct session *s)
{
	s->fifo_head = (s->fifo_head + 1) % FIFO_SIZE;
	s->fifo_len--;
}

static void set_timer(struct session *s, unsigned seconds)
{
	struct timeval tv = {(time_t)seconds, 0};
	event_add(s->timer, &tv);
}

/* Milliseconds left of login_timeout (0 once it has passed). */
static uint64_t login_left_ms(const struct session *s)
{
	uint64_t limit = (uint64_t)s->conf->login_timeout * 1000u, el = now_ms() - s->start_ms;
	return el >= limit ? 0 : limit - el;
}

/* Announce address for the client: public_address or where it connected to. */
static const struct sockaddr *announce_addr(struct session *s)
{
	if (s->conf->has_public_address)
		return (const struct sockaddr *)&s->conf->public_address;
	return (const struct sockaddr *)&s->local_addr;
}

static void dc_drop(struct session *s)
{
	if (s->dc) {
		s->xfer_up = datachan_bytes(s->dc, 0);
		s->xfer_down = datachan_bytes(s->dc, 1);
		account_data(s, s->xfer_up, s->xfer_down);
		datachan_free(s->dc);
		s->dc = NULL;
	}
	s->dc_done = 0;
	s->dc_ok = 0;
	s->client_active = 0;
	s->backend_active = 0;
	free(s->pending_cmd);
	s->pending_cmd = NULL;
}

/* Data bytes of a finished pair: the session's totals and the site's counters. */
static void account_data(struct session *s, uint64_t up, uint64_t down)
{
	s->bytes_up += up;
	s->bytes_down += down;
	s->site->stats.bytes_up += up;
	s->site->stats.bytes_down += down;
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
	enum xfer_cmd x = xfer_index(s->xfer_cmd);
	struct xferlog *xl = s->site->gw->xferlog;
	char host[ADDR_STR_MAX];

	s->site->stats.transfers[x][r]++;
	if (!xl || (x != XC_RETR && x != XC_STOR && x != XC_APPE && x != XC_STOU))
		return;
	struct xferlog_entry e = {
	    .end = time(NULL),
	    .seconds = (double)(now_ms() - s->xfer_start_ms) / 1000.0,
	    .remote_host = addr_str((struct sockaddr *)&s->client_addr, host, sizeof(host), 0),
	    .bytes = x == XC_RETR ? s->xfer_down : s->xfer_up,
	    .path = s->xfer_path,
	    .type = s->type_ascii ? 'a' : 'b',
	    .direction = x == XC_RETR ? 'o' : 'i',
	    .access =
	        (strcmp(s->user, "anonymous") == 0 || strcmp(s->user, "ftp") == 0) ? 'a' : 'r',
	    .user = s->user,
	    .complete = r == XR_OK,
	};
	if (xferlog_write(xl, &e) < 0)
		log_warn("%s: xferlog: %s", s->tag, strerror(errno));
}

/* The final reply of a transfer went to the client: count, log, and reset the transfer state. */
static void transfer_end(struct session *s, int code)
{
	count_transfer(s, s->aborted ? XR_ABORTED : code / 100 == 2 ? XR_OK : XR_FAILED);
	log_info("%s: transfer %s: %d, %.3f s, data up %llu down %llu", s->tag, s->xfer_cmd, code,
	         (double)(now_ms() - s->xfer_start_ms) / 1000.0, (unsigned long long)s->xfer_up,
	         (unsigned long long)s->xfer_down);
	s->aborted = 0;
	s->transfer = 0;
	s->dc_done = 0;
	arm_idle(s);
}

/* ---- teardown ------------------------------------------------------------------------------- */

static void fwds_free(struct session *s)
{
	while (s->fwds) {
		struct pt_fwd *f = s->fwds;
		s->fwds = f->next;
		account_data(s, datachan_bytes(f->dc, 0), datachan_bytes(f->dc, 1));
		datachan_free(f->dc);
		free(f);
	}
}

static void blind_free(struct session *s)
{
	if (s->blind) {
		s->ctrl_bytes = datachan_bytes(s->blind, 0) + datachan_bytes(s->blind, 1);
		datachan_free(s->blind);
		s->blind = NULL;
	}
}

static void session_free(struct session *s)
{
	dc_drop(s);
	fwds_free(s);
	blind_free(s);
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
	if (s->held)
		evbuffer_free(s->held);
	if (s->greeting)
		evbuffer_free(s->greeting);
	if (s->backend_sess)
		SSL_SESSION_free(s->backend_sess);
	struct ftpgate *gw = s->site->gw;
	struct gen *gen = s->site->gen;
	s->site->n_sessions--;
	gw->n_sessions--;
	if (s->prev)
		s->prev->next = s->next;
	else
		s->site->gw->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	free(s);
	gen_release(gw, gen);
	if (gw->draining && gw->n_sessions == 0)
		event_base_loopbreak(gw->base);
}

static void reaper_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	session_free(arg);
}

/* The one way a session ends: log, close both sides now, free from the loop. */
static void session_end(struct session *s, const char *fmt, ...)
{
	va_list ap;
	char client[ADDR_STR_MAX], backend[ADDR_STR_MAX], reason[200];

	if (s->dead)
		return;
	s->dead = 1;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	if (s->end_reason[0])
		snprintf(reason, sizeof(reason), "%s", s->end_reason);
	enum end_reason why = classify_end(reason);
	s->site->stats.sessions_ended[why]++;
	if (why == END_BACKEND_CONNECT)
		s->site->stats.backend_connect_failures++;
	if (strstr(reason, "TLS error"))
		s->site->stats.tls_handshake_failures++;
	dc_drop(s);
	fwds_free(s);
	blind_free(s);
	char relayed[64] = "";
	if (tls_is_passthrough(s->conf->tls))
		snprintf(relayed, sizeof(relayed), "control relayed %llu bytes, ",
		         (unsigned long long)s->ctrl_bytes);
	log_info("%s: end: client %s backend %s user \"%s\" data up %llu down %llu bytes, "
	         "%s%.3f s: %s",
	         s->tag, addr_str((struct sockaddr *)&s->client_addr, client, sizeof(client), 1),
	         addr_str((struct sockaddr *)&s->conf->backend, backend, sizeof(backend), 1),
	         s->user, (unsigned long long)s->bytes_up, (unsigned long long)s->bytes_down,
	         relayed, (double)(now_ms() - s->start_ms) / 1000.0, reason);
	if (s->cbev)
		bufferevent_disable(s->cbev, EV_READ | EV_WRITE);
	if (s->bbev)
		bufferevent_disable(s->bbev, EV_READ | EV_WRITE);
	event_del(s->timer);
	event_active(s->reaper, 0, 0);
}

/* Deliver what is queued for the client, then end. */
static void session_close_after_flush(struct session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void session_close_after_flush(struct session *s, const char *fmt, ...)
{
	va_list ap;
	if (s->dead || s->closing)
		return;
	va_start(ap, fmt);
	vsnprintf(s->end_reason, sizeof(s->end_reason), fmt, ap);
	va_end(ap);
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
	set_timer(s, FLUSH_TIMEOUT);
}

/* Fatal for the session: tell the client 421 and close. */
static void session_abort(struct session *s, const char *why)
{
	if (s->dead || s->closing)
		return;
	log_warn("%s: %s", s->tag, why);
	reply_client(s, "421 Service not available, closing control connection.");
	session_close_after_flush(s, "%s", why);
}

/* ---- data connection ------------------------------------------------------------------------ */

static void finish_transfer_reply(struct session *s);

/*
 * May the transfer command go to the backend? The backend side must be
 * connected (or be the backend's to connect: active toward the backend),
 * and in active mode the client must already be reachable.
 */
static int data_ready_to_forward(const struct session *s)
{
	if (!s->backend_active && !datachan_side_connected(s->dc, DC_BACKEND))
		return 0;
	if (s->client_active && !datachan_side_connected(s->dc, DC_CLIENT))
		return 0;
	return 1;
}

static void transfer_forward(struct session *s, const char *cmd)
{
	send_backend(s, "%s", cmd);
	fifo_push(s, EXP_TRANSFER);
	s->xfer_start_ms = now_ms();
	s->transfer = 1;
	s->xfer_up = s->xfer_down = 0;
	datachan_start(s->dc);
}

static void dc_side_ready(struct datachan *dc, enum dc_side side, int ok, const char *reason,
                          void *arg)
{
	struct session *s = arg;
	(void)dc;

	if (s->dead)
		return;
	if (!ok) {
		char why[sizeof(s->dc_reason)];
		/* reason lives in dc: copy it before dc goes. */
		snprintf(why, sizeof(why), "%s", reason);
		log_warn("%s: %s data connection failed: %s", s->tag,
		         side == DC_BACKEND ? "backend" : "client", why);
		if (s->pending_cmd) {
			/* The command never reached the backend: answer it here. */
			dc_drop(s);
			reply_client(s, "425 Can't open data connection: %s.", why);
			process_client(s);
			return;
		}
		/* The command went out: the pair is broken, its final reply becomes 426. */
		dc_drop(s);
		s->dc_done = 1;
		s->dc_ok = 0;
		snprintf(s->dc_reason, sizeof(s->dc_reason), "%s", why);
		return;
	}
	if (s->pending_cmd && data_ready_to_forward(s)) {
		char *cmd = s->pending_cmd;
		s->pending_cmd = NULL;
		transfer_forward(s, cmd);
		free(cmd);
	}
}

static void dc_done(struct datachan *dc, int ok, const char *reason, void *arg)
{
	struct session *s = arg;

	s->xfer_up = datachan_bytes(dc, 0);
	s->xfer_down = datachan_bytes(dc, 1);
	account_data(s, s->xfer_up, s->xfer_down);
	s->dc_done = 1;
	s->dc_ok = ok;
	/* reason lives in dc: copy it before dc goes. */
	snprintf(s->dc_reason, sizeof(s->dc_reason), "%s", ok ? "" : reason);
	datachan_free(dc);
	s->dc = NULL;
	if (!ok) {
		log_info("%s: data connection closed: %s", s->tag, s->dc_reason);
		if (strstr(s->dc_reason, "TLS") || strstr(s->dc_reason, "SSL"))
			s->site->stats.tls_handshake_failures++;
	}
	if (s->transfer) {
		if (s->held)
			finish_transfer_reply(s);
		return;
	}
	/* Not transferring (client never sent the command in time, or the
	 * pair broke before use): forget it, the next command gets 425. */
	if (s->pending_cmd) {
		free(s->pending_cmd);
		s->pending_cmd = NULL;
		reply_client(s, "425 Can't open data connection: %s.", s->dc_reason);
		s->dc_done = 0;
		process_client(s);
	}
}

/* The proxy refused the client's TLS data connection: it did not resume the session. */
static int dc_refused_no_reuse(const struct session *s)
{
	return s->dc_done && !s->dc_ok && strcmp(s->dc_reason, DATACHAN_NO_REUSE) == 0;
}

/* The held final reply of a transfer may go to the client now. */
static void finish_transfer_reply(struct session *s)
{
	struct expect *e = fifo_peek(s);
	char res[8] = "";

	if (!s->held)
		return;
	evbuffer_copyout(s->held, res, 3);
	if (dc_refused_no_reuse(s)) {
		/* The proxy refused the data connection: say why (as vsftpd
		 * does), not what the backend made of the cut. */
		reply_client(s, "522 SSL connection failed: session reuse required "
		                "(the TLS data connection must resume the control connection's "
		                "TLS session).");
		snprintf(res, sizeof(res), "522");
	} else if (s->dc_ok || res[0] != '2') {
		evbuffer_add_buffer(bufferevent_get_output(s->cbev), s->held);
	} else {
		/* The backend says done but the client did not get every byte. */
		reply_client(s, "426 Connection closed; transfer aborted (%s).", s->dc_reason);
		snprintf(res, sizeof(res), "426");
	}
	evbuffer_free(s->held);
	s->held = NULL;
	if (e)
		fifo_pop(s);
	transfer_end(s, atoi(res));
	drain_check(s);
	process_backend(s);
	process_client(s);
}

/* ---- replies from the backend --------------------------------------------------------------- */

/*
 * Answer FEAT with what the proxy provides: the backend's features that pass
 * through a proxy unchanged, plus EPRT and EPSV, which the proxy always
 * handles itself. AUTH/PBSZ/PROT are listed when the site terminates TLS
 * (the backend's own are dropped), LPRT/LPSV never are.
 */
static void rewrite_feat(struct session *s, int code, struct evbuffer *rep)
{
	static const char *const drop[] = {"AUTH", "PBSZ", "PROT", "CCC",
	                                   "EPSV", "EPRT", "LPSV", "LPRT"};
	struct evbuffer *out = bufferevent_get_output(s->cbev);
	size_t len;
	char *line;

	evbuffer_add_printf(out, "211-Features:\r\n");
	if (s->conf->tls == TLS_TERMINATE)
		evbuffer_add_printf(out, " AUTH TLS\r\n");
	if (s->conf->tls != TLS_OFF)
		evbuffer_add_printf(out, " PBSZ\r\n PROT\r\n");
	evbuffer_add_printf(out, " EPRT\r\n EPSV\r\n");
	while ((line = evbuffer_readln(rep, &len, EVBUFFER_EOL_CRLF)) != NULL) {
		/* RFC 2389: feature lines start with a space. */
		if (code == 211 && len > 1 && line[0] == ' ') {
			char feat[16];
			size_t i = 0;
			while (i < sizeof(feat) - 1 && i + 1 < len && line[i + 1] != ' ') {
				feat[i] = line[i + 1];
				i++;
			}
			feat[i] = '\0';
			int keep = 1;
			for (size_t k = 0; k < sizeof(drop) / sizeof(drop[0]); k++)
				if (strcasecmp(feat, drop[k]) == 0)
					keep = 0;
			if (keep) {
				evbuffer_add(out, line, len);
				evbuffer_add(out, "\r\n", 2);
			}
		}
		free(line);
	}
	evbuffer_add_printf(out, "211 End\r\n");
}

/* The backend side is ready: set up the client side and answer the client's data command. */
static void client_data_setup(struct session *s, enum ftp_verb verb)
{
	char buf[128];
	uint16_t cport = 0;

	if (verb == FTP_V_PORT || verb == FTP_V_EPRT) {
		/* The proxy connects to the client when the transfer command comes. */
		s->client_active = 1;
		reply_client(s, "200 %s command successful.", verb == FTP_V_PORT ? "PORT" : "EPRT");
		return;
	}
	/* Listen where the client connected to: behind a 1:1 NAT that is the
	 * address public_address is translated to. */
	if (datachan_listen(s->dc, DC_CLIENT, (struct sockaddr *)&s->local_addr, s->conf->pasv_lo,
	                    s->conf->pasv_hi, (struct sockaddr *)&s->client_addr, &cport) < 0) {
		log_warn("%s: no passive port free in %u-%u on %s: %s", s->tag, s->conf->pasv_lo,
		         s->conf->pasv_hi,
		         addr_str((struct sockaddr *)&s->local_addr, buf, sizeof(buf), 0),
		         strerror(errno));
		dc_drop(s);
		reply_client(s, "425 Can't open passive connection: no free port.");
		return;
	}
	if (verb == FTP_V_EPSV) {
		ftp_format_229(buf, sizeof(buf), cport);
	} else {
		struct sockaddr_in sin;
		memcpy(&sin, announce_addr(s), sizeof(sin));
		sin.sin_port = htons(cport);
		ftp_format_227(buf, sizeof(buf), &sin);
	}
	evbuffer_add(bufferevent_get_output(s->cbev), buf, strlen(buf));
	log_debug("%s: data: client %s port %u", s->tag, verb == FTP_V_EPSV ? "EPSV" : "PASV",
	          cport);
}

/* The backend answered the proxy's EPSV/PASV/PORT/EPRT. */
static void handle_setup_reply(struct session *s, const struct expect *e, int code,
                               struct evbuffer *rep)
{
	char text[512], esc[256], buf[128];
	struct sockaddr_storage baddr;
	uint16_t bport = 0;

	if (code < 400 && !s->dc) {
		/* The pair timed out while the backend took its time: nothing to
		 * announce any more. */
		reply_client(s, "425 Can't open data connection: timed out.");
		return;
	}
	if (e->sent == FTP_V_EPSV && s->dc &&
	    (code == 500 || code == 501 || code == 502 || code == 504 || code == 522)) {
		/* No EPSV on this backend: fall back to PASV for the rest of the session. */
		s->backend_no_epsv = 1;
		send_backend(s, "PASV");
		struct expect *n = fifo_push(s, EXP_DATA_SETUP);
		n->sent = FTP_V_PASV;
		n->client_verb = e->client_verb;
		return;
	}
	if (code >= 400) {
		/* The backend refuses (not logged in, PORT not allowed, ...): that
		 * answers the client too. */
		dc_drop(s);
		relay_reply(s, rep);
		return;
	}
	if (e->sent == FTP_V_PORT || e->sent == FTP_V_EPRT) {
		client_data_setup(s, e->client_verb);
		return;
	}
	size_t n = evbuffer_copyout(rep, text, sizeof(text) - 1);
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
			if (s->conf->backend.ss_family != AF_INET ||
			    sin.sin_addr.s_addr !=
			        ((const struct sockaddr_in *)&s->conf->backend)->sin_addr.s_addr)
				log_debug("%s: backend announced %s in 227; using its control "
				          "address",
				          s->tag,
				          addr_str((struct sockaddr *)&sin, buf, sizeof(buf), 1));
		}
	}
	if (rc < 0 || bport == 0) {
		log_warn("%s: unusable passive reply from backend: \"%s\"", s->tag,
		         log_escape(esc, sizeof(esc), text, tlen));
		dc_drop(s);
		reply_client(s, "425 Can't open data connection: bad reply from the server.");
		return;
	}
	memcpy(&baddr, &s->conf->backend, sizeof(baddr));
	addr_set_port((struct sockaddr *)&baddr, bport);
	if (datachan_connect(s->dc, DC_BACKEND, (struct sockaddr *)&baddr, NULL) < 0) {
		log_warn("%s: connect to backend data port %s: %s", s->tag,
		         addr_str((struct sockaddr *)&baddr, buf, sizeof(buf), 1), strerror(errno));
		dc_drop(s);
		reply_client(s, "425 Can't open data connection to the server.");
		return;
	}
	log_debug("%s: data: backend port %u", s->tag, bport);
	client_data_setup(s, e->client_verb);
}

/* Switch the backend control connection to TLS (after 234, or at once for implicit). */
static int backend_wrap_tls(struct session *s)
{
	struct bufferevent *bev = NULL;
	/* Nothing may be queued behind AUTH TLS: the proxy waited for its 234. */
	if (evbuffer_get_length(bufferevent_get_output(s->bbev)) == 0) {
		SSL *ssl = tls_backend_ssl(s->site->tls_client, s->conf, NULL);
		if (ssl) {
			tls_track_session(ssl, &s->backend_sess);
			bev = bev_start_tls(s, s->bbev, ssl, BUFFEREVENT_SSL_CONNECTING);
		}
	}
	if (!bev) {
		session_abort(s, "cannot start TLS with the backend");
		return -1;
	}
	s->bbev = bev;
	s->backend_tls_up = 1;
	s->backend_prot_p = -1;
	bufferevent_setcb(bev, backend_read_cb, NULL, backend_event_cb, s);
	bufferevent_setwatermark(bev, EV_READ, 0, CLIENT_IN_HIGH);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	return 0;
}

/* A complete reply from the backend, in s->reply. */
static void handle_reply(struct session *s, int code, struct evbuffer *rep)
{
	struct expect *e = fifo_peek(s);
	char text[128], esc[160];

	if (!e) {
		size_t n = evbuffer_copyout(rep, text, sizeof(text));
		if (code == 421) {
			relay_reply(s, rep);
			session_close_after_flush(s, "backend closed the session (421)");
			return;
		}
		log_warn("%s: dropped a reply that answers nothing: \"%s\"", s->tag,
		         log_escape(esc, sizeof(esc), text, n));
		return;
	}
	if (ftp_reply_is_prelim(code)) {
		if (e->kind == EXP_DATA_SETUP || e->kind == EXP_FEAT) {
			log_warn("%s: dropped an unexpected %d reply", s->tag, code);
			return;
		}
		if (e->kind == EXP_TRANSFER && s->dc)
			datachan_tls_go(s->dc); /* the backend is ready for the data handshake */
		relay_reply(s, rep);
		return;
	}
	struct expect cur = *e;
	switch (cur.kind) {
	case EXP_GREETING:
		fifo_pop(s);
		if (code != 220) {
			relay_reply(s, rep);
			session_close_after_flush(s, "backend refused the session (%d)", code);
			return;
		}
		if (s->conf->backend_tls != BTLS_OFF) {
			/* Negotiate TLS with the backend before the client sees the greeting. */
			s->greeting = evbuffer_new();
			if (!s->greeting) {
				session_abort(s, "out of memory");
				return;
			}
			evbuffer_add_buffer(s->greeting, rep);
			if (s->conf->backend_tls == BTLS_ON) {
				send_backend(s, "AUTH TLS");
				fifo_push(s, EXP_BAUTH);
			} else {
				send_backend(s, "PBSZ 0");
				fifo_push(s, EXP_BPBSZ);
			}
			break;
		}
		relay_reply(s, rep);
		s->backend_up = 2; /* greeted */
		arm_idle(s);
		break;
	case EXP_BAUTH:
		fifo_pop(s);
		if (code != 234) {
			char why[160];
			snprintf(why, sizeof(why), "backend refused AUTH TLS (%d)", code);
			session_abort(s, why);
			return;
		}
		if (backend_wrap_tls(s) < 0)
			return;
		send_backend(s, "PBSZ 0");
		fifo_push(s, EXP_BPBSZ);
		break;
	case EXP_BPBSZ:
		fifo_pop(s);
		if (code / 100 != 2) {
			char why[160];
			snprintf(why, sizeof(why), "backend refused PBSZ 0 (%d)", code);
			session_abort(s, why);
			return;
		}
		evbuffer_add_buffer(bufferevent_get_output(s->cbev), s->greeting);
		evbuffer_free(s->greeting);
		s->greeting = NULL;
		s->backend_up = 2; /* greeted */
		arm_idle(s);
		break;
	case EXP_ABOR:
		fifo_pop(s);
		relay_reply(s, rep);
		break;
	case EXP_PT_AUTH:
		fifo_pop(s);
		relay_reply(s, rep);
		if (code == 234) {
			/* From here on the bytes are TLS the proxy cannot read. */
			s->pt_blind_pending = 1;
			bufferevent_disable(s->cbev, EV_READ);
			bufferevent_disable(s->bbev, EV_READ);
			return;
		}
		break;
	case EXP_PT_XFER:
		fifo_pop(s);
		relay_reply(s, rep);
		transfer_end(s, code); /* data went through the 1:1 forwards */
		break;
	case EXP_BPROT:
		fifo_pop(s);
		if (code / 100 != 2) {
			size_t n = evbuffer_copyout(rep, text, sizeof(text));
			log_warn("%s: backend refused PROT: \"%s\"", s->tag,
			         log_escape(esc, sizeof(esc), text, n));
			s->backend_prot_p = -1;
		}
		break;
	case EXP_RELAY:
		fifo_pop(s);
		relay_reply(s, rep);
		if (code == 230 && !s->logged_in) {
			s->logged_in = 1;
			arm_idle(s);
		}
		break;
	case EXP_QUIT:
		fifo_pop(s);
		relay_reply(s, rep);
		session_close_after_flush(s, "client quit");
		return;
	case EXP_FEAT:
		fifo_pop(s);
		rewrite_feat(s, code, rep);
		break;
	case EXP_DATA_SETUP:
		fifo_pop(s);
		handle_setup_reply(s, &cur, code, rep);
		break;
	case EXP_TRANSFER:
		if (code == 225 && s->fifo_len > 1) {
			/* "225 ABOR successful; data channel closed": some backends
			 * (pyftpdlib) answer an ABOR that came before the transfer
			 * started with this one reply, for the transfer command and
			 * the ABOR together. */
			enum exp_kind next = s->fifo[(s->fifo_head + 1) % FIFO_SIZE].kind;
			if (next == EXP_ABOR) {
				dc_drop(s);
				fifo_pop(s);
				fifo_pop(s);
				relay_reply(s, rep);
				s->aborted = 1;
				transfer_end(s, code);
				break;
			}
		}
		if ((code >= 400 && !dc_refused_no_reuse(s)) || (!s->dc && !s->dc_done)) {
			/* Failed, or the data pair is already gone (ABOR): relay as is.
			 * (A failure the proxy caused itself is answered as held.) */
			dc_drop(s);
			fifo_pop(s);
			relay_reply(s, rep);
			transfer_end(s, code);
			break;
		}
		/* Success: hold it until the data pair has delivered every byte. */
		s->held = evbuffer_new();
		if (!s->held) {
			session_abort(s, "out of memory");
			return;
		}
		evbuffer_add_buffer(s->held, rep);
		if (s->dc_done)
			finish_transfer_reply(s);
		return;
	}
	drain_check(s);
	if (!s->dead && !s->closing && s->cbev && s->bbev &&
	    evbuffer_get_length(bufferevent_get_output(s->cbev)) > OUT_HIGH)
		bufferevent_disable(s->bbev, EV_READ);
}

static void process_backend(struct session *s)
{
	char line[REPLY_LINE_MAX];
	char esc[160];

	if (s->dead || s->closing || !s->bbev)
		return;
	while (!s->dead && !s->closing && !s->held && !s->pt_blind_pending && s->bbev) {
		/* Fetched each time: a TLS upgrade replaces the bufferevent. */
		struct evbuffer *in = bufferevent_get_input(s->bbev);
		size_t eol_len = 0;
		struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		if (p.pos < 0) {
			if (evbuffer_get_length(in) >= sizeof(line))
				session_abort(s,
				              "backend sent a reply line longer than 8192 bytes");
			break;
		}
		size_t n = (size_t)p.pos + eol_len;
		if (n > sizeof(line)) {
			session_abort(s, "backend sent a reply line longer than 8192 bytes");
			return;
		}
		evbuffer_remove(in, line, n);
		enum ftp_reply_status st = ftp_reply_feed(&s->rasm, line, n);
		if (st == FTP_REPLY_BAD) {
			char why[256];
			snprintf(why, sizeof(why),
			         "malformed or oversized reply from backend: \"%s\"",
			         log_escape(esc, sizeof(esc), line, n));
			session_abort(s, why);
			return;
		}
		evbuffer_add(s->reply, line, n);
		if (st == FTP_REPLY_DONE) {
			int code = s->rasm.code;
			ftp_reply_reset(&s->rasm);
			handle_reply(s, code, s->reply);
			if (s->reply)
				evbuffer_drain(s->reply, evbuffer_get_length(s->reply));
		}
	}
	/* A reply may have unblocked the next pipelined command. */
	process_client(s);
}

/* ---- commands from the client --------------------------------------------------------------- */

/*
 * "NAME arg" for the backend, NUL-terminated, with every 0xFF byte doubled
 * again (Telnet IAC escaping, RFC 854/959): ftp_telnet_strip() undid it.
 */
static size_t cmd_line(const struct ftp_cmd *c, char *buf, size_t size)
{
	size_t o = (size_t)snprintf(buf, size, "%s", c->name);
	if (c->arg_len && o + 1 < size)
		buf[o++] = ' ';
	for (size_t i = 0; i < c->arg_len && o + 2 < size; i++) {
		buf[o++] = c->arg[i];
		if ((unsigned char)c->arg[i] == 0xff)
			buf[o++] = c->arg[i];
	}
	buf[o] = '\0';
	return o;
}

static void forward(struct session *s, const struct ftp_cmd *c, enum exp_kind kind)
{
	char line[2 * CMD_LINE_MAX + 16];
	cmd_line(c, line, sizeof(line));
	send_backend(s, "%s", line);
	fifo_push(s, kind);
}

/* Check a PORT/EPRT argument; on success the address is in *out. */
static int check_active_addr(struct session *s, const struct ftp_cmd *c,
                             struct sockaddr_storage *out)
{
	char a[ADDR_STR_MAX], esc[128];
	int rc;

	memset(out, 0, sizeof(*out));
	if (c->verb == FTP_V_PORT)
		rc = ftp_parse_port(c->arg, c->arg_len, (struct sockaddr_in *)out);
	else
		rc = ftp_parse_eprt(c->arg, c->arg_len, out);
	if (rc == -2) {
		reply_client(s, "522 Network protocol not supported, use (1,2)");
		return -1;
	}
	if (rc < 0) {
		log_info("%s: malformed %s \"%s\"", s->tag, c->name,
		         log_escape(esc, sizeof(esc), c->arg, c->arg_len));
		reply_client(s, "501 Syntax error in %s argument.", c->name);
		return -1;
	}
	ftp_addr_unmap(out);
	if (!s->conf->allow_foreign_address &&
	    !ftp_addr_same_ip((struct sockaddr *)out, (struct sockaddr *)&s->client_addr)) {
		log_warn("%s: refused %s to %s: not the client's address (FTP bounce)", s->tag,
		         c->name, addr_str((struct sockaddr *)out, a, sizeof(a), 1));
		reply_client(s, "504 %s refused: the address must be your own.", c->name);
		return -1;
	}
	if (addr_port((struct sockaddr *)out) < 1024) {
		log_warn("%s: refused %s to privileged port %s", s->tag, c->name,
		         addr_str((struct sockaddr *)out, a, sizeof(a), 1));
		reply_client(s, "504 %s refused: ports below 1024 are not allowed.", c->name);
		return -1;
	}
	return 0;
}

/*
 * TLS on the new data pair: toward the client per its PROT, toward the
 * backend per backend_data_protection (sending PROT first when the
 * backend's level must change).
 */
static int data_tls_setup(struct session *s)
{
	if (s->client_tls && s->client_prot_p) {
		SSL *ssl = tls_client_ssl(s->site->tls_server, s->sid_ctx, sizeof(s->sid_ctx),
		                          bufferevent_openssl_get_ssl(s->cbev));
		if (!ssl)
			goto oom;
		datachan_set_tls(s->dc, DC_CLIENT, ssl, 1, s->conf->tls_require_session_reuse);
	}
	if (!s->backend_tls_up)
		return 0;
	int want = s->conf->backend_data_protection == BPROT_PRIVATE ? 1
	           : s->conf->backend_data_protection == BPROT_CLEAR ? 0
	                                                             : s->client_prot_p;
	if (want != s->backend_prot_p) {
		send_backend(s, "PROT %c", want ? 'P' : 'C');
		fifo_push(s, EXP_BPROT);
		s->backend_prot_p = want;
	}
	if (want) {
		SSL *ssl = tls_backend_ssl(s->site->tls_client, s->conf, s->backend_sess);
		if (!ssl)
			goto oom;
		tls_track_session(ssl, &s->backend_sess);
		datachan_set_tls(s->dc, DC_BACKEND, ssl, 0, 0);
	}
	return 0;
oom:
	dc_drop(s);
	reply_client(s, "425 Can't open data connection: out of memory.");
	return -1;
}

/* PASV, EPSV, PORT, EPRT: set up the backend side per backend_data_mode, then the client side. */
static void cmd_data(struct session *s, const struct ftp_cmd *c)
{
	int client_passive = c->verb == FTP_V_PASV || c->verb == FTP_V_EPSV;
	int fam = s->local_addr.ss_family == AF_INET6 ? 2 : 1;
	struct sockaddr_storage caddr;
	char buf[128];

	if (c->verb == FTP_V_EPSV && c->arg_len) {
		if (c->arg_len == 3 && strncasecmp(c->arg, "ALL", 3) == 0) {
			s->epsv_all = 1;
			reply_client(s, "200 EPSV ALL accepted.");
			return;
		}
		if (c->arg_len != 1 || (c->arg[0] != '1' && c->arg[0] != '2')) {
			reply_client(s, "501 Syntax error in EPSV argument.");
			return;
		}
		if (c->arg[0] - '0' != fam) {
			reply_client(s, "522 Network protocol not supported, use (%d)", fam);
			return;
		}
	}
	if (c->verb != FTP_V_EPSV && s->epsv_all) {
		reply_client(s, "503 %s not allowed after EPSV ALL.", c->name);
		return;
	}
	if (c->verb == FTP_V_PASV && s->local_addr.ss_family != AF_INET) {
		/* A 227 carries IPv4 only (RFC 2428). */
		reply_client(s, "425 PASV is IPv4 only on this connection; use EPSV.");
		return;
	}
	if (!client_passive && check_active_addr(s, c, &caddr) < 0)
		return;

	dc_drop(s);
	static const struct datachan_cbs cbs = {dc_side_ready, dc_done};
	s->dc = datachan_new(s->site->gw->base, s->conf->data_timeout, &cbs, s, s->tag);
	if (!s->dc) {
		reply_client(s, "425 Can't open data connection: out of memory.");
		return;
	}
	datachan_count_refused(s->dc, &s->site->stats.data_refused);
	if (!client_passive)
		memcpy(&s->client_data_addr, &caddr, sizeof(caddr));
	if (data_tls_setup(s) < 0)
		return;

	enum backend_data_mode mode = s->conf->backend_data_mode;
	if (mode == BDM_CLIENT)
		mode = client_passive ? BDM_PASSIVE : BDM_ACTIVE;
	struct expect *e;
	if (mode == BDM_PASSIVE) {
		send_backend(s, "%s", s->backend_no_epsv ? "PASV" : "EPSV");
		e = fifo_push(s, EXP_DATA_SETUP);
		e->sent = s->backend_no_epsv ? FTP_V_PASV : FTP_V_EPSV;
		e->client_verb = c->verb;
		return;
	}
	/* Active toward the backend: listen on the proxy's backend-side address. */
	struct sockaddr_storage local;
	socklen_t len = sizeof(local);
	uint16_t port;
	if (getsockname(bufferevent_getfd(s->bbev), (struct sockaddr *)&local, &len) < 0 ||
	    datachan_listen(s->dc, DC_BACKEND, (struct sockaddr *)&local, s->conf->pasv_lo,
	                    s->conf->pasv_hi, (struct sockaddr *)&s->conf->backend, &port) < 0) {
		log_warn("%s: cannot listen for the backend's data connection: %s", s->tag,
		         strerror(errno));
		dc_drop(s);
		reply_client(s, "425 Can't open data connection: no free port.");
		return;
	}
	addr_set_port((struct sockaddr *)&local, port);
	s->backend_active = 1;
	e = fifo_push(s, EXP_DATA_SETUP);
	e->client_verb = c->verb;
	if (local.ss_family == AF_INET) {
		ftp_format_port(buf, sizeof(buf), (struct sockaddr_in *)&local);
		e->sent = FTP_V_PORT;
	} else {
		ftp_format_eprt(buf, sizeof(buf), (struct sockaddr *)&local);
		e->sent = FTP_V_EPRT;
	}
	evbuffer_add(bufferevent_get_output(s->bbev), buf, strlen(buf));
}

static void cmd_transfer(struct session *s, const struct ftp_cmd *c)
{
	char raw[2 * CMD_LINE_MAX + 16];

	if (!s->dc) {
		reply_client(s, "425 Use PASV or EPSV first.");
		return;
	}
	if (s->conf->require_data_tls && !(s->client_tls && s->client_prot_p)) {
		dc_drop(s);
		reply_client(s, "521 Data connections must be protected: use PROT P.");
		return;
	}
	size_t n = cmd_line(c, raw, sizeof(raw));
	log_escape(s->xfer_cmd, sizeof(s->xfer_cmd), raw, n);
	snprintf(s->xfer_path, sizeof(s->xfer_path), "%.*s", (int)c->arg_len, c->arg);
	if (s->client_active &&
	    datachan_connect(s->dc, DC_CLIENT, (struct sockaddr *)&s->client_data_addr,
	                     (struct sockaddr *)&s->local_addr) < 0) {
		char a[ADDR_STR_MAX];
		log_warn("%s: connect to client data address %s: %s", s->tag,
		         addr_str((struct sockaddr *)&s->client_data_addr, a, sizeof(a), 1),
		         strerror(errno));
		dc_drop(s);
		reply_client(s, "425 Can't open data connection.");
		return;
	}
	if (data_ready_to_forward(s)) {
		transfer_forward(s, raw);
		return;
	}
	/* Open the data connections before sending the command: the backend
	 * may answer 425 before the proxy got to its port, and a client that
	 * cannot be reached (PORT to a closed port) gets 425 from the proxy
	 * while the backend never hears of the transfer. */
	s->pending_cmd = strdup(raw);
	if (!s->pending_cmd) {
		dc_drop(s);
		reply_client(s, "425 Can't open data connection: out of memory.");
	}
}

static void cmd_abor(struct session *s, const struct ftp_cmd *c)
{
	if (s->transfer)
		s->aborted = 1;
	if (s->pending_cmd) {
		/* The transfer command never reached the backend: answer it here. */
		dc_drop(s);
		reply_client(s, "426 Connection closed; transfer aborted.");
	} else if (s->dc) {
		dc_drop(s);
	}
	if (s->held) {
		/* The backend had already finished: its reply goes out first. */
		char res[4] = "";
		evbuffer_copyout(s->held, res, 3);
		relay_reply(s, s->held);
		evbuffer_free(s->held);
		s->held = NULL;
		fifo_pop(s);
		s->aborted = 1;
		transfer_end(s, atoi(res));
	}
	forward(s, c, EXP_ABOR);
}

/*
 * Replace a plain socket bufferevent by a TLS one on the same socket. Its
 * output must be empty (already on the wire); its unread input is dropped.
 * Returns the new bufferevent, or NULL (the old one is untouched).
 */
static struct bufferevent *bev_start_tls(struct session *s, struct bufferevent *old, SSL *ssl,
                                         enum bufferevent_ssl_state state)
{
	evutil_socket_t fd = bufferevent_getfd(old);
	struct bufferevent *bev = bufferevent_openssl_socket_new(s->site->gw->base, fd, ssl, state,
	                                                         BEV_OPT_CLOSE_ON_FREE);
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
	s->client_tls = 1;
	s->auth_pending = 0;
	bufferevent_setcb(bev, client_read_cb, client_write_cb, client_event_cb, s);
	bufferevent_setwatermark(bev, EV_READ, 0, CLIENT_IN_HIGH);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	return 0;
}

static void cmd_auth(struct session *s, const struct ftp_cmd *c)
{
	if (s->conf->tls == TLS_OFF) {
		reply_client(s, "502 TLS is not enabled on this proxy.");
		return;
	}
	if (s->client_tls) {
		reply_client(s, "503 Already using TLS.");
		return;
	}
	int p = 0;
	if (c->arg_len == 3 && strncasecmp(c->arg, "TLS", 3) == 0)
		p = 0;
	else if (c->arg_len == 5 && strncasecmp(c->arg, "TLS-C", 5) == 0)
		p = 0;
	else if ((c->arg_len == 3 && strncasecmp(c->arg, "SSL", 3) == 0) ||
	         (c->arg_len == 5 && strncasecmp(c->arg, "TLS-P", 5) == 0))
		p = 1; /* the old AUTH SSL meant protected data too */
	else {
		reply_client(s, "504 Unsupported security mechanism; use AUTH TLS.");
		return;
	}
	reply_client(s, "234 AUTH %s successful.", p ? "SSL" : "TLS");
	/* Read nothing more in plaintext; the handshake starts once the 234
	 * is on the wire (client_write_cb). */
	bufferevent_disable(s->cbev, EV_READ);
	s->auth_pending = 1;
	s->client_prot_p = p;
}

static void cmd_tls_misc(struct session *s, const struct ftp_cmd *c)
{
	if (s->conf->tls == TLS_OFF) {
		reply_client(s, "502 TLS is not enabled on this proxy.");
		return;
	}
	if (c->verb == FTP_V_CCC) {
		reply_client(s, "534 CCC refused: the control connection stays protected.");
		return;
	}
	if (!s->client_tls) {
		reply_client(s, "503 %s requires AUTH TLS first.", c->name);
		return;
	}
	if (c->verb == FTP_V_PBSZ) {
		s->client_pbsz = 1;
		reply_client(s, "200 PBSZ=0");
		return;
	}
	/* PROT */
	if (!s->client_pbsz) {
		reply_client(s, "503 PBSZ first.");
		return;
	}
	char lvl = c->arg_len == 1 ? (char)(c->arg[0] & ~0x20) : '?';
	if (lvl == 'P') {
		s->client_prot_p = 1;
		reply_client(s, "200 Protection level set to Private.");
	} else if (lvl == 'C') {
		if (s->conf->require_data_tls) {
			reply_client(s, "534 PROT C refused: data connections must be protected.");
			return;
		}
		s->client_prot_p = 0;
		reply_client(s, "200 Protection level set to Clear.");
	} else if (lvl == 'S' || lvl == 'E') {
		reply_client(s, "536 PROT %c is not supported; use P or C.", lvl);
	} else {
		reply_client(s, "504 Unknown protection level.");
	}
}

/* TLS passthrough, before AUTH: relay, except what cannot work through a blind proxy. */
static void cmd_passthrough(struct session *s, const struct ftp_cmd *c)
{
	switch (c->verb) {
	case FTP_V_AUTH:
		forward(s, c, EXP_PT_AUTH);
		break;
	case FTP_V_PORT:
	case FTP_V_EPRT:
	case FTP_V_LPRT:
		/* Under TLS the proxy could not rewrite the address, and the
		 * backend cannot reach the client from its private network. */
		log_warn("%s: refused %s: active mode does not work on a TLS passthrough site",
		         s->tag, c->name);
		reply_client(s, "502 Active mode is not available through this proxy; use "
		                "passive mode (PASV/EPSV).");
		break;
	case FTP_V_USER:
		log_escape(s->user, sizeof(s->user), c->arg, c->arg_len);
		forward(s, c, EXP_RELAY);
		break;
	case FTP_V_QUIT:
		forward(s, c, EXP_QUIT);
		break;
	case FTP_V_ABOR:
		if (s->transfer)
			s->aborted = 1; /* one ABOR may overtake the transfer, not more */
		forward(s, c, EXP_RELAY);
		break;
	case FTP_V_RETR:
	case FTP_V_STOR:
	case FTP_V_APPE:
	case FTP_V_STOU:
	case FTP_V_LIST:
	case FTP_V_NLST:
	case FTP_V_MLSD:
		log_escape(s->xfer_cmd, sizeof(s->xfer_cmd), c->name, strlen(c->name));
		forward(s, c, EXP_PT_XFER);
		s->transfer = 1;
		s->xfer_start_ms = now_ms();
		s->xfer_up = s->xfer_down = 0;
		break;
	default:
		/* PASV/EPSV pass unchanged: the backend announces public_address
		 * and a port that the proxy forwards 1:1. */
		forward(s, c, EXP_RELAY);
		break;
	}
}

static void handle_command(struct session *s, char *line, size_t n)
{
	struct ftp_cmd c;
	char esc[128];

	n = ftp_telnet_strip(line, n);
	if (ftp_cmd_parse(line, n, &c) < 0) {
		log_debug("%s: bad command \"%s\"", s->tag, log_escape(esc, sizeof(esc), line, n));
		reply_client(s, "500 Syntax error, command unrecognized.");
		return;
	}
	if (c.verb == FTP_V_PASS)
		log_debug("%s: command PASS ****", s->tag);
	else
		log_debug("%s: command %s%s%s", s->tag, c.name, c.arg_len ? " " : "",
		          log_escape(esc, sizeof(esc), c.arg, c.arg_len));
	if (tls_is_passthrough(s->conf->tls)) {
		cmd_passthrough(s, &c);
		return;
	}

	switch (c.verb) {
	case FTP_V_USER:
	case FTP_V_PASS:
		if (s->conf->require_tls && !s->client_tls) {
			reply_client(s, "530 TLS required: use AUTH TLS first.");
			break;
		}
		if (c.verb == FTP_V_USER)
			log_escape(s->user, sizeof(s->user), c.arg, c.arg_len);
		forward(s, &c, EXP_RELAY);
		break;
	case FTP_V_PASV:
	case FTP_V_EPSV:
	case FTP_V_PORT:
	case FTP_V_EPRT:
		cmd_data(s, &c);
		break;
	case FTP_V_LPRT:
	case FTP_V_LPSV:
		reply_client(s, "502 %s is not supported; use EPSV, PASV, EPRT or PORT.", c.name);
		break;
	case FTP_V_AUTH:
		cmd_auth(s, &c);
		return; /* the input buffer is not the one it was */
	case FTP_V_PBSZ:
	case FTP_V_PROT:
	case FTP_V_CCC:
		cmd_tls_misc(s, &c);
		break;
	case FTP_V_RETR:
	case FTP_V_STOR:
	case FTP_V_APPE:
	case FTP_V_STOU:
	case FTP_V_LIST:
	case FTP_V_NLST:
	case FTP_V_MLSD:
		cmd_transfer(s, &c);
		break;
	case FTP_V_ABOR:
		cmd_abor(s, &c);
		break;
	case FTP_V_QUIT:
		forward(s, &c, EXP_QUIT);
		break;
	case FTP_V_FEAT:
		forward(s, &c, EXP_FEAT);
		break;
	case FTP_V_REIN:
		dc_drop(s);
		s->epsv_all = 0;
		s->user[0] = '\0';
		s->logged_in = 0;
		s->type_ascii = 0;
		forward(s, &c, EXP_RELAY);
		break;
	default:
		if (strcmp(c.name, "TYPE") == 0 && c.arg_len > 0)
			s->type_ascii = (c.arg[0] & ~0x20) == 'A';
		forward(s, &c, EXP_RELAY);
		break;
	}
}

/* Is the head line of the client's input an ABOR that may overtake a running transfer? */
static int head_is_abor(struct session *s, struct evbuffer *in)
{
	char buf[32];
	struct ftp_cmd c;

	if ((!s->transfer && !s->pending_cmd) || s->aborted)
		return 0; /* nothing to abort, or already aborting */
	struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF);
	if (p.pos < 0 || (size_t)p.pos >= sizeof(buf))
		return 0;
	size_t n = (size_t)evbuffer_copyout(in, buf, (size_t)p.pos + 1);
	n = ftp_telnet_strip(buf, n);
	return ftp_cmd_parse(buf, n, &c) == 0 && c.verb == FTP_V_ABOR;
}

static void process_client(struct session *s)
{
	char line[CMD_LINE_MAX + 1];

	if (s->dead || s->closing)
		return;
	for (;;) {
		if (s->dead || s->closing || s->auth_pending || s->pt_blind_pending || !s->cbev)
			break;
		if (evbuffer_get_length(bufferevent_get_output(s->cbev)) > OUT_HIGH) {
			/* The client does not read its replies: read no more of its
			 * commands until it does (client_write_cb resumes). */
			bufferevent_disable(s->cbev, EV_READ);
			s->client_throttled = 1;
			break;
		}
		/* Fetched each time: AUTH TLS replaces the bufferevent. */
		struct evbuffer *in = bufferevent_get_input(s->cbev);
		if (evbuffer_get_length(in) == 0)
			break;
		/* One command at a time: the next is taken once the previous one
		 * is answered (ABOR may overtake a transfer). */
		if ((s->fifo_len > 0 || s->pending_cmd || s->held || s->backend_up < 2) &&
		    !head_is_abor(s, in))
			break;
		size_t eol_len = 0;
		struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		if (p.pos < 0) {
			if (evbuffer_get_length(in) > CMD_LINE_MAX) {
				s->discarding = 1;
				evbuffer_drain(in, evbuffer_get_length(in));
			}
			break;
		}
		size_t n = (size_t)p.pos + eol_len;
		if (s->discarding || n > CMD_LINE_MAX) {
			evbuffer_drain(in, n);
			s->discarding = 0;
			log_info("%s: command line too long, refused", s->tag);
			reply_client(s, "500 Command line too long.");
			continue;
		}
		evbuffer_remove(in, line, n);
		arm_idle(s);
		handle_command(s, line, n);
	}
}

/* ---- TLS passthrough ------------------------------------------------------------------------ */

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
static void session_go_blind(struct session *s)
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
	s->pt_blind_pending = 0;
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
	set_timer(s, s->conf->idle_timeout);
}

static void fwd_side_ready(struct datachan *dc, enum dc_side side, int ok, const char *reason,
                           void *arg);
static void fwd_done(struct datachan *dc, int ok, const char *reason, void *arg);

static void fwd_remove(struct pt_fwd *f)
{
	struct session *s = f->s;
	for (struct pt_fwd **pp = &s->fwds; *pp; pp = &(*pp)->next) {
		if (*pp == f) {
			*pp = f->next;
			break;
		}
	}
	account_data(s, datachan_bytes(f->dc, 0), datachan_bytes(f->dc, 1));
	datachan_free(f->dc);
	free(f);
	drain_check(s);
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
	unsigned n = 0;
	for (struct pt_fwd *o = s->fwds; o; o = o->next)
		n++;
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
	memcpy(&baddr, &s->conf->backend, sizeof(baddr));
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

/* ---- events --------------------------------------------------------------------------------- */

static void arm_idle(struct session *s)
{
	if (s->dead || s->closing || s->backend_up != 2)
		return;
	uint64_t ms = (uint64_t)s->conf->idle_timeout * 1000u;
	if (!s->logged_in) {
		uint64_t left = login_left_ms(s);
		if (left < ms)
			ms = left ? left : 1;
	}
	struct timeval tv = {(time_t)(ms / 1000u), (suseconds_t)(ms % 1000u) * 1000};
	event_add(s->timer, &tv);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	char b[ADDR_STR_MAX], why[160];
	(void)fd;
	(void)what;

	if (s->dead)
		return;
	if (s->blind) {
		/* Idle: no control byte and no forwarded data connection. */
		uint64_t moved = blind_bytes(s);
		if (moved == s->blind_mark && !s->fwds) {
			log_info("%s: idle for %u s", s->tag, s->conf->idle_timeout);
			session_end(s, "idle timeout");
			return;
		}
		s->blind_mark = moved;
		set_timer(s, s->conf->idle_timeout);
		return;
	}
	if (s->closing) {
		session_end(s, "%s (client did not read the last reply)", s->end_reason);
		return;
	}
	if (s->backend_up < 2) {
		snprintf(why, sizeof(why), "backend %s: %s within %u s",
		         addr_str((struct sockaddr *)&s->conf->backend, b, sizeof(b), 1),
		         s->backend_up ? "no greeting" : "no connection", s->conf->connect_timeout);
		session_abort(s, why);
		return;
	}
	if (s->transfer && (s->dc || s->fwds)) {
		/* A running transfer is not idleness: the data pair has its own
		 * timeout. Once the pair is gone, the backend's final reply is
		 * due like any other. */
		arm_idle(s);
		return;
	}
	if (!s->logged_in && login_left_ms(s) == 0) {
		log_info("%s: not logged in after %u s", s->tag, s->conf->login_timeout);
		reply_client(s, "421 Login timeout (%u seconds): closing control connection.",
		             s->conf->login_timeout);
		session_close_after_flush(s, "login timeout");
		return;
	}
	if (s->fifo_len > 0) {
		snprintf(why, sizeof(why), "backend did not reply within %u s",
		         s->conf->idle_timeout);
		session_abort(s, why);
		return;
	}
	if (!s->logged_in) {
		arm_idle(s);
		return;
	}
	log_info("%s: idle for %u s", s->tag, s->conf->idle_timeout);
	reply_client(s, "421 Timeout (%u seconds): closing control connection.",
	             s->conf->idle_timeout);
	session_close_after_flush(s, "idle timeout");
}

static void client_read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	process_client(arg);
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
	if (s->auth_pending) {
		if (client_start_tls(s) < 0)
			session_end(s, "cannot start TLS: out of memory");
		return;
	}
	if (s->pt_blind_pending) {
		session_go_blind(s);
		return;
	}
	/* Backpressure relieved; but never read a backend still connecting:
	 * its greeting must come after the connect event. */
	if (s->bbev && s->backend_up)
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
		if (!bufferevent_openssl_get_ssl(bev))
			return;
		log_debug("%s: client TLS: %s, %s%s", s->tag,
		          SSL_get_version(bufferevent_openssl_get_ssl(bev)),
		          SSL_get_cipher_name(bufferevent_openssl_get_ssl(bev)),
		          SSL_session_reused(bufferevent_openssl_get_ssl(bev)) ? ", resumed" : "");
		return;
	}
	if (what & BEV_EVENT_EOF) {
		session_end(s, "client closed the connection");
		return;
	}
	unsigned long err = s->client_tls ? bufferevent_get_openssl_error(bev) : 0;
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
	process_backend(arg);
}

static void backend_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;
	char b[ADDR_STR_MAX], why[512];

	if (s->dead)
		return;
	addr_str((struct sockaddr *)&s->conf->backend, b, sizeof(b), 1);
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
		s->backend_up = 1;
		bufferevent_enable(bev, EV_READ);
		if (s->conf->tls == TLS_PASSTHROUGH_IMPLICIT) {
			session_go_blind(s);
			return;
		}
		if (s->conf->backend_tls == BTLS_IMPLICIT)
			backend_wrap_tls(s);
		return;
	}
	if (s->backend_tls_up && !(what & BEV_EVENT_EOF)) {
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
			session_abort(s, why);
			return;
		}
	}
	if (!s->backend_up) {
		snprintf(why, sizeof(why), "cannot connect to backend %s: %s", b,
		         evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		session_abort(s, why);
		return;
	}
	/* Whatever arrived before the close is still answered. */
	process_backend(s);
	if (s->dead || s->closing)
		return;
	if (what & BEV_EVENT_EOF)
		snprintf(why, sizeof(why), "backend %s closed the control connection", b);
	else
		snprintf(why, sizeof(why), "backend %s control connection error: %s", b,
		         evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
	session_abort(s, why);
}

void session_new(struct site *site, evutil_socket_t fd, const struct sockaddr *peer, int peerlen)
{
	struct ftpgate *gw = site->gw;
	char c[ADDR_STR_MAX], l[ADDR_STR_MAX];
	socklen_t len;
	int one = 1;

	struct session *s = calloc(1, sizeof(*s));
	if (!s) {
		close(fd);
		return;
	}
	s->site = site;
	s->conf = site->conf;
	s->id = ++gw->next_session_id;
	snprintf(s->tag, sizeof(s->tag), "%s/%llu", site->conf->name, (unsigned long long)s->id);
	s->start_ms = now_ms();
	site->n_sessions++;
	gw->n_sessions++;
	s->next = gw->sessions;
	if (s->next)
		s->next->prev = s;
	gw->sessions = s;
	site->gen->refs++;
	site->stats.sessions_total++;
	memcpy(&s->client_addr, peer, (size_t)peerlen);
	ftp_addr_unmap(&s->client_addr);
	len = sizeof(s->local_addr);
	getsockname(fd, (struct sockaddr *)&s->local_addr, &len);
	ftp_addr_unmap(&s->local_addr);
	addr_set_port((struct sockaddr *)&s->local_addr, 0);
	/* Telnet "urgent" bytes (IP/DM before ABOR) stay in the stream. */
	setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	s->cbev = bufferevent_socket_new(gw->base, fd, BEV_OPT_CLOSE_ON_FREE);
	s->bbev = bufferevent_socket_new(gw->base, -1, BEV_OPT_CLOSE_ON_FREE);
	s->timer = event_new(gw->base, -1, 0, timer_cb, s);
	s->reaper = event_new(gw->base, -1, 0, reaper_cb, s);
	s->reply = evbuffer_new();
	if (!s->cbev || !s->bbev || !s->timer || !s->reaper || !s->reply) {
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
	s->backend_prot_p = -1;
	if (getrandom(s->sid_ctx, sizeof(s->sid_ctx), 0) != (ssize_t)sizeof(s->sid_ctx))
		memcpy(s->sid_ctx, &s->id, sizeof(s->id));
	if (s->conf->tls == TLS_IMPLICIT) {
		if (client_start_tls(s) < 0) {
			log_error("%s: cannot start TLS: out of memory", s->tag);
			s->dead = 1;
			session_free(s);
			return;
		}
		s->client_pbsz = 1;
		s->client_prot_p = 1; /* implicit FTPS protects data unless told PROT C */
	}
	bufferevent_setcb(s->bbev, backend_read_cb, NULL, backend_event_cb, s);
	bufferevent_setwatermark(s->bbev, EV_READ, 0, CLIENT_IN_HIGH);
	if (s->conf->tls == TLS_PASSTHROUGH_IMPLICIT)
		/* The ClientHello waits in the kernel until the backend is there. */
		bufferevent_disable(s->cbev, EV_READ);
	else
		fifo_push(s, EXP_GREETING);

	log_info("%s: start: client %s to %s", s->tag,
	         addr_str((struct sockaddr *)&s->client_addr, c, sizeof(c), 1),
	         addr_str((struct sockaddr *)&s->local_addr, l, sizeof(l), 0));
	set_timer(s, s->conf->connect_timeout);
	if (bufferevent_socket_connect(s->bbev, (struct sockaddr *)&s->conf->backend,
	                               (int)addr_len((struct sockaddr *)&s->conf->backend)) < 0) {
		char why[160];
		snprintf(why, sizeof(why), "cannot connect to backend %s: %s",
		         addr_str((struct sockaddr *)&s->conf->backend, c, sizeof(c), 1),
		         strerror(errno));
		session_abort(s, why);
	}
}

void sessions_close_all(struct ftpgate *gw)
{
	while (gw->sessions) {
		struct session *s = gw->sessions;
		session_end(s, "proxy shutting down");
		session_free(s);
	}
}

unsigned sessions_count_ip(const struct site *site, const struct sockaddr *ip)
{
	struct sockaddr_storage a;
	unsigned n = 0;

	memcpy(&a, ip, addr_len(ip));
	ftp_addr_unmap(&a);
	for (const struct session *s = site->gw->sessions; s; s = s->next)
		if (s->site == site && ftp_addr_same_ip((const struct sockaddr *)&s->client_addr,
		                                        (const struct sockaddr *)&a))
			n++;
	return n;
}

/* Shutting down: a session with nothing running ends now, others once idle. */
static void drain_check(struct session *s)
{
	if (!s->site->gw->draining || s->dead || s->closing)
		return;
	if (s->blind) {
		if (!s->fwds)
			session_end(s, "proxy shutting down");
		return;
	}
	if (s->transfer || s->pending_cmd || s->held || s->fifo_len > 0 || s->pt_blind_pending ||
	    s->auth_pending)
		return;
	reply_client(s, "421 Service shutting down, closing control connection.");
	session_close_after_flush(s, "proxy shutting down");
}

void sessions_drain(struct ftpgate *gw)
{
	struct session *next;
	for (struct session *s = gw->sessions; s; s = next) {
		next = s->next; /* ending does not unlink (the reaper does) */
		drain_check(s);
	}
}

unsigned sessions_ports_in_use(const struct ftpgate *gw, const char *name)
{
	unsigned n = 0;
	for (const struct session *s = gw->sessions; s; s = s->next) {
		if (strcmp(s->site->conf->name, name) != 0)
			continue;
		if (s->dc)
			n++;
		for (const struct pt_fwd *f = s->fwds; f; f = f->next)
			n++;
	}
	return n;
}
