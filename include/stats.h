/*
 * stats: counters the proxy keeps per site, read by the metrics endpoint.
 * Every worker thread counts into the same object, so the counters are
 * atomic (an increment is one locked add; /metrics reads the sums).
 */
#ifndef FTPGATE_STATS_H
#define FTPGATE_STATS_H

#include <stdint.h>

/* A counter several worker threads add to. */
typedef _Atomic uint64_t stat_counter;

/* Why a session ended (label "reason" of ftpgate_sessions_ended_total). */
enum end_reason {
	END_CLIENT_QUIT = 0, /* QUIT answered */
	END_CLIENT_CLOSED,   /* client closed or reset the control connection */
	END_IDLE_TIMEOUT,    /* idle_timeout */
	END_LOGIN_TIMEOUT,   /* login_timeout */
	END_BACKEND_CONNECT, /* backend unreachable, refused or silent at start */
	END_BACKEND_ERROR,   /* backend closed, reset, sent garbage, TLS failure */
	END_TLS_ERROR,       /* TLS failure on the client side */
	END_SHUTDOWN,        /* proxy shutting down */
	END_OTHER,           /* anything else (out of memory, ...) */
	END_REASON_MAX
};

/* Transfer commands (label "command"). */
enum xfer_cmd { XC_RETR = 0, XC_STOR, XC_APPE, XC_STOU, XC_LIST, XC_NLST, XC_MLSD, XC_MAX };

/* Transfer results (label "result"). */
enum xfer_result {
	XR_OK = 0,  /* 2xx and every byte delivered */
	XR_FAILED,  /* 4xx/5xx or the data pair broke */
	XR_ABORTED, /* ABOR */
	XR_MAX
};

extern const char *const end_reason_names[END_REASON_MAX];
extern const char *const xfer_cmd_names[XC_MAX];
extern const char *const xfer_result_names[XR_MAX];

struct site_stats {
	stat_counter sessions_total;                 /* sessions accepted (started) */
	stat_counter sessions_refused;               /* refused by a session limit */
	stat_counter sessions_ended[END_REASON_MAX]; /* by reason */
	stat_counter bytes_up;                       /* data bytes client -> backend */
	stat_counter bytes_down;                     /* data bytes backend -> client */
	stat_counter transfers[XC_MAX][XR_MAX];
	stat_counter backend_connect_failures;
	stat_counter tls_handshake_failures;   /* client or backend side */
	stat_counter data_refused;             /* data connections from strangers */
	stat_counter proxy_refused;            /* PROXY protocol: untrusted peer or bad header */
	stat_counter acl_refused;              /* connections refused by allow/deny */
	stat_counter bans;                     /* client addresses banned */
	stat_counter ban_refused;              /* connections refused from banned addresses */
	_Atomic unsigned passive_ports_in_use; /* listening + connected passive ports */
	_Atomic unsigned passive_ports_total;  /* size of passive_ports */
};

#endif
