/* conf: the configuration, loaded once from an ini file (inih) and then immutable. */
#ifndef FTPGATE_CONF_H
#define FTPGATE_CONF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "log.h"
#include "util.h"

#define CONF_MAX_LISTEN 16
#define CONF_NAME_MAX 64
#define CONF_MAX_TRUSTED 32
#define CONF_MAX_BACKENDS 16      /* servers in one site's pool */
#define CONF_MAX_ACL 64           /* prefixes in allow, and in deny */
#define CONF_MAX_PUBLIC_FOR 16    /* networks in public_address_for */
#define CONF_MAX_ROUTES 256       /* user patterns in one [route:SITE] */
#define CONF_MAX_ROUTE_BACKENDS 4 /* servers of one route */
#define CONF_MAX_WORKERS 256      /* event loops (threads) */

enum backend_data_mode {
	BDM_PASSIVE = 0, /* the proxy connects to the backend's passive port */
	BDM_ACTIVE,      /* the backend connects to the proxy (PORT/EPRT) */
	BDM_CLIENT,      /* whatever the client asked */
};

enum tls_mode {
	TLS_OFF = 0,
	TLS_TERMINATE,            /* explicit: AUTH TLS answered by the proxy */
	TLS_IMPLICIT,             /* TLS from the first byte */
	TLS_PASSTHROUGH,          /* explicit FTPS relayed blindly after the backend's 234 */
	TLS_PASSTHROUGH_IMPLICIT, /* implicit FTPS relayed blindly from the first byte */
};

/* Sites whose TLS the proxy does not terminate (it holds no key). */
static inline int tls_is_passthrough(enum tls_mode m)
{
	return m == TLS_PASSTHROUGH || m == TLS_PASSTHROUGH_IMPLICIT;
}

enum backend_tls_mode { BTLS_OFF = 0, BTLS_ON, BTLS_IMPLICIT };

enum backend_prot {
	BPROT_CLIENT = 0, /* the backend's PROT follows the client's */
	BPROT_PRIVATE,    /* always PROT P toward the backend */
	BPROT_CLEAR,      /* always PROT C toward the backend */
};

#define CONF_PATH_MAX 1024

/* How a site's pool picks a server for a new session. */
enum balance {
	BAL_ROUNDROBIN = 0, /* in turn */
	BAL_LEASTCONN,      /* fewest sessions open */
	BAL_SOURCE,         /* the same client address to the same server while it is up */
};

/* public_address_for: clients inside net are told addr. */
struct public_for {
	struct cidr net;
	struct sockaddr_storage addr; /* IPv4, port 0 */
};

/* One server of a site's pool, as written in backend =. */
struct backend_conf {
	struct sockaddr_storage addr; /* resolved once at load */
	char host[256];               /* as written, for certificate checks */
	char name[272];               /* HOST:PORT, for logs and metrics */
};

/* One line of [route:SITE]: users matching pattern go to these servers. */
struct route {
	char pattern[128]; /* an exact name or a shell glob (fnmatch) */
	int line;
	struct backend_conf backends[CONF_MAX_ROUTE_BACKENDS];
	size_t n_backends;
};

struct site_conf {
	char name[CONF_NAME_MAX];
	int line; /* line of the section's first key, for later errors */
	struct sockaddr_storage listen[CONF_MAX_LISTEN];
	size_t n_listen;
	int listen_line;                                 /* 0 = the default */
	struct backend_conf backends[CONF_MAX_BACKENDS]; /* the pool, in the order written */
	size_t n_backends;
	enum balance balance;
	unsigned health_interval; /* seconds between health checks, 0 = none */
	unsigned health_timeout;  /* seconds a check may take */
	unsigned health_fall;     /* failed checks in a row that mark a server down */
	unsigned health_rise;     /* good checks in a row that mark it up again */
	struct sockaddr_storage public_address;
	int has_public_address;
	int public_address_line; /* 0 = not given (also for the two below) */
	int public_for_line;
	int max_sessions_line;
	struct public_for public_for[CONF_MAX_PUBLIC_FOR]; /* the most specific prefix wins */
	size_t n_public_for;
	uint16_t pasv_lo, pasv_hi;
	unsigned connect_timeout; /* seconds */
	unsigned idle_timeout;
	unsigned data_timeout;
	unsigned login_timeout;
	unsigned max_sessions;        /* 0 = only the global limit */
	unsigned max_sessions_per_ip; /* 0 = no limit; default 16 */
	enum backend_data_mode backend_data_mode;
	int allow_foreign_address; /* PORT/EPRT to an address other than the client's */

	/* TLS toward clients. */
	enum tls_mode tls;
	char tls_cert[CONF_PATH_MAX];
	char tls_key[CONF_PATH_MAX];
	int tls_cert_line, tls_key_line, tls_line; /* 0 = default */
	int passive_ports_line;
	int tls_min_version; /* OpenSSL's TLS1_2_VERSION or TLS1_3_VERSION */
	char tls_ciphers[512];
	int tls_ciphers_line;
	int require_tls;               /* USER/PASS only after AUTH TLS */
	int require_data_tls;          /* PROT C refused, transfers need PROT P */
	int tls_require_session_reuse; /* data connections must resume the control session */

	/* TLS toward the backend. */
	enum backend_tls_mode backend_tls;
	int backend_tls_verify;
	char backend_ca[CONF_PATH_MAX];
	int backend_ca_line;
	enum backend_prot backend_data_protection;

	/* PROXY protocol (HAProxy's proxy-protocol.txt). */
	unsigned proxy_protocol; /* 0 = off, else a mask of PP_ACCEPT_V1 / PP_ACCEPT_V2 */
	int proxy_protocol_line;
	struct cidr proxy_trusted[CONF_MAX_TRUSTED]; /* who may send the header */
	size_t n_proxy_trusted;
	int backend_proxy_protocol; /* 0 = off, 1 = v1, 2 = v2 toward the backend */

	/* Access control: deny wins; a non-empty allow admits only its prefixes. */
	struct cidr allow[CONF_MAX_ACL];
	size_t n_allow;
	struct cidr deny[CONF_MAX_ACL];
	size_t n_deny;
	unsigned max_login_failures;   /* 0 = no bans */
	unsigned login_failure_window; /* seconds */
	unsigned ban_time;             /* seconds */

	/* Routing by user ([route:NAME]): the first matching pattern wins, the
	 * site's own backend when none does. */
	struct route *routes; /* owned; freed by conf_free() */
	size_t n_routes;
	int route_keep_host; /* send USER with its @host part */
};

enum log_target { LOGT_DEFAULT = 0, LOGT_STDERR, LOGT_SYSLOG, LOGT_FILE };

struct conf {
	char path[4096];
	enum log_level log_level;
	unsigned max_sessions;
	int max_sessions_line; /* 0 = the default */
	char user[64];         /* drop to this user after binding ("" = stay) */
	char group[64];        /* and group ("" = the user's primary group) */
	int user_line, group_line;
	enum log_target log;
	char log_file[CONF_PATH_MAX];
	int log_line, xferlog_line;
	int log_facility;            /* syslog facility (LOG_DAEMON, LOG_LOCAL0, ...) */
	char xferlog[CONF_PATH_MAX]; /* "" = no transfer log */
	struct sockaddr_storage metrics_listen;
	int has_metrics;
	int metrics_line;
	unsigned shutdown_timeout; /* seconds running transfers get at shutdown */
	unsigned workers;          /* event loops; 0 = auto (one per online CPU) */
	int workers_line;
	int ktls; /* offer kernel TLS to OpenSSL on data connections */
	struct site_conf *sites;
	size_t n_sites;
};

/*
 * Load and validate path. On failure returns NULL and writes one line
 * "file:line: key: what is wrong" (or "file: what is wrong") to err.
 */
struct conf *conf_load(const char *path, char *err, size_t errsize);
/* The same from ini text in memory; name stands for the file in messages. */
struct conf *conf_load_text(const char *name, const char *text, char *err, size_t errsize);
void conf_free(struct conf *c);

#endif
