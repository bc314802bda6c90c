/* main: command line, config load, signals, the event loop. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/event.h>

#include "conf.h"
#include "ftpgate.h"
#include "listener.h"
#include "log.h"
#include "session.h"
#include "tls.h"

#define DEFAULT_CONF SYSCONFDIR "/ftpgate.ini"

static void usage(FILE *to)
{
	fprintf(to, "usage: ftpgate [-f] [-t] [-c FILE]\n"
	            "       ftpgate -V | -h\n"
	            "\n"
	            "FTP proxy for servers and clients behind NAT.\n"
	            "\n"
	            "  -c FILE  configuration file (default " DEFAULT_CONF ")\n"
	            "  -f       stay in the foreground and log to stderr\n"
	            "  -t       check the configuration and exit\n"
	            "  -V       print the version and exit\n"
	            "  -h       print this help and exit\n");
}

static void free_ctxs(SSL_CTX **ctxs, size_t n_sites)
{
	for (size_t i = 0; i < 2 * n_sites; i++)
		SSL_CTX_free(ctxs[i]);
	free(ctxs);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct ftpgate *gw = arg;
	(void)what;
	log_info("signal %d: shutting down (%u sessions open)", (int)sig, gw->n_sessions);
	event_base_loopbreak(gw->base);
}

int main(int argc, char **argv)
{
	const char *path = DEFAULT_CONF;
	int foreground = 0, check = 0, opt;
	char err[1024];

	while ((opt = getopt(argc, argv, "c:ftVh")) != -1) {
		switch (opt) {
		case 'c':
			path = optarg;
			break;
		case 'f':
			foreground = 1;
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
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "ftpgate: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		return 2;
	}

	struct conf *conf = conf_load(path, err, sizeof(err));
	if (!conf) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	/* Certificates and keys are checked with the configuration (also by -t). */
	SSL_CTX **ctxs = calloc(conf->n_sites * 2, sizeof(*ctxs));
	if (!ctxs) {
		fprintf(stderr, "out of memory\n");
		return 1;
	}
	for (size_t i = 0; i < conf->n_sites; i++) {
		if (tls_site_init(&conf->sites[i], conf->path, &ctxs[2 * i], &ctxs[2 * i + 1], err,
		                  sizeof(err)) < 0) {
			fprintf(stderr, "%s\n", err);
			free_ctxs(ctxs, conf->n_sites);
			conf_free(conf);
			return 1;
		}
	}
	if (check) {
		free_ctxs(ctxs, conf->n_sites);
		printf("%s: configuration ok (%zu site%s)\n", path, conf->n_sites,
		       conf->n_sites == 1 ? "" : "s");
		conf_free(conf);
		return 0;
	}

	log_init(conf->log_level, 0);
	signal(SIGPIPE, SIG_IGN);
	/* Every session holds several descriptors; passthrough sites one per
	 * passive port. Take what the hard limit allows. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	struct ftpgate gw;
	memset(&gw, 0, sizeof(gw));
	gw.conf = conf;
	gw.base = event_base_new();
	gw.sites = calloc(conf->n_sites, sizeof(*gw.sites));
	if (!gw.base || !gw.sites) {
		log_error("out of memory");
		return 1;
	}
	gw.n_sites = conf->n_sites;
	for (size_t i = 0; i < conf->n_sites; i++) {
		gw.sites[i].conf = &conf->sites[i];
		gw.sites[i].gw = &gw;
		gw.sites[i].tls_server = ctxs[2 * i];
		gw.sites[i].tls_client = ctxs[2 * i + 1];
	}
	int rc = 1;
	if (listeners_open(&gw) < 0)
		goto out;

	if (!foreground) {
		if (daemon(0, 0) < 0) {
			log_error("daemon: %s", strerror(errno));
			goto out;
		}
		log_init(conf->log_level, 1);
		event_reinit(gw.base);
	}

	struct event *sigterm = evsignal_new(gw.base, SIGTERM, on_signal, &gw);
	struct event *sigint = evsignal_new(gw.base, SIGINT, on_signal, &gw);
	event_add(sigterm, NULL);
	event_add(sigint, NULL);
	log_info("ftpgate %s started (%zu site%s)", PACKAGE_VERSION, conf->n_sites,
	         conf->n_sites == 1 ? "" : "s");
	event_base_dispatch(gw.base);
	event_free(sigterm);
	event_free(sigint);
	rc = 0;
out:
	listeners_close(&gw);
	/* Open sessions are closed at once; a graceful drain is not built yet. */
	sessions_close_all(&gw);
	free(gw.sites);
	free_ctxs(ctxs, conf->n_sites);
	event_base_free(gw.base);
	conf_free(conf);
	return rc;
}
