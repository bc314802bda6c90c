/*
 * session_core: the protocol decisions of one control session, without I/O.
 *
 * The core knows nothing of sockets, libevent or OpenSSL objects. The I/O
 * shell (session.c) feeds it events: a command line from the client, a
 * complete reply from the backend, a data pair that is ready, done or
 * failed, a timer that expired, a TLS switch that happened. The core
 * answers with actions, through the table of struct core_ops the shell
 * gives it: send bytes to the client or the backend, open, listen, connect,
 * start or drop a data pair, switch a control connection to TLS, go blind
 * (passthrough), set the timer, close the session, account a finished
 * transfer. An action never calls back into the core; what happens later
 * (a side connected, the pair finished) comes back as another event.
 *
 * Shape taken from h11 and hyper's h1 state machine (a protocol object fed
 * events, no socket in sight) and from nghttp2's session callbacks (the C
 * way to hand actions to the caller, which also lets an action return a
 * result at once, such as the port a listener got).
 *
 * The transfer state is one enum (enum xfer_state below, transitions drawn
 * and checked in session_core.c, xfer_set()); ABOR reads from it.
 */
#ifndef FTPGATE_SESSION_CORE_H
#define FTPGATE_SESSION_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "conf.h"
#include "ftp_cmd.h"
#include "stats.h"

#define CORE_CMD_LINE_MAX 4096 /* longest client command line, CRLF included */
#define CORE_FIFO_SIZE 8

/* Which side of a data pair (same values as datachan's enum dc_side). */
enum core_side { CORE_CLIENT = 0, CORE_BACKEND = 1 };

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
	EXP_BREST,      /* the proxy's REST 0: clears a restart marker of a refused transfer */
	EXP_PT_AUTH,    /* passthrough: the client's AUTH; after 234 the relay goes blind */
	EXP_PT_XFER,    /* passthrough: a transfer command, relayed */
	EXP_PT_PASV,    /* passthrough: PASV/EPSV before AUTH; the port of 227/229 is noted */
	EXP_ABOR,       /* the client's ABOR: relayed */
	EXP_FENCE,      /* the proxy's NOOP/FEAT after a long line failed: the errors before
	                   its reply are the backend's answers to the rest of that line */
	EXP_ROUTE_USER, /* routing by user: the proxy's USER for the client; consumed */
};

/* Routing by user ([route:NAME]): where the session is. */
enum route_state {
	RS_OFF = 0,    /* the site does not route: the backend is connected at start */
	RS_USER,       /* the proxy greeted; no backend until the client's USER */
	RS_CONNECTING, /* USER answered 331 by the proxy; connecting, greeting, USER */
	RS_DONE,       /* the backend answered USER: relay from here on */
};

struct expect {
	enum exp_kind kind;
	enum ftp_verb sent;        /* what the proxy sent the backend (EXP_DATA_SETUP, EXP_RELAY) */
	enum ftp_verb client_verb; /* EXP_DATA_SETUP: what the client asked */
	char verb[FTP_VERB_MAX + 1]; /* the command the reply answers ("": not checked) */
	int long_line;               /* longer than FTP_LINE_ONE_READ: may be answered twice */
	int prelims;                 /* preliminary replies relayed for it */
};

/*
 * The state of the data transfer of a session. See xfer_set() in
 * session_core.c for the drawing of the allowed transitions.
 */
enum xfer_state {
	XS_IDLE,       /* no data pair, no transfer */
	XS_SETUP,      /* pair opened; the proxy asked the backend for its data address */
	XS_READY,      /* the client was told where to connect; no transfer command yet */
	XS_CONNECTING, /* transfer command in hand, waiting for the data connections */
	XS_RUNNING,    /* transfer command sent to the backend, data moving */
	XS_HELD,       /* the backend's final reply is in, held until the data is delivered */
	XS_DATA_DONE,  /* the pair finished before the backend's final reply */
	XS_ABORTED,    /* ABOR: the pair is gone, the transfer's final reply is still due */
	XS_COUNT
};

extern const char *const xfer_state_names[XS_COUNT];

/* Closing: how the shell ends the session. */
enum core_close {
	CORE_CLOSE_NOW,   /* end at once */
	CORE_CLOSE_FLUSH, /* deliver what is queued for the client, then end */
};

/*
 * Actions. io is the shell's own pointer. Send functions take the bytes as
 * they must go on the wire (CRLF included). Functions returning int return
 * 0 on success and -1 on failure with errno set (nothing was started).
 */
struct core_ops {
	void (*send_client)(void *io, const char *buf, size_t len);
	void (*send_backend)(void *io, const char *buf, size_t len);
	/* A new data pair (the old one, if any, is dropped first). TLS on the
	 * client side / on the backend side as the flags say. */
	int (*data_new)(void *io, int client_tls, int backend_tls);
	/* Listen for the side's connection; the bound address (with its port) in *bound. */
	int (*data_listen)(void *io, enum core_side side, struct sockaddr_storage *bound);
	/* Connect the side to addr. */
	int (*data_connect)(void *io, enum core_side side, const struct sockaddr *addr);
	/* The client's protection changed since the pair was opened: TLS on
	 * its client side or not, before any byte moves. */
	int (*data_client_tls)(void *io, int on);
	/* Let the pair move bytes once both sides are up; download: the
	 * transfer flows toward the client (RETR, LIST, NLST, MLSD). */
	void (*data_start)(void *io, int download);
	void (*data_tls_go)(void *io); /* the backend answered 1xx: its data handshake may start */
	void (*data_drop)(void *io);   /* close the pair now (no event follows) */
	/* Once everything sent to the client is on the wire, switch its control
	 * connection to TLS; read nothing more from it until then. The shell
	 * calls core_client_tls_started() when it switched. */
	void (*client_tls_after_flush)(void *io);
	/* Switch the backend control connection to TLS now (nothing is queued). */
	int (*backend_tls_start)(void *io);
	/* Passthrough: once the 234 is on the wire, relay both control
	 * connections blindly; the core hears nothing more. */
	void (*go_blind_after_flush)(void *io);
	void (*set_timer)(void *io, uint64_t ms);
	void (*close)(void *io, enum core_close how, const char *reason);
	/* A transfer's final reply went to the client. */
	void (*transfer_end)(void *io, int code, enum xfer_result r);
	/* Routing by user: connect to a server of route (an index into
	 * conf->routes, or -1 for the site's own backend). The shell calls
	 * core_backend_connected() or aborts as at start. */
	void (*route_connect)(void *io, int route);
	/* The backend answered USER or PASS with 230 (ok = 1) or 530 (ok = 0);
	 * the reply is already queued for the client. */
	void (*login_result)(void *io, int ok);
	uint64_t (*now_ms)(void *io);
	/* Passthrough, before AUTH: the backend announced this data port to
	 * this session (227/229 relayed); only this session may use it. */
	void (*pt_data_port)(void *io, uint16_t port);
};

struct core {
	const struct site_conf *conf;
	const struct core_ops *ops;
	void *io;
	const char *tag;                     /* for log lines */
	struct sockaddr_storage client_addr; /* the client's address (PORT check, data peer) */
	struct sockaddr_storage local_addr;  /* where it connected to (announced by default) */
	struct sockaddr_storage
	    backend_addr; /* the server the shell chose (data ports, 227 check) */
	uint64_t start_ms;

	/* Control. */
	int backend_up; /* 0 connecting, 1 connected, 2 greeted */
	int closing;    /* the core asked to close: nothing more happens */
	int logged_in;  /* a 230 went through */
	int draining;   /* proxy shutting down: close once idle */
	char user[64];  /* escaped, for logs */
	struct expect fifo[CORE_FIFO_SIZE];
	struct expect fifo_spare; /* returned on overflow, never queued */
	unsigned fifo_head, fifo_len;
	int epsv_all;
	int backend_no_epsv;
	int rest_pending; /* the backend accepted a REST that no transfer has used yet */
	int type_ascii;
	char *greeting; /* held while TLS to the backend is negotiated */
	size_t greeting_len;

	/* Transfer. */
	enum xfer_state xs;
	unsigned bad_transitions; /* transitions the drawing does not allow (a bug; logged) */
	int pair;                 /* the shell holds a data pair for this session */
	int pair_client_tls;      /* ... whose client side speaks TLS */
	int client_active;        /* the client asked PORT/EPRT: connect to client_data_addr */
	int backend_active;       /* the backend connects to the proxy (PORT/EPRT sent) */
	int side_up[2];           /* data pair sides connected */
	struct sockaddr_storage client_data_addr;
	char *pending_cmd; /* XS_CONNECTING: the command, waiting for the connections */
	char *held;        /* XS_HELD: the backend's final reply */
	size_t held_len;
	int data_ok;           /* XS_DATA_DONE: the pair delivered every byte */
	int data_no_reuse;     /* ... or the proxy refused it: no TLS session reuse */
	char data_reason[160]; /* ... or why not */
	char xfer_cmd[96];     /* for the transfer log line (escaped) */
	char xfer_path[512];   /* argument of the transfer command, for xferlog */
	int xfer_download;     /* the transfer flows toward the client */
	uint64_t xfer_start_ms;

	/* TLS. */
	int client_tls;     /* the client control connection is TLS */
	int auth_pending;   /* 234 sent: TLS starts once it is on the wire */
	int client_pbsz;    /* PBSZ seen */
	int client_prot_p;  /* PROT P: client data connections are TLS */
	int backend_tls_up; /* the backend control connection is TLS */
	int backend_prot_p; /* PROT the backend has now: 1 P, 0 C, -1 unknown */

	/* Passthrough. */
	int pt_blind_pending; /* 234 relayed: go blind once it is on the wire */

	/* Routing by user. */
	enum route_state route_state;
	char *route_user;  /* the USER line for the backend (without @host unless kept) */
	char *route_reply; /* the backend's final answer to USER, if not 331: answers PASS */
	size_t route_reply_len;
};

/* Set up a core for a new session (no action is taken yet). */
void core_init(struct core *c, const struct site_conf *conf, const struct core_ops *ops, void *io,
               const char *tag, const struct sockaddr *client, const struct sockaddr *local);
/* Routing by user: the index of the first route of conf whose pattern matches
 * user (a NUL-terminated name), or -1. Pure. */
int core_route_match(const struct site_conf *conf, const char *user);

/* The server the shell connects to (from the site's pool); before core_start(), and again
 * when the shell moves on to the next server because the connection failed. */
void core_set_backend(struct core *c, const struct sockaddr *backend);
/* Free what the core holds (no action is taken). */
void core_free(struct core *c);

/* Events. */
void core_start(struct core *c);             /* the session exists: wait for the backend */
void core_backend_connected(struct core *c); /* TCP connect to the backend done */
void core_client_tls_started(struct core *c);
/*
 * May the client's next command line (the first len bytes of the client's
 * input, at least through its LF if it has one) be taken now? One command
 * at a time; an ABOR may overtake a running transfer.
 */
int core_may_take_command(const struct core *c, const char *line, size_t len);
void core_client_line(struct core *c, char *line, size_t n); /* one line, LF included */
void core_client_line_too_long(struct core *c);
/* Should the shell read more backend replies now? */
int core_wants_reply(const struct core *c);
void core_backend_reply(struct core *c, int code, const char *rep, size_t len);
void core_data_side(struct core *c, enum core_side side, int ok, const char *reason);
void core_data_done(struct core *c, int ok, const char *reason);
/* The pair failed because the proxy refused the client's TLS data
 * connection: it did not resume the control connection's session. */
void core_data_refused_no_reuse(struct core *c, const char *reason);
void core_timer(struct core *c);
void core_drain(struct core *c); /* proxy shutting down */
/* The session's idle timer, from now. */
void core_arm_idle(struct core *c);
/* Fatal for the session: 421 to the client and close after it is delivered. */
void core_abort(struct core *c, const char *why);

/* A transfer's data connections are in use (the shell's timer must not call it idle). */
int core_transferring(const struct core *c);

#endif
