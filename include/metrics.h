/*
 * metrics: Prometheus text exposition (format 0.0.4) of the per-site
 * counters, served by libevent's evhttp on the proxy's event loop.
 *
 * metrics.c knows nothing of the proxy's internals: on every scrape it asks a
 * callback for the sites, then renders them with metrics_render(), which does
 * no I/O and is unit-tested on its own.
 */
#ifndef FTPGATE_METRICS_H
#define FTPGATE_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "stats.h"

struct event_base;
struct evbuffer;

/* One server of a site's pool (label "server"). */
struct metrics_server {
	const char *name;        /* HOST:PORT; escaped when rendered */
	int up;                  /* gauge ftpgate_backend_up */
	unsigned sessions_open;  /* gauge ftpgate_backend_sessions_open */
	uint64_t sessions_total; /* sessions connected to it */
	uint64_t failures;       /* session connections to it that failed */
	uint64_t check_failures; /* health checks that failed */
};

/* A banned client address (label "address"). */
struct metrics_ban {
	const char *address;
	uint64_t seconds_left; /* gauge ftpgate_ban_seconds_remaining */
};

/* One site as the metrics see it. Pointers only need to live for one scrape. */
struct metrics_site {
	const char *name;                     /* label "site"; escaped when rendered */
	const struct site_stats *stats;       /* NULL renders as all zero */
	unsigned sessions_open;               /* gauge ftpgate_sessions_open */
	const struct metrics_server *servers; /* the site's pool */
	size_t n_servers;
	const struct metrics_ban *bans; /* addresses banned now */
	size_t n_bans;
};

/*
 * Fill out[0 .. min(n, max) - 1] with the sites and return n, the number of
 * sites (like snprintf: a return above max asks for a larger array, and the
 * callback is called again with one). Called from the event loop, once or
 * twice per scrape.
 */
typedef size_t (*metrics_sites_fn)(void *arg, struct metrics_site *out, size_t max);

/* Content-Type of the rendered text. */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/*
 * Append the exposition of sites[0 .. n-1] to out: every family's HELP and
 * TYPE line once, then its samples, site by site in the order given;
 * ftpgate_build_info carries version. Label values are escaped (\\, \", \n)
 * and invalid UTF-8 becomes U+FFFD. Returns 0, or -1 if out could not grow
 * (out then holds a partial text).
 */
int metrics_render(struct evbuffer *out, const struct metrics_site *sites, size_t n,
                   const char *version);

struct metrics;

/*
 * Listen on addr (IPv4 or IPv6; an IPv6 address is bound IPV6_V6ONLY) on base
 * and serve GET and HEAD /metrics (the query string is ignored); any other
 * path gets 404, another method on /metrics 405. Returns NULL with a message
 * in err on failure. fn(arg, ...) is called on every scrape.
 */
struct metrics *metrics_new(struct event_base *base, const struct sockaddr *addr,
                            metrics_sites_fn fn, void *arg, char *err, size_t errsize);

/* The bound address (with the port the kernel chose if addr had port 0). */
int metrics_local_addr(const struct metrics *m, struct sockaddr_storage *ss);

/*
 * GET /sessions: fn(arg, out, table) appends the open sessions to out, as
 * JSON (table 0) or as the table of `ftpgate sessions` (?format=table);
 * returns 0 or -1 (out of memory). Without it, /sessions is 404.
 */
typedef int (*metrics_sessions_fn)(void *arg, struct evbuffer *out, int table);
void metrics_set_sessions(struct metrics *m, metrics_sessions_fn fn, void *arg);

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if it is invalid
 * (also used by sessinfo.c). */
size_t utf8_len(const unsigned char *s);

/* Close the listener and every open HTTP connection; NULL is a no-op. */
void metrics_free(struct metrics *m);

#endif
