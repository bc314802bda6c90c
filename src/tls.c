/* tls: OpenSSL contexts, certificates, session reuse. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls.h"

static int slot_idx = -1; /* SSL ex-data: the SSL_SESSION ** a backend session keeps */
static int held_idx = -1; /* SSL ex-data: struct held of a backend data connection */

/*
 * Sessions a backend data connection received, held until it ends cleanly.
 * Owned by the SSL (freed with it by held_free).
 */
struct held {
	SSL_SESSION *sess;
};

static void held_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	struct held *h = ptr;
	(void)parent;
	(void)ad;
	(void)idx;
	(void)argl;
	(void)argp;
	if (!h)
		return;
	if (h->sess)
		SSL_SESSION_free(h->sess);
	free(h);
}

time_t tls_cert_not_after(SSL_CTX *ctx)
{
	X509 *x = ctx ? SSL_CTX_get0_certificate(ctx) : NULL;
	const ASN1_TIME *t = x ? X509_get0_notAfter(x) : NULL;
	struct tm tm;
	if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return timegm(&tm);
}

const char *tls_error_string(unsigned long err, const char *fallback, char *buf, size_t size)
{
	if (!err) {
		snprintf(buf, size, "%s", fallback);
		return buf;
	}
	ERR_error_string_n(err, buf, size);
	return buf;
}

static int openssl_fail(char *err, size_t errsize, const char *path, int line, const char *key,
                        const char *what)
{
	char e[256];
	unsigned long code = ERR_peek_last_error();
	tls_error_string(code, "unknown error", e, sizeof(e));
	ERR_clear_error();
	if (line)
		snprintf(err, errsize, "%s:%d: %s: %s (%s)", path, line, key, what, e);
	else
		snprintf(err, errsize, "%s: %s: %s (default; %s)", path, key, what, e);
	return -1;
}

/*
 * A file (certificate, key, CA) that could not be loaded: the system's reason
 * (errno) when OpenSSL failed to open or read it, else OpenSSL's, with the
 * path and the site. line 0: the path is the default.
 */
static int file_fail(char *err, size_t errsize, const char *path, const struct site_conf *sc,
                     int line, const char *key, const char *what, const char *file)
{
	char e[256] = "";
	unsigned long code, last = 0;
	while ((code = ERR_get_error()) != 0) {
		if (ERR_GET_LIB(code) == ERR_LIB_SYS && !e[0])
			snprintf(e, sizeof(e), "%s", strerror(ERR_GET_REASON(code)));
		last = code;
	}
	if (!e[0])
		tls_error_string(last, "unknown error", e, sizeof(e));
	if (line)
		snprintf(err, errsize, "%s:%d: %s: %s \"%s\" of [site:%s]: %s", path, line, key,
		         what, file, sc->name, e);
	else
		snprintf(err, errsize, "%s: %s: %s \"%s\" of [site:%s] (the default; set %s): %s",
		         path, key, what, file, sc->name, key, e);
	return -1;
}

/*
 * A backend session ticket / session arrived: keep it for data connections,
 * at once from the control connection, from a data connection only once it
 * has ended cleanly (tls_keep_sessions).
 */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	SSL_SESSION **slot = SSL_get_ex_data(ssl, slot_idx);
	struct held *h = SSL_get_ex_data(ssl, held_idx);
	if (h)
		slot = &h->sess;
	if (!slot)
		return 0;
	if (*slot)
		SSL_SESSION_free(*slot);
	*slot = sess;
	return 1; /* we keep the reference */
}

void tls_track_session(SSL *ssl, SSL_SESSION **slot)
{
	SSL_set_ex_data(ssl, slot_idx, slot);
}

int tls_hold_sessions(SSL *ssl)
{
	if (SSL_get_ex_data(ssl, held_idx))
		return 0;
	struct held *h = calloc(1, sizeof(*h));
	if (!h)
		return -1;
	if (!SSL_set_ex_data(ssl, held_idx, h)) {
		free(h);
		return -1;
	}
	return 0;
}

void tls_keep_sessions(SSL *ssl)
{
	struct held *h = SSL_get_ex_data(ssl, held_idx);
	SSL_SESSION **slot = SSL_get_ex_data(ssl, slot_idx);
	if (!h || !h->sess || !slot)
		return;
	if (*slot)
		SSL_SESSION_free(*slot);
	*slot = h->sess;
	h->sess = NULL;
}

int tls_site_init(const struct site_conf *sc, const char *path, SSL_CTX **server, SSL_CTX **client,
                  char *err, size_t errsize)
{
	*server = *client = NULL;
	if (slot_idx < 0)
		slot_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	if (held_idx < 0)
		held_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, held_free);

	if (sc->tls == TLS_TERMINATE || sc->tls == TLS_IMPLICIT) {
		SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
		if (!ctx)
			return openssl_fail(err, errsize, path, sc->tls_line, "tls",
			                    "cannot create a TLS context");
		*server = ctx;
		SSL_CTX_set_min_proto_version(ctx, sc->tls_min_version);
		SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
		SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
		                          SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_RELEASE_BUFFERS);
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
		SSL_CTX_sess_set_cache_size(ctx, 20000);
		SSL_CTX_set_timeout(ctx, 86400);
		if (SSL_CTX_use_certificate_chain_file(ctx, sc->tls_cert) != 1) {
			file_fail(err, errsize, path, sc, sc->tls_cert_line, "tls_cert",
			          "cannot load certificate chain", sc->tls_cert);
			goto fail;
		}
		if (SSL_CTX_use_PrivateKey_file(ctx, sc->tls_key, SSL_FILETYPE_PEM) != 1) {
			if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
				openssl_fail(err, errsize, path, sc->tls_key_line, "tls_key",
				             "the key does not match the certificate");
				goto fail;
			}
			file_fail(err, errsize, path, sc, sc->tls_key_line, "tls_key",
			          "cannot load private key", sc->tls_key);
			goto fail;
		}
		if (SSL_CTX_check_private_key(ctx) != 1) {
			openssl_fail(err, errsize, path, sc->tls_key_line, "tls_key",
			             "the key does not match the certificate");
			goto fail;
		}
		if (sc->tls_ciphers[0]) {
			/* TLS 1.2 cipher list; TLS 1.3 suites stay OpenSSL's defaults. */
			if (SSL_CTX_set_cipher_list(ctx, sc->tls_ciphers) != 1) {
				openssl_fail(err, errsize, path, sc->tls_ciphers_line,
				             "tls_ciphers", "no usable cipher in the list");
				goto fail;
			}
		}
	}
	if (sc->backend_tls != BTLS_OFF) {
		SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
		if (!ctx)
			return openssl_fail(err, errsize, path, 0, "backend_tls",
			                    "cannot create a TLS context");
		*client = ctx;
		SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
		SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
		                          SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_RELEASE_BUFFERS);
		/* Sessions are kept per control connection (new_session_cb), never
		 * in a shared cache that could resume another session's. */
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT |
		                                        SSL_SESS_CACHE_NO_INTERNAL_STORE);
		SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
		if (sc->backend_tls_verify) {
			SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
			if (sc->backend_ca[0]) {
				if (SSL_CTX_load_verify_locations(ctx, sc->backend_ca, NULL) != 1) {
					file_fail(err, errsize, path, sc, sc->backend_ca_line,
					          "backend_ca", "cannot load CA file",
					          sc->backend_ca);
					goto fail;
				}
			} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
				openssl_fail(err, errsize, path, 0, "backend_ca",
				             "cannot load the system CA store");
				goto fail;
			}
		} else {
			SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
		}
	}
	return 0;
fail:
	if (*server)
		SSL_CTX_free(*server);
	if (*client)
		SSL_CTX_free(*client);
	*server = *client = NULL;
	return -1;
}

SSL *tls_backend_ssl(SSL_CTX *ctx, int verify, const char *host, SSL_SESSION *resume)
{
	SSL *ssl = SSL_new(ctx);
	if (!ssl)
		return NULL;
	if (verify) {
		unsigned char buf[16];
		X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
		X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1) {
			X509_VERIFY_PARAM_set1_ip_asc(param, host);
		} else {
			SSL_set1_host(ssl, host);
			SSL_set_tlsext_host_name(ssl, host);
		}
	}
	if (resume) {
		/* A copy: OpenSSL marks the session it resumed as spent (TLS 1.3
		 * tickets are meant for one use; a connection freed without
		 * close_notify spoils its session too). The control session's
		 * newest session stays usable for the next data connection if
		 * this one brings no new ticket or ends badly. */
		SSL_SESSION *copy = SSL_SESSION_dup(resume);
		if (!copy || !SSL_set_session(ssl, copy)) {
			SSL_SESSION_free(copy);
			SSL_free(ssl);
			return NULL;
		}
		SSL_SESSION_free(copy); /* ssl holds its own reference */
	}
	return ssl;
}

SSL *tls_client_ssl(SSL_CTX *ctx, const unsigned char *sid_ctx, size_t sid_len, SSL *control)
{
	SSL *ssl = SSL_new(ctx);
	if (!ssl)
		return NULL;
	SSL_set_session_id_context(ssl, sid_ctx, (unsigned int)sid_len);
	if (!control)
		return ssl;
	/* A data connection issues no tickets: a client that only writes
	 * (an upload) never reads them, and closing a socket with unread
	 * bytes sends a reset that can cut the tail of its upload. The
	 * ticket for the next data connection goes out on the control
	 * connection instead, ahead of the reply that leads the client to
	 * connect (227, 229, 200): TLS 1.3 clients use a ticket once
	 * (OpenSSL marks a resumed session as spent, so curl would do a
	 * full handshake on its second data connection). The ticket carries
	 * this control connection's session-id context like every other.
	 * Best effort: without it (OpenSSL refuses while the control
	 * connection is in a handshake) a client may still hold a ticket. */
	SSL_set_num_tickets(ssl, 0);
	if (SSL_version(control) >= TLS1_3_VERSION && !SSL_new_session_ticket(control))
		ERR_clear_error();
	return ssl;
}
