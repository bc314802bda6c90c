/* main: command line, config load and reload, privileges, signals, the main event loop. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/ssl.h>

#include "access.h"
#include "backend.h"
#include "datachan.h"
#include "cli.h"
#include "conf.h"
#include "ftpgate.h"
#include "hostwarn.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "probe.h"
#include "util.h"
#include "xferlog.h"
#include "session.h"
#include "tls.h"
#include "worker.h"

#define DEFAULT_CONF PKGSYSCONFDIR "/ftpgate.ini"

/* Quick mode: the configuration's text (NULL: read app.path). */
static const char *conf_text;

struct app {
	struct ftpgate gw;
	const char *path;
	int foreground;
	int term_count;
	struct event *drain_timer;
};

static void usage(FILE *to)
{
	fprintf(to,
	        "usage: ftpgate [-f] [-t] [-c FILE]\n"
	        "       ftpgate probe [-c FILE] [--json] [SITE...] | probe ftp://HOST[:PORT]\n"
	        "       ftpgate [-f] [-t] -b BACKEND[:PORT] -l [ADDR:]PORT [-a PUBLIC_ADDRESS]\n"
	        "               [-p LOW-HIGH] [--tls-cert FILE --tls-key FILE]\n"
	        "       ftpgate sessions [-c FILE]\n"
	        "       ftpgate -V | -h\n"
	        "\n"
	        "FTP and FTPS proxy for servers and clients behind NAT.\n"
	        "\n"
	        "  -c FILE  configuration file (default " DEFAULT_CONF ")\n"
	        "  -f       stay in the foreground (log to stderr unless the file says otherwise)\n"
	        "  -t       check the configuration (and its certificates) and exit\n"
	        "  -b, -l, -a, -p, --tls-cert, --tls-key\n"
	        "           quick mode: one site without a file (backend, listen,\n"
	        "           public_address, passive_ports, tls = terminate); -t prints it\n"
	        "  -V       print the version and exit\n"
	        "  -h       print this help and exit\n"
	        "\n"
	        "  sessions print the open sessions (GET /sessions of metrics_listen)\n"
	        "\n"
	        "Signals: HUP reloads the configuration, TERM/INT stop gracefully (twice: at\n"
	        "once), USR1 reopens log files.\n");
}

static void gen_free(struct gen *g)
{
	if (!g)
		return;
	for (size_t i = 0; i < g->n_sites; i++) {
		SSL_CTX_free(g->sites[i].tls_server);
		SSL_CTX_free(g->sites[i].tls_client);
		free(g->sites[i].route_pool);
	}
	free(g->sites);
	conf_free(g->conf);
	free(g);
}

/* The counters and limits of a site name: one object for the life of the process. */
static struct site_state *site_state_of(struct ftpgate *gw, const char *name)
{
	struct site_state *st;
	for (st = gw->states; st; st = st->next)
		if (strcmp(st->name, name) == 0)
			return st;
	st = calloc(1, sizeof(*st));
	if (!st)
		return NULL;
	snprintf(st->name, sizeof(st->name), "%s", name);
	st->next = gw->states;
	gw->states = st;
	return st;
}

/*
 * Load a configuration and build its sites (certificates and keys loaded).
 * Returns NULL with "file:line: key: what is wrong" in err.
 */
static struct gen *gen_load(struct ftpgate *gw, const char *path, char *err, size_t errsize)
{
	struct gen *g = calloc(1, sizeof(*g));
	if (!g) {
		snprintf(err, errsize, "out of memory");
		return NULL;
	}
	g->conf = conf_text ? conf_load_text(path, conf_text, err, errsize)
	                    : conf_load(path, err, errsize);
	if (!g->conf) {
		free(g);
		return NULL;
	}
	g->sites = calloc(g->conf->n_sites, sizeof(*g->sites));
	if (!g->sites) {
		snprintf(err, errsize, "out of memory");
		gen_free(g);
		return NULL;
	}
	g->n_sites = g->conf->n_sites;
	for (size_t i = 0; i < g->n_sites; i++) {
		struct site_state *st = site_state_of(gw, g->conf->sites[i].name);
		if (!st) {
			snprintf(err, errsize, "out of memory");
			gen_free(g);
			return NULL;
		}
		g->sites[i].state = st;
		struct site *site = &g->sites[i];
		site->conf = &g->conf->sites[i];
		site->gw = gw;
		site->gen = g;
		if (site->conf->n_routes) {
			site->route_pool = calloc(site->conf->n_routes * CONF_MAX_ROUTE_BACKENDS,
			                          sizeof(*site->route_pool));
			if (!site->route_pool) {
				snprintf(err, errsize, "out of memory");
				gen_free(g);
				return NULL;
			}
		}
		SSL_CTX *server = NULL, *client = NULL;
		if (tls_site_init(site->conf, g->conf->path, &server, &client, err, errsize) < 0) {
			gen_free(g);
			return NULL;
		}
		site->tls_server = server;
		site->tls_client = client;
	}
	return g;
}

static void gen_make_current(struct ftpgate *gw, struct gen *g)
{
	gw->cur = g;
	gw->conf = g->conf;
	gw->sites = g->sites;
	gw->n_sites = g->n_sites;
	for (size_t i = 0; i < g->n_sites; i++)
		g->sites[i].state->stats.passive_ports_total =
		    (unsigned)(g->sites[i].conf->pasv_hi - g->sites[i].conf->pasv_lo + 1);
}

void gen_release(struct ftpgate *gw, struct gen *g)
{
	struct gen *gone = NULL;
	pthread_mutex_lock(&gw->lock);
	if (--g->refs == 0 && g != gw->cur) {
		for (struct gen **pp = &gw->old; *pp; pp = &(*pp)->next) {
			if (*pp == g) {
				*pp = g->next;
				gone = g;
				break;
			}
		}
	}
	pthread_mutex_unlock(&gw->lock);
	if (gone) {
		log_info("configuration of %s (previous load): last session ended",
		         gone->conf->path);
		gen_free(gone);
	}
}

static int open_logs(const struct conf *c, int foreground, char *err, size_t errsize)
{
	int target = c->log;
	if (target == LOGT_DEFAULT)
		target = foreground ? LOGT_STDERR : LOGT_SYSLOG;
	return log_open(c->log_level, target, c->log_file, c->log_facility, err, errsize);
}

/* The uid and gid [global] user/group name (c->user set). */
static int user_ids(const struct conf *c, uid_t *uid, gid_t *gid, char *err, size_t errsize)
{
	struct passwd *pw = getpwnam(c->user);
	if (!pw) {
		snprintf(err, errsize, "user %s: no such user", c->user);
		return -1;
	}
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	if (c->group[0]) {
		struct group *gr = getgrnam(c->group);
		if (!gr) {
			snprintf(err, errsize, "group %s: no such group", c->group);
			return -1;
		}
		*gid = gr->gr_gid;
	}
	return 0;
}

/* Become uid/gid with no supplementary groups, for good. */
static int become(const struct conf *c, uid_t uid, gid_t gid, char *err, size_t errsize)
{
	if (setgroups(0, NULL) < 0 || setgid(gid) < 0 || setuid(uid) < 0) {
		snprintf(err, errsize, "cannot drop privileges to %s: %s", c->user,
		         strerror(errno));
		return -1;
	}
	/* Checked: there must be no way back. */
	if (setuid(0) == 0 || geteuid() == 0 || (getegid() == 0 && gid != 0)) {
		snprintf(err, errsize, "privileges could not be dropped for good");
		return -1;
	}
	return 0;
}

/* Drop root to [global] user/group, once the listeners are bound. */
/*
 * [global] ktls: tell the data connections, and say once whether the
 * kernel takes the encryption (asked before the privilege drop, so that
 * the tls module loads then).
 */
static void ktls_apply(const struct conf *c)
{
	char why[128];
	int tls = 0;
	datachan_set_ktls(c->ktls);
	for (size_t i = 0; i < c->n_sites; i++) {
		const struct site_conf *s = &c->sites[i];
		tls |=
		    s->tls == TLS_TERMINATE || s->tls == TLS_IMPLICIT || s->backend_tls != BTLS_OFF;
	}
	if (!c->ktls || !tls)
		return;
	int k = datachan_ktls_available(why, sizeof(why));
	if (k > 0)
		log_info("ktls: TLS data connections encrypt in the kernel where OpenSSL can "
		         "hand it the cipher");
	else
		log_info("ktls: the kernel offers no TLS (%s): data connections encrypt in user "
		         "space; load the tls module (modprobe tls) to offload them",
		         why);
}

static int drop_privileges(const struct conf *c)
{
	char err[256];
	uid_t uid;
	gid_t gid;

	if (geteuid() != 0) {
		if (c->user[0])
			log_warn("not started as root: user = %s ignored", c->user);
		return 0;
	}
	if (!c->user[0]) {
		log_warn("running as root: set [global] user to drop privileges after binding");
		return 0;
	}
	if (user_ids(c, &uid, &gid, err, sizeof(err)) < 0 ||
	    become(c, uid, gid, err, sizeof(err)) < 0) {
		log_error("%s", err);
		return -1;
	}
	log_info("running as user %s (uid %u, gid %u)", c->user, (unsigned)uid, (unsigned)gid);
	return 0;
}

/* -t as the user: one file the proxy opens again after the drop. */
struct user_file {
	const char *key; /* NULL: the configuration file itself */
	int line;        /* 0: a default */
	const char *path;
	int dir; /* 1: only its directory must be searchable (a log file) */
};

static int check_user_file(const struct conf *c, const struct user_file *f, const char *grp)
{
	char dir[CONF_PATH_MAX];
	const char *what = f->path;
	int rc;

	if (f->dir) {
		snprintf(dir, sizeof(dir), "%s", f->path);
		char *slash = strrchr(dir, '/');
		if (slash)
			slash[slash == dir ? 1 : 0] = '\0';
		what = dir;
		rc = access(dir, X_OK);
	} else {
		int fd = open(f->path, O_RDONLY | O_CLOEXEC);
		rc = fd < 0 ? -1 : 0;
		if (fd >= 0)
			close(fd);
	}
	if (rc == 0)
		return 0;
	const char *e = strerror(errno);
	if (!f->key)
		fprintf(stderr,
		        "%s: user %s cannot read it: %s; a reload reads it as that user "
		        "(chgrp %s %s && chmod g+r %s)\n",
		        c->path, c->user, e, grp, what, what);
	else if (f->dir)
		fprintf(stderr,
		        "%s:%d: %s: user %s cannot search the directory \"%s\": %s; reopening "
		        "the file on SIGUSR1 and on reload would fail (chgrp %s %s && chmod g+x "
		        "%s)\n",
		        c->path, f->line, f->key, c->user, what, e, grp, what, what);
	else if (f->line)
		fprintf(stderr,
		        "%s:%d: %s: user %s cannot read \"%s\": %s; a reload reads it as that user "
		        "(chgrp %s %s && chmod g+r %s)\n",
		        c->path, f->line, f->key, c->user, what, e, grp, what, what);
	else
		fprintf(stderr,
		        "%s: %s: user %s cannot read \"%s\" (the default): %s; a reload reads it "
		        "as that user (chgrp %s %s && chmod g+r %s)\n",
		        c->path, f->key, c->user, what, e, grp, what, what);
	return -1;
}

/*
 * ftpgate -t as root with [global] user: after the privilege drop the proxy
 * reads the configuration, keys and CA files again on every reload, and
 * reopens its log files on SIGUSR1. Check them in a child that drops exactly
 * as the proxy does. Returns 0, or -1 with the reasons on stderr.
 */
static int check_as_user(const struct conf *c)
{
	char err[256];
	uid_t uid;
	gid_t gid;

	if (geteuid() != 0 || !c->user[0])
		return 0;
	if (user_ids(c, &uid, &gid, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s: %s\n", c->path, err);
		return -1;
	}
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "%s: cannot check files as user %s: fork: %s\n", c->path, c->user,
		        strerror(errno));
		return -1;
	}
	if (pid == 0) {
		char grp[64];
		struct group *gr = getgrgid(gid);
		snprintf(grp, sizeof(grp), "%s", gr ? gr->gr_name : c->user);
		if (become(c, uid, gid, err, sizeof(err)) < 0) {
			fprintf(stderr, "%s: cannot check files as user %s: %s\n", c->path, c->user,
			        err);
			_exit(1);
		}
		int bad = check_user_file(c, &(struct user_file){NULL, 0, c->path, 0}, grp);
		for (size_t i = 0; i < c->n_sites; i++) {
			const struct site_conf *s = &c->sites[i];
			if (s->tls == TLS_TERMINATE || s->tls == TLS_IMPLICIT) {
				bad |= check_user_file(c,
				                       &(struct user_file){"tls_cert",
				                                           s->tls_cert_line,
				                                           s->tls_cert, 0},
				                       grp);
				bad |= check_user_file(
				    c,
				    &(struct user_file){"tls_key", s->tls_key_line, s->tls_key, 0},
				    grp);
			}
			if (s->backend_tls != BTLS_OFF && s->backend_tls_verify && s->backend_ca[0])
				bad |= check_user_file(c,
				                       &(struct user_file){"backend_ca",
				                                           s->backend_ca_line,
				                                           s->backend_ca, 0},
				                       grp);
		}
		if (c->log == LOGT_FILE)
			bad |= check_user_file(
			    c, &(struct user_file){"log", c->log_line, c->log_file, 1}, grp);
		if (c->xferlog[0])
			bad |= check_user_file(
			    c, &(struct user_file){"xferlog", c->xferlog_line, c->xferlog, 1}, grp);
		_exit(bad ? 1 : 0);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* Per-server samples for one scrape: n_sites * CONF_MAX_BACKENDS, grown on demand. */
static struct metrics_server *scrape_servers;
static size_t scrape_servers_cap;

/* Live bans for one scrape: at most BANS_MAX over all sites, allocated at the first. */
static struct metrics_ban *scrape_bans;
static char (*scrape_ban_addrs)[ADDR_STR_MAX];
static size_t scrape_n_bans;

static void add_ban(void *arg, const struct ban_entry *e)
{
	uint64_t now = *(const uint64_t *)arg;
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	ss.ss_family = (sa_family_t)e->family;
	if (e->family == AF_INET)
		memcpy(&((struct sockaddr_in *)&ss)->sin_addr, e->ip, 4);
	else
		memcpy(&((struct sockaddr_in6 *)&ss)->sin6_addr, e->ip, 16);
	char *a = scrape_ban_addrs[scrape_n_bans];
	addr_str((struct sockaddr *)&ss, a, ADDR_STR_MAX, 0);
	scrape_bans[scrape_n_bans++] =
	    (struct metrics_ban){a, (e->until - now + 999) / 1000}; /* seconds, rounded up */
}

/* Metrics: every site of the current configuration, with the sessions of older ones. */
static size_t metrics_sites(void *arg, struct metrics_site *out, size_t max)
{
	struct ftpgate *gw = arg;
	size_t n = gw->n_sites;
	uint64_t now = now_ms();
	if (!scrape_bans) {
		scrape_bans = calloc(BANS_MAX, sizeof(*scrape_bans));
		scrape_ban_addrs = calloc(BANS_MAX, sizeof(*scrape_ban_addrs));
	}
	scrape_n_bans = 0;
	size_t need = 0; /* every site's pool and routes */
	for (size_t i = 0; i < n; i++)
		need += gw->sites[i].conf->n_backends +
		        gw->sites[i].conf->n_routes * CONF_MAX_ROUTE_BACKENDS;
	if (scrape_servers_cap < need) {
		struct metrics_server *ns = realloc(scrape_servers, need * sizeof(*ns));
		if (ns) {
			scrape_servers = ns;
			scrape_servers_cap = need;
		}
	}
	size_t used = 0;
	pthread_mutex_lock(&gw->lock); /* gw->old, bans */
	for (size_t i = 0; i < n && i < max; i++) {
		struct site *site = &gw->sites[i];
		unsigned open = site->n_sessions;
		for (struct gen *g = gw->old; g; g = g->next)
			for (size_t j = 0; j < g->n_sites; j++)
				if (strcmp(g->sites[j].conf->name, site->conf->name) == 0)
					open += g->sites[j].n_sessions;
		out[i].name = site->conf->name;
		out[i].stats = &site->state->stats;
		out[i].sessions_open = open;
		out[i].servers = NULL;
		out[i].n_servers = 0;
		if (scrape_servers_cap < need)
			continue; /* out of memory: no per-server samples */
		struct metrics_server *ms = &scrape_servers[used];
		size_t np = site->conf->n_backends;
		size_t nr = site->conf->n_routes * CONF_MAX_ROUTE_BACKENDS;
		for (size_t j = 0; j < np + nr; j++) {
			const struct backend_server *b =
			    j < np ? site->pool[j] : site->route_pool[j - np];
			int seen = !b;
			for (size_t k = 0; k < out[i].n_servers && !seen; k++)
				seen = ms[k].name == b->bc.name; /* in the pool and a route */
			if (seen)
				continue;
			ms[out[i].n_servers++] = (struct metrics_server){
			    b->bc.name,        b->up,       b->open,
			    b->sessions_total, b->failures, b->check_failures};
		}
		used += out[i].n_servers;
		out[i].servers = ms;
		out[i].bans = NULL;
		out[i].n_bans = 0;
		if (i < max && scrape_bans && scrape_ban_addrs && gw->bans) {
			size_t first = scrape_n_bans;
			bans_each(gw->bans, site->conf->name, now, add_ban, &now);
			out[i].bans = &scrape_bans[first];
			out[i].n_bans = scrape_n_bans - first;
		}
	}
	pthread_mutex_unlock(&gw->lock);
	return n;
}

/* The transfer log and the metrics endpoint. */
static int extras_open(struct ftpgate *gw)
{
	char err[CONF_PATH_MAX + 256];
	const struct conf *c = gw->conf;

	if (c->xferlog[0]) {
		gw->xferlog = xferlog_open(c->xferlog, err, sizeof(err));
		if (!gw->xferlog) {
			log_error("xferlog: %s", err);
			return -1;
		}
	}
	if (c->has_metrics) {
		gw->metrics = metrics_new(gw->base, (const struct sockaddr *)&c->metrics_listen,
		                          metrics_sites, gw, err, sizeof(err));
		if (!gw->metrics) {
			log_error("%s:%d: metrics_listen: %s", c->path, c->metrics_line, err);
			return -1;
		}
		metrics_set_sessions(gw->metrics, sessions_report, gw);
		char a[ADDR_STR_MAX];
		log_info("metrics on http://%s/metrics",
		         addr_str((const struct sockaddr *)&c->metrics_listen, a, sizeof(a), 1));
	}
	return 0;
}

static void extras_close(struct ftpgate *gw)
{
	metrics_free(gw->metrics);
	gw->metrics = NULL;
	xferlog_close(gw->xferlog);
	gw->xferlog = NULL;
}

/* Files opened as root must stay writable (and reopenable) by the user we become. */
static void chown_logs(struct ftpgate *gw, const struct conf *c)
{
	struct passwd *pw;
	if (geteuid() != 0 || !c->user[0] || !(pw = getpwnam(c->user)))
		return;
	gid_t gid = pw->pw_gid;
	struct group *gr = c->group[0] ? getgrnam(c->group) : NULL;
	if (gr)
		gid = gr->gr_gid;
	if (gw->xferlog && xferlog_chown(gw->xferlog, pw->pw_uid, gid) < 0)
		log_warn("xferlog: cannot hand it to %s: %s", c->user, strerror(errno));
	if (c->log == LOGT_FILE && chown(c->log_file, pw->pw_uid, gid) < 0)
		log_warn("log: cannot hand %s to %s: %s", c->log_file, c->user, strerror(errno));
}

static void reload(struct app *app)
{
	struct ftpgate *gw = &app->gw;
	char err[1024];

	if (gw->draining)
		return;
	log_info("reloading %s", app->path);
	struct gen *g = gen_load(gw, app->path, err, sizeof(err));
	if (!g) {
		log_error("reload failed, keeping the running configuration: %s", err);
		return;
	}
	struct gen *old = gw->cur;
	int old_ktls = old->conf->ktls;
	/* Counters follow the site's name: gen_load gave the sites their state. */
	for (size_t i = 0; i < g->n_sites; i++)
		for (size_t j = 0; j < old->n_sites; j++)
			if (strcmp(g->sites[i].conf->name, old->sites[j].conf->name) == 0)
				backend_carry_turn(&g->sites[i], &old->sites[j]);
	/* Servers that stay keep their health state and counters. */
	backends_apply(gw->backends, g->sites, g->n_sites);
	listeners_move(gw, old, g);
	pthread_mutex_lock(&gw->lock); /* gen_release() reads gw->cur and gw->old */
	gen_make_current(gw, g);
	if (open_logs(g->conf, app->foreground, err, sizeof(err)) < 0)
		log_error("reload: %s; logging continues as before", err);
	if (strcmp(old->conf->user, g->conf->user) != 0)
		log_warn("reload: user changed; that takes a restart");
	if (strcmp(old->conf->group, g->conf->group) != 0)
		log_warn("reload: group changed; that takes a restart");
	if (strcmp(old->conf->xferlog, g->conf->xferlog) != 0 ||
	    old->conf->has_metrics != g->conf->has_metrics ||
	    memcmp(&old->conf->metrics_listen, &g->conf->metrics_listen,
	           sizeof(g->conf->metrics_listen)) != 0)
		log_warn("reload: xferlog and metrics_listen changes take a restart");
	int unused = old->refs == 0;
	if (!unused) {
		old->next = gw->old;
		gw->old = old;
	}
	pthread_mutex_unlock(&gw->lock);
	if (unused)
		gen_free(old);
	if (workers_wanted(g->conf->workers) != gw->n_workers)
		log_warn("reload: workers changed; that takes a restart");
	if (g->conf->ktls != old_ktls)
		ktls_apply(g->conf);
	log_info("reloaded %s (%zu site%s)", app->path, g->n_sites, g->n_sites == 1 ? "" : "s");
}

static void drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct app *app = arg;
	(void)fd;
	(void)what;
	log_warn("shutdown_timeout: closing %u session(s) still open", app->gw.n_sessions);
	event_base_loopbreak(app->gw.base);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct app *app = arg;
	struct ftpgate *gw = &app->gw;
	(void)what;

	switch (sig) {
	case SIGHUP:
		reload(app);
		return;
	case SIGUSR1:
		log_reopen();
		if (gw->xferlog && xferlog_reopen(gw->xferlog) < 0)
			log_error("xferlog: cannot reopen: %s", strerror(errno));
		log_info("log files reopened");
		return;
	default:
		break;
	}
	if (++app->term_count > 1 || gw->n_sessions == 0) {
		log_info("signal %d: exiting now (%u sessions open)", (int)sig, gw->n_sessions);
		event_base_loopbreak(gw->base);
		return;
	}
	log_info("signal %d: shutting down: no new sessions, %u open get up to %u s", (int)sig,
	         gw->n_sessions, gw->conf->shutdown_timeout);
	gw->draining = 1;
	listeners_close(gw);
	workers_drain(gw);
	if (gw->n_sessions == 0) {
		event_base_loopbreak(gw->base);
		return;
	}
	struct timeval tv = {(time_t)gw->conf->shutdown_timeout, 0};
	app->drain_timer = evtimer_new(gw->base, drain_timeout_cb, app);
	if (app->drain_timer)
		evtimer_add(app->drain_timer, &tv);
}

int main(int argc, char **argv)
{
	static struct app app;
	struct ftpgate *gw = &app.gw;
	int check = 0, opt;
	char err[1024];

	if (argc > 1 && strcmp(argv[1], "probe") == 0)
		return probe_main(argc - 1, argv + 1, DEFAULT_CONF);
	if (argc > 1 && strcmp(argv[1], "sessions") == 0)
		return cli_sessions(argc - 1, argv + 1, DEFAULT_CONF);
	static const struct option longopts[] = {QUICK_LONGOPTS, {NULL, 0, NULL, 0}};
	struct quick quick = {0};
	app.path = NULL;
	while ((opt = getopt_long(argc, argv, "c:ftVh" QUICK_SHORTOPTS, longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			app.path = optarg;
			break;
		case 'f':
			app.foreground = 1;
			break;
		case 't':
			check = 1;
			break;
		case 'V':
			printf("ftpgate %s\n", PACKAGE_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			if (quick_option(&quick, opt, optarg))
				break;
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "ftpgate: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (quick_active(&quick)) {
		conf_text = app.path ? NULL : quick_ini(&quick, err, sizeof(err));
		if (!conf_text) {
			fprintf(stderr, "%s\n",
			        app.path ? "ftpgate: -c and quick mode exclude each other" : err);
			return 2;
		}
		app.path = QUICK_NAME;
	}
	if (!app.path)
		app.path = DEFAULT_CONF;

	/* Certificates and keys are checked with the configuration (also by -t). */
	struct gen *g = gen_load(gw, app.path, err, sizeof(err));
	if (!g) {
		if (conf_text)
			quick_explain(&quick, err, sizeof(err));
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if (check) {
		if (check_as_user(g->conf) < 0) {
			gen_free(g);
			return 1;
		}
		host_warnings(g, 1); /* never a failure */
		if (conf_text)
			fputs(conf_text, stdout);
		printf("%s%s: configuration ok (%zu site%s)\n", conf_text ? "; " : "", app.path,
		       g->n_sites, g->n_sites == 1 ? "" : "s");
		gen_free(g);
		return 0;
	}
	gen_make_current(gw, g);
	if (open_logs(g->conf, 1, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		gen_free(g);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	/* Every session holds several descriptors; passthrough sites one per
	 * passive port. Take what the hard limit allows. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	int rc = 1;
	struct event *sigs[5] = {NULL}, *cert_watch = NULL;
	unsigned n_workers = workers_wanted(g->conf->workers);
	pthread_mutex_init(&gw->lock, NULL);
	/* Several loops: libevent's own locks, so that one thread may wake another's loop. */
	if (n_workers > 1 && evthread_use_pthreads() < 0) {
		log_error("cannot make the event loops thread-safe");
		goto out;
	}
	gw->base = event_base_new();
	if (!gw->base) {
		log_error("cannot create the event loop");
		goto out;
	}
	gw->bans = calloc(1, sizeof(*gw->bans)); /* fixed size: BANS_MAX addresses */
	gw->backends = backends_new(gw->base);
	if (!gw->bans || !gw->backends ||
	    backends_apply(gw->backends, gw->sites, gw->n_sites) < 0) {
		log_error("out of memory for the backend servers");
		goto out;
	}
	if (listeners_open(gw) < 0)
		goto out;
	if (extras_open(gw) < 0)
		goto out;
	if (!app.foreground) {
		if (daemon(0, 0) < 0) {
			log_error("daemon: %s", strerror(errno));
			goto out;
		}
		event_reinit(gw->base);
	}
	if (open_logs(g->conf, app.foreground, err, sizeof(err)) < 0) {
		log_error("%s", err);
		goto out;
	}
	chown_logs(gw, g->conf);
	host_warnings(g, 0);
	ktls_apply(g->conf);
	if (drop_privileges(g->conf) < 0)
		goto out;
	/* Threads after the fork and the privilege drop: they inherit both. */
	if (workers_start(gw, n_workers) < 0)
		goto out;

	static const int signums[5] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, 0};
	for (int i = 0; signums[i]; i++) {
		sigs[i] = evsignal_new(gw->base, signums[i], on_signal, &app);
		if (!sigs[i] || event_add(sigs[i], NULL) < 0) {
			log_error("cannot install signal handlers");
			goto out;
		}
	}
	cert_watch = cert_watch_start(gw, 86400); /* daily: a certificate about to expire */
	log_info("ftpgate %s started (%zu site%s)", PACKAGE_VERSION, g->n_sites,
	         g->n_sites == 1 ? "" : "s");
	event_base_dispatch(gw->base);
	rc = 0;
	log_info("ftpgate stopped");
out:
	if (gw->base) {
		listeners_close(gw);
		listeners_close_pending(gw);
		workers_stop(gw);
		extras_close(gw);
		backends_free(gw->backends);
	}
	free(gw->bans);
	free(scrape_servers);
	free(scrape_bans);
	free(scrape_ban_addrs);
	for (int i = 0; i < 5; i++)
		if (sigs[i])
			event_free(sigs[i]);
	if (app.drain_timer)
		event_free(app.drain_timer);
	if (cert_watch)
		event_free(cert_watch);
	while (gw->old) {
		struct gen *o = gw->old;
		gw->old = o->next;
		gen_free(o);
	}
	gen_free(gw->cur);
	while (gw->states) {
		struct site_state *st = gw->states;
		gw->states = st->next;
		free(st);
	}
	if (gw->base)
		event_base_free(gw->base);
	return rc;
}
