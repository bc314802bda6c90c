/* ftpload: load client for bench/run (ftpgate's benchmark).
 *
 * Passive mode only (EPSV), anonymous login, blocking sockets.
 *
 *   ftpload sessions HOST PORT PATH SIZE THREADS SECONDS
 *       THREADS threads each run full sessions back to back for SECONDS:
 *       connect, 220, USER/PASS, EPSV, data connect, RETR PATH, read the
 *       payload to EOF (must be SIZE bytes), 226, QUIT, 221.  Every
 *       session is a new control connection.  Prints one line
 *       "sessions=N errors=E seconds=S rate=R p50_ms=.. p99_ms=.."
 *       then one "error: COUNT x WHAT (e.g. DETAIL)" line per kind.
 *   ftpload idle HOST PORT COUNT
 *       Opens COUNT control sessions and logs each in (USER/PASS), then
 *       prints "ready ok=N failed=F" and waits until standard input is
 *       closed (or a line is read); then QUITs them all and prints
 *       "closed N".
 *   ftpload get HOST PORT PATH SIZE
 *       One RETR of PATH (TYPE I); prints "bytes=B seconds=S MBps=M"
 *       (timed from RETR sent to 226 read; MB = 10^6 bytes).  Exit 1 if
 *       fewer or more than SIZE bytes arrive.
 *   ftpload put HOST PORT LOCALFILE REMOTEPATH
 *       One STOR of LOCALFILE (sendfile) as REMOTEPATH; same output.
 *   ftpload noop HOST PORT COUNT
 *       One session (login), COUNT/10 NOOPs to warm up, then COUNT NOOPs
 *       one after the other, each timed from send to its 200 read; prints
 *       "noops=N mean_us=.. p50_us=.. p90_us=.. p99_us=.. min_us=..".
 *   ftpload tlsget HOST PORT PATH SIZE
 *       Like get, over explicit FTPS: AUTH TLS, PBSZ 0, PROT P, login,
 *       TYPE I, EPSV, RETR; the data connection's TLS handshake (after the
 *       150) resumes the control connection's session (SSL_get1_session),
 *       as vsftpd's require_ssl_reuse wants.  The server certificate is not
 *       checked.  Same first line, plus " tls=VERSION cipher=NAME reused=0|1
 *       close_notify=0|1" for the data connection.  Only in a build with
 *       -DFTPLOAD_TLS (link -lssl -lcrypto).
 *
 * Exit status: 0 if no error, 1 if any error, 2 for bad usage.
 * Every socket has 60 s send/receive timeouts so a stuck peer cannot hang
 * the benchmark.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifdef FTPLOAD_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

#define IO_TIMEOUT_S 60

static struct sockaddr_storage g_addr; /* control address */
static socklen_t g_addrlen;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------- errors */

#define MAX_KINDS 64
static pthread_mutex_t err_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
	char what[96];
	char example[200];
	unsigned long count;
} kinds[MAX_KINDS];
static int n_kinds;
static unsigned long n_errors;

/* what: a stable class ("RETR: reply 425"); detail: one example. */
static void record_error(const char *what, const char *fmt, ...)
{
	char detail[200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	for (char *p = detail; *p; p++)
		if (*p == '\r' || *p == '\n')
			*p = ' ';
	pthread_mutex_lock(&err_mu);
	n_errors++;
	int i;
	for (i = 0; i < n_kinds; i++)
		if (strcmp(kinds[i].what, what) == 0)
			break;
	if (i == n_kinds && n_kinds < MAX_KINDS) {
		snprintf(kinds[i].what, sizeof(kinds[i].what), "%s", what);
		snprintf(kinds[i].example, sizeof(kinds[i].example), "%s", detail);
		n_kinds++;
	}
	if (i < n_kinds)
		kinds[i].count++;
	pthread_mutex_unlock(&err_mu);
}

static void print_errors(void)
{
	for (int i = 0; i < n_kinds; i++)
		printf("error: %lu x %s (e.g. %s)\n", kinds[i].count, kinds[i].what,
		       kinds[i].example);
}

/* --------------------------------------------------------------- sockets */

static void set_timeouts(int fd)
{
	struct timeval tv = {IO_TIMEOUT_S, 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int tcp_connect(const struct sockaddr_storage *sa, socklen_t len)
{
	int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	set_timeouts(fd);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (const struct sockaddr *)sa, len) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* ------------------------------------------------------- control channel */

struct ctl {
	int fd;
	void *ssl; /* SSL * once AUTH TLS is through (tlsget), else NULL */
	char buf[4096];
	size_t off, len;
	char line[512]; /* last line of the last reply, without CRLF */
};

#ifdef FTPLOAD_TLS
static SSL_CTX *g_tls;
static char g_tls_err[160]; /* last TLS error, for messages */

static void tls_note_error(const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[120];
	if (e)
		ERR_error_string_n(e, buf, sizeof(buf));
	else
		snprintf(buf, sizeof(buf), "%s", errno ? strerror(errno) : "connection closed");
	snprintf(g_tls_err, sizeof(g_tls_err), "%s: %s", what, buf);
	ERR_clear_error();
}

/* SSL_read as recv(): >0 bytes, 0 at EOF (*clean says whether a close_notify
 * came first), -1 on error (g_tls_err says which). */
static ssize_t tls_recv(SSL *ssl, void *buf, size_t n, int *clean)
{
	int r = SSL_read(ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n);
	if (r > 0)
		return r;
	int e = SSL_get_error(ssl, r);
	if (e == SSL_ERROR_ZERO_RETURN) {
		if (clean)
			*clean = 1;
		return 0;
	}
	if (e == SSL_ERROR_SSL &&
	    ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
		/* The peer closed the TCP connection without a close_notify. */
		ERR_clear_error();
		if (clean)
			*clean = 0;
		return 0;
	}
	if (e == SSL_ERROR_SYSCALL && errno == EINTR)
		return -1;
	tls_note_error("SSL_read");
	errno = errno ? errno : EPROTO;
	return -1;
}
#endif

static ssize_t ctl_recv(struct ctl *c, void *buf, size_t n)
{
#ifdef FTPLOAD_TLS
	if (c->ssl)
		return tls_recv(c->ssl, buf, n, NULL);
#endif
	return recv(c->fd, buf, n, 0);
}

/* All of buf on the control connection (TLS once AUTH TLS is through). */
static int ctl_send(struct ctl *c, const char *buf, size_t len)
{
#ifdef FTPLOAD_TLS
	if (c->ssl) {
		while (len > 0) {
			int n = SSL_write(c->ssl, buf, (int)len);
			if (n <= 0) {
				tls_note_error("SSL_write");
				errno = errno ? errno : EPROTO;
				return -1;
			}
			buf += n;
			len -= (size_t)n;
		}
		return 0;
	}
#endif
	return write_all(c->fd, buf, len);
}

/* One line into c->line (truncated if long); 0 ok, -1 error/EOF (errno 0 = EOF). */
static int read_line(struct ctl *c)
{
	size_t n = 0;
	for (;;) {
		if (c->off == c->len) {
			ssize_t r = ctl_recv(c, c->buf, sizeof(c->buf));
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				if (r == 0)
					errno = 0;
				return -1;
			}
			c->off = 0;
			c->len = (size_t)r;
		}
		char ch = c->buf[c->off++];
		if (ch == '\n') {
			if (n > 0 && c->line[n - 1] == '\r')
				n--;
			c->line[n] = 0;
			return 0;
		}
		if (n < sizeof(c->line) - 1)
			c->line[n++] = ch;
	}
}

/* A whole reply (multi-line aware); returns its code, or -1. */
static int read_reply(struct ctl *c)
{
	if (read_line(c) < 0)
		return -1;
	if (strlen(c->line) < 3 || c->line[0] < '1' || c->line[0] > '5')
		return -2;
	int code = atoi(c->line);
	if (c->line[3] == '-') {
		char want[5];
		snprintf(want, sizeof(want), "%.3s ", c->line);
		do {
			if (read_line(c) < 0)
				return -1;
		} while (strncmp(c->line, want, 4) != 0);
	}
	return code;
}

/* Local port of a socket, to find the session in the proxy's log. */
static int local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return 0;
	return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
	                                      : ((struct sockaddr_in *)&ss)->sin_port);
}

static const char *io_err(void)
{
	return errno ? strerror(errno) : "connection closed";
}

/* Send a command (none if verb is NULL: just read the next reply), read the
 * reply, require code/100 == want/100.  Returns the code or -1. */
static int cmd(struct ctl *c, const char *verb, const char *arg, int want, const char *stage)
{
	char buf[600], what[96];
	int len = !verb ? 0
	          : arg ? snprintf(buf, sizeof(buf), "%s %s\r\n", verb, arg)
	                : snprintf(buf, sizeof(buf), "%s\r\n", verb);
	if (len > 0 && ctl_send(c, buf, (size_t)len) < 0) {
		snprintf(what, sizeof(what), "%s: send: %s", stage, strerror(errno));
		record_error(what, "%s", strerror(errno));
		return -1;
	}
	int code = read_reply(c);
	if (code == -1) {
		snprintf(what, sizeof(what), "%s: reading reply: %s", stage, io_err());
		record_error(what, "%s, control port %d", io_err(), local_port(c->fd));
		return -1;
	}
	if (code < 0 || code / 100 != want / 100) {
		snprintf(what, sizeof(what), "%s: reply %d", stage, code);
		record_error(what, "\"%s\", control port %d", c->line, local_port(c->fd));
		return -1;
	}
	return code;
}

static int ctl_open(struct ctl *c)
{
	c->off = c->len = 0;
	c->ssl = NULL;
	c->fd = tcp_connect(&g_addr, g_addrlen);
	if (c->fd < 0) {
		char what[96];
		snprintf(what, sizeof(what), "connect: %s", strerror(errno));
		record_error(what, "%s", strerror(errno));
		return -1;
	}
	int code = read_reply(c);
	if (code != 220) {
		char what[96];
		if (code == -1)
			snprintf(what, sizeof(what), "greeting: %s", io_err());
		else
			snprintf(what, sizeof(what), "greeting: reply %d", code);
		record_error(what, "\"%s\", control port %d", code == -1 ? io_err() : c->line,
		             local_port(c->fd));
		close(c->fd);
		c->fd = -1;
		return -1;
	}
	return 0;
}

static int ctl_login(struct ctl *c)
{
	/* 230 straight after USER (no password asked) is fine too. */
	if (ctl_send(c, "USER anonymous\r\n", 16) < 0) {
		record_error("USER: send", "%s", strerror(errno));
		return -1;
	}
	int code = read_reply(c);
	if (code == 230)
		return 0;
	if (code != 331) {
		char what[96];
		if (code == -1)
			snprintf(what, sizeof(what), "USER: reading reply: %s", io_err());
		else
			snprintf(what, sizeof(what), "USER: reply %d", code);
		record_error(what, "\"%s\", control port %d", code == -1 ? io_err() : c->line,
		             local_port(c->fd));
		return -1;
	}
	if (cmd(c, "PASS", "bench@example.com", 230, "PASS") < 0)
		return -1;
	return 0;
}

static void ctl_quit(struct ctl *c, int check)
{
	if (c->fd < 0)
		return;
	if (check)
		cmd(c, "QUIT", NULL, 221, "QUIT");
	else {
		(void)ctl_send(c, "QUIT\r\n", 6);
		(void)read_reply(c);
	}
#ifdef FTPLOAD_TLS
	if (c->ssl)
		SSL_free(c->ssl);
	c->ssl = NULL;
#endif
	close(c->fd);
	c->fd = -1;
}

/*
 * EPSV (PASV with FTPLOAD_PASV=1 in the environment, for relays without
 * EPSV such as SuSE's ftp-proxy; only the port of the 227 is used), then
 * connect the data socket; returns the fd or -1.
 */
static int open_data(struct ctl *c)
{
	static int pasv = -1;
	int port = 0;
	if (pasv < 0)
		pasv = getenv("FTPLOAD_PASV") && strcmp(getenv("FTPLOAD_PASV"), "1") == 0;
	if (pasv) {
		unsigned h[6];
		if (cmd(c, "PASV", NULL, 227, "PASV") < 0)
			return -1;
		char *p = strchr(c->line, '(');
		if (p &&
		    sscanf(p, "(%u,%u,%u,%u,%u,%u)", &h[0], &h[1], &h[2], &h[3], &h[4], &h[5]) ==
		        6 &&
		    h[4] < 256 && h[5] < 256)
			port = (int)(h[4] * 256 + h[5]);
	} else {
		if (cmd(c, "EPSV", NULL, 229, "EPSV") < 0)
			return -1;
		char *p = strstr(c->line, "(|||");
		port = p ? atoi(p + 4) : 0;
	}
	if (port <= 0 || port > 65535) {
		record_error(pasv ? "PASV: unparsable reply" : "EPSV: unparsable reply", "\"%s\"",
		             c->line);
		return -1;
	}
	struct sockaddr_storage sa = g_addr;
	if (sa.ss_family == AF_INET)
		((struct sockaddr_in *)&sa)->sin_port = htons((uint16_t)port);
	else
		((struct sockaddr_in6 *)&sa)->sin6_port = htons((uint16_t)port);
	int fd = tcp_connect(&sa, g_addrlen);
	if (fd < 0) {
		char what[96];
		snprintf(what, sizeof(what), "data connect: %s", strerror(errno));
		record_error(what, "port %d: %s", port, strerror(errno));
		return -1;
	}
	return fd;
}

/* Read the data connection to EOF; returns bytes or -1. */
static int64_t drain(int fd, char *buf, size_t bufsize)
{
	int64_t total = 0;
	for (;;) {
		ssize_t n = recv(fd, buf, bufsize, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			char what[96];
			snprintf(what, sizeof(what), "data read: %s", strerror(errno));
			record_error(what, "after %lld bytes: %s", (long long)total,
			             strerror(errno));
			return -1;
		}
		if (n == 0)
			return total;
		total += n;
	}
}

/* RETR path on a logged-in control channel; returns bytes or -1. */
static int64_t retr(struct ctl *c, const char *path, char *buf, size_t bufsize)
{
	int dfd = open_data(c);
	if (dfd < 0)
		return -1;
	if (cmd(c, "RETR", path, 150, "RETR") < 0) {
		close(dfd);
		return -1;
	}
	int64_t got = drain(dfd, buf, bufsize);
	close(dfd);
	if (got < 0)
		return -1;
	if (cmd(c, NULL, NULL, 226, "RETR completion") < 0)
		return -1;
	return got;
}

/* ---------------------------------------------------------------- modes */

struct sess_arg {
	const char *path;
	int64_t size;
	double deadline;
	unsigned long done;
	double *lat; /* latencies in ms */
	size_t n_lat, cap_lat;
};

static void *sess_thread(void *p)
{
	struct sess_arg *a = p;
	char buf[16384];
	struct ctl c;
	while (now() < a->deadline) {
		double t0 = now();
		if (ctl_open(&c) < 0) {
			usleep(10000); /* a server that refuses: do not spin */
			continue;
		}
		if (ctl_login(&c) < 0) {
			close(c.fd);
			continue;
		}
		int64_t got = retr(&c, a->path, buf, sizeof(buf));
		if (got < 0) {
			close(c.fd);
			continue;
		}
		if (got != a->size) {
			record_error("RETR: wrong payload length", "%lld bytes, want %lld",
			             (long long)got, (long long)a->size);
			close(c.fd);
			continue;
		}
		if (cmd(&c, "QUIT", NULL, 221, "QUIT") < 0) {
			close(c.fd);
			continue;
		}
		close(c.fd);
		a->done++;
		if (a->n_lat == a->cap_lat) {
			a->cap_lat = a->cap_lat ? a->cap_lat * 2 : 4096;
			a->lat = realloc(a->lat, a->cap_lat * sizeof(double));
			if (!a->lat) {
				perror("realloc");
				exit(1);
			}
		}
		a->lat[a->n_lat++] = (now() - t0) * 1e3;
	}
	return NULL;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static int mode_sessions(const char *path, int64_t size, int threads, double seconds)
{
	pthread_t *tids = calloc((size_t)threads, sizeof(*tids));
	struct sess_arg *args = calloc((size_t)threads, sizeof(*args));
	double t0 = now();
	for (int i = 0; i < threads; i++) {
		args[i].path = path;
		args[i].size = size;
		args[i].deadline = t0 + seconds;
		if (pthread_create(&tids[i], NULL, sess_thread, &args[i]) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	unsigned long done = 0;
	size_t n_lat = 0;
	for (int i = 0; i < threads; i++) {
		pthread_join(tids[i], NULL);
		done += args[i].done;
		n_lat += args[i].n_lat;
	}
	double el = now() - t0;
	double *all = malloc((n_lat ? n_lat : 1) * sizeof(double));
	size_t k = 0;
	for (int i = 0; i < threads; i++) {
		memcpy(all + k, args[i].lat, args[i].n_lat * sizeof(double));
		k += args[i].n_lat;
		free(args[i].lat);
	}
	qsort(all, n_lat, sizeof(double), cmp_double);
	double p50 = n_lat ? all[n_lat / 2] : 0, p99 = n_lat ? all[(n_lat * 99) / 100] : 0;
	printf("sessions=%lu errors=%lu seconds=%.3f rate=%.1f p50_ms=%.2f p99_ms=%.2f\n", done,
	       n_errors, el, done / el, p50, p99);
	print_errors();
	free(all);
	free(args);
	free(tids);
	return n_errors ? 1 : 0;
}

static int mode_idle(int count)
{
	struct ctl *cs = calloc((size_t)count, sizeof(*cs));
	int ok = 0;
	for (int i = 0; i < count; i++) {
		cs[i].fd = -1;
		if (ctl_open(&cs[i]) < 0)
			continue;
		if (ctl_login(&cs[i]) < 0) {
			close(cs[i].fd);
			cs[i].fd = -1;
			continue;
		}
		ok++;
	}
	printf("ready ok=%d failed=%d\n", ok, count - ok);
	print_errors();
	fflush(stdout);
	char line[64];
	(void)!read(0, line, sizeof(line)); /* EOF or a line: time to go */
	unsigned long before = n_errors;
	int closed = 0;
	for (int i = 0; i < count; i++) {
		if (cs[i].fd >= 0) {
			ctl_quit(&cs[i], 1);
			closed++;
		}
	}
	printf("closed %d quit_errors=%lu\n", closed, n_errors - before);
	if (n_errors > before)
		print_errors();
	free(cs);
	return n_errors ? 1 : 0;
}

static int mode_noop(long count)
{
	struct ctl c;
	if (count < 1 || count > 100000000) {
		fprintf(stderr, "ftpload: noop: COUNT must be 1..100000000\n");
		return 2;
	}
	if (ctl_open(&c) < 0)
		goto fail;
	if (ctl_login(&c) < 0) {
		close(c.fd);
		goto fail;
	}
	double *lat = malloc((size_t)count * sizeof(double));
	if (!lat) {
		perror("malloc");
		ctl_quit(&c, 0);
		return 1;
	}
	double sum = 0;
	for (long i = -(count / 10); i < count; i++) {
		double t0 = now();
		if (cmd(&c, "NOOP", NULL, 200, "NOOP") < 0)
			break;
		if (i >= 0) {
			lat[i] = (now() - t0) * 1e6;
			sum += lat[i];
		}
	}
	if (!n_errors) {
		qsort(lat, (size_t)count, sizeof(double), cmp_double);
		printf("noops=%ld mean_us=%.2f p50_us=%.2f p90_us=%.2f p99_us=%.2f min_us=%.2f\n",
		       count, sum / count, lat[count / 2], lat[(count * 9) / 10],
		       lat[(count * 99) / 100], lat[0]);
	}
	free(lat);
	ctl_quit(&c, 1);
	if (!n_errors)
		return 0;
fail:
	print_errors();
	return 1;
}

static int login_binary(struct ctl *c)
{
	if (ctl_open(c) < 0)
		return -1;
	if (ctl_login(c) < 0 || cmd(c, "TYPE", "I", 200, "TYPE") < 0) {
		close(c->fd);
		return -1;
	}
	return 0;
}

static void print_xfer(int64_t bytes, double secs)
{
	printf("bytes=%lld seconds=%.4f MBps=%.1f\n", (long long)bytes, secs,
	       secs > 0 ? bytes / secs / 1e6 : 0.0);
}

static int mode_get(const char *path, int64_t size)
{
	struct ctl c;
	if (login_binary(&c) < 0)
		goto fail;
	size_t bufsize = 1 << 20;
	char *buf = malloc(bufsize);
	double t0 = now();
	int64_t got = retr(&c, path, buf, bufsize);
	double t1 = now();
	free(buf);
	if (got < 0) {
		close(c.fd);
		goto fail;
	}
	ctl_quit(&c, 0);
	print_xfer(got, t1 - t0);
	if (got != size) {
		printf("error: got %lld bytes, want %lld\n", (long long)got, (long long)size);
		return 1;
	}
	return 0;
fail:
	print_errors();
	return 1;
}

static int mode_put(const char *local, const char *remote)
{
	int ffd = open(local, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (ffd < 0 || fstat(ffd, &st) < 0) {
		perror(local);
		return 1;
	}
	struct ctl c;
	if (login_binary(&c) < 0)
		goto fail;
	int dfd = open_data(&c);
	if (dfd < 0) {
		close(c.fd);
		goto fail;
	}
	double t0 = now();
	if (cmd(&c, "STOR", remote, 150, "STOR") < 0) {
		close(dfd);
		close(c.fd);
		goto fail;
	}
	off_t off = 0;
	while (off < st.st_size) {
		ssize_t n = sendfile(dfd, ffd, &off, (size_t)(st.st_size - off));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			char what[96];
			snprintf(what, sizeof(what), "data write: %s",
			         n < 0 ? strerror(errno) : "short");
			record_error(what, "after %lld bytes", (long long)off);
			close(dfd);
			close(c.fd);
			goto fail;
		}
	}
	close(dfd);
	if (cmd(&c, NULL, NULL, 226, "STOR completion") < 0) {
		close(c.fd);
		goto fail;
	}
	double t1 = now();
	ctl_quit(&c, 0);
	close(ffd);
	print_xfer((int64_t)off, t1 - t0);
	return 0;
fail:
	close(ffd);
	print_errors();
	return 1;
}

#ifdef FTPLOAD_TLS
/* TLS client handshake on a connected socket; session: resume it (or NULL). */
static SSL *tls_connect(int fd, SSL_SESSION *session, const char *stage)
{
	char what[96];
	SSL *ssl = SSL_new(g_tls);
	if (!ssl || SSL_set_fd(ssl, fd) != 1 || (session && SSL_set_session(ssl, session) != 1)) {
		tls_note_error("SSL_new");
		snprintf(what, sizeof(what), "%s: TLS setup", stage);
		record_error(what, "%s", g_tls_err);
		SSL_free(ssl);
		return NULL;
	}
	int r = SSL_connect(ssl);
	if (r != 1) {
		SSL_get_error(ssl, r);
		tls_note_error("SSL_connect");
		snprintf(what, sizeof(what), "%s: TLS handshake failed", stage);
		record_error(what, "%s", g_tls_err);
		SSL_free(ssl);
		return NULL;
	}
	return ssl;
}

static void ctl_drop(struct ctl *c)
{
	if (c->ssl)
		SSL_free(c->ssl);
	c->ssl = NULL;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

static int mode_tlsget(const char *path, int64_t size)
{
	struct ctl c;
	SSL *dssl = NULL;
	int dfd = -1;
	char *buf = NULL;

	g_tls = SSL_CTX_new(TLS_client_method());
	if (!g_tls) {
		fprintf(stderr, "ftpload: cannot create a TLS context\n");
		return 1;
	}
	SSL_CTX_set_verify(g_tls, SSL_VERIFY_NONE, NULL); /* a self-signed test certificate */
	/* Keep every new session (TLS 1.3 tickets come after the handshake):
	 * SSL_get1_session() then gives the newest one. */
	SSL_CTX_set_session_cache_mode(g_tls,
	                               SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);

	if (ctl_open(&c) < 0)
		goto fail;
	if (cmd(&c, "AUTH", "TLS", 234, "AUTH TLS") < 0)
		goto fail_ctl;
	if (c.off != c.len) {
		record_error("AUTH TLS: data after the 234 reply", "%zu bytes", c.len - c.off);
		goto fail_ctl;
	}
	c.ssl = tls_connect(c.fd, NULL, "control");
	if (!c.ssl)
		goto fail_ctl;
	if (cmd(&c, "PBSZ", "0", 200, "PBSZ") < 0 || cmd(&c, "PROT", "P", 200, "PROT") < 0 ||
	    ctl_login(&c) < 0 || cmd(&c, "TYPE", "I", 200, "TYPE") < 0)
		goto fail_ctl;
	dfd = open_data(&c);
	if (dfd < 0)
		goto fail_ctl;
	size_t bufsize = 1 << 20;
	buf = malloc(bufsize);
	double t0 = now();
	if (cmd(&c, "RETR", path, 150, "RETR") < 0)
		goto fail_ctl;
	/* The server starts the data connection's handshake after its 150
	 * (vsftpd does); resume the control connection's newest session. */
	SSL_SESSION *sess = SSL_get1_session(c.ssl);
	dssl = tls_connect(dfd, sess, "data");
	SSL_SESSION_free(sess);
	if (!dssl)
		goto fail_ctl;
	int clean = 0;
	int64_t got = 0;
	for (;;) {
		ssize_t n = tls_recv(dssl, buf, bufsize, &clean);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			record_error("data read: TLS", "after %lld bytes: %s", (long long)got,
			             g_tls_err);
			goto fail_ctl;
		}
		if (n == 0)
			break;
		got += n;
	}
	char version[32], cipher[64];
	snprintf(version, sizeof(version), "%s", SSL_get_version(dssl));
	snprintf(cipher, sizeof(cipher), "%s", SSL_get_cipher_name(dssl));
	int reused = SSL_session_reused(dssl);
	if (clean)
		SSL_shutdown(dssl); /* answer the close_notify */
	SSL_free(dssl);
	dssl = NULL;
	close(dfd);
	dfd = -1;
	if (cmd(&c, NULL, NULL, 226, "RETR completion") < 0)
		goto fail_ctl;
	double t1 = now();
	free(buf);
	ctl_quit(&c, 0);
	printf("bytes=%lld seconds=%.4f MBps=%.1f tls=%s cipher=%s reused=%d close_notify=%d\n",
	       (long long)got, t1 - t0, t1 > t0 ? got / (t1 - t0) / 1e6 : 0.0, version, cipher,
	       reused, clean);
	SSL_CTX_free(g_tls);
	if (got != size) {
		printf("error: got %lld bytes, want %lld\n", (long long)got, (long long)size);
		return 1;
	}
	return 0;
fail_ctl:
	if (dssl)
		SSL_free(dssl);
	if (dfd >= 0)
		close(dfd);
	ctl_drop(&c);
fail:
	free(buf);
	print_errors();
	return 1;
}
#endif

static void usage(void)
{
	fprintf(stderr,
	        "usage: ftpload sessions HOST PORT PATH SIZE THREADS SECONDS\n"
	        "       ftpload idle HOST PORT COUNT\n"
	        "       ftpload get HOST PORT PATH SIZE\n"
	        "       ftpload put HOST PORT LOCALFILE REMOTEPATH\n"
	        "       ftpload noop HOST PORT COUNT\n"
	        "       ftpload tlsget HOST PORT PATH SIZE%s\n",
#ifdef FTPLOAD_TLS
	        "");
#else
	        "   (not in this build: no -DFTPLOAD_TLS)");
#endif
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 4)
		usage();
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	struct addrinfo hints = {0}, *res;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	int rc = getaddrinfo(argv[2], argv[3], &hints, &res);
	if (rc != 0) {
		fprintf(stderr, "ftpload: %s:%s: %s\n", argv[2], argv[3], gai_strerror(rc));
		return 2;
	}
	memcpy(&g_addr, res->ai_addr, res->ai_addrlen);
	g_addrlen = res->ai_addrlen;
	freeaddrinfo(res);

	const char *mode = argv[1];
	if (strcmp(mode, "sessions") == 0 && argc == 8)
		return mode_sessions(argv[4], atoll(argv[5]), atoi(argv[6]), atof(argv[7]));
	if (strcmp(mode, "idle") == 0 && argc == 5)
		return mode_idle(atoi(argv[4]));
	if (strcmp(mode, "get") == 0 && argc == 6)
		return mode_get(argv[4], atoll(argv[5]));
	if (strcmp(mode, "put") == 0 && argc == 6)
		return mode_put(argv[4], argv[5]);
	if (strcmp(mode, "noop") == 0 && argc == 5)
		return mode_noop(atol(argv[4]));
#ifdef FTPLOAD_TLS
	if (strcmp(mode, "tlsget") == 0 && argc == 6)
		return mode_tlsget(argv[4], atoll(argv[5]));
#endif
	usage();
	return 2;
}
