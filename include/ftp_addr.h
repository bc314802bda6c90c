/* ftp_addr: pure parse/format of FTP data addresses (RFC 959, RFC 2428). */
#ifndef FTPGATE_FTP_ADDR_H
#define FTPGATE_FTP_ADDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <netinet/in.h>

/*
 * Parse the text of a 227 reply (the whole first line, e.g.
 * "227 Entering Passive Mode (192,0,2,1,195,80)."). The six numbers may
 * appear with or without parentheses anywhere after the code (servers
 * vary); each must be 0..255 with no more than 3 digits. Returns 0 and
 * fills *sin (AF_INET, network byte order), or -1.
 */
int ftp_parse_227(const char *text, size_t len, struct sockaddr_in *sin);

/*
 * Parse the text of a 229 reply: "229 Entering Extended Passive Mode
 * (|||6446|)". The delimiter is the first character after '(' (any
 * printable ASCII 33..126 except digits); net-prt and net-addr must be empty;
 * the port must be 1..65535. Returns 0 and the port (host order), or -1.
 */
int ftp_parse_229(const char *text, size_t len, uint16_t *port);

/* Parse a PORT argument "h1,h2,h3,h4,p1,p2". Returns 0 or -1. */
int ftp_parse_port(const char *arg, size_t len, struct sockaddr_in *sin);

/*
 * Parse an EPRT argument "|1|192.0.2.1|6446|" or "|2|2001:db8::1|6446|"
 * (any delimiter 33..126 as in RFC 2428). Port 1..65535. Fills *ss with an
 * AF_INET or AF_INET6 address. Returns 0, -1 if malformed, -2 if the
 * protocol number is not 1 or 2 (the caller answers 522).
 */
int ftp_parse_eprt(const char *arg, size_t len, struct sockaddr_storage *ss);

/*
 * Formatters: write a NUL-terminated line with trailing CRLF into buf.
 * They return the length written (without NUL), or -1 if buf is too small
 * or the address family does not fit the form.
 */
/* "227 Entering Passive Mode (h1,h2,h3,h4,p1,p2).\r\n"; sa must be AF_INET. */
int ftp_format_227(char *buf, size_t size, const struct sockaddr_in *sin);
/* "229 Entering Extended Passive Mode (|||port|)\r\n" */
int ftp_format_229(char *buf, size_t size, uint16_t port);
/* "PORT h1,h2,h3,h4,p1,p2\r\n"; AF_INET only. */
int ftp_format_port(char *buf, size_t size, const struct sockaddr_in *sin);
/* "EPRT |1|addr|port|\r\n" or "EPRT |2|addr|port|\r\n". */
int ftp_format_eprt(char *buf, size_t size, const struct sockaddr *sa);

/*
 * If sa is an IPv4-mapped IPv6 address (::ffff:a.b.c.d), rewrite it in place
 * as AF_INET (same port). Returns 1 if rewritten, else 0.
 */
int ftp_addr_unmap(struct sockaddr_storage *ss);

/* 1 if both addresses have the same family and IP (ports ignored). */
int ftp_addr_same_ip(const struct sockaddr *a, const struct sockaddr *b);

/*
 * With allow_foreign_address, may an active data connection go to a, an
 * address that is not the client's own? Never to the unspecified address
 * (0.0.0.0, ::), a multicast or the broadcast address, loopback (unless the
 * client itself is on loopback), the backend's address, or the proxy's own
 * (local: where the client connected to; pub: public_address, may be NULL).
 * Returns NULL if allowed, else why not (a static string).
 */
const char *ftp_addr_foreign_refused(const struct sockaddr *a, const struct sockaddr *client,
                                     const struct sockaddr *backend, const struct sockaddr *local,
                                     const struct sockaddr *pub);

#endif
