/*
 * proxyproto: pure parse and emit of the PROXY protocol header, v1 (text) and
 * v2 (binary), as HAProxy's proxy-protocol.txt specifies it. No I/O, no
 * allocation: it reads the caller's buffer and writes the caller's structs.
 */
#ifndef FTPGATE_PROXYPROTO_H
#define FTPGATE_PROXYPROTO_H

#include <stddef.h>
#include <sys/socket.h>

/* Longest v1 line, CRLF included (spec 2.1: "PROXY UNKNOWN" with two IPv6 addresses). */
#define PP_V1_MAX 107
/* Fixed part of a v2 header: signature, version/command, family/transport, length. */
#define PP_V2_FIXED 16
/*
 * Longest header accepted, v2 TLVs included. The v2 length field allows
 * 65551 bytes; what real balancers send (addresses, SNI, unique id, TLS
 * details) stays far below this, so a longer header is refused as soon as its
 * length field is seen. A caller's buffer of PP_MAX_HEADER bytes always fits.
 */
#define PP_MAX_HEADER 4096
/* Buffer that holds anything pp_emit_v1() or pp_emit_v2() writes (v1 with NUL). */
#define PP_EMIT_MAX (PP_V1_MAX + 1)

/* Which versions pp_parse() accepts (a site's proxy_protocol = v1 | v2 | any). */
#define PP_ACCEPT_V1 1u
#define PP_ACCEPT_V2 2u
#define PP_ACCEPT_ANY (PP_ACCEPT_V1 | PP_ACCEPT_V2)

/* Results below 0; pp_strerror() says each in words. */
enum pp_error {
	PP_E_ARG = -1,          /* out is NULL, or buf is NULL with len > 0 */
	PP_E_SIGNATURE = -2,    /* starts with neither "PROXY " nor the v2 signature */
	PP_E_NOT_ACCEPTED = -3, /* a valid signature of a version not in accept */
	PP_E_TRUNCATED = -4,    /* for the caller: peer closed or timed out mid-header */
	PP_E_V1_TOO_LONG = -5,  /* no CRLF within PP_V1_MAX bytes */
	PP_E_V1_BARE_CRLF = -6, /* a CR or LF that is not part of the closing CRLF */
	PP_E_V1_PROTO = -7,     /* second word not TCP4, TCP6 or UNKNOWN */
	PP_E_V1_FIELDS = -8,    /* TCP4/TCP6 line without exactly four fields after it */
	PP_E_V1_SRC_ADDR = -9,  /* source address malformed or of the other family */
	PP_E_V1_DST_ADDR = -10,
	PP_E_V1_SRC_PORT = -11, /* not 0..65535 in decimal without leading zeros */
	PP_E_V1_DST_PORT = -12,
	PP_E_V2_VERSION = -13,    /* version nibble is not 2 */
	PP_E_V2_COMMAND = -14,    /* command nibble is neither LOCAL nor PROXY */
	PP_E_V2_FAMILY = -15,     /* address family nibble above 3 (AF_UNIX is 3) */
	PP_E_V2_TRANSPORT = -16,  /* transport nibble above 2 (DGRAM is 2) */
	PP_E_V2_TOO_LONG = -17,   /* length field makes the header longer than PP_MAX_HEADER */
	PP_E_V2_ADDR_SHORT = -18, /* length too small for the family's address block */
	PP_E_V2_TLV_HEADER = -19, /* 1 or 2 bytes left after the last TLV: no room for a TLV */
	PP_E_V2_TLV_LENGTH = -20, /* a TLV's value runs past the end of the header */
};

enum pp_command {
	PP_CMD_LOCAL = 0, /* v2 LOCAL: the balancer's own connection (health check) */
	PP_CMD_PROXY = 1, /* a relayed connection (every v1 header) */
};

struct pp_header {
	int version;             /* 1 or 2 */
	enum pp_command command; /* PP_CMD_LOCAL only in v2 */
	/*
	 * AF_INET or AF_INET6: src is the client, dst the address it connected
	 * to, both with ports. AF_UNSPEC: the header carries no address to use
	 * (v1 UNKNOWN, v2 LOCAL, v2 UNSPEC, and v2 AF_UNIX or UDP, which the spec
	 * lets a receiver treat as UNSPEC): use the connection's own endpoints.
	 */
	int family;
	struct sockaddr_storage src, dst;
	/*
	 * After a 0 ("need more"): how many more bytes the caller may read
	 * without reading past the end of the header (at least 1). The only
	 * field set on a 0 return.
	 */
	size_t want;
};

/*
 * Parse the header at the start of buf[0..len) (len may be any prefix of
 * what arrived). Returns:
 *   > 0  the header is complete and valid, and is that many bytes long:
 *        the bytes after it belong to the application (FTP, TLS);
 *   0    need more bytes: read at most out->want more, then call again with
 *        the longer buffer (a caller that reads exactly out->want bytes at a
 *        time never reads a byte past the header);
 *   < 0  an enum pp_error: close the connection.
 * The verdict is reached at the earliest byte that decides it: a prefix of
 * a bad header is bad as soon as its first wrong byte is in (a v2 length
 * above PP_MAX_HEADER after 16 bytes), and bytes beyond the header never
 * change the result. accept is a mask of PP_ACCEPT_V1 and PP_ACCEPT_V2.
 */
int pp_parse(const void *buf, size_t len, unsigned accept, struct pp_header *out);

/* A short sentence for a pp_parse() result (any int; "ok" for >= 0). */
const char *pp_strerror(int code);

/*
 * Emit a header for a connection from src (the client) to dst (the address
 * it connected to). Both AF_INET: TCP4 / IPv4. Both AF_INET or AF_INET6 but
 * not both AF_INET: TCP6 / IPv6, the IPv4 one written as ::ffff:a.b.c.d.
 * Anything else (NULL, AF_UNIX): v1 "PROXY UNKNOWN", v2 LOCAL when both are
 * NULL (a connection of ftpgate's own), else v2 PROXY with family UNSPEC.
 * Returns the header length, or -1 if size is too small. pp_emit_v1 also
 * writes a NUL after the line (not counted); PP_EMIT_MAX always suffices.
 */
int pp_emit_v1(char *buf, size_t size, const struct sockaddr *src, const struct sockaddr *dst);
int pp_emit_v2(void *buf, size_t size, const struct sockaddr *src, const struct sockaddr *dst);

#endif
