/*
 * backend: the servers behind every site (a site's pool, backend = HOST[:PORT], ...).
 *
 * Owns one struct backend_server per (site name, HOST:PORT) for the life of
 * the process, so that a server's health and counters survive reloads: a
 * reload looks its servers up by that key and keeps the objects it finds.
 * Owns the choice of a server for a new session (balance) and the health
 * checks, which speak FTP the way a client would find a server broken:
 * connect, a 220 within health_timeout, with backend_tls also AUTH TLS and
 * the handshake with its certificate check, then QUIT.
 *
 * May not touch a session: the session shell asks for a server and says
 * how the connection went.
 */
#ifndef FTPGATE_BACKEND_H
#define FTPGATE_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "conf.h"

struct event_base;
struct ssl_ctx_st;
struct site;
struct hcheck;

struct backend_server {
	struct backend_server *next; /* in the registry */
	char site[CONF_NAME_MAX];    /* key: the site's name ... */
	struct backend_conf bc;      /* ... and bc.name (HOST:PORT); the address as last loaded */
	int listed;                  /* in the current configuration */
	/* Read and counted by every worker thread: atomic. */
	_Atomic int up;                  /* 1 unless health checks marked it down */
	_Atomic unsigned open;           /* sessions using it now (connecting or connected) */
	_Atomic uint64_t sessions_total; /* sessions whose connection to it succeeded */
	_Atomic uint64_t failures;       /* session connections to it that failed */
	_Atomic uint64_t check_failures; /* health checks that failed */
	unsigned fails_in_row, oks_in_row;

	/* Health check settings (copied from the site's configuration). */
	unsigned interval, timeout, fall, rise;
	enum backend_tls_mode tls;
	int tls_verify;
	int proxy_protocol;         /* backend_proxy_protocol: 0, 1 or 2 */
	struct ssl_ctx_st *tls_ctx; /* a reference of its own, or NULL */
	struct event_base *base;
	struct hcheck *hc; /* the check in progress and its timer */
};

/* A candidate for backend_choose(). */
struct backend_cand {
	int up;
	int tried; /* this session already failed to connect to it */
	unsigned open;
};

/*
 * Pure: the index of the server a new session goes to, or -1 when none is
 * up and untried. roundrobin: the first usable from turn % n on;
 * leastconn: the fewest open, ties going to the first from turn % n on;
 * source: the first usable from hash % n on (the same client gets the
 * same server while it is up).
 */
int backend_choose(enum balance how, const struct backend_cand *c, size_t n, uint32_t turn,
                   uint32_t hash);

/* Pure: a hash of sa's IP address (not its port) for balance = source. */
uint32_t backend_addr_hash(const struct sockaddr *sa);

struct backends;

struct backends *backends_new(struct event_base *base);
/* At exit: every server object, its check and its TLS reference. */
void backends_free(struct backends *b);

/*
 * A configuration became current: fill site->pool[] of each of its sites
 * with the server objects (created for new servers, found for known ones),
 * take the health check settings, start or stop checks. Servers no longer
 * listed stop being checked (sessions still using one keep it). Returns 0,
 * or -1 out of memory (logged).
 */
int backends_apply(struct backends *b, struct site *sites, size_t n_sites);

/*
 * The server for a new session of site (or one of its retries), from the
 * site's pool (route -1) or from conf->routes[route]: one not in *tried (a
 * mask of indices), which gets its bit. NULL when none is left. The
 * server's open count includes the session until backend_release().
 */
struct backend_server *backend_pick(struct site *site, int route, const struct sockaddr *client,
                                    uint32_t *tried);
/* The session's connection to it succeeded / failed (why, for the log). */
/* A reload: roundrobin goes on where the site of the same name was. */
void backend_carry_turn(struct site *to, const struct site *from);
/* The server's HOST:PORT, for a worker (a reload rewrites the settings). */
void backend_name(const struct backend_server *s, char *out, size_t size);
/* The server's address as last loaded (a reload may resolve it anew). */
void backend_addr(const struct backend_server *s, struct sockaddr_storage *out);
void backend_connected(struct backend_server *s);
void backend_failed(struct backend_server *s);
/* The session no longer uses it. */
void backend_release(struct backend_server *s);

#endif
