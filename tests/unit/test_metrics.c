/* Unit tests for metrics (TAP): the renderer, and the HTTP endpoint on loopback. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "metrics.h"
#include "stats.h"
#include "tap.h"

#define WEIRD "b\"q\\s\nx" /* b"q\s<LF>x */
#define WEIRD_ESC "b\\\"q\\\\s\\nx"

static struct site_stats st_a, st_b;
static struct metrics_site fake[2];
static const struct metrics_ban bans_b[2] = {{"192.0.2.66", 899}, {"2001:db8::1", 1}};
static const struct metrics_server pool_a[2] = {
    {"192.0.2.5:21", 1, 3, 40, 2, 0},
    {WEIRD ":21", 0, 0, 7, 5, 11},
};

static void fake_init(void)
{
	memset(&st_a, 0, sizeof(st_a));
	memset(&st_b, 0, sizeof(st_b));
	st_a.sessions_total = 10;
	st_a.sessions_refused = 2;
	st_a.sessions_ended[END_CLIENT_QUIT] = 5;
	st_a.sessions_ended[END_IDLE_TIMEOUT] = 1;
	st_a.sessions_ended[END_OTHER] = 9;
	st_a.bytes_up = 1234;
	st_a.bytes_down = UINT64_MAX;
	st_a.transfers[XC_RETR][XR_OK] = 7;
	st_a.transfers[XC_STOR][XR_ABORTED] = 1;
	st_a.transfers[XC_MLSD][XR_FAILED] = 2;
	st_a.backend_connect_failures = 4;
	st_a.tls_handshake_failures = 6;
	st_a.data_refused = 8;
	st_a.proxy_refused = 3;
	st_a.acl_refused = 12;
	st_a.bans = 13;
	st_b.ban_refused = 14;
	st_a.passive_ports_in_use = 5;
	st_a.passive_ports_total = 100;
	/* More in use than the range holds (a shrunk range after a reload). */
	st_b.passive_ports_in_use = 3;
	st_b.passive_ports_total = 2;
	st_b.sessions_total = 1;
	fake[0] = (struct metrics_site){"alpha", &st_a, 3, pool_a, 2, NULL, 0};
	fake[1] = (struct metrics_site){WEIRD, &st_b, 0, NULL, 0, bans_b, 2};
}

/* Render to a NUL-terminated heap string. */
static char *render(const struct metrics_site *sites, size_t n, const char *version)
{
	struct evbuffer *b = evbuffer_new();
	char *s;
	size_t len;

	if (!b || metrics_render(b, sites, n, version) < 0)
		abort();
	len = evbuffer_get_length(b);
	s = malloc(len + 1);
	if (!s)
		abort();
	evbuffer_remove(b, s, len);
	s[len] = '\0';
	evbuffer_free(b);
	return s;
}

/* Is line (without LF) one whole line of text? */
static int has_line(const char *text, const char *line)
{
	size_t n = strlen(line);

	for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
		if ((p == text || p[-1] == '\n') && p[n] == '\n')
			return 1;
	return 0;
}

static int count_lines(const char *text, const char *prefix)
{
	int c = 0;
	size_t n = strlen(prefix);

	for (const char *p = text; *p;) {
		if (strncmp(p, prefix, n) == 0)
			c++;
		const char *nl = strchr(p, '\n');
		if (!nl)
			break;
		p = nl + 1;
	}
	return c;
}

static const char *const families[][2] = {
    {"ftpgate_build_info", "gauge"},
    {"ftpgate_sessions_open", "gauge"},
    {"ftpgate_sessions_total", "counter"},
    {"ftpgate_sessions_refused_total", "counter"},
    {"ftpgate_sessions_ended_total", "counter"},
    {"ftpgate_data_bytes_total", "counter"},
    {"ftpgate_transfers_total", "counter"},
    {"ftpgate_backend_connect_failures_total", "counter"},
    {"ftpgate_tls_handshake_failures_total", "counter"},
    {"ftpgate_data_connections_refused_total", "counter"},
    {"ftpgate_proxy_protocol_refused_total", "counter"},
    {"ftpgate_access_refused_total", "counter"},
    {"ftpgate_bans_total", "counter"},
    {"ftpgate_banned_refused_total", "counter"},
    {"ftpgate_passive_ports_in_use", "gauge"},
    {"ftpgate_passive_ports_free", "gauge"},
    {"ftpgate_backend_up", "gauge"},
    {"ftpgate_backend_sessions_open", "gauge"},
    {"ftpgate_backend_sessions_total", "counter"},
    {"ftpgate_backend_failures_total", "counter"},
    {"ftpgate_backend_health_check_failures_total", "counter"},
    {"ftpgate_ban_seconds_remaining", "gauge"},
};
#define N_FAMILIES (sizeof(families) / sizeof(families[0]))

/*
 * The text's structure: every line ends in LF; each family is one group of
 * HELP, TYPE, then its samples; no family appears twice; every sample's
 * name is the family of the group it is in. Returns the number of samples,
 * or -1 (with a diagnostic) on the first violation.
 */
static int check_structure(const char *text)
{
	char fam[128] = "";
	int seen[N_FAMILIES] = {0};
	int samples = 0;
	const char *p = text;

	if (*text && text[strlen(text) - 1] != '\n') {
		printf("# text does not end in LF\n");
		return -1;
	}
	while (*p) {
		const char *nl = strchr(p, '\n');
		size_t len = (size_t)(nl - p);
		char line[512];
		if (len >= sizeof(line))
			return -1;
		memcpy(line, p, len);
		line[len] = '\0';
		p = nl + 1;
		if (strncmp(line, "# HELP ", 7) == 0) {
			const char *name = line + 7;
			size_t k;
			for (k = 0; k < N_FAMILIES; k++)
				if (strncmp(name, families[k][0], strlen(families[k][0])) == 0 &&
				    name[strlen(families[k][0])] == ' ')
					break;
			if (k == N_FAMILIES || seen[k]++) {
				printf("# unknown or repeated family: %s\n", line);
				return -1;
			}
			snprintf(fam, sizeof(fam), "%s", families[k][0]);
			/* The next line is its TYPE. */
			char want[256];
			snprintf(want, sizeof(want), "# TYPE %s %s\n", fam, families[k][1]);
			if (strncmp(p, want, strlen(want)) != 0) {
				printf("# no TYPE line after %s\n", line);
				return -1;
			}
			p += strlen(want);
			continue;
		}
		if (line[0] == '#') {
			printf("# stray comment: %s\n", line);
			return -1;
		}
		size_t nlen = strcspn(line, "{ ");
		if (!fam[0] || strlen(fam) != nlen || strncmp(line, fam, nlen) != 0) {
			printf("# sample outside its family group: %s\n", line);
			return -1;
		}
		samples++;
	}
	for (size_t k = 0; k < N_FAMILIES; k++)
		if (seen[k] != 1) {
			printf("# family %s missing\n", families[k][0]);
			return -1;
		}
	return samples;
}

static void test_names(void)
{
	int all = 1;

	for (int i = 0; i < END_REASON_MAX; i++)
		all &= end_reason_names[i] != NULL;
	for (int i = 0; i < XC_MAX; i++)
		all &= xfer_cmd_names[i] != NULL;
	for (int i = 0; i < XR_MAX; i++)
		all &= xfer_result_names[i] != NULL;
	ok(all, "every enumerator has a label name");
	is_str(end_reason_names[END_CLIENT_QUIT], "client_quit", "END_CLIENT_QUIT");
	is_str(end_reason_names[END_BACKEND_CONNECT], "backend_connect", "END_BACKEND_CONNECT");
	is_str(end_reason_names[END_OTHER], "other", "END_OTHER");
	is_str(xfer_cmd_names[XC_RETR], "RETR", "XC_RETR");
	is_str(xfer_cmd_names[XC_MLSD], "MLSD", "XC_MLSD");
	is_str(xfer_result_names[XR_ABORTED], "aborted", "XR_ABORTED");
}

static void test_render(void)
{
	char *t = render(fake, 2, "1.2.3");

	/* 1 build_info + per site 1+1+1 + 9 reasons + 2 directions + 21 transfers + 6,
	 * + 5 per server of alpha's pool of 2 */
	is_int(check_structure(t),
	       1 + 2 * (3 + END_REASON_MAX + 2 + XC_MAX * XR_MAX + 9) + 5 * 2 + 2,
	       "one group per family, HELP and TYPE once each, all samples present");
	is_int(count_lines(t, "# HELP "), N_FAMILIES, "%zu HELP lines", N_FAMILIES);
	is_int(count_lines(t, "# TYPE "), N_FAMILIES, "%zu TYPE lines", N_FAMILIES);

	static const char *const want[] = {
	    "# HELP ftpgate_build_info Build information; the value is always 1.",
	    "# TYPE ftpgate_build_info gauge",
	    "ftpgate_build_info{version=\"1.2.3\"} 1",
	    "# TYPE ftpgate_sessions_total counter",
	    "# TYPE ftpgate_passive_ports_free gauge",
	    "ftpgate_sessions_open{site=\"alpha\"} 3",
	    "ftpgate_sessions_open{site=\"" WEIRD_ESC "\"} 0",
	    "ftpgate_sessions_total{site=\"alpha\"} 10",
	    "ftpgate_sessions_total{site=\"" WEIRD_ESC "\"} 1",
	    "ftpgate_sessions_refused_total{site=\"alpha\"} 2",
	    "ftpgate_sessions_ended_total{site=\"alpha\",reason=\"client_quit\"} 5",
	    "ftpgate_sessions_ended_total{site=\"alpha\",reason=\"idle_timeout\"} 1",
	    "ftpgate_sessions_ended_total{site=\"alpha\",reason=\"other\"} 9",
	    "ftpgate_sessions_ended_total{site=\"alpha\",reason=\"tls_error\"} 0",
	    "ftpgate_sessions_ended_total{site=\"" WEIRD_ESC "\",reason=\"shutdown\"} 0",
	    "ftpgate_data_bytes_total{site=\"alpha\",direction=\"up\"} 1234",
	    "ftpgate_data_bytes_total{site=\"alpha\",direction=\"down\"} 18446744073709551615",
	    "ftpgate_transfers_total{site=\"alpha\",command=\"RETR\",result=\"ok\"} 7",
	    "ftpgate_transfers_total{site=\"alpha\",command=\"STOR\",result=\"aborted\"} 1",
	    "ftpgate_transfers_total{site=\"alpha\",command=\"MLSD\",result=\"failed\"} 2",
	    "ftpgate_transfers_total{site=\"alpha\",command=\"APPE\",result=\"ok\"} 0",
	    "ftpgate_transfers_total{site=\"" WEIRD_ESC "\",command=\"NLST\",result=\"failed\"} 0",
	    "ftpgate_backend_connect_failures_total{site=\"alpha\"} 4",
	    "ftpgate_tls_handshake_failures_total{site=\"alpha\"} 6",
	    "ftpgate_data_connections_refused_total{site=\"alpha\"} 8",
	    "ftpgate_proxy_protocol_refused_total{site=\"alpha\"} 3",
	    "ftpgate_access_refused_total{site=\"alpha\"} 12",
	    "ftpgate_bans_total{site=\"alpha\"} 13",
	    "ftpgate_banned_refused_total{site=\"" WEIRD_ESC "\"} 14",
	    "# TYPE ftpgate_ban_seconds_remaining gauge",
	    "ftpgate_ban_seconds_remaining{site=\"" WEIRD_ESC "\",address=\"192.0.2.66\"} 899",
	    "ftpgate_ban_seconds_remaining{site=\"" WEIRD_ESC "\",address=\"2001:db8::1\"} 1",
	    "ftpgate_passive_ports_in_use{site=\"alpha\"} 5",
	    "ftpgate_passive_ports_free{site=\"alpha\"} 95",
	    "ftpgate_passive_ports_in_use{site=\"" WEIRD_ESC "\"} 3",
	    "ftpgate_passive_ports_free{site=\"" WEIRD_ESC "\"} 0",
	    "# TYPE ftpgate_backend_up gauge",
	    "ftpgate_backend_up{site=\"alpha\",server=\"192.0.2.5:21\"} 1",
	    "ftpgate_backend_up{site=\"alpha\",server=\"" WEIRD_ESC ":21\"} 0",
	    "ftpgate_backend_sessions_open{site=\"alpha\",server=\"192.0.2.5:21\"} 3",
	    "ftpgate_backend_sessions_total{site=\"alpha\",server=\"192.0.2.5:21\"} 40",
	    "ftpgate_backend_failures_total{site=\"alpha\",server=\"192.0.2.5:21\"} 2",
	    "ftpgate_backend_failures_total{site=\"alpha\",server=\"" WEIRD_ESC ":21\"} 5",
	    "ftpgate_backend_health_check_failures_total{site=\"alpha\",server=\"" WEIRD_ESC
	    ":21\"} 11",
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		ok(has_line(t, want[i]), "line: %s", want[i]);

	/* Sites in the order given: alpha's sample comes before the other's. */
	const char *a = strstr(t, "ftpgate_sessions_open{site=\"alpha\"}");
	const char *b = strstr(t, "ftpgate_sessions_open{site=\"b");
	ok(a && b && a < b, "sites rendered in the order given");
	ok(strstr(t, "site=\"b\"q") == NULL, "no raw double quote inside a label value");
	ok(strstr(t, "s\nx") == NULL, "no raw line feed inside a label value");
	free(t);
}

static void test_render_edge(void)
{
	char *t = render(NULL, 0, "0.1.0");
	is_int(check_structure(t), 1, "no sites: every family's HELP/TYPE and build_info only");
	ok(has_line(t, "ftpgate_build_info{version=\"0.1.0\"} 1"), "build_info without sites");
	free(t);

	struct metrics_site s = {"null-stats", NULL, 2, NULL, 0, NULL, 0};
	t = render(&s, 1, "v\"1");
	ok(has_line(t, "ftpgate_build_info{version=\"v\\\"1\"} 1"), "version escaped");
	ok(has_line(t, "ftpgate_sessions_open{site=\"null-stats\"} 2"), "NULL stats: gauge set");
	ok(has_line(t, "ftpgate_sessions_total{site=\"null-stats\"} 0"), "NULL stats render as 0");
	free(t);

	/* Valid UTF-8 kept; invalid bytes (lone 0xff, truncated, overlong,
	 * surrogate) become U+FFFD. */
	s.name = "caf\xc3\xa9-\xff-\xe2\x82-\xc0\xaf-\xed\xa0\x80";
	s.stats = &st_a;
	t = render(&s, 1, "1");
	ok(has_line(t, "ftpgate_sessions_open{site=\"caf\xc3\xa9-\xef\xbf\xbd-\xef\xbf\xbd\xef\xbf"
	               "\xbd-\xef\xbf\xbd\xef\xbf\xbd-\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"} 2"),
	   "invalid UTF-8 in a site name becomes U+FFFD");
	free(t);

	s.name = "";
	t = render(&s, 1, "");
	ok(has_line(t, "ftpgate_sessions_open{site=\"\"} 2"), "empty site name");
	ok(has_line(t, "ftpgate_build_info{version=\"\"} 1"), "empty version");
	free(t);
}

/* ---- HTTP ---------------------------------------------------------------- */

static int sites_calls;

static size_t sites_cb(void *arg, struct metrics_site *out, size_t max)
{
	(void)arg;
	sites_calls++;
	for (size_t i = 0; i < 2 && i < max; i++)
		out[i] = fake[i];
	return 2;
}

/*
 * Send request on a fresh connection to ss, running base until the server
 * closes; the response goes to resp (NUL-terminated). Returns its length or -1.
 */
static ssize_t raw_request(struct event_base *base, const struct sockaddr_storage *ss,
                           const char *request, char *resp, size_t size)
{
	socklen_t len =
	    ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	size_t got = 0;
	time_t start = time(NULL);

	if (fd < 0)
		return -1;
	/* A loopback connect completes from the backlog without the loop. */
	if (connect(fd, (const struct sockaddr *)ss, len) < 0 ||
	    send(fd, request, strlen(request), MSG_NOSIGNAL) < 0) {
		close(fd);
		return -1;
	}
	for (;;) {
		struct pollfd pfd = {fd, POLLIN, 0};
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		if (poll(&pfd, 1, 10) > 0) {
			ssize_t r = recv(fd, resp + got, size - 1 - got, 0);
			if (r <= 0)
				break;
			got += (size_t)r;
			if (got == size - 1)
				break;
		}
		if (time(NULL) - start > 10) {
			close(fd);
			return -1;
		}
	}
	close(fd);
	resp[got] = '\0';
	return (ssize_t)got;
}

static const char *body_of(const char *resp)
{
	const char *p = strstr(resp, "\r\n\r\n");
	return p ? p + 4 : NULL;
}

static int has_header(const char *resp, const char *hdr)
{
	const char *end = strstr(resp, "\r\n\r\n");
	const char *p = strstr(resp, hdr);
	size_t n = strlen(hdr);
	return p && end && p < end && p[-1] == '\n' && p[n] == '\r';
}

static void test_http(struct event_base *base, const struct sockaddr *bind_to, const char *what)
{
	static char resp[65536];
	char err[256] = "";
	struct sockaddr_storage ss;

	sites_calls = 0;
	struct metrics *m = metrics_new(base, bind_to, sites_cb, NULL, err, sizeof(err));
	ok(m != NULL, "%s: metrics_new (%s)", what, err);
	if (!m)
		return;
	metrics_local_addr(m, &ss);
	ok(ss.ss_family == bind_to->sa_family && ((struct sockaddr_in *)&ss)->sin_port != 0,
	   "%s: bound to a port", what);

	char *want = render(fake, 2, PACKAGE_VERSION);
	ssize_t n = raw_request(base, &ss, "GET /metrics HTTP/1.0\r\n\r\n", resp, sizeof(resp));
	ok(n > 0 && strncmp(resp, "HTTP/1.0 200 ", 13) == 0, "%s: GET /metrics -> 200", what);
	ok(has_header(resp, "Content-Type: text/plain; version=0.0.4; charset=utf-8"),
	   "%s: Content-Type of the exposition format", what);
	ok(body_of(resp) && strcmp(body_of(resp), want) == 0, "%s: body is metrics_render's", what);
	is_int(sites_calls, 2, "%s: callback asked again with a larger array", what);

	n = raw_request(base, &ss,
	                "GET /metrics?name[]=x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
	                resp, sizeof(resp));
	ok(n > 0 && strncmp(resp, "HTTP/1.1 200 ", 13) == 0, "%s: query string ignored", what);
	is_int(sites_calls, 3, "%s: array kept: one call per scrape", what);

	n = raw_request(base, &ss, "HEAD /metrics HTTP/1.0\r\n\r\n", resp, sizeof(resp));
	ok(n > 0 && strncmp(resp, "HTTP/1.0 200 ", 13) == 0, "%s: HEAD /metrics -> 200", what);
	ok(body_of(resp) && *body_of(resp) == '\0', "%s: HEAD has no body", what);
	char clen[64];
	snprintf(clen, sizeof(clen), "Content-Length: %zu", strlen(want));
	ok(has_header(resp, clen), "%s: HEAD has the GET's %s", what, clen);
	is_int(sites_calls, 4, "%s: HEAD scrapes too", what);

	n = raw_request(base, &ss, "GET / HTTP/1.0\r\n\r\n", resp, sizeof(resp));
	ok(n > 0 && strncmp(resp, "HTTP/1.0 404 ", 13) == 0, "%s: GET / -> 404", what);
	n = raw_request(base, &ss, "GET /metrics/x HTTP/1.0\r\n\r\n", resp, sizeof(resp));
	ok(n > 0 && strncmp(resp, "HTTP/1.0 404 ", 13) == 0, "%s: GET /metrics/x -> 404", what);
	n = raw_request(base, &ss, "POST /metrics HTTP/1.0\r\nContent-Length: 2\r\n\r\nab", resp,
	                sizeof(resp));
	ok(n > 0 && strncmp(resp, "HTTP/1.0 405 ", 13) == 0, "%s: POST /metrics -> 405", what);
	ok(has_header(resp, "Allow: GET, HEAD"), "%s: 405 says Allow: GET, HEAD", what);
	n = raw_request(base, &ss, "DELETE /metrics HTTP/1.0\r\n\r\n", resp, sizeof(resp));
	ok(n > 0 && strncmp(resp, "HTTP/1.0 405 ", 13) == 0, "%s: DELETE /metrics -> 405", what);
	n = raw_request(base, &ss, "BREW /metrics HTTP/1.0\r\n\r\n", resp, sizeof(resp));
	ok(n >= 0 && strncmp(resp, "HTTP/1.0 200", 12) != 0, "%s: unknown method not served", what);
	is_int(sites_calls, 4, "%s: no scrape for refused requests", what);

	/* The port is taken while m lives. */
	struct sockaddr_storage again = ss;
	struct metrics *m2 =
	    metrics_new(base, (struct sockaddr *)&again, sites_cb, NULL, err, sizeof(err));
	ok(m2 == NULL && strstr(err, "Address already in use"), "%s: busy port: %s", what, err);
	metrics_free(m2);

	free(want);
	metrics_free(m);
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	socklen_t len =
	    ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
	ok(fd >= 0 && connect(fd, (struct sockaddr *)&ss, len) < 0 && errno == ECONNREFUSED,
	   "%s: metrics_free closed the listener", what);
	if (fd >= 0)
		close(fd);
}

static int libevent_warnings;

static void count_log(int severity, const char *msg)
{
	(void)msg;
	if (severity >= EVENT_LOG_WARN)
		libevent_warnings++;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * Out of descriptors: accept() fails with EMFILE. The listener must pause
 * for a second (not spin on the readable socket) and then serve again.
 */
static void test_accept_emfile(struct event_base *base)
{
	static char resp[65536];
	struct sockaddr_in s4 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct sockaddr_storage ss;
	struct rlimit old, low;
	char err[256] = "";
	int fds[64], nfd = 0, cfd;

	struct metrics *m =
	    metrics_new(base, (struct sockaddr *)&s4, sites_cb, NULL, err, sizeof(err));
	if (!m || getrlimit(RLIMIT_NOFILE, &old) < 0) {
		ok(0, "EMFILE: setup (%s)", err);
		metrics_free(m);
		return;
	}
	metrics_local_addr(m, &ss);
	/* Use up every descriptor but one under a low limit, for the client. */
	int probe = dup(0);
	low = old;
	low.rlim_cur = (rlim_t)probe + 8;
	close(probe);
	setrlimit(RLIMIT_NOFILE, &low);
	while (nfd < 64 && (fds[nfd] = dup(0)) >= 0)
		nfd++;
	close(fds[--nfd]);
	cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ok(cfd >= 0 && connect(cfd, (struct sockaddr *)&ss, sizeof(struct sockaddr_in)) == 0,
	   "EMFILE: client connected with the last descriptor");
	event_set_log_callback(count_log);
	libevent_warnings = 0;
	double t0 = now_s();
	for (int i = 0; i < 20; i++)
		event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	is_int(libevent_warnings, 0, "EMFILE: no accept error spinning");
	event_set_log_callback(NULL);

	while (nfd > 0)
		close(fds[--nfd]);
	setrlimit(RLIMIT_NOFILE, &old);
	if (cfd >= 0)
		close(cfd);
	ssize_t n = raw_request(base, &ss, "GET /metrics HTTP/1.0\r\n\r\n", resp, sizeof(resp));
	double waited = now_s() - t0;
	ok(n > 0 && strncmp(resp, "HTTP/1.0 200 ", 13) == 0, "EMFILE: serves again afterwards");
	ok(waited > 0.5 && waited < 5, "EMFILE: after a pause of about a second (%.2f s)", waited);
	metrics_free(m);
}

static int have_ipv6_loopback(void)
{
	struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int r = fd >= 0 && bind(fd, (struct sockaddr *)&s6, sizeof(s6)) == 0;
	if (fd >= 0)
		close(fd);
	return r;
}

int main(void)
{
	struct event_base *base = event_base_new();
	char err[256] = "";

	if (!base)
		return 99;
	fake_init();
	test_names();
	test_render();
	test_render_edge();

	struct sockaddr_in s4 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	test_http(base, (struct sockaddr *)&s4, "IPv4");
	if (have_ipv6_loopback()) {
		struct sockaddr_in6 s6 = {.sin6_family = AF_INET6,
		                          .sin6_addr = IN6ADDR_LOOPBACK_INIT};
		test_http(base, (struct sockaddr *)&s6, "IPv6");
	} else {
		ok(1, "# SKIP no IPv6 loopback");
	}

	test_accept_emfile(base);

	struct sockaddr un = {.sa_family = AF_UNIX};
	ok(metrics_new(base, &un, sites_cb, NULL, err, sizeof(err)) == NULL && err[0],
	   "unsupported address family refused: %s", err);
	metrics_free(NULL);
	ok(1, "metrics_free(NULL) is a no-op");

	event_base_free(base);
	return tap_done();
}
