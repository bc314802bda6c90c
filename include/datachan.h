/*
 * datachan: one data connection pair (client side, backend side). Each side
 * is established by accepting on a listener (only from an allowed peer IP)
 * or by connecting out. Once both sides are up and the owner has started
 * the transfer, bytes are moved with splice(2) through a pipe per direction,
 * except small transfers: each direction first copies through a 16 KiB
 * buffer (recv/send) and makes its pipe only when a read fills it (and goes
 * on copying if no pipe can be had).
 * The pair is finished when both directions have seen EOF and delivered
 * every byte, or when the transfer's direction (datachan_finish_on) has;
 * then both sockets are closed and the owner is told.
 */
#ifndef FTPGATE_DATACHAN_H
#define FTPGATE_DATACHAN_H

#include <stdint.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "stats.h"

enum dc_side { DC_CLIENT = 0, DC_BACKEND = 1 };

struct datachan;
struct log_limit;
struct ssl_st;

struct datachan_cbs {
	/* A side is connected (ok = 1) or failed to connect (ok = 0, why in reason). */
	void (*side_ready)(struct datachan *dc, enum dc_side side, int ok, const char *reason,
	                   void *arg);
	/* The pair is finished: ok = 1 all bytes delivered, else why in reason. */
	void (*done)(struct datachan *dc, int ok, const char *reason, void *arg);
};

/*
 * timeout_s bounds the wait for each side to connect and the longest the pair
 * may stall without moving a byte (0: no bound, the owner watches). tag
 * prefixes log lines.
 */
struct datachan *datachan_new(struct event_base *base, unsigned timeout_s,
                              const struct datachan_cbs *cbs, void *arg, const char *tag);

/*
 * Listen on addr with a port from [lo, hi]; accept one connection whose
 * source IP equals allowed's IP (others are closed and logged). Returns 0
 * and the bound port, or -1.
 */
int datachan_listen(struct datachan *dc, enum dc_side side, const struct sockaddr *addr,
                    uint16_t lo, uint16_t hi, const struct sockaddr *allowed, uint16_t *port);

/* Count data connections refused (wrong peer) in *counter; log them at the pace of *lim. */
void datachan_count_refused(struct datachan *dc, stat_counter *counter, struct log_limit *lim);

/*
 * Connect out to addr (non-blocking), from src (its port ignored) if not
 * NULL. Returns 0 or -1 (immediate failure, errno set).
 */
int datachan_connect(struct datachan *dc, enum dc_side side, const struct sockaddr *addr,
                     const struct sockaddr *src);

/* Take a connected socket as a side (no side_ready callback for it). */
int datachan_adopt(struct datachan *dc, enum dc_side side, int fd);

int datachan_side_connected(const struct datachan *dc, enum dc_side side);

/*
 * Speak TLS on a side: ssl (owned by dc from now on) acts as server
 * (server = 1, the proxy toward its client) or client (toward the backend).
 * With require_reuse the handshake must resume a session, or the pair
 * fails with the reason DATACHAN_NO_REUSE. The handshake starts when the
 * pump starts (after the transfer command), and a TLS side gets
 * close_notify before its EOF. A TLS peer that closes without close_notify
 * fails the pair (the data may be cut), and then no close_notify goes to
 * the other side. Sessions the backend issues on a TLS-client side count
 * (tls_keep_sessions) only if the pair ends cleanly. A pair with a TLS
 * side moves bytes through OpenSSL instead of splice(2), except a plain
 * source into a side whose sending the kernel does (kTLS): that splices.
 */
#define DATACHAN_NO_REUSE                                                                          \
	"the client data connection did not resume the control connection's TLS session"

void datachan_set_tls(struct datachan *dc, enum dc_side side, struct ssl_st *ssl, int server,
                      int require_reuse);

/*
 * Let a TLS-client side start its handshake. Set by datachan_set_tls on
 * the backend side: the backend must have answered the transfer command
 * (1xx) first, or some servers (pyftpdlib) reset a data connection whose
 * ClientHello comes before they expect it.
 */
void datachan_tls_go(struct datachan *dc);

/*
 * Offer kernel TLS (kTLS) to OpenSSL on the TLS sides of data connections
 * from now on (process-wide, [global] ktls; on by default). Where the
 * kernel has the tls module, it encrypts what the pair sends there (not what
 * it receives: OpenSSL 3.0's kTLS receiving breaks on Linux 6.x)
 * and the pump writes plaintext to the socket; elsewhere OpenSSL's own
 * record layer does it, as without.
 */
void datachan_set_ktls(int on);

/*
 * Whether this kernel offers kernel TLS: 1 yes, 0 no (the tls module is
 * not loaded and cannot be, errno-like reason in why), -1 unknown. Asking
 * loads the module when the process may (CAP_NET_ADMIN).
 */
int datachan_ktls_available(char *why, size_t whylen);

/*
 * The transfer flows in direction dir (1: backend -> client, a download).
 * The pair is finished once dir has seen its EOF, passed it on and its
 * sink has acknowledged every byte (an empty send queue, SIOCOUTQ), without
 * waiting for the other direction's EOF: a client may wait for the final
 * reply before it closes its data connection. Without it, both EOFs.
 */
void datachan_finish_on(struct datachan *dc, int dir);

/* Allow the pump to run once both sides are connected. */
void datachan_start(struct datachan *dc);

/* Bytes moved so far: [0] client->backend, [1] backend->client. */
uint64_t datachan_bytes(const struct datachan *dc, int dir);
/* When bytes of direction dir last moved (util.h's now_ms() clock), 0 never. */
uint64_t datachan_last_ms(const struct datachan *dc, int dir);

/* Close everything now, no callback. Safe from inside a callback. */
void datachan_free(struct datachan *dc);

#endif
