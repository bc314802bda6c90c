/* tls: OpenSSL contexts, certificates, session reuse. */
#ifndef FTPGATE_TLS_H
#define FTPGATE_TLS_H

#include <stddef.h>
#include <time.h>

#include <openssl/ssl.h>

#include "conf.h"

/*
 * Build the site's contexts: *server for client-facing TLS (tls = terminate
 * or implicit; certificate chain and key loaded and checked) and *client
 * for backend TLS (backend_tls = on or implicit; CA and verification).
 * Either is NULL when not configured. On error returns -1 with
 * "file:line: key: what is wrong" in err.
 */
int tls_site_init(const struct site_conf *sc, const char *conf_path, SSL_CTX **server,
                  SSL_CTX **client, char *err, size_t errsize);

/*
 * A new SSL for a backend connection (control, data or health check): with
 * verify, verification of host (the server's name or IP as written in the
 * configuration), and resumption of resume (if not NULL).
 */
SSL *tls_backend_ssl(SSL_CTX *ctx, int verify, const char *host, SSL_SESSION *resume);

/*
 * A new SSL for a client connection: the control connection (control =
 * NULL) or a data connection of the control connection control. sid_ctx
 * ties sessions to one control connection: a data connection can resume
 * only a session of its own control connection. Data connections issue no
 * session tickets; with TLS 1.3 a new ticket for each is sent on control
 * (with its next reply), as clients use a ticket only once.
 */
SSL *tls_client_ssl(SSL_CTX *ctx, const unsigned char *sid_ctx, size_t sid_len, SSL *control);

/*
 * A backend session keeps its latest TLS session in *slot (the SSL's ex-data
 * points at it): set on the control connection and on every data
 * connection, so that each new data connection resumes the newest ticket of
 * the control session's chain (TLS 1.3 tickets are meant for one use).
 */
void tls_track_session(SSL *ssl, SSL_SESSION **slot);

/*
 * On a backend data connection: sessions (tickets) it receives are held
 * back, and reach the tracked slot only by tls_keep_sessions(), called
 * when the connection ended cleanly (close_notify both ways). Servers
 * drop the sessions of a connection that ended badly (an ABOR, a client
 * that went away), so the slot keeps the previous one then. Returns -1
 * when out of memory.
 */
int tls_hold_sessions(SSL *ssl);
void tls_keep_sessions(SSL *ssl);

/* notAfter of the certificate ctx serves (its leaf), or 0 (none, NULL ctx). */
time_t tls_cert_not_after(SSL_CTX *ctx);

/* The last OpenSSL error as text (for logs), or fallback. */
const char *tls_error_string(unsigned long err, const char *fallback, char *buf, size_t size);

#endif
