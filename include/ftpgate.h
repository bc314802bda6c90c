/*
 * ftpgate: the runtime objects shared by the modules. The main thread
 * (worker 0's loop) owns the listeners, configuration generations, metrics
 * and health checks; sessions live in workers (worker.h). What worker
 * threads change here is marked: under gw->lock, or atomic.
 */
#ifndef FTPGATE_FTPGATE_H
#define FTPGATE_FTPGATE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "conf.h"
#include "log.h"
#include "stats.h"

struct ftpgate;
struct session;
struct pp_wait;
struct gen;
struct metrics;
struct xferlog;
struct pt_fwd;
struct pt_guard;
struct backends;
struct bans;
struct worker;

/*
 * What belongs to a site's name rather than to one load of it: one object
 * per name for the life of the process (gw->states), shared by the sites of
 * every configuration generation with that name, so that sessions that span
 * a reload count into what is exported.
 */
struct site_state {
	struct site_state *next;
	char name[CONF_NAME_MAX];
	struct site_stats stats;
	struct log_limit refused_log; /* strangers on passive or forwarded ports */
};

/* One [site:NAME] at run time. */
struct site {
	const struct site_conf *conf;
	struct ftpgate *gw;
	struct gen *gen;             /* the configuration it belongs to */
	struct site_state *state;    /* counters and limits of its name */
	_Atomic unsigned n_sessions; /* changed under gw->lock */
	struct evconnlistener *listeners[CONF_MAX_LISTEN];
	size_t n_listeners;
	struct event *resume_accept;   /* re-enables accepting after EMFILE */
	struct ssl_ctx_st *tls_server; /* client-facing TLS, or NULL */
	struct ssl_ctx_st *tls_client; /* backend-facing TLS, or NULL */
	struct pt_port *pt_ports;      /* passthrough: one listener per passive port */
	size_t n_pt_ports;
	/* The pool: conf->backends[i] is pool[i] (owned by backend.c, never freed
	 * while the process runs). */
	struct backend_server *pool[CONF_MAX_BACKENDS];
	/* conf->routes[r].backends[i] is route_pool[r * CONF_MAX_ROUTE_BACKENDS + i]
	 * (the array is the site's, the objects backend.c's). */
	struct backend_server **route_pool;
	uint32_t turn; /* roundrobin: where the next session starts */
};

/* A passthrough passive port forwarded 1:1 to the backend. */
struct pt_port {
	struct site *site;
	struct sockaddr_storage addr; /* listen address and port */
	uint16_t port;
	struct evconnlistener *lev;
};

/*
 * One loaded configuration with its sites. New sessions start under the
 * current one; after a reload, an older one lives on until its last session
 * ends.
 */
struct gen {
	struct conf *conf;
	struct site *sites;
	size_t n_sites;
	unsigned refs;    /* sessions started under it (gw->lock) */
	struct gen *next; /* older generations still in use */
};

struct ftpgate {
	struct event_base *base;
	struct gen *cur;         /* the configuration new sessions use */
	struct gen *old;         /* older ones with sessions left */
	const struct conf *conf; /* cur->conf */
	struct site *sites;      /* cur->sites */
	size_t n_sites;          /* cur->n_sites */
	/* Sessions (their lists: gw->workers[i].sessions), session counts of
	 * gw and its sites, gen->refs and gw->old, bans: changed under lock. */
	pthread_mutex_t lock;
	struct worker *workers;
	unsigned n_workers;
	_Atomic unsigned n_sessions;
	uint64_t next_session_id;
	struct pp_wait *pp_waits; /* connections whose PROXY header is being read */
	_Atomic int draining;     /* shutting down: no new sessions */
	struct metrics *metrics;
	struct xferlog *xferlog;
	struct site_state *states; /* one per site name ever loaded */
	struct pt_fwd *pt_fwds;    /* passthrough: every forwarded data connection */
	struct pt_guard *pt_guard; /* passthrough: failed forwards and bans per address */
	struct backends *backends; /* every site's servers, across reloads */
	struct bans *bans;         /* login failures and bans, across reloads */
};

/* A session of gen ended: free gen when it is old and unused (takes gw->lock). */
void gen_release(struct ftpgate *gw, struct gen *g);

#endif
