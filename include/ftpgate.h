/* ftpgate: the runtime objects shared by the modules (one event loop). */
#ifndef FTPGATE_FTPGATE_H
#define FTPGATE_FTPGATE_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "conf.h"

struct ftpgate;
struct session;

/* One [site:NAME] at run time. */
struct site {
	const struct site_conf *conf;
	struct ftpgate *gw;
	unsigned n_sessions;
	struct evconnlistener *listeners[CONF_MAX_LISTEN];
	size_t n_listeners;
	struct event *resume_accept;   /* re-enables accepting after EMFILE */
	struct ssl_ctx_st *tls_server; /* client-facing TLS, or NULL */
	struct ssl_ctx_st *tls_client; /* backend-facing TLS, or NULL */
	struct pt_port *pt_ports;      /* passthrough: one listener per passive port */
	size_t n_pt_ports;
};

/* A passthrough passive port forwarded 1:1 to the backend. */
struct pt_port {
	struct site *site;
	uint16_t port;
	struct evconnlistener *lev;
};

struct ftpgate {
	struct event_base *base;
	const struct conf *conf;
	struct site *sites;
	size_t n_sites;
	unsigned n_sessions;
	uint64_t next_session_id;
	struct session *sessions; /* every open session, for shutdown */
};

#endif
