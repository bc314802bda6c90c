/*
 * probe: `ftpgate probe`, a one-shot mode of the binary. Owns the probe's
 * connections (struct pconn: a blocking-style socket driven by poll with a
 * timeout, optionally under TLS), the steps that check one backend the way
 * the proxy uses it (greeting, TLS and its certificate, FEAT, login,
 * EPSV/PASV and the address announced, a passive LIST, session reuse on TLS
 * data connections, PORT) and the site's listener from outside, and the
 * findings list (struct report: verdict, topic, sentence, hint) that the
 * text and the JSON output are both printed from.
 *
 * May not touch: the event loop or any state of a running proxy; it reads
 * the configuration with conf_load() and parses replies with ftp_reply.c
 * and ftp_addr.c like the proxy.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "conf.h"
#include "ftp_addr.h"
#include "ftp_reply.h"
#include "log.h"
#include "probe.h"
#include "proxyproto.h"
#include "tls.h"
#include "util.h"

#define LINE_MAX_BYTES 8192
#define TEXT_MAX 768

/* ---- findings ------------------------------------------------------------ */

enum verdict { V_OK = 0, V_WARN, V_PROBLEM };
static const char *const verdict_name[] = {"ok", "warning", "problem"};

struct finding {
	enum verdict v;
	char topic[24];
	char text[TEXT_MAX];
	char hint[TEXT_MAX];
};

/* One thing probed: a backend of a site, or the site's listener. */
struct report {
	char title[160];
	struct finding *f; /* owned */
	size_t n, cap;
};

struct reports {
	struct report *r; /* owned */
	size_t n, cap;
};

static struct report *report_new(struct reports *all, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Room for one more element of an array that only grows; out of memory ends the probe. */
static void *grow(void *arr, size_t n, size_t *cap, size_t size)
{
	if (n < *cap)
		return arr;
	size_t c = *cap ? *cap * 2 : 16;
	void *p = realloc(arr, c * size);
	if (!p) {
		fprintf(stderr, "ftpgate probe: out of memory\n");
		exit(2);
	}
	*cap = c;
	return p;
}

static struct report *report_new(struct reports *all, const char *fmt, ...)
{
	all->r = grow(all->r, all->n, &all->cap, sizeof(*all->r));
	struct report *r = &all->r[all->n++];
	memset(r, 0, sizeof(*r));
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->title, sizeof(r->title), fmt, ap);
	va_end(ap);
	return r;
}

static struct finding *add(struct report *r, enum verdict v, const char *topic, const char *fmt,
                           ...) __attribute__((format(printf, 4, 5)));
static struct finding *add(struct report *r, enum verdict v, const char *topic, const char *fmt,
                           ...)
{
	r->f = grow(r->f, r->n, &r->cap, sizeof(*r->f));
	struct finding *f = &r->f[r->n++];
	memset(f, 0, sizeof(*f));
	f->v = v;
	snprintf(f->topic, sizeof(f->topic), "%s", topic);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(f->text, sizeof(f->text), fmt, ap);
	va_end(ap);
	return f;
}

static void hint(struct finding *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void hint(struct finding *f, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(f->hint, sizeof(f->hint), fmt, ap);
	va_end(ap);
}

static void reports_free(struct reports *all)
{
	for (size_t i = 0; i < all->n; i++)
		free(all->r[i].f);
	free(all->r);
}

static void print_text(const struct reports *all, size_t counts[3])
{
	for (size_t i = 0; i < all->n; i++) {
		const struct report *r = &all->r[i];
		printf("%s%s\n", i ? "\n" : "", r->title);
		for (size_t k = 0; k < r->n; k++) {
			const struct finding *f = &r->f[k];
			printf("  %-8s %-10s %s\n", verdict_name[f->v], f->topic, f->text);
			if (f->hint[0])
				printf("  %-8s %-10s hint: %s\n", "", "", f->hint);
		}
	}
	printf("\n%zu ok, %zu warning%s, %zu problem%s\n", counts[V_OK], counts[V_WARN],
	       counts[V_WARN] == 1 ? "" : "s", counts[V_PROBLEM],
	       counts[V_PROBLEM] == 1 ? "" : "s");
}

/* Texts are printable ASCII already (network bytes went through log_escape). */
static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", (unsigned char)*s);
		else
			putchar(*s);
	}
	putchar('"');
}

static void print_json(const struct reports *all, size_t counts[3])
{
	printf("{\"ok\": %s, \"counts\": {\"ok\": %zu, \"warning\": %zu, \"problem\": %zu}, "
	       "\"reports\": [",
	       counts[V_PROBLEM] ? "false" : "true", counts[V_OK], counts[V_WARN],
	       counts[V_PROBLEM]);
	for (size_t i = 0; i < all->n; i++) {
		const struct report *r = &all->r[i];
		printf("%s\n  {\"title\": ", i ? "," : "");
		json_str(r->title);
		printf(", \"findings\": [");
		for (size_t k = 0; k < r->n; k++) {
			const struct finding *f = &r->f[k];
			printf("%s\n    {\"verdict\": \"%s\", \"topic\": ", k ? "," : "",
			       verdict_name[f->v]);
			json_str(f->topic);
			printf(", \"text\": ");
			json_str(f->text);
			printf(", \"hint\": ");
			if (f->hint[0])
				json_str(f->hint);
			else
				printf("null");
			putchar('}');
		}
		printf("]}");
	}
	printf("\n]}\n");
}

/* ---- connections --------------------------------------------------------- */

struct pconn {
	int fd;
	SSL *ssl; /* owned, NULL while plain */
	int timeout_ms;
	char in[LINE_MAX_BYTES];
	size_t in_len;
	char why[256]; /* why the last operation failed */
	int stuck;     /* a read or write timed out: the dialogue is out of step */
};

struct reply {
	int code;
	char first[TEXT_MAX]; /* the first line, escaped */
	char all[4096];       /* every line, escaped, separated by '\n' */
};

static void pc_init(struct pconn *c, int timeout_ms)
{
	memset(c, 0, sizeof(*c));
	c->fd = -1;
	c->timeout_ms = timeout_ms;
}

static void pc_close(struct pconn *c)
{
	if (c->ssl) {
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->in_len = 0;
}

static int wait_fd(int fd, short ev, int ms)
{
	struct pollfd p = {.fd = fd, .events = ev};
	int n;
	do
		n = poll(&p, 1, ms);
	while (n < 0 && errno == EINTR);
	return n;
}

static double ms_since(uint64_t t0_us)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t now = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
	return (double)(now - t0_us) / 1000.0;
}

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Connect with a timeout; the socket stays non-blocking. 0, or -1 with why. */
static int pc_connect(struct pconn *c, const struct sockaddr *sa)
{
	c->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		snprintf(c->why, sizeof(c->why), "socket: %s", strerror(errno));
		return -1;
	}
	if (connect(c->fd, sa, addr_len(sa)) < 0 && errno != EINPROGRESS) {
		snprintf(c->why, sizeof(c->why), "%s", strerror(errno));
		return -1;
	}
	int n = wait_fd(c->fd, POLLOUT, c->timeout_ms);
	if (n == 0) {
		snprintf(c->why, sizeof(c->why), "no answer within %d s", c->timeout_ms / 1000);
		return -1;
	}
	int err = 0;
	socklen_t len = sizeof(err);
	if (n < 0 || getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		snprintf(c->why, sizeof(c->why), "%s", strerror(err));
		return -1;
	}
	return 0;
}

/* Wait for what an SSL call wants. 1 to retry, 0 on timeout, -1 on a hard error. */
static int ssl_wait(struct pconn *c, int rc)
{
	int e = SSL_get_error(c->ssl, rc);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		int n = wait_fd(c->fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, c->timeout_ms);
		if (n == 0) {
			snprintf(c->why, sizeof(c->why), "no answer within %d s",
			         c->timeout_ms / 1000);
			c->stuck = 1;
		}
		return n > 0 ? 1 : n == 0 ? 0 : -1;
	}
	if (e == SSL_ERROR_ZERO_RETURN) {
		snprintf(c->why, sizeof(c->why), "the server closed the TLS connection");
		return -1;
	}
	char buf[200];
	unsigned long code = ERR_get_error();
	if (code)
		snprintf(c->why, sizeof(c->why), "%s",
		         tls_error_string(code, "TLS error", buf, sizeof(buf)));
	else if (e == SSL_ERROR_SYSCALL)
		snprintf(c->why, sizeof(c->why), "the server closed the connection%s%s",
		         errno ? ": " : "", errno ? strerror(errno) : "");
	else
		snprintf(c->why, sizeof(c->why), "TLS error %d", e);
	ERR_clear_error();
	return -1;
}

/* Read some bytes: > 0, 0 at a clean end (close_notify or FIN), -1 with why. */
static ssize_t pc_read(struct pconn *c, void *buf, size_t size)
{
	for (;;) {
		if (c->ssl) {
			ERR_clear_error();
			errno = 0;
			int rc = SSL_read(c->ssl, buf, (int)size);
			if (rc > 0)
				return rc;
			int e = SSL_get_error(c->ssl, rc);
			if (e == SSL_ERROR_ZERO_RETURN)
				return 0;
			if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0)
				return 0; /* FIN without close_notify */
			if (ssl_wait(c, rc) <= 0)
				return -1;
			continue;
		}
		ssize_t n = recv(c->fd, buf, size, 0);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN) {
			snprintf(c->why, sizeof(c->why), "%s", strerror(errno));
			return -1;
		}
		int w = wait_fd(c->fd, POLLIN, c->timeout_ms);
		if (w <= 0) {
			snprintf(c->why, sizeof(c->why), "no answer within %d s",
			         c->timeout_ms / 1000);
			c->stuck = 1;
			return -1;
		}
	}
}

static int pc_write(struct pconn *c, const char *buf, size_t len)
{
	while (len) {
		if (c->ssl) {
			ERR_clear_error();
			int rc = SSL_write(c->ssl, buf, (int)len);
			if (rc > 0) {
				buf += rc;
				len -= (size_t)rc;
			} else if (ssl_wait(c, rc) <= 0) {
				return -1;
			}
			continue;
		}
		ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
		if (n > 0) {
			buf += n;
			len -= (size_t)n;
		} else if (n < 0 && errno == EAGAIN) {
			if (wait_fd(c->fd, POLLOUT, c->timeout_ms) <= 0) {
				snprintf(c->why, sizeof(c->why), "cannot send within %d s",
				         c->timeout_ms / 1000);
				return -1;
			}
		} else if (n < 0 && errno != EINTR) {
			snprintf(c->why, sizeof(c->why), "%s", strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* TLS handshake as the client, on a connection that has no TLS yet. ssl is taken. */
static int pc_handshake(struct pconn *c, SSL *ssl)
{
	c->ssl = ssl;
	if (!ssl) {
		snprintf(c->why, sizeof(c->why), "out of memory");
		return -1;
	}
	SSL_set_fd(ssl, c->fd);
	for (;;) {
		ERR_clear_error();
		errno = 0;
		int rc = SSL_connect(ssl);
		if (rc == 1)
			return 0;
		if (ssl_wait(c, rc) <= 0)
			return -1;
	}
}

/* One line (without CRLF) into line; -1 with why on EOF, timeout or a line too long. */
static int pc_line(struct pconn *c, char *line, size_t size, size_t *len)
{
	for (;;) {
		char *nl = memchr(c->in, '\n', c->in_len);
		if (nl) {
			size_t n = (size_t)(nl - c->in);
			size_t keep = n && c->in[n - 1] == '\r' ? n - 1 : n;
			if (keep >= size)
				keep = size - 1;
			memcpy(line, c->in, keep);
			line[keep] = '\0';
			*len = keep;
			memmove(c->in, nl + 1, c->in_len - n - 1);
			c->in_len -= n + 1;
			return 0;
		}
		if (c->in_len == sizeof(c->in)) {
			snprintf(c->why, sizeof(c->why), "a reply line longer than %d bytes",
			         LINE_MAX_BYTES);
			return -1;
		}
		ssize_t n = pc_read(c, c->in + c->in_len, sizeof(c->in) - c->in_len);
		if (n == 0)
			snprintf(c->why, sizeof(c->why), "the server closed the connection");
		if (n <= 0)
			return -1;
		c->in_len += (size_t)n;
	}
}

/* One complete reply (ftp_reply.c frames it, as the proxy does). 0, or -1 with why. */
static int pc_reply(struct pconn *c, struct reply *r)
{
	struct ftp_reply_asm a;
	char line[LINE_MAX_BYTES], esc[TEXT_MAX];
	size_t len, used = 0;
	ftp_reply_reset(&a);
	memset(r, 0, sizeof(*r));
	for (;;) {
		if (pc_line(c, line, sizeof(line), &len) < 0)
			return -1;
		enum ftp_reply_status st = ftp_reply_feed(&a, line, len);
		if (st == FTP_REPLY_BAD) {
			snprintf(c->why, sizeof(c->why), "not an FTP reply: \"%s\"",
			         log_escape(esc, 120, line, len));
			return -1;
		}
		log_escape(esc, sizeof(esc), line, len);
		if (!r->first[0])
			snprintf(r->first, sizeof(r->first), "%s", esc);
		int w =
		    snprintf(r->all + used, sizeof(r->all) - used, "%s%s", used ? "\n" : "", esc);
		if (w > 0 && (size_t)w < sizeof(r->all) - used)
			used += (size_t)w;
		if (st == FTP_REPLY_DONE) {
			r->code = a.code;
			return 0;
		}
	}
}

/* Send a command and read its reply: the reply's code, or -1 with why. */
static int pc_cmd(struct pconn *c, struct reply *r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int pc_cmd(struct pconn *c, struct reply *r, const char *fmt, ...)
{
	char buf[600];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf) - 2 || c->stuck)
		return -1;
	memcpy(buf + n, "\r\n", 2);
	if (pc_write(c, buf, (size_t)n + 2) < 0 || pc_reply(c, r) < 0)
		return -1;
	return r->code;
}

/* ---- what is probed ------------------------------------------------------ */

struct target {
	const struct site_conf *sc; /* the site (a made-up one for a URL) */
	const char *conf_path;
	int from_url;
	struct sockaddr_storage addr; /* where to connect */
	char host[256];               /* the name or IP the certificate must match */
	char name[300];               /* HOST:PORT for sentences */
	enum backend_tls_mode tls;    /* TLS to use on this connection */
	int tls_wanted;               /* the site says the server must speak TLS */
	int verify;                   /* the certificate must verify */
	int outside;                  /* the site's own listener, as a client */
	int passthrough;              /* the site is a passthrough site */
	const char *user, *pass;
	int anonymous;  /* no credentials given: anonymous */
	SSL_CTX *ctx;   /* client context, verification done by the probe */
	int timeout_ms; /* per step */
};

/* The state of one probe run over one control connection. */
struct run {
	const struct target *t;
	struct report *r;
	struct pconn ctl;
	SSL_SESSION *sess; /* the control connection's newest TLS session (tls.c tracks it) */
	int prot_p;        /* data connections under TLS */
	int logged_in;
};

static int is_private4(const struct sockaddr_in *sin)
{
	uint32_t a = ntohl(sin->sin_addr.s_addr);
	return (a >> 24) == 10 || (a >> 20) == (172u << 4 | 1) || (a >> 16) == (192u << 8 | 168) ||
	       (a >> 22) == (100u << 2 | 1) || (a >> 16) == (169u << 8 | 254);
}

/* The certificate: who, by whom, until when, whether it verifies and matches. */
static void check_certificate(struct run *u)
{
	const struct target *t = u->t;
	X509 *cert = SSL_get1_peer_certificate(u->ctl.ssl);
	if (!cert) {
		add(u->r, V_PROBLEM, "cert", "The server sent no certificate.");
		return;
	}
	char subj[256] = "?", iss[256] = "?", until[64] = "?";
	X509_NAME_oneline(X509_get_subject_name(cert), subj, sizeof(subj));
	X509_NAME_oneline(X509_get_issuer_name(cert), iss, sizeof(iss));
	BIO *b = BIO_new(BIO_s_mem());
	if (b) {
		ASN1_TIME_print(b, X509_get0_notAfter(cert));
		int n = BIO_read(b, until, sizeof(until) - 1);
		until[n > 0 ? n : 0] = '\0';
		BIO_free(b);
	}
	char esubj[300], eiss[300];
	log_escape(esubj, sizeof(esubj), subj, strlen(subj));
	log_escape(eiss, sizeof(eiss), iss, strlen(iss));
	int expired = X509_cmp_current_time(X509_get0_notAfter(cert)) < 0;
	int early = X509_cmp_current_time(X509_get0_notBefore(cert)) > 0;
	enum verdict bad = t->verify ? V_PROBLEM : V_WARN;
	struct finding *f;
	if (expired || early) {
		f = add(u->r, bad, "cert", "Certificate %s, issued by %s, %s %s.", esubj, eiss,
		        expired ? "EXPIRED on" : "not valid before its start; it ends", until);
		hint(f, "Renew the server's certificate%s.",
		     t->verify ? " (the proxy refuses an expired one: every session gets 421)"
		               : "");
	} else {
		add(u->r, V_OK, "cert", "Certificate %s, issued by %s, valid until %s.", esubj,
		    eiss, until);
	}

	if (t->passthrough) {
		/* The proxy holds no key and checks nothing: the clients check this one. */
		add(u->r, V_OK, "cert",
		    "Clients of this passthrough site see this certificate and check it against "
		    "the name they connect to; the proxy does not.");
		X509_free(cert);
		add(u->r, V_OK, "tls", "TLS: %s, cipher %s.", SSL_get_version(u->ctl.ssl),
		    SSL_get_cipher_name(u->ctl.ssl));
		return;
	}
	long vr = SSL_get_verify_result(u->ctl.ssl);
	int chain_ok = vr == X509_V_OK || vr == X509_V_ERR_HOSTNAME_MISMATCH ||
	               vr == X509_V_ERR_IP_ADDRESS_MISMATCH || vr == X509_V_ERR_CERT_HAS_EXPIRED ||
	               vr == X509_V_ERR_CERT_NOT_YET_VALID;
	const char *ca = t->sc->backend_ca[0] ? t->sc->backend_ca : "the system CA store";
	if (chain_ok) {
		add(u->r, V_OK, "cert", "The certificate chain verifies against %s.", ca);
	} else {
		f = add(u->r, bad, "cert", "The certificate does not verify against %s: %s.", ca,
		        X509_verify_cert_error_string(vr));
		if (t->outside)
			hint(f, "Clients that check certificates will refuse this one.");
		else
			hint(f, "Set backend_ca to the CA that signed the server's certificate%s.",
			     t->verify ? " (or backend_tls_verify = no, which gives up the check)"
			               : "");
	}

	unsigned char ipbuf[16];
	int is_ip =
	    inet_pton(AF_INET, t->host, ipbuf) == 1 || inet_pton(AF_INET6, t->host, ipbuf) == 1;
	int match = is_ip ? X509_check_ip_asc(cert, t->host, 0) == 1
	                  : X509_check_host(cert, t->host, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS,
	                                    NULL) == 1;
	if (match) {
		add(u->r, V_OK, "cert",
		    "The certificate is for %s, the name the proxy connects to.", t->host);
	} else {
		f = add(
		    u->r, bad, "cert",
		    "The certificate is not for %s (the %s written in backend): the name does not "
		    "match.",
		    t->host, is_ip ? "address" : "name");
		hint(f,
		     "Write backend with a name the certificate carries (subjectAltName), or give "
		     "the server a certificate for %s.",
		     t->host);
	}
	X509_free(cert);
	add(u->r, V_OK, "tls", "TLS: %s, cipher %s.", SSL_get_version(u->ctl.ssl),
	    SSL_get_cipher_name(u->ctl.ssl));
}

/* Greeting, TLS, FEAT, login. 0 to go on, -1 when the control connection is lost. */
static int control_open(struct run *u)
{
	const struct target *t = u->t;
	struct reply rp;
	struct finding *f;
	uint64_t t0 = now_us();
	if (pc_connect(&u->ctl, (const struct sockaddr *)&t->addr) < 0) {
		f = add(u->r, V_PROBLEM, "connect", "Cannot connect to %s: %s.", t->name,
		        u->ctl.why);
		if (t->outside)
			hint(f,
			     "Is ftpgate running with this configuration? It should listen there.");
		else if (strstr(u->ctl.why, "refused"))
			hint(f, "Nothing listens there: start the FTP server, or correct backend.");
		else
			hint(f,
			     "Check that the server is up and that no firewall drops connections "
			     "from this host to port %u.",
			     addr_port((const struct sockaddr *)&t->addr));
		return -1;
	}
	double rtt = ms_since(t0);
	add(u->r, V_OK, "connect", "Connected to %s in %.1f ms (one round trip).", t->name, rtt);
	if (t->sc->backend_proxy_protocol && !t->outside) {
		char hdr[PP_EMIT_MAX];
		int n = t->sc->backend_proxy_protocol == 1
		            ? pp_emit_v1(hdr, sizeof(hdr), NULL, NULL)
		            : pp_emit_v2(hdr, sizeof(hdr), NULL, NULL);
		if (n < 0 || pc_write(&u->ctl, hdr, (size_t)n) < 0) {
			add(u->r, V_PROBLEM, "connect", "Cannot send the PROXY header: %s.",
			    u->ctl.why);
			return -1;
		}
	}
	if (t->tls == BTLS_IMPLICIT) {
		if (pc_handshake(&u->ctl, tls_backend_ssl(t->ctx, 1, t->host, NULL)) < 0) {
			f = add(u->r, V_PROBLEM, "tls", "The implicit TLS handshake failed: %s.",
			        u->ctl.why);
			hint(f, "Is this port really implicit FTPS (port 990 style)? If it speaks "
			        "plain FTP first, use backend_tls = on.");
			return -1;
		}
		tls_track_session(u->ctl.ssl, &u->sess);
	}
	if (pc_reply(&u->ctl, &rp) < 0) {
		f = add(u->r, V_PROBLEM, "greeting", "No greeting: %s.", u->ctl.why);
		hint(f, "The server accepts connections but does not speak FTP there (or it is "
		        "overloaded).");
		return -1;
	}
	if (rp.code != 220) {
		f = add(u->r, V_PROBLEM, "greeting",
		        "The server greets with \"%s\" instead of 220.", rp.first);
		if (t->outside)
			hint(f,
			     "ftpgate turns clients away: when it cannot use the backend (see the "
			     "backend's lines above and ftpgate's log), or a limit or allow/deny.");
		else
			hint(f,
			     "The server turns sessions away (too many clients, or this address is "
			     "not allowed).");
		return -1;
	}
	add(u->r, V_OK, "greeting", "Greeting \"%s\", %.1f ms after connecting.", rp.first,
	    ms_since(t0));

	if (t->tls == BTLS_ON) {
		int code = pc_cmd(&u->ctl, &rp, "AUTH TLS");
		if (code != 234) {
			if (code < 0)
				f = add(u->r, V_PROBLEM, "tls", "AUTH TLS got no answer: %s.",
				        u->ctl.why);
			else
				f = add(u->r, t->tls_wanted ? V_PROBLEM : V_WARN, "tls",
				        "The server does not offer TLS: AUTH TLS got \"%s\".",
				        rp.first);
			if (t->outside)
				hint(
				    f,
				    "The site has tls set: ftpgate should answer AUTH TLS itself.");
			else
				hint(f, "The site has backend_tls = on: enable TLS on the server, "
				        "or set "
				        "backend_tls = off.");
			return -1;
		}
		if (pc_handshake(&u->ctl, tls_backend_ssl(t->ctx, 1, t->host, NULL)) < 0) {
			f = add(u->r, V_PROBLEM, "tls",
			        "The TLS handshake after AUTH TLS failed: %s.", u->ctl.why);
			hint(f, "Compare the server's TLS versions and ciphers with the proxy's "
			        "(TLS 1.2 or newer).");
			return -1;
		}
		tls_track_session(u->ctl.ssl, &u->sess);
	}
	if (u->ctl.ssl && !t->outside)
		check_certificate(u);
	else if (u->ctl.ssl)
		add(u->r, V_OK, "tls", "TLS: %s, cipher %s.", SSL_get_version(u->ctl.ssl),
		    SSL_get_cipher_name(u->ctl.ssl));

	int code = pc_cmd(&u->ctl, &rp, "FEAT");
	if (code < 0) {
		add(u->r, V_PROBLEM, "feat", "FEAT got no answer: %s.", u->ctl.why);
		return -1;
	}
	if (code == 211) {
		char feats[600] = "";
		size_t used = 0;
		for (char *s = rp.all, *nl; s && *s; s = nl ? nl + 1 : NULL) {
			nl = strchr(s, '\n');
			if (s == rp.all || (nl == NULL))
				continue; /* the first and the last line */
			while (*s == ' ')
				s++;
			int w = snprintf(feats + used, sizeof(feats) - used, "%s%.*s",
			                 used ? ", " : "", (int)(nl - s), s);
			if (w > 0 && (size_t)w < sizeof(feats) - used)
				used += (size_t)w;
		}
		add(u->r, V_OK, "feat", "FEAT: %s.", used ? feats : "(no features listed)");
	} else {
		add(u->r, V_WARN, "feat", "The server does not answer FEAT (\"%s\").", rp.first);
	}

	code = pc_cmd(&u->ctl, &rp, "USER %s", t->user);
	if (code == 331 || code == 332)
		code = pc_cmd(&u->ctl, &rp, "PASS %s", t->pass);
	if (code < 0) {
		add(u->r, V_PROBLEM, "login", "The login got no answer: %s.", u->ctl.why);
		return -1;
	}
	if (code != 230 && code != 202) {
		if (t->anonymous) {
			f = add(
			    u->r, V_WARN, "login",
			    "Anonymous login refused (\"%s\"); data connections were not tried.",
			    rp.first);
			hint(f,
			     "Give a user of the server with --user and --pass to check the rest.");
		} else {
			f = add(u->r, V_PROBLEM, "login", "Login as \"%s\" refused: \"%s\".",
			        t->user, rp.first);
			hint(f, "Check the user and password (and whether the server wants TLS "
			        "before login).");
		}
		return 1;
	}
	add(u->r, V_OK, "login", "Logged in as \"%s\".", t->user);
	u->logged_in = 1;
	if (u->ctl.ssl &&
	    (t->outside || t->sc->backend_data_protection != BPROT_CLEAR || t->passthrough)) {
		pc_cmd(&u->ctl, &rp, "PBSZ 0");
		code = pc_cmd(&u->ctl, &rp, "PROT P");
		if (code == 200)
			u->prot_p = 1;
		else
			add(u->r, V_WARN, "tls",
			    "PROT P refused (\"%s\"): data connections stay plain.",
			    code < 0 ? u->ctl.why : rp.first);
	}
	return 0;
}

/* Data over an open data connection d: TLS if wanted, read to the end, the final reply. */
static int data_transfer(struct run *u, struct pconn *d, int have_prelim, int reuse, size_t *bytes,
                         char *why, size_t whysize)
{
	struct reply rp = {.code = 150};
	char buf[16384];
	*bytes = 0;
	if (!have_prelim && pc_reply(&u->ctl, &rp) < 0) {
		snprintf(why, whysize, "LIST got no answer: %s", u->ctl.why);
		return -1;
	}
	if (!ftp_reply_is_prelim(rp.code)) {
		snprintf(why, whysize, "LIST got \"%.200s\"", rp.first);
		return -1;
	}
	if (u->prot_p) {
		/* The session tls.c tracked, else the control connection's own. */
		SSL_SESSION *sess = u->sess ? u->sess : SSL_get0_session(u->ctl.ssl);
		SSL *ssl = tls_backend_ssl(u->t->ctx, 0, u->t->host, reuse ? sess : NULL);
		if (pc_handshake(d, ssl) < 0) {
			snprintf(why, whysize,
			         "the TLS handshake on the data connection failed: %s", d->why);
			if (pc_reply(&u->ctl, &rp) == 0)
				snprintf(why + strlen(why), whysize - strlen(why),
				         "; the server said \"%s\"", rp.first);
			return -1;
		}
	}
	ssize_t n;
	while ((n = pc_read(d, buf, sizeof(buf))) > 0)
		*bytes += (size_t)n;
	if (n < 0)
		snprintf(why, whysize, "the data connection failed: %s", d->why);
	if (d->ssl)
		SSL_shutdown(d->ssl);
	pc_close(d);
	if (pc_reply(&u->ctl, &rp) < 0) {
		snprintf(why, whysize, "no reply after the listing: %s", u->ctl.why);
		return -1;
	}
	if (rp.code != 226 && rp.code != 250) {
		snprintf(why, whysize, "the listing ended with \"%.200s\"", rp.first);
		return -1;
	}
	return n < 0 ? -1 : 0;
}

/*
 * A passive LIST: EPSV (falling back to PASV, as the proxy does) or the
 * PASV address itself (use_pasv). The data connection goes where the proxy
 * would connect (the control address and the announced port), or, from
 * outside, where the 227 says. Returns 0 or -1 with why.
 */
static int passive_list(struct run *u, int use_pasv, int reuse, size_t *bytes, char *why,
                        size_t whysize)
{
	const struct target *t = u->t;
	struct reply rp;
	struct sockaddr_storage to = t->addr;
	if (!use_pasv) {
		uint16_t port;
		if (pc_cmd(&u->ctl, &rp, "EPSV") != 229 ||
		    ftp_parse_229(rp.first, strlen(rp.first), &port) < 0) {
			snprintf(why, whysize, "EPSV got \"%s\"", rp.code ? rp.first : u->ctl.why);
			return -1;
		}
		addr_set_port((struct sockaddr *)&to, port);
	} else {
		struct sockaddr_in sin;
		if (pc_cmd(&u->ctl, &rp, "PASV") != 227 ||
		    ftp_parse_227(rp.first, strlen(rp.first), &sin) < 0) {
			snprintf(why, whysize, "PASV got \"%s\"", rp.code ? rp.first : u->ctl.why);
			return -1;
		}
		if (t->outside)
			memcpy(&to, &sin, sizeof(sin));
		else
			addr_set_port((struct sockaddr *)&to, ntohs(sin.sin_port));
	}
	struct pconn d;
	pc_init(&d, t->timeout_ms);
	char a[ADDR_STR_MAX];
	if (pc_connect(&d, (struct sockaddr *)&to) < 0) {
		snprintf(why, whysize, "cannot connect to the data port %s: %s",
		         addr_str((struct sockaddr *)&to, a, sizeof(a), 1), d.why);
		pc_close(&d);
		pc_cmd(&u->ctl, &rp, "ABOR");
		return -1;
	}
	if (pc_write(&u->ctl, "LIST\r\n", 6) < 0) {
		snprintf(why, whysize, "LIST: %s", u->ctl.why);
		pc_close(&d);
		return -1;
	}
	int rc = data_transfer(u, &d, 0, reuse, bytes, why, whysize);
	pc_close(&d);
	return rc;
}

/* A passthrough site forwards only its passive_ports: is the server's port one of them? */
static void check_forwarded_port(struct run *u, const char *verb, uint16_t port)
{
	const struct site_conf *sc = u->t->sc;
	if (port >= sc->pasv_lo && port <= sc->pasv_hi) {
		add(u->r, V_OK, "passthru", "The %s port %u lies in passive_ports %u-%u.", verb,
		    port, sc->pasv_lo, sc->pasv_hi);
		return;
	}
	struct finding *f = add(u->r, V_PROBLEM, "passthru",
	                        "%s announces port %u, outside this site's passive_ports %u-%u: "
	                        "the proxy forwards only those ports, so every transfer would "
	                        "fail.",
	                        verb, port, sc->pasv_lo, sc->pasv_hi);
	hint(f, "Make the server's passive range the same as passive_ports (vsftpd "
	        "pasv_min_port/pasv_max_port, ProFTPD PassivePorts, Pure-FTPd -p).");
}

/* EPSV and PASV: do they answer, what do they announce, does the range fit a passthrough site. */
static void check_passive_replies(struct run *u)
{
	const struct target *t = u->t;
	const struct site_conf *sc = t->sc;
	struct reply rp;
	struct finding *f;
	char a[ADDR_STR_MAX], b[ADDR_STR_MAX];
	uint16_t port;
	int code = pc_cmd(&u->ctl, &rp, "EPSV");
	if (code == 229 && ftp_parse_229(rp.first, strlen(rp.first), &port) == 0) {
		add(u->r, V_OK, "epsv", "EPSV works: data port %u.", port);
		if (t->passthrough)
			check_forwarded_port(u, "EPSV", port);
	} else if (code < 0) {
		add(u->r, V_PROBLEM, "epsv", "EPSV got no answer: %s.", u->ctl.why);
		return;
	} else {
		add(u->r, V_WARN, "epsv",
		    "EPSV does not work (\"%s\"); the proxy falls back to PASV.", rp.first);
	}
	if (t->addr.ss_family != AF_INET)
		return; /* PASV is IPv4 only */
	struct sockaddr_in sin;
	code = pc_cmd(&u->ctl, &rp, "PASV");
	if (code != 227 || ftp_parse_227(rp.first, strlen(rp.first), &sin) < 0) {
		if (code < 0) {
			add(u->r, V_PROBLEM, "pasv", "PASV got no answer: %s.", u->ctl.why);
			return;
		}
		add(u->r, V_WARN, "pasv", "PASV does not work (\"%s\").", rp.first);
		return;
	}
	addr_str((struct sockaddr *)&sin, a, sizeof(a), 0);
	addr_str((const struct sockaddr *)&t->addr, b, sizeof(b), 0);
	port = ntohs(sin.sin_port);
	if (t->passthrough) {
		/* Clients connect to what the 227 says: it must be where the proxy forwards. */
		struct sockaddr_storage want;
		int have = 0;
		if (sc->has_public_address) {
			want = sc->public_address;
			have = 1;
		} else if (sc->n_listen) {
			want = sc->listen[0];
			struct sockaddr_in *w = (struct sockaddr_in *)&want;
			have = want.ss_family == AF_INET && w->sin_addr.s_addr != htonl(INADDR_ANY);
		}
		char c[ADDR_STR_MAX];
		if (have && !ftp_addr_same_ip((struct sockaddr *)&sin, (struct sockaddr *)&want)) {
			f = add(
			    u->r, V_PROBLEM, "passthru",
			    "PASV announces %s, but clients of this passthrough site must be sent "
			    "to %s (%s), where the proxy forwards the passive ports: every "
			    "transfer would fail.",
			    a, addr_str((struct sockaddr *)&want, c, sizeof(c), 0),
			    sc->has_public_address ? "public_address" : "its listen address");
			hint(f,
			     "Set the server's passive address to %s (vsftpd pasv_address, ProFTPD "
			     "MasqueradeAddress, Pure-FTPd -P).",
			     c);
		} else if (have) {
			add(u->r, V_OK, "passthru", "PASV announces %s, where the proxy forwards.",
			    a);
		} else {
			add(u->r, V_WARN, "passthru",
			    "PASV announces %s; the site listens on every address, so the probe "
			    "cannot tell whether clients reach the proxy there.",
			    a);
		}
		check_forwarded_port(u, "PASV", port);
		return;
	}
	if (ftp_addr_same_ip((struct sockaddr *)&sin, (const struct sockaddr *)&t->addr)) {
		add(u->r, V_OK, "pasv",
		    "PASV works and announces %s, where the server was reached.", a);
		return;
	}
	if (t->outside) {
		add(u->r, V_OK, "pasv", "PASV announces %s (the site's public address).", a);
		return;
	}
	f = add(u->r, V_WARN, "pasv",
	        "PASV announces %s, %snot %s where the server was reached: the classic NAT "
	        "failure. ftpgate uses only the port and connects to %s itself, so transfers "
	        "through the proxy work; a client connecting to the server directly would fail.",
	        a, is_private4(&sin) ? "a private address, " : "", b, b);
	hint(f, "Harmless behind ftpgate. To fix it for direct clients, set the server's passive "
	        "address (vsftpd pasv_address, ProFTPD MasqueradeAddress, Pure-FTPd -P).");
}

/* PORT: does the server connect back to the proxy's address? */
static void check_port(struct run *u)
{
	const struct target *t = u->t;
	struct finding *f;
	struct reply rp;
	int active = t->sc->backend_data_mode != BDM_PASSIVE;
	enum verdict bad = active ? V_PROBLEM : V_WARN;
	const char *note = active ? "" : " (not needed: backend_data_mode = passive)";
	struct sockaddr_storage me;
	socklen_t len = sizeof(me);
	if (getsockname(u->ctl.fd, (struct sockaddr *)&me, &len) < 0)
		return;
	addr_set_port((struct sockaddr *)&me, 0);
	int lfd = socket(me.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&me, addr_len((struct sockaddr *)&me)) < 0 ||
	    listen(lfd, 1) < 0) {
		if (lfd >= 0)
			close(lfd);
		add(u->r, V_WARN, "port", "Cannot listen for the PORT check: %s.", strerror(errno));
		return;
	}
	len = sizeof(me);
	getsockname(lfd, (struct sockaddr *)&me, &len);
	char cmd[128], a[ADDR_STR_MAX];
	if (me.ss_family == AF_INET)
		ftp_format_port(cmd, sizeof(cmd), (struct sockaddr_in *)&me);
	else
		ftp_format_eprt(cmd, sizeof(cmd), (struct sockaddr *)&me);
	cmd[strcspn(cmd, "\r")] = '\0';
	addr_str((struct sockaddr *)&me, a, sizeof(a), 1);
	int code = pc_cmd(&u->ctl, &rp, "%s", cmd);
	if (code != 200) {
		f = add(u->r, bad, "port", "The server refuses PORT to %s: \"%s\"%s.", a,
		        code < 0 ? u->ctl.why : rp.first, note);
		hint(f, "Enable active mode on the server, or keep backend_data_mode = passive.");
		close(lfd);
		return;
	}
	struct pconn d;
	pc_init(&d, t->timeout_ms);
	char why[512] = "";
	size_t bytes = 0;
	if (pc_write(&u->ctl, "LIST\r\n", 6) < 0) {
		close(lfd);
		return;
	}
	struct pollfd p[2] = {{.fd = lfd, .events = POLLIN}, {.fd = u->ctl.fd, .events = POLLIN}};
	int have_prelim = 0;
	while (d.fd < 0) {
		p[0].revents = p[1].revents = 0;
		if (!have_prelim && u->ctl.ssl && SSL_pending(u->ctl.ssl) > 0)
			p[1].revents = POLLIN;
		else if (poll(p, have_prelim ? 1 : 2, t->timeout_ms) <= 0)
			break;
		if (p[0].revents & POLLIN) {
			d.fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
			if (d.fd < 0)
				break;
		} else if (p[1].revents) {
			/* A reply before the connection: a 1xx is fine, anything else failed. */
			if (pc_reply(&u->ctl, &rp) < 0 || !ftp_reply_is_prelim(rp.code)) {
				snprintf(why, sizeof(why), "LIST got \"%.200s\"",
				         rp.code ? rp.first : u->ctl.why);
				break;
			}
			have_prelim = 1;
		}
	}
	close(lfd);
	if (d.fd < 0) {
		if (!why[0])
			snprintf(why, sizeof(why), "the server did not connect within %d s",
			         t->timeout_ms / 1000);
		f = add(u->r, bad, "port", "Active mode fails: %s%s.", why, note);
		hint(f,
		     "The server cannot connect back to %s (a firewall, or the server refuses "
		     "foreign addresses): keep backend_data_mode = passive.",
		     a);
		return;
	}
	if (data_transfer(u, &d, have_prelim, 1, &bytes, why, sizeof(why)) < 0) {
		f = add(u->r, bad, "port", "Active mode fails: %s%s.", why, note);
		hint(f, "Keep backend_data_mode = passive.");
	} else {
		add(u->r, V_OK, "port",
		    "The server accepts PORT to %s and connects back (LIST: %zu "
		    "bytes).",
		    a, bytes);
	}
	pc_close(&d);
}

/*
 * The control connection again, after the server may have closed it
 * (vsftpd ends the session when a data connection does not resume its TLS
 * session). What the repeated steps find is not reported twice.
 */
static int reconnect(struct run *u)
{
	struct report scratch = {0};
	struct report *keep = u->r;
	pc_close(&u->ctl);
	if (u->sess) {
		SSL_SESSION_free(u->sess);
		u->sess = NULL;
	}
	u->logged_in = u->prot_p = 0;
	u->r = &scratch;
	int rc = control_open(u);
	u->r = keep;
	free(scratch.f);
	if (rc == 0 && u->logged_in)
		return 0;
	pc_close(&u->ctl);
	return -1;
}

/* The data path: a passive LIST as the proxy does it, and session reuse on TLS. */
static void check_data(struct run *u)
{
	const struct target *t = u->t;
	char why[600], why2[600];
	size_t bytes;
	struct finding *f;
	/* From outside, PASV when it can: its 227 carries the address clients are sent to. */
	int use_pasv = t->outside && t->addr.ss_family == AF_INET;
	int rc = passive_list(u, use_pasv, 0, &bytes, why, sizeof(why));
	if (rc < 0 && strncmp(why, "EPSV got", 8) == 0 && t->addr.ss_family == AF_INET) {
		use_pasv = 1;
		rc = passive_list(u, 1, 0, &bytes, why, sizeof(why));
	}
	const char *mode = use_pasv ? "PASV" : "EPSV";
	if (rc == 0) {
		add(u->r, V_OK, "list", "A passive LIST (%s) transferred %zu bytes.", mode, bytes);
		if (u->prot_p && !t->outside)
			add(u->r, V_OK, "reuse",
			    "TLS data connections work without resuming the control session.");
		return;
	}
	int data_unreachable = strncmp(why, "cannot connect to the data port", 31) == 0;
	if (u->prot_p && !data_unreachable && !strstr(why, "no answer within")) {
		/* Again, resuming the control connection's TLS session as the proxy does. */
		struct reply rp;
		if (pc_cmd(&u->ctl, &rp, "NOOP") < 0 && reconnect(u) < 0)
			snprintf(why2, sizeof(why2), "cannot log in again: %s", u->ctl.why);
		else
			rc = passive_list(u, use_pasv, 1, &bytes, why2, sizeof(why2));
		if (rc == 0) {
			add(u->r, V_OK, "list", "A passive LIST (%s) transferred %zu bytes.", mode,
			    bytes);
			add(u->r, V_OK, "reuse",
			    "TLS data connections must resume the control session (without: %s); "
			    "ftpgate does that.",
			    why);
			return;
		}
		f = add(u->r, V_PROBLEM, "list",
		        "A passive LIST (%s) fails: %s; resuming the TLS "
		        "session: %s.",
		        mode, why, why2);
	} else {
		f = add(u->r, V_PROBLEM, "list", "A passive LIST (%s) fails: %s.", mode, why);
	}
	if (data_unreachable && t->outside)
		hint(f,
		     "Clients are sent there and cannot connect: check public_address, "
		     "passive_ports and the firewall in front of the proxy%s.",
		     t->passthrough ? " (and that the server announces what the site forwards)"
		                    : "");
	else if (data_unreachable)
		hint(f, "A firewall between this host and the server blocks the server's passive "
		        "ports; open them (the server's passive range) toward the proxy.");
	else
		hint(f, "Look at the server's log for why it refused the listing.");
}

static void probe_one(const struct target *t, struct report *r)
{
	struct run u = {.t = t, .r = r};
	pc_init(&u.ctl, t->timeout_ms);
	int rc = control_open(&u);
	if (rc == 0 && u.logged_in) {
		check_passive_replies(&u);
		if (u.ctl.fd >= 0)
			check_data(&u);
		if (!t->outside && !t->passthrough && u.ctl.fd >= 0 && t->addr.ss_family == AF_INET)
			check_port(&u);
		struct reply rp;
		if (u.ctl.fd >= 0)
			pc_cmd(&u.ctl, &rp, "QUIT");
	}
	if (u.ctl.ssl)
		SSL_shutdown(u.ctl.ssl);
	pc_close(&u.ctl);
	if (u.sess)
		SSL_SESSION_free(u.sess);
}

/* ---- sites ---------------------------------------------------------------- */

struct opts {
	const char *user, *pass, *ca;
	int json, tls, timeout;
};

/*
 * A client TLS context that loads the CAs the site would (backend_ca or the
 * system store) but lets every handshake finish: the probe judges the
 * certificate itself and goes on. NULL with a problem said in r.
 */
static SSL_CTX *probe_ctx(const struct site_conf *sc, const char *path, struct report *r)
{
	struct site_conf *tmp = malloc(sizeof(*tmp));
	SSL_CTX *server = NULL, *client = NULL;
	char err[1024];
	if (!tmp)
		return NULL;
	memcpy(tmp, sc, sizeof(*tmp));
	tmp->tls = TLS_OFF;
	tmp->backend_tls = BTLS_ON;
	tmp->backend_tls_verify = 1;
	if (tls_site_init(tmp, path, &server, &client, err, sizeof(err)) < 0) {
		struct finding *f = add(r, V_PROBLEM, "tls", "%s.", err);
		hint(f, "The proxy cannot check the server's certificate without it.");
		tmp->backend_tls_verify = 0;
		if (tls_site_init(tmp, path, &server, &client, err, sizeof(err)) < 0)
			client = NULL;
	}
	free(tmp);
	if (client)
		SSL_CTX_set_verify(client, SSL_VERIFY_NONE, NULL);
	return client;
}

/* One server of a site, the way the proxy reaches it: a pool server, or
 * (route non-NULL) a server of a [route:SITE] line. */
static void probe_backend(const struct site_conf *sc, const struct backend_conf *bc,
                          const struct route *route, const char *path, const struct opts *o,
                          int from_url, struct reports *all)
{
	struct target t;
	int pass = tls_is_passthrough(sc->tls);
	struct report *r;
	if (from_url)
		r = report_new(all, "%s", bc->name);
	else if (route)
		r = report_new(all, "site %s: backend %s (route %s, line %d)", sc->name, bc->name,
		               route->pattern, route->line);
	else
		r = report_new(all, "site %s: backend %s", sc->name, bc->name);
	memset(&t, 0, sizeof(t));
	t.sc = sc;
	t.conf_path = path;
	t.from_url = from_url;
	t.addr = bc->addr;
	snprintf(t.host, sizeof(t.host), "%s", bc->host);
	snprintf(t.name, sizeof(t.name), "%s", bc->name);
	t.passthrough = pass;
	t.tls = pass ? (sc->tls == TLS_PASSTHROUGH ? BTLS_ON : BTLS_IMPLICIT) : sc->backend_tls;
	t.tls_wanted = t.tls != BTLS_OFF;
	t.verify = !pass && sc->backend_tls != BTLS_OFF && sc->backend_tls_verify;
	t.user = o->user ? o->user : "anonymous";
	t.pass = o->pass ? o->pass : (o->user ? "" : "probe@ftpgate");
	t.anonymous = !o->user;
	t.timeout_ms = (int)(o->timeout ? (unsigned)o->timeout : sc->connect_timeout) * 1000;
	t.ctx = probe_ctx(sc, path, r);
	if (!t.ctx) {
		add(r, V_PROBLEM, "tls", "Cannot make a TLS context.");
		return;
	}
	probe_one(&t, r);
	SSL_CTX_free(t.ctx);
}

/* Whether name is among the site's pool or an earlier route's servers. */
static int probed_before(const struct site_conf *sc, size_t route, size_t idx, const char *name)
{
	for (size_t i = 0; i < sc->n_backends; i++)
		if (!strcmp(sc->backends[i].name, name))
			return 1;
	for (size_t k = 0; k <= route && k < sc->n_routes; k++)
		for (size_t i = 0; i < (k == route ? idx : sc->routes[k].n_backends); i++)
			if (!strcmp(sc->routes[k].backends[i].name, name))
				return 1;
	return 0;
}

static void probe_site(const struct site_conf *sc, const char *path, const struct opts *o,
                       int from_url, struct reports *all)
{
	struct target t;
	int pass = tls_is_passthrough(sc->tls);
	for (size_t i = 0; i < sc->n_backends; i++)
		probe_backend(sc, &sc->backends[i], NULL, path, o, from_url, all);
	/* The servers routes send users to, each once. */
	for (size_t k = 0; !from_url && k < sc->n_routes; k++)
		for (size_t i = 0; i < sc->routes[k].n_backends; i++)
			if (!probed_before(sc, k, i, sc->routes[k].backends[i].name))
				probe_backend(sc, &sc->routes[k].backends[i], &sc->routes[k], path,
				              o, from_url, all);
	if (from_url || sc->n_listen == 0)
		return;
	/* The outside view: the site's own listener, as a client. */
	memset(&t, 0, sizeof(t));
	t.sc = sc;
	t.conf_path = path;
	t.outside = 1;
	t.passthrough = pass;
	t.addr = sc->listen[0];
	if (t.addr.ss_family == AF_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)&t.addr;
		if (s->sin_addr.s_addr == htonl(INADDR_ANY))
			s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	} else if (t.addr.ss_family == AF_INET6) {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&t.addr;
		if (IN6_IS_ADDR_UNSPECIFIED(&s->sin6_addr))
			s->sin6_addr = in6addr_loopback;
	}
	addr_str((struct sockaddr *)&t.addr, t.name, sizeof(t.name), 1);
	addr_str((struct sockaddr *)&t.addr, t.host, sizeof(t.host), 0);
	struct report *r =
	    report_new(all, "site %s: outside view, as a client at %s", sc->name, t.name);
	switch (sc->tls) {
	case TLS_TERMINATE:
	case TLS_PASSTHROUGH:
		t.tls = BTLS_ON;
		break;
	case TLS_IMPLICIT:
	case TLS_PASSTHROUGH_IMPLICIT:
		t.tls = BTLS_IMPLICIT;
		break;
	default:
		t.tls = BTLS_OFF;
	}
	t.tls_wanted = t.tls != BTLS_OFF;
	t.user = o->user ? o->user : "anonymous";
	t.pass = o->pass ? o->pass : (o->user ? "" : "probe@ftpgate");
	t.anonymous = !o->user;
	t.timeout_ms = (int)(o->timeout ? (unsigned)o->timeout : sc->connect_timeout) * 1000;
	/* A client checks the proxy's certificate, not the backend's: no verdict on it here. */
	t.ctx = SSL_CTX_new(TLS_client_method());
	if (!t.ctx)
		return;
	SSL_CTX_set_verify(t.ctx, SSL_VERIFY_NONE, NULL);
	struct run u = {.t = &t, .r = r};
	pc_init(&u.ctl, t.timeout_ms);
	if (control_open(&u) == 0 && u.logged_in) {
		check_data(&u);
		struct reply rp;
		if (u.ctl.fd >= 0)
			pc_cmd(&u.ctl, &rp, "QUIT");
	}
	pc_close(&u.ctl);
	if (u.sess)
		SSL_SESSION_free(u.sess);
	SSL_CTX_free(t.ctx);
}

static int unhex(int c)
{
	return c >= '0' && c <= '9'   ? c - '0'
	       : c >= 'a' && c <= 'f' ? c - 'a' + 10
	       : c >= 'A' && c <= 'F' ? c - 'A' + 10
	                              : -1;
}

/* Percent-decoding in place (RFC 3986 userinfo). */
static void pct_decode(char *s)
{
	char *w = s;
	for (; *s; s++) {
		if (*s == '%' && unhex(s[1]) >= 0 && unhex(s[2]) >= 0) {
			*w++ = (char)(unhex(s[1]) * 16 + unhex(s[2]));
			s += 2;
		} else {
			*w++ = *s;
		}
	}
	*w = '\0';
}

/*
 * ftp://[user[:pass]@]host[:port][/]: a made-up site with that backend and
 * the defaults of every key. 0, or -1 with why in err.
 */
static int site_from_url(const char *url, struct site_conf *sc, char *user, char *pass,
                         size_t credsize, const struct opts *o, char *err, size_t errsize)
{
	char buf[600];
	if (strncmp(url, "ftp://", 6) != 0 || strlen(url) >= sizeof(buf)) {
		snprintf(err, errsize, "%s: not ftp://[user[:pass]@]host[:port]", url);
		return -1;
	}
	snprintf(buf, sizeof(buf), "%s", url + 6);
	buf[strcspn(buf, "/")] = '\0';
	char *hostport = buf, *at = strrchr(buf, '@');
	if (at) {
		*at = '\0';
		hostport = at + 1;
		char *colon = strchr(buf, ':');
		if (colon) {
			*colon = '\0';
			snprintf(pass, credsize, "%.255s", colon + 1);
			pct_decode(pass);
		}
		snprintf(user, credsize, "%.255s", buf);
		pct_decode(user);
	}
	memset(sc, 0, sizeof(*sc));
	snprintf(sc->name, sizeof(sc->name), "url");
	struct backend_conf *bc = &sc->backends[0];
	char e[256];
	if (addr_parse(hostport, 21, 1, &bc->addr, e, sizeof(e)) < 0) {
		snprintf(err, errsize, "%s: %s", url, e);
		return -1;
	}
	snprintf(bc->host, sizeof(bc->host), "%.255s", hostport);
	if (bc->host[0] == '[') {
		memmove(bc->host, bc->host + 1, strlen(bc->host));
		bc->host[strcspn(bc->host, "]")] = '\0';
	} else if (strchr(bc->host, ':') == strrchr(bc->host, ':')) {
		bc->host[strcspn(bc->host, ":")] = '\0';
	}
	char a[ADDR_STR_MAX];
	snprintf(bc->name, sizeof(bc->name), "%s",
	         addr_str((struct sockaddr *)&bc->addr, a, sizeof(a), 1));
	sc->n_backends = 1;
	sc->backend_tls = (enum backend_tls_mode)o->tls;
	sc->backend_tls_verify = 1;
	if (o->ca)
		snprintf(sc->backend_ca, sizeof(sc->backend_ca), "%s", o->ca);
	sc->backend_data_protection = BPROT_PRIVATE;
	sc->backend_data_mode = BDM_PASSIVE;
	sc->connect_timeout = 10;
	sc->pasv_lo = 50000;
	sc->pasv_hi = 50999;
	return 0;
}

static void usage(FILE *to)
{
	fprintf(to, "usage: ftpgate probe [-c FILE] [--json] [--user U --pass P] [--timeout S] "
	            "[SITE...]\n"
	            "       ftpgate probe [--json] [--tls | --implicit] [--ca FILE] [--timeout S]\n"
	            "                     ftp://[user[:pass]@]host[:port]\n"
	            "\n"
	            "Connects to each backend the way the proxy would and says what works.\n"
	            "Exit status: 0 when nothing is a problem, 1 otherwise, 2 on bad usage.\n");
}

int probe_main(int argc, char **argv, const char *default_conf)
{
	static const struct option longopts[] = {{"json", no_argument, NULL, 'j'},
	                                         {"user", required_argument, NULL, 'u'},
	                                         {"pass", required_argument, NULL, 'p'},
	                                         {"tls", no_argument, NULL, 'T'},
	                                         {"implicit", no_argument, NULL, 'I'},
	                                         {"ca", required_argument, NULL, 'a'},
	                                         {"timeout", required_argument, NULL, 'w'},
	                                         {"help", no_argument, NULL, 'h'},
	                                         {NULL, 0, NULL, 0}};
	struct opts o = {0};
	const char *path = NULL;
	int opt;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			path = optarg;
			break;
		case 'j':
			o.json = 1;
			break;
		case 'u':
			o.user = optarg;
			break;
		case 'p':
			o.pass = optarg;
			break;
		case 'T':
			o.tls = BTLS_ON;
			break;
		case 'I':
			o.tls = BTLS_IMPLICIT;
			break;
		case 'a':
			o.ca = optarg;
			break;
		case 'w':
			o.timeout = atoi(optarg);
			if (o.timeout < 1 || o.timeout > 3600) {
				fprintf(stderr, "ftpgate probe: --timeout: 1-3600 seconds\n");
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	log_set_level(LOG_LVL_ERROR);
	struct reports all = {0};
	char err[1024];
	int url = optind < argc && strncmp(argv[optind], "ftp://", 6) == 0;
	if (url) {
		if (path || optind + 1 != argc) {
			fprintf(stderr,
			        "ftpgate probe: a URL goes alone, without -c or site names\n");
			return 2;
		}
		static struct site_conf sc;
		static char user[256], pass[256];
		if (site_from_url(argv[optind], &sc, user, pass, sizeof(user), &o, err,
		                  sizeof(err)) < 0) {
			fprintf(stderr, "ftpgate probe: %s\n", err);
			return 2;
		}
		if (!o.user && user[0]) {
			o.user = user;
			o.pass = pass;
		}
		probe_site(&sc, "(command line)", &o, 1, &all);
	} else {
		if (o.tls || o.ca) {
			fprintf(stderr,
			        "ftpgate probe: --tls, --implicit and --ca go with a URL; a "
			        "site's own keys say it\n");
			return 2;
		}
		struct conf *c = conf_load(path ? path : default_conf, err, sizeof(err));
		if (!c) {
			fprintf(stderr, "%s\n", err);
			return 2;
		}
		for (int i = optind; i < argc; i++) {
			size_t k;
			for (k = 0; k < c->n_sites; k++)
				if (strcmp(c->sites[k].name, argv[i]) == 0)
					break;
			if (k == c->n_sites) {
				fprintf(stderr, "ftpgate probe: %s: no [site:%s] in it\n", c->path,
				        argv[i]);
				conf_free(c);
				return 2;
			}
		}
		for (size_t k = 0; k < c->n_sites; k++) {
			int wanted = optind == argc;
			for (int i = optind; i < argc; i++)
				wanted |= strcmp(c->sites[k].name, argv[i]) == 0;
			if (wanted)
				probe_site(&c->sites[k], c->path, &o, 0, &all);
		}
		conf_free(c);
	}
	size_t counts[3] = {0, 0, 0};
	for (size_t i = 0; i < all.n; i++)
		for (size_t k = 0; k < all.r[i].n; k++)
			counts[all.r[i].f[k].v]++;
	if (o.json)
		print_json(&all, counts);
	else
		print_text(&all, counts);
	fflush(stdout);
	reports_free(&all);
	return counts[V_PROBLEM] ? 1 : 0;
}
