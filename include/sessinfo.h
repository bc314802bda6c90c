/*
 * sessinfo: what GET /sessions shows of one open session, and its two
 * renderings (JSON, and the table `ftpgate sessions` prints). Pure: plain
 * data in, bytes appended to an evbuffer; every string is escaped here
 * (user names and addresses come from the network).
 */
#ifndef FTPGATE_SESSINFO_H
#define FTPGATE_SESSINFO_H

#include <stdint.h>

#include "conf.h"
#include "util.h"

struct evbuffer;

struct session_info {
	uint64_t id;
	char site[CONF_NAME_MAX];
	char client[ADDR_STR_MAX]; /* "192.0.2.7:50123" */
	char user[64];             /* "" before USER */
	char backend[272];         /* HOST:PORT of the server, "" none yet */
	const char *state; /* connecting, login, idle, transfer, relay (passthrough), closing */
	int tls;           /* the client's control connection is TLS (terminated or relayed) */
	int data_tls;      /* PROT P */
	int backend_tls;   /* the backend control connection is TLS */
	uint64_t age_ms;
	uint64_t bytes_up, bytes_down; /* data bytes so far, the current transfer included */
	/* The transfer running now: xfer_cmd "" when none. */
	char xfer_cmd[96];   /* "RETR big.bin" */
	uint64_t xfer_bytes; /* so far, both directions */
	uint64_t xfer_ms;    /* since its command */
};

/* {"sessions": [ -- then one sessinfo_json() per session, then sessinfo_json_end(). */
int sessinfo_json_begin(struct evbuffer *out, const char *version);
int sessinfo_json(struct evbuffer *out, const struct session_info *si, int first);
int sessinfo_json_end(struct evbuffer *out, unsigned n);

/* The table: a header line, then one line per session. */
int sessinfo_table_head(struct evbuffer *out);
int sessinfo_table_row(struct evbuffer *out, const struct session_info *si);

#endif
