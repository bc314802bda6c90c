/*
 * quick: quick mode, `ftpgate -b BACKEND[:PORT] -l [ADDR:]PORT [-a ADDR]
 * [-p LOW-HIGH] [--tls-cert F --tls-key F]`: the options become the ini
 * text of a one-site configuration, which goes through the same parser and
 * checks as a file (conf_load_text), and the parser's messages are turned
 * back into the option they are about. Owns the generated text (static).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "conf.h"

enum { Q_BACKEND, Q_LISTEN, Q_PUBLIC, Q_PORTS, Q_CERT, Q_KEY, Q_N };

static const char *const opt_name[Q_N] = {"-b", "-l", "-a", "-p", "--tls-cert", "--tls-key"};

static const char *value_of(const struct quick *q, int i)
{
	const char *v[Q_N] = {q->backend, q->listen,   q->public_address,
	                      q->ports,   q->tls_cert, q->tls_key};
	return v[i];
}

int quick_option(struct quick *q, int opt, const char *arg)
{
	switch (opt) {
	case 'b':
		q->backend = arg;
		return 1;
	case 'l':
		q->listen = arg;
		return 1;
	case 'a':
		q->public_address = arg;
		return 1;
	case 'p':
		q->ports = arg;
		return 1;
	case QUICK_OPT_TLS_CERT:
		q->tls_cert = arg;
		return 1;
	case QUICK_OPT_TLS_KEY:
		q->tls_key = arg;
		return 1;
	default:
		return 0;
	}
}

int quick_active(const struct quick *q)
{
	return q->backend || q->listen || q->public_address || q->ports || q->tls_cert ||
	       q->tls_key;
}

/* Every byte of v is one of ok (or alphanumeric). */
static int only(const char *v, const char *ok)
{
	for (const unsigned char *s = (const unsigned char *)v; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'z') ||
		      (*s >= 'A' && *s <= 'Z') || strchr(ok, *s)))
			return 0;
	return *v != '\0';
}

/* A file name the ini line can carry: no control bytes, no comment start,
 * no blanks at either end. */
static int path_ok(const char *v)
{
	size_t n = strlen(v);
	if (!n || v[0] == ' ' || v[n - 1] == ' ' || v[0] == '\t' || v[n - 1] == '\t')
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)v[i];
		if (c < 0x20 || c == 0x7f)
			return 0;
		if ((c == '#' || c == ';') && i > 0 && (v[i - 1] == ' ' || v[i - 1] == '\t'))
			return 0;
	}
	return v[0] != '#' && v[0] != ';';
}

static int bad(char *err, size_t errsize, const char *opt, const char *v, const char *why)
{
	snprintf(err, errsize, "ftpgate: %s \"%s\": %s", opt, v, why);
	return -1;
}

static int check(const struct quick *q, char *err, size_t errsize)
{
	if (!q->backend)
		return snprintf(err, errsize,
		                "ftpgate: quick mode needs -b BACKEND[:PORT] (the FTP server)"),
		       -1;
	if (!q->listen)
		return snprintf(err, errsize,
		                "ftpgate: quick mode needs -l [ADDR:]PORT (where clients connect)"),
		       -1;
	if (!only(q->backend, ".-_:[]"))
		return bad(err, errsize, "-b", q->backend,
		           "want HOST[:PORT] (one server: a name, an IPv4 address or [IPv6])");
	if (!only(q->listen, ".:[]"))
		return bad(err, errsize, "-l", q->listen, "want [ADDR:]PORT (numeric address)");
	if (q->public_address && !only(q->public_address, "."))
		return bad(err, errsize, "-a", q->public_address, "want an IPv4 address");
	if (q->ports && !only(q->ports, "-"))
		return bad(err, errsize, "-p", q->ports, "want LOW-HIGH (ports 1024-65535)");
	if (!q->tls_cert != !q->tls_key)
		return snprintf(err, errsize,
		                "ftpgate: --tls-cert and --tls-key go together (the certificate "
		                "chain and its key)"),
		       -1;
	if (q->tls_cert && !path_ok(q->tls_cert))
		return bad(err, errsize, "--tls-cert", q->tls_cert, "not a usable file name");
	if (q->tls_key && !path_ok(q->tls_key))
		return bad(err, errsize, "--tls-key", q->tls_key, "not a usable file name");
	return 0;
}

static char text[4 * CONF_PATH_MAX + 1024];

/* Append "key = value" as the next line; returns its line number. */
static int add(size_t *o, int *line, const char *key, const char *prefix, const char *value)
{
	*o += (size_t)snprintf(text + *o, sizeof(text) - *o, "%s = %s%s\n", key, prefix, value);
	return ++*line;
}

const char *quick_ini(struct quick *q, char *err, size_t errsize)
{
	char cwd[CONF_PATH_MAX];
	size_t o = 0;
	int line = 2;

	if (check(q, err, errsize) < 0)
		return NULL;
	memset(q->line, 0, sizeof(q->line));
	o += (size_t)snprintf(text, sizeof(text),
	                      "; ftpgate quick mode: one site; save this as a file and run "
	                      "ftpgate -c FILE\n[site:main]\n");
	int port_only = only(q->listen, "") && strlen(q->listen) <= 5;
	q->line[Q_LISTEN] = add(&o, &line, "listen", port_only ? "0.0.0.0:" : "", q->listen);
	q->line[Q_BACKEND] = add(&o, &line, "backend", "", q->backend);
	if (q->public_address)
		q->line[Q_PUBLIC] = add(&o, &line, "public_address", "", q->public_address);
	if (q->ports)
		q->line[Q_PORTS] = add(&o, &line, "passive_ports", "", q->ports);
	if (q->tls_cert) {
		add(&o, &line, "tls", "", "terminate");
		/* Absolute: a daemon's working directory is /. */
		if ((q->tls_cert[0] != '/' || q->tls_key[0] != '/') && !getcwd(cwd, sizeof(cwd))) {
			snprintf(err, errsize,
			         "ftpgate: --tls-cert: cannot find the current directory");
			return NULL;
		}
		const char *pre = q->tls_cert[0] == '/' ? "" : cwd;
		const char *slash = q->tls_cert[0] == '/' ? "" : "/";
		char p[2 * CONF_PATH_MAX];
		snprintf(p, sizeof(p), "%s%s", slash, q->tls_cert);
		q->line[Q_CERT] = add(&o, &line, "tls_cert", pre, p);
		pre = q->tls_key[0] == '/' ? "" : cwd;
		slash = q->tls_key[0] == '/' ? "" : "/";
		snprintf(p, sizeof(p), "%s%s", slash, q->tls_key);
		q->line[Q_KEY] = add(&o, &line, "tls_key", pre, p);
	}
	if (o >= sizeof(text)) {
		snprintf(err, errsize, "ftpgate: quick mode: the options are too long");
		return NULL;
	}
	return text;
}

void quick_explain(const struct quick *q, char *err, size_t errsize)
{
	char rest[1024];
	size_t n = strlen(QUICK_NAME);
	if (strncmp(err, QUICK_NAME, n) != 0)
		return;
	const char *p = err + n;
	int line = 0;
	if (*p == ':' && p[1] >= '0' && p[1] <= '9')
		line = (int)strtol(p + 1, (char **)&p, 10);
	if (*p == ':')
		p++;
	while (*p == ' ')
		p++;
	snprintf(rest, sizeof(rest), "%s", p);
	for (int i = 0; i < Q_N; i++)
		if (line && q->line[i] == line) {
			snprintf(err, errsize, "ftpgate: %s \"%s\": %s", opt_name[i],
			         value_of(q, i), rest);
			return;
		}
	snprintf(err, errsize, "ftpgate: %s", rest);
}
