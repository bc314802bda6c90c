/*
 * cli_sessions: `ftpgate sessions [-c FILE]`: reads metrics_listen from
 * the configuration, asks the running proxy for GET /sessions?format=table
 * (libevent's HTTP client parses the reply) and prints the table. Owns
 * its event loop and connection for the one request.
 */
#include "config.h"

#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "cli.h"
#include "conf.h"
#include "util.h"

#define SESSIONS_TIMEOUT 10      /* seconds for the whole request */
#define SESSIONS_MAX (64u << 20) /* largest reply read */

struct fetch {
	int code; /* HTTP status, 0 none */
	struct evbuffer *body;
	struct event_base *base;
};

static void done_cb(struct evhttp_request *req, void *arg)
{
	struct fetch *f = arg;
	if (req) {
		f->code = evhttp_request_get_response_code(req);
		evbuffer_add_buffer(f->body, evhttp_request_get_input_buffer(req));
	}
	event_base_loopexit(f->base, NULL); /* the connection may stay open */
}

/* Print the body; anything but printable text, tab and LF becomes '?'. */
static void print_plain(struct evbuffer *b)
{
	size_t n = evbuffer_get_length(b);
	unsigned char *p = evbuffer_pullup(b, -1);
	for (size_t i = 0; i < n; i++)
		if ((p[i] < 0x20 && p[i] != '\n' && p[i] != '\t') || p[i] == 0x7f)
			p[i] = '?';
	fwrite(p, 1, n, stdout);
}

int cli_sessions(int argc, char **argv, const char *default_conf)
{
	const char *path = default_conf;
	char err[1024], host[ADDR_STR_MAX], where[ADDR_STR_MAX];
	int opt;

	optind = 1;
	while ((opt = getopt(argc, argv, "c:h")) != -1) {
		if (opt == 'c') {
			path = optarg;
			continue;
		}
		fprintf(opt == 'h' ? stdout : stderr, "usage: ftpgate sessions [-c FILE]\n");
		return opt == 'h' ? 0 : 2;
	}
	if (optind != argc) {
		fprintf(stderr, "ftpgate sessions: unexpected argument \"%s\"\n", argv[optind]);
		return 2;
	}
	struct conf *c = conf_load(path, err, sizeof(err));
	if (!c) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if (!c->has_metrics) {
		fprintf(stderr,
		        "ftpgate sessions: %s: metrics_listen is not set; the sessions are served "
		        "on the metrics listener (set [global] metrics_listen = 127.0.0.1:9464 and "
		        "restart ftpgate)\n",
		        path);
		conf_free(c);
		return 1;
	}
	struct sockaddr_storage ss = c->metrics_listen;
	uint16_t port = addr_port((struct sockaddr *)&ss);
	addr_str((struct sockaddr *)&ss, where, sizeof(where), 1);
	/* A wildcard listener is reached on loopback. */
	if (ss.ss_family == AF_INET &&
	    ((struct sockaddr_in *)&ss)->sin_addr.s_addr == htonl(INADDR_ANY))
		((struct sockaddr_in *)&ss)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (ss.ss_family == AF_INET6 &&
	    IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&ss)->sin6_addr))
		((struct sockaddr_in6 *)&ss)->sin6_addr = in6addr_loopback;
	addr_str((struct sockaddr *)&ss, host, sizeof(host), 0);
	conf_free(c);

	int rc = 1;
	struct event_base *base = event_base_new();
	struct fetch f = {0, evbuffer_new(), base};
	struct evhttp_connection *conn =
	    base ? evhttp_connection_base_new(base, NULL, host, port) : NULL;
	struct evhttp_request *req = conn ? evhttp_request_new(done_cb, &f) : NULL;
	if (!f.body || !req) {
		fprintf(stderr, "ftpgate sessions: out of memory\n");
		goto out;
	}
	evhttp_connection_set_timeout(conn, SESSIONS_TIMEOUT);
	evhttp_connection_set_retries(conn, 0);
	evhttp_connection_set_max_body_size(conn, SESSIONS_MAX);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Host", host);
	if (evhttp_make_request(conn, req, EVHTTP_REQ_GET, "/sessions?format=table") < 0) {
		fprintf(stderr, "ftpgate sessions: cannot send the request to %s\n", where);
		goto out;
	}
	event_base_dispatch(base);
	if (f.code == 0) {
		fprintf(stderr,
		        "ftpgate sessions: no answer from %s (metrics_listen of %s): is ftpgate "
		        "running?\n",
		        where, path);
	} else if (f.code != 200) {
		fprintf(stderr, "ftpgate sessions: %s answered HTTP %d to GET /sessions%s\n", where,
		        f.code, f.code == 404 ? " (an ftpgate older than this one?)" : "");
	} else {
		print_plain(f.body);
		rc = 0;
	}
out:
	if (conn)
		evhttp_connection_free(conn);
	if (base)
		event_base_free(base);
	if (f.body)
		evbuffer_free(f.body);
	return rc;
}
