/*
 * session_int: struct session, shared by the session's I/O shell
 * (session.c) and passthrough's blind relay and forwarded ports
 * (passthrough.c), and worker.c's queue of sessions handed to a worker
 * (handed_next). Nothing else includes it.
 *
 * Grouped by concern, each group owned by one file:
 *   life cycle, control I/O and timers  session.c
 *   protocol state (control, transfer, TLS as the protocol sees it)
 *                                       session_core.c (struct core)
 *   data pair and its TLS objects       session.c
 *   passthrough relay and forwards      passthrough.c
 *   accounting for the session's line   session.c (passthrough.c adds bytes)
 */
#ifndef FTPGATE_SESSION_INT_H
#define FTPGATE_SESSION_INT_H

#include <stdint.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#include "ftp_reply.h"
#include "ftpgate.h"
#include "session_core.h"

struct bufferevent;
struct evbuffer;
struct datachan;

struct session {
	/* Life cycle (session.c). */
	struct session *next, *prev; /* in w->sessions (linked under gw->lock) */
	struct worker *w;            /* the worker (event loop) it lives in */
	struct session *handed_next; /* in w->queue until it starts (worker.c) */
	evutil_socket_t start_fd;    /* the client socket, until session_start() */
	struct site *site;
	const struct site_conf *conf;
	uint64_t id;
	char tag[96];
	int dead;
	struct event *reaper; /* frees the session from the loop, after callbacks unwind */

	/* The protocol (session_core.c). */
	struct core core;

	/* Control I/O (session.c). */
	struct bufferevent *cbev;   /* client control */
	struct bufferevent *bbev;   /* backend control */
	struct backend_server *srv; /* the server of the pool it uses (backend.c's object) */
	uint32_t tried;             /* pool indices it failed to connect to */
	int route;                  /* routing by user: conf->routes index, -1 the site's pool */
	struct sockaddr_storage client_addr;
	struct sockaddr_storage client_dst; /* what the client connected to (PROXY header out) */
	struct event *timer;                /* connect / idle / flush timeout */
	int closing;                        /* delivering a last reply, then close */
	int client_throttled; /* commands not read: the client is not reading replies */
	int discarding;       /* client line too long: skip to the next LF */
	int tls_after_flush;  /* start the client's TLS once the output is on the wire */
	struct ftp_reply_asm rasm;
	struct evbuffer *reply; /* the reply being assembled */

	/* Data pair and TLS objects (session.c). */
	struct datachan *dc;
	uint64_t xfer_up, xfer_down; /* bytes of the current transfer */
	unsigned char sid_ctx[16];   /* ties data-connection TLS sessions to this control one */
	SSL_SESSION *backend_sess;   /* latest TLS session of the backend control connection */

	/* TLS passthrough (passthrough.c). */
	int blind_after_flush;  /* go blind once the output is on the wire */
	struct datachan *blind; /* blind relay of the control connection */
	uint64_t blind_mark;    /* control bytes at the last idle check */
	unsigned n_fwds;        /* forwarded data connections credited to this session */
	uint64_t ctrl_bytes;    /* control bytes relayed blindly */
	uint16_t pt_port;       /* before AUTH: the port the backend's 227/229 announced */
	uint64_t pt_port_ms;    /* when */
	uint64_t pt_claim_ms;   /* when a forward was last credited to this session */

	/* Accounting, for the session's log line (session.c). */
	uint64_t start_ms;
	uint64_t bytes_up, bytes_down; /* data bytes client->backend, backend->client */
	char end_reason[160];
};

/* session.c */
void session_end(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void session_set_timer(struct session *s, unsigned seconds);
void session_account_data(struct session *s, uint64_t up, uint64_t down);
void session_drain_check(struct session *s);

/* passthrough.c */
void pt_go_blind(struct session *s);
/* Teardown: the relay is freed; forwards credited to s stay (see pt_fwd). */
void pt_free(struct session *s);
/* The blind relay's idle check; returns 1 if it handled the timer. */
int pt_timer(struct session *s);
/* The core's pt_data_port action: port was announced to s before AUTH. */
void pt_data_port(struct session *s, uint16_t port);
/* Shutdown: end every forward. */
void pt_close_all(struct ftpgate *gw);

#endif
