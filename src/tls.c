/* tls: OpenSSL contexts, certificates, session reuse. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls.h"

static int slot_idx = -1;

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

/* A backend session ticket / session arrived: keep it for data connections. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	SSL_SESSION **slot = SSL_get_ex_data(ssl, slot_idx);
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

int tls_site_init(const struct site_conf *sc, const char *path, SSL_CTX **server, SSL_CTX **client,
                  char *err, size_t errsize)
{
	*server = *client = NULL;
	if (slot_idx < 0)
		slot_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);

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
			char what[CONF_PATH_MAX + 64];
			snprintf(what, sizeof(what), "cannot load certificate chain \"%s\"",
			         sc->tls_cert);
			openssl_fail(err, errsize, path, sc->tls_cert_line, "tls_cert", what);
			goto fail;
		}
		if (SSL_CTX_use_PrivateKey_file(ctx, sc->tls_key, SSL_FILETYPE_PEM) != 1) {
			if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
				openssl_fail(err, errsize, path, sc->tls_key_line, "tls_key",
				             "the key does not match the certificate");
				goto fail;
			}
			char what[CONF_PATH_MAX + 64];
			snprintf(what, sizeof(what), "cannot load private key \"%s\"", sc->tls_key);
			openssl_fail(err, errsize, path, sc->tls_key_line, "tls_key", what);
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
					char what[CONF_PATH_MAX + 64];
					snprintf(what, sizeof(what), "cannot load CA file \"%s\"",
					         sc->backend_ca);
					openssl_fail(err, errsize, path, sc->backend_ca_line,
					             "backend_ca", what);
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
	if (resume)
		SSL_set_session(ssl, resume);
	return ssl;
}

SSL *tls_client_ssl(SSL_CTX *ctx, const unsigned char *sid_ctx, size_t sid_len, int data)
{
	SSL *ssl = SSL_new(ctx);
	if (!ssl)
		return NULL;
	SSL_set_session_id_context(ssl, sid_ctx, (unsigned int)sid_len);
	if (data)
		SSL_set_num_tickets(ssl, 0);
	return ssl;
}
