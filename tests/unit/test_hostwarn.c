/* Unit tests for hostwarn (TAP): the daily certificate line, from a timer on
 * a real event loop, for a real certificate loaded into an SSL_CTX. The
 * interval is 1 s here (86400 in the proxy); waits are bounded, no time is
 * asserted. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "conf.h"
#include "ftpgate.h"
#include "hostwarn.h"
#include "log.h"
#include "tap.h"
#include "tls.h"

/* A context serving a self-signed P-256 certificate valid for days. */
static SSL_CTX *ctx_with_cert(long days)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!key || !x || !ctx)
		abort();
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), days * 86400 + 3600);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
	                           (const unsigned char *)"test", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	X509_set_pubkey(x, key);
	if (!X509_sign(x, key, EVP_sha256()) || SSL_CTX_use_certificate(ctx, x) != 1 ||
	    SSL_CTX_use_PrivateKey(ctx, key) != 1)
		abort();
	X509_free(x);
	EVP_PKEY_free(key);
	return ctx;
}

static char logpath[] = "/tmp/test_hostwarn-XXXXXX";

static unsigned lines_with(const char *needle)
{
	char buf[8192];
	FILE *f = fopen(logpath, "r");
	unsigned n = 0;
	while (f && fgets(buf, sizeof(buf), f))
		n += strstr(buf, needle) != NULL;
	if (f)
		fclose(f);
	return n;
}

struct watch {
	struct event_base *base;
	const char *needle;
	unsigned want;
	int ticks;
};

/* Every 100 ms: stop once the log has `want` lines, or after 10 s. */
static void poll_cb(evutil_socket_t fd, short what, void *arg)
{
	struct watch *w = arg;
	(void)fd;
	(void)what;
	if (lines_with(w->needle) >= w->want || ++w->ticks >= 100)
		event_base_loopbreak(w->base);
}

static unsigned run(struct ftpgate *gw, const char *needle, unsigned want)
{
	struct watch w = {gw->base, needle, want, 0};
	struct timeval tv = {0, 100000};
	struct event *poll = event_new(gw->base, -1, EV_PERSIST, poll_cb, &w);
	struct event *cw = cert_watch_start(gw, 1);
	ok(cw != NULL, "cert_watch_start gives a timer");
	event_add(poll, &tv);
	event_base_dispatch(gw->base);
	event_free(poll);
	if (cw)
		event_free(cw);
	return lines_with(needle);
}

int main(void)
{
	char err[256];
	int fd = mkstemp(logpath);
	if (fd < 0)
		return 1;
	close(fd);
	if (log_open(LOG_LVL_INFO, LOGT_FILE, logpath, 0, err, sizeof(err)) < 0)
		return 1;

	struct conf c = {0};
	snprintf(c.path, sizeof(c.path), "/etc/ftpgate/ftpgate.ini");
	struct site_conf sc[2] = {0};
	snprintf(sc[0].name, sizeof(sc[0].name), "soon");
	snprintf(sc[0].tls_cert, sizeof(sc[0].tls_cert), "/etc/ftpgate/soon.pem");
	sc[0].tls = TLS_TERMINATE;
	sc[0].tls_cert_line = 7;
	snprintf(sc[1].name, sizeof(sc[1].name), "later");
	snprintf(sc[1].tls_cert, sizeof(sc[1].tls_cert), "/etc/ftpgate/later.pem");
	sc[1].tls = TLS_IMPLICIT;
	sc[1].line = 12;
	struct site sites[2] = {{.conf = &sc[0]}, {.conf = &sc[1]}};
	sites[0].tls_server = ctx_with_cert(5);
	sites[1].tls_server = ctx_with_cert(90);
	struct ftpgate gw = {.conf = &c, .sites = sites, .n_sites = 2};
	gw.base = event_base_new();

	time_t na = tls_cert_not_after(sites[0].tls_server);
	long left = (long)(na - time(NULL));
	ok(left > 5 * 86400 && left <= 5 * 86400 + 3600, "tls_cert_not_after: 5 days and an hour");
	ok(tls_cert_not_after(NULL) == 0, "no context: 0");

	const char *soon = "warn: /etc/ftpgate/ftpgate.ini:7: tls_cert: certificate "
	                   "\"/etc/ftpgate/soon.pem\" of [site:soon] expires in 5 days (";
	is_int(run(&gw, soon, 2), 2, "the timer logs the expiring certificate, again and again");
	is_int(lines_with("later.pem"), 0, "not the one valid for 90 days");

	/* Only the 90-day certificate: a second run logs nothing new. */
	gw.sites = &sites[1];
	gw.n_sites = 1;
	unsigned before = lines_with("tls_cert:");
	run(&gw, "never", 1);
	is_int(lines_with("tls_cert:"), before, "a certificate valid for 90 days: no line");

	event_base_free(gw.base);
	SSL_CTX_free(sites[0].tls_server);
	SSL_CTX_free(sites[1].tls_server);
	unlink(logpath);
	return tap_done();
}
