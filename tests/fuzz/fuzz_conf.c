/*
 * libFuzzer target: the configuration file, text to struct conf through
 * conf_load() (inih and every check config.c makes). The input is written
 * to a memfd and loaded by its /proc/self/fd path, so config.c is used as
 * it is. A good file must give a struct that keeps conf.h's promises, a bad
 * one exactly one line "path:line: key: what is wrong" (or "path: ...");
 * loading the same text twice must give the same answer. Seeds: the example
 * etc/ftpgate.ini and the configurations the corpus capture ran ftpgate with.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <netdb.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "conf.h"
#include "util.h"

/*
 * No DNS from a fuzzer: a backend named by host name would be resolved at
 * load (util.c's addr_parse); numeric addresses never get here. This
 * definition takes the place of libc's in this program only.
 */
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
	(void)node;
	(void)service;
	(void)hints;
	*res = NULL;
	return EAI_NONAME;
}

static void check_conf(const struct conf *c)
{
	CHECK(c->n_sites >= 1 && c->sites != NULL);
	CHECK(c->max_sessions >= 1 && c->max_sessions <= 1000000);
	CHECK(memchr(c->user, '\0', sizeof(c->user)) && memchr(c->group, '\0', sizeof(c->group)));
	CHECK(c->log != LOGT_FILE || c->log_file[0] == '/');
	CHECK(c->xferlog[0] == '\0' || c->xferlog[0] == '/');
	CHECK(c->shutdown_timeout >= 1);
	for (size_t i = 0; i < c->n_sites; i++) {
		const struct site_conf *s = &c->sites[i];
		size_t nl = strnlen(s->name, sizeof(s->name));

		CHECK(nl >= 1 && nl < sizeof(s->name));
		for (size_t j = 0; j < i; j++)
			CHECK(strcmp(c->sites[j].name, s->name) != 0);
		CHECK(s->n_listen >= 1 && s->n_listen <= CONF_MAX_LISTEN);
		for (size_t k = 0; k < s->n_listen; k++)
			CHECK(s->listen[k].ss_family == AF_INET ||
			      s->listen[k].ss_family == AF_INET6);
		CHECK(s->pasv_lo >= 1024 && s->pasv_lo <= s->pasv_hi);
		CHECK(!s->has_public_address || s->public_address.ss_family == AF_INET);
		CHECK(s->connect_timeout >= 1 && s->idle_timeout >= 1 && s->data_timeout >= 1 &&
		      s->login_timeout >= 1);
		CHECK(s->connect_timeout <= 604800 && s->idle_timeout <= 604800 &&
		      s->data_timeout <= 604800 && s->login_timeout <= 604800);
		CHECK(s->tls >= TLS_OFF && s->tls <= TLS_PASSTHROUGH_IMPLICIT);
		CHECK(memchr(s->tls_cert, '\0', sizeof(s->tls_cert)) &&
		      memchr(s->tls_key, '\0', sizeof(s->tls_key)) &&
		      memchr(s->backend_ca, '\0', sizeof(s->backend_ca)) &&
		      memchr(s->tls_ciphers, '\0', sizeof(s->tls_ciphers)));
		CHECK(s->n_backends >= 1 && s->n_backends <= CONF_MAX_BACKENDS);
		for (size_t k = 0; k < s->n_backends; k++)
			CHECK((s->backends[k].addr.ss_family == AF_INET ||
			       s->backends[k].addr.ss_family == AF_INET6) &&
			      addr_port((const struct sockaddr *)&s->backends[k].addr) != 0 &&
			      memchr(s->backends[k].host, '\0', sizeof(s->backends[k].host)) &&
			      memchr(s->backends[k].name, '\0', sizeof(s->backends[k].name)));
		/* A passthrough site's passive range is shared with no other site. */
		for (size_t j = 0; j < c->n_sites; j++) {
			const struct site_conf *o = &c->sites[j];

			if (j != i && (tls_is_passthrough(s->tls) || tls_is_passthrough(o->tls)))
				CHECK(s->pasv_hi < o->pasv_lo || o->pasv_hi < s->pasv_lo);
		}
	}
}

/* The error: one line, naming the file first. */
static void check_err(const char *err, size_t size, const char *path)
{
	size_t n = strnlen(err, size);

	CHECK(n > 0 && n < size);
	CHECK(strncmp(err, path, strlen(path)) == 0 && err[strlen(path)] == ':');
	CHECK(memchr(err, '\n', n) == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int fd = -1;
	static char path[64];
	char err[1024], err2[1024];
	struct conf *c, *c2;

	if (fd < 0) {
		fd = memfd_create("fuzz.ini", 0);
		CHECK(fd >= 0);
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	}
	CHECK(ftruncate(fd, 0) == 0);
	CHECK(pwrite(fd, data, size, 0) == (ssize_t)size);

	memset(err, 0, sizeof(err));
	c = conf_load(path, err, sizeof(err));
	if (c != NULL)
		check_conf(c);
	else
		check_err(err, sizeof(err), path);

	memset(err2, 0, sizeof(err2));
	c2 = conf_load(path, err2, sizeof(err2));
	CHECK((c == NULL) == (c2 == NULL));
	if (c == NULL)
		CHECK(strcmp(err, err2) == 0);
	else
		CHECK(c->n_sites == c2->n_sites &&
		      memcmp(c->sites, c2->sites, c->n_sites * sizeof(*c->sites)) == 0);
	conf_free(c);
	conf_free(c2);
	return 0;
}
