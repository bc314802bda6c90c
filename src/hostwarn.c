/*
 * hostwarn: gathers what confwarn.c needs to know about the host (the
 * addresses of its interfaces, /proc/sys/net/ipv4/ip_local_port_range and
 * ip_local_reserved_ports, the expiry of each site's certificate) and
 * reports the warnings; owns the daily certificate timer's callback (the
 * event itself belongs to the caller).
 */
#include "config.h"

#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "confwarn.h"
#include "hostwarn.h"
#include "log.h"
#include "tls.h"

/* 1 if the host has IPv4 addresses besides loopback and all are private. */
static int host_all_private(void)
{
	struct ifaddrs *ifs;
	unsigned n = 0, priv = 0;
	if (getifaddrs(&ifs) < 0)
		return 0;
	for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
		if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
			continue;
		const unsigned char *ip =
		    (const unsigned char *)&((struct sockaddr_in *)i->ifa_addr)->sin_addr;
		if (ip[0] == 127)
			continue;
		n++;
		priv += (unsigned)ip_is_private(AF_INET, ip);
	}
	freeifaddrs(ifs);
	return n > 0 && priv == n;
}

static void read_ephemeral(struct warn_facts *f)
{
	FILE *fp = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
	unsigned lo, hi;
	if (!fp)
		return;
	if (fscanf(fp, "%u %u", &lo, &hi) == 2 && lo <= hi && hi <= 65535) {
		f->eph_lo = lo;
		f->eph_hi = hi;
	}
	fclose(fp);
}

/* ip_local_reserved_ports: "50000-50999,8080" into the bitmap. */
static void read_reserved(uint8_t *bits)
{
	char buf[4096];
	FILE *fp = fopen("/proc/sys/net/ipv4/ip_local_reserved_ports", "r");
	if (!fp)
		return;
	size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	char *save = NULL;
	for (char *tok = strtok_r(buf, ",\n", &save); tok; tok = strtok_r(NULL, ",\n", &save)) {
		unsigned lo, hi;
		int k = sscanf(tok, "%u-%u", &lo, &hi);
		if (k == 1)
			hi = lo;
		if (k < 1 || lo > hi || hi > 65535)
			continue;
		for (unsigned p = lo; p <= hi; p++)
			bits[p / 8] |= (uint8_t)(1u << (p % 8));
	}
}

struct sink {
	const char *path;
	int to_stderr;
};

static void emit(void *arg, int line, const char *key, const char *text)
{
	const struct sink *k = arg;
	if (k->to_stderr)
		fprintf(stderr, "%s:%d: %s: warning: %s\n", k->path, line, key, text);
	else
		log_warn("%s:%d: %s: %s", k->path, line, key, text);
}

unsigned host_warnings(const struct gen *g, int to_stderr)
{
	static uint8_t reserved[65536 / 8];
	struct warn_facts f = {0};
	time_t *na = calloc(g->n_sites ? g->n_sites : 1, sizeof(*na));

	memset(reserved, 0, sizeof(reserved));
	f.host_all_private = host_all_private();
	read_ephemeral(&f);
	read_reserved(reserved);
	f.reserved = reserved;
	f.now = time(NULL);
	for (size_t i = 0; na && i < g->n_sites; i++)
		na[i] = tls_cert_not_after(g->sites[i].tls_server);
	f.cert_not_after = na;
	struct sink k = {g->conf->path, to_stderr};
	unsigned n = conf_warnings(g->conf, &f, emit, &k);
	free(na);
	return n;
}

static void cert_watch_cb(evutil_socket_t fd, short what, void *arg)
{
	const struct ftpgate *gw = arg;
	char t[CONF_PATH_MAX + 256];
	(void)fd;
	(void)what;
	for (size_t i = 0; i < gw->n_sites; i++) {
		const struct site_conf *s = gw->sites[i].conf;
		if (conf_cert_warning(s, tls_cert_not_after(gw->sites[i].tls_server), time(NULL), t,
		                      sizeof(t)))
			log_warn("%s:%d: tls_cert: %s", gw->conf->path,
			         s->tls_cert_line ? s->tls_cert_line : s->line, t);
	}
}

struct event *cert_watch_start(struct ftpgate *gw, unsigned interval)
{
	struct timeval tv = {(time_t)interval, 0};
	struct event *ev = event_new(gw->base, -1, EV_PERSIST, cert_watch_cb, gw);
	if (ev && event_add(ev, &tv) < 0) {
		event_free(ev);
		ev = NULL;
	}
	return ev;
}
