/* conf: the configuration, loaded once from an ini file (inih) and then immutable. */
#ifndef FTPGATE_CONF_H
#define FTPGATE_CONF_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "log.h"

#define CONF_MAX_LISTEN 16
#define CONF_NAME_MAX 64

enum backend_data_mode {
	BDM_PASSIVE = 0, /* the proxy connects to the backend's passive port */
	BDM_ACTIVE,      /* the backend connects to the proxy (PORT/EPRT) */
	BDM_CLIENT,      /* whatever the client asked */
};

struct site_conf {
	char name[CONF_NAME_MAX];
	int line; /* line of the section's first key, for later errors */
	struct sockaddr_storage listen[CONF_MAX_LISTEN];
	size_t n_listen;
	struct sockaddr_storage backend;
	int has_backend;
	struct sockaddr_storage public_address;
	int has_public_address;
	uint16_t pasv_lo, pasv_hi;
	unsigned connect_timeout; /* seconds */
	unsigned idle_timeout;
	unsigned data_timeout;
	unsigned login_timeout;
	unsigned max_sessions;        /* 0 = only the global limit */
	unsigned max_sessions_per_ip; /* 0 = no limit */
	enum backend_data_mode backend_data_mode;
	int allow_foreign_address; /* PORT/EPRT to an address other than the client's */
};

struct conf {
	char path[4096];
	enum log_level log_level;
	unsigned max_sessions;
	struct site_conf *sites;
	size_t n_sites;
};

/*
 * Load and validate path. On failure returns NULL and writes one line
 * "file:line: key: what is wrong" (or "file: what is wrong") to err.
 */
struct conf *conf_load(const char *path, char *err, size_t errsize);
void conf_free(struct conf *c);

#endif
