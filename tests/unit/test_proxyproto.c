/*
 * Unit tests for proxyproto (TAP): the examples of HAProxy's
 * proxy-protocol.txt, headers captured from HAProxy 2.6 (send-proxy,
 * send-proxy-v2, proxy-v2-options unique-id,crc32c, a LOCAL health check),
 * every error, the incremental contract, and emit -> parse round trips.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "proxyproto.h"
#include "tap.h"
#include "testutil.h"

#define SIG "0d0a0d0a000d0a515549540a"

/* Captured from Debian's haproxy 2.6.12 (tests/fuzz/capture_corpus.py); each followed by
 * the client's first bytes "USER anonymous\r\n". */
static const char hap_v1[] = "PROXY TCP4 127.0.0.1 127.0.0.1 40806 40489\r\n";
static const char hap_v1_six[] = "PROXY TCP6 ::1 ::1 39540 35727\r\n";
static const char hap_v2[] = SIG "2111000c7f0000017f000001bbaac651";
static const char hap_v2_six[] =
    SIG "21210024000000000000000000000000000000010000000000000000000000000000"
        "0001eb2aacaf";
/* unique-id (type 5) and crc32c (type 3) TLVs. */
static const char hap_v2_tlv[] =
    SIG "211100447f0000017f000001c53abb29030004e8c71d9f05002e37463030303030313a43"
        "3533415f37463030303030313a424232395f36423132454331455f303030323a33363535";
/* The LOCAL header of a health check (check-send-proxy). */
static const char hap_v2_local[] = SIG "20000000";
static const char first_cmd[] = "USER anonymous\r\n";

/* Hex text to bytes; aborts on odd or bad input (test data only). */
static size_t unhex(const char *hex, unsigned char *out, size_t size)
{
	size_t n = strlen(hex) / 2;

	if (strlen(hex) % 2 != 0 || n > size)
		abort();
	for (size_t i = 0; i < n; i++) {
		unsigned v;

		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			abort();
		out[i] = (unsigned char)v;
	}
	return n;
}

/* Parse n bytes from an exact-size heap copy, so ASan sees any read past n. */
static int ppn(const void *b, size_t n, unsigned accept, struct pp_header *h)
{
	char *p = exact(b, n);
	int r = pp_parse(p, n, accept, h);

	free(p);
	return r;
}

static int pps(const char *s, struct pp_header *h)
{
	return ppn(s, strlen(s), PP_ACCEPT_ANY, h);
}

static int pphex(const char *hex, unsigned accept, struct pp_header *h)
{
	unsigned char b[PP_MAX_HEADER + 64];
	size_t n = unhex(hex, b, sizeof(b));

	return ppn(b, n, accept, h);
}

/*
 * The incremental contract for a buffer whose complete parse gives r:
 * every shorter prefix that is still undecided says 0 with a want that does
 * not reach past the header; a reader that reads exactly want bytes at a
 * time reaches the verdict without reading a byte past the header; once a
 * prefix is decided (bad, or complete), every longer one says the same.
 */
static int incremental_ok(const unsigned char *b, size_t n, unsigned accept)
{
	struct pp_header h;
	int r = ppn(b, n, accept, &h), decided = 0;
	size_t k = 0;

	for (size_t i = 0; i <= n; i++) {
		int ri = ppn(b, i, accept, &h);

		if (ri == 0 && decided)
			return 0;
		if (ri == 0 && (h.want == 0 || (r > 0 && i + h.want > (size_t)r)))
			return 0;
		if (ri != 0 && ri != r)
			return 0;
		decided = ri != 0;
	}
	/* A reader that asks for want bytes at a time (and may get fewer). */
	for (;;) {
		int rk = ppn(b, k, accept, &h);

		if (rk != 0)
			return rk == r && (rk < 0 || (size_t)rk == k);
		if (k == n)
			return r == 0;
		k = k + h.want < n ? k + h.want : n;
	}
}

static int incremental_hex(const char *hex, unsigned accept)
{
	unsigned char b[PP_MAX_HEADER + 64];

	return incremental_ok(b, unhex(hex, b, sizeof(b)), accept);
}

static int incremental_str(const char *s)
{
	return incremental_ok((const unsigned char *)s, strlen(s), PP_ACCEPT_ANY);
}

static void test_spec_v1(void)
{
	struct pp_header h;
	const char *ex = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
	                 "GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";
	const char *max4 = "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
	const char *max6 = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	                   "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
	const char *worst = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	                    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
	char over[PP_V1_MAX + 8];

	is_int(pps(ex, &h), 47, "spec 2.1 example: header is the first line");
	is_int(h.version, 1, "  version 1");
	is_int(h.command, PP_CMD_PROXY, "  PROXY");
	is_int(h.family, AF_INET, "  AF_INET");
	is_str(ssstr(&h.src), "192.168.0.1:56324", "  source");
	is_str(ssstr(&h.dst), "192.168.0.11:443", "  destination");

	is_int(strlen(max4), 56, "spec: longest TCP4 line is 56 bytes");
	is_int(pps(max4, &h), 56, "  parsed");
	is_str(ssstr(&h.src), "255.255.255.255:65535", "  source");
	is_int(strlen(max6), 104, "spec: longest TCP6 line is 104 bytes");
	is_int(pps(max6, &h), 104, "  parsed");
	is_int(h.family, AF_INET6, "  AF_INET6");
	is_str(ssstr(&h.dst), "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "  destination");
	is_int(pps("PROXY UNKNOWN\r\n", &h), 15, "spec: short UNKNOWN is 15 bytes");
	is_int(h.family, AF_UNSPEC, "  no address: AF_UNSPEC");
	is_int(strlen(worst), 107, "spec: worst case is 107 bytes");
	is_int(pps(worst, &h), 107, "  accepted, rest ignored");
	is_int(h.family, AF_UNSPEC, "  AF_UNSPEC");
	is_int(pps("PROXY UNKNOWN whatever\x01\xff is ignored\r\n", &h), 37,
	       "UNKNOWN: anything before the CRLF is ignored");

	/* 108 bytes before the CRLF: the CRLF is not in the first 107. */
	memcpy(over, worst, 105);
	memcpy(over + 105, "5\r\n", 4);
	is_int(pps(over, &h), PP_E_V1_TOO_LONG, "108-byte line: too long");
	memset(over, 'x', sizeof(over));
	memcpy(over, "PROXY UNKNOWN ", 14);
	is_int(ppn(over, PP_V1_MAX, PP_ACCEPT_ANY, &h), PP_E_V1_TOO_LONG,
	       "107 bytes without CRLF: too long, not need more");
	is_int(ppn(over, PP_V1_MAX - 1, PP_ACCEPT_ANY, &h), 0, "106 bytes without CRLF: need more");
	is_int(h.want, 1, "  want 1: never past byte 107");
	ok(incremental_str(ex) && incremental_str(max4) && incremental_str(max6) &&
	       incremental_str(worst) && incremental_str("PROXY UNKNOWN\r\n") &&
	       incremental_ok((const unsigned char *)over, PP_V1_MAX, PP_ACCEPT_ANY),
	   "v1 spec examples: incremental contract");
}

static void test_haproxy(void)
{
	struct pp_header h;
	unsigned char b[256];
	size_t n;

	is_int(pps(hap_v1, &h), 44, "haproxy send-proxy");
	is_str(ssstr(&h.src), "127.0.0.1:40806", "  source");
	is_str(ssstr(&h.dst), "127.0.0.1:40489", "  destination");
	is_int(pps(hap_v1_six, &h), 32, "haproxy send-proxy, IPv6");
	is_str(ssstr(&h.src), "[::1]:39540", "  source");
	is_str(ssstr(&h.dst), "[::1]:35727", "  destination");

	n = unhex(hap_v2, b, sizeof(b));
	memcpy(b + n, first_cmd, strlen(first_cmd));
	is_int(ppn(b, n + strlen(first_cmd), PP_ACCEPT_ANY, &h), 28,
	       "haproxy send-proxy-v2: 28 bytes, the command after it untouched");
	is_int(h.version, 2, "  version 2");
	is_int(h.command, PP_CMD_PROXY, "  PROXY");
	is_str(ssstr(&h.src), "127.0.0.1:48042", "  source");
	is_str(ssstr(&h.dst), "127.0.0.1:50769", "  destination");
	is_int(pphex(hap_v2_six, PP_ACCEPT_V2, &h), 52, "haproxy send-proxy-v2, IPv6");
	is_str(ssstr(&h.src), "[::1]:60202", "  source");
	is_str(ssstr(&h.dst), "[::1]:44207", "  destination");
	is_int(pphex(hap_v2_tlv, PP_ACCEPT_V2, &h), 84,
	       "haproxy with unique-id and crc32c TLVs: skipped");
	is_str(ssstr(&h.src), "127.0.0.1:50490", "  source");
	is_int(pphex(hap_v2_local, PP_ACCEPT_V2, &h), 16, "haproxy health check: LOCAL");
	is_int(h.command, PP_CMD_LOCAL, "  LOCAL");
	is_int(h.family, AF_UNSPEC, "  no address: AF_UNSPEC");
	ok(incremental_str(hap_v1) && incremental_str(hap_v1_six) &&
	       incremental_hex(hap_v2, PP_ACCEPT_ANY) &&
	       incremental_hex(hap_v2_six, PP_ACCEPT_V2) &&
	       incremental_hex(hap_v2_tlv, PP_ACCEPT_ANY) &&
	       incremental_hex(hap_v2_local, PP_ACCEPT_ANY),
	   "haproxy headers: incremental contract");
}

static void test_v2_families(void)
{
	struct pp_header h;
	char hex[1024];
	char unix216[433];

	memset(unix216, 'a', 432);
	unix216[432] = '\0';
	is_int(pphex(SIG "211200"
	                 "0c"
	                 "c0000201c6336401c3500015",
	             PP_ACCEPT_ANY, &h),
	       28, "v2 UDP over IPv4 (0x12): valid");
	is_int(h.family, AF_UNSPEC, "  not TCP: AF_UNSPEC (use the connection)");
	is_int(pphex(SIG "212200"
	                 "24"
	                 "20010db8000000000000000000000001"
	                 "20010db8000000000000000000000002"
	                 "c3500015",
	             PP_ACCEPT_ANY, &h),
	       52, "v2 UDP over IPv6 (0x22): valid");
	is_int(h.family, AF_UNSPEC, "  AF_UNSPEC");
	snprintf(hex, sizeof(hex), SIG "213100d8%s", unix216);
	is_int(pphex(hex, PP_ACCEPT_ANY, &h), 232, "v2 UNIX stream (0x31), 216 bytes: valid");
	is_int(h.family, AF_UNSPEC, "  AF_UNSPEC");
	snprintf(hex, sizeof(hex), SIG "213200d8%s", unix216);
	is_int(pphex(hex, PP_ACCEPT_ANY, &h), 232, "v2 UNIX datagram (0x32): valid");
	is_int(pphex(SIG "21000000", PP_ACCEPT_ANY, &h), 16, "v2 PROXY UNSPEC (0x00), no address");
	is_int(h.command, PP_CMD_PROXY, "  PROXY");
	is_int(h.family, AF_UNSPEC, "  AF_UNSPEC");
	is_int(pphex(SIG "21000005"
	                 "0102030405",
	             PP_ACCEPT_ANY, &h),
	       21, "v2 PROXY UNSPEC with 5 bytes: the block is ignored, not walked as TLVs");
	is_int(pphex(SIG "21100003"
	                 "ffffff",
	             PP_ACCEPT_ANY, &h),
	       19, "v2 AF_INET with transport UNSPEC (0x10): ignored like UNSPEC");
	is_int(pphex(SIG "20ff000c"
	                 "c0000201c6336401c3500015",
	             PP_ACCEPT_ANY, &h),
	       28, "v2 LOCAL: the family byte and the block are ignored");
	is_int(h.command, PP_CMD_LOCAL, "  LOCAL");
	is_int(h.family, AF_UNSPEC, "  AF_UNSPEC");
	is_int(pphex(SIG "2011000c"
	                 "c0000201c6336401c3500015",
	             PP_ACCEPT_ANY, &h),
	       28, "v2 LOCAL with a TCP4 address block: addresses not used");
	is_int(h.family, AF_UNSPEC, "  AF_UNSPEC");
}

static void test_v2_tlvs(void)
{
	struct pp_header h;
	/* 192.0.2.1:50000 -> 198.51.100.1:21, then ALPN "ftp", AUTHORITY "ftp.example",
	 * an empty NOOP, and an SSL TLV (client 0x01, verify 0) holding VERSION and CIPHER. */
	const char *tlvs = SIG "21110043"
	                       "c0000201c6336401c3500015"
	                       "010003667470"
	                       "02000b6674702e6578616d706c65"
	                       "040000"
	                       "20001d"
	                       "0100000000"
	                       "210007544c5376312e33"
	                       "23000b5443502d4145532d313238";

	is_int(pphex(tlvs, PP_ACCEPT_ANY, &h), 83, "v2 with ALPN, AUTHORITY, NOOP, SSL TLVs");
	is_str(ssstr(&h.src), "192.0.2.1:50000", "  source");
	is_str(ssstr(&h.dst), "198.51.100.1:21", "  destination");
	ok(incremental_hex(tlvs, PP_ACCEPT_ANY), "  incremental contract");
	is_int(pphex(SIG "2111000f"
	                 "c0000201c6336401c3500015"
	                 "040000",
	             PP_ACCEPT_ANY, &h),
	       31, "v2 with a zero-length TLV that ends exactly at the end");
	is_int(pphex(SIG "2111000d"
	                 "c0000201c6336401c3500015"
	                 "04",
	             PP_ACCEPT_ANY, &h),
	       PP_E_V2_TLV_HEADER, "1 byte after the addresses: TLV header cut off");
	is_int(pphex(SIG "2111000e"
	                 "c0000201c6336401c3500015"
	                 "0400",
	             PP_ACCEPT_ANY, &h),
	       PP_E_V2_TLV_HEADER, "2 bytes after the addresses: TLV header cut off");
	is_int(pphex(SIG "21110011"
	                 "c0000201c6336401c3500015"
	                 "040000"
	                 "0100",
	             PP_ACCEPT_ANY, &h),
	       PP_E_V2_TLV_HEADER, "2 bytes after a good TLV: TLV header cut off");
	is_int(pphex(SIG "2111000f"
	                 "c0000201c6336401c3500015"
	                 "040001",
	             PP_ACCEPT_ANY, &h),
	       PP_E_V2_TLV_LENGTH, "TLV value 1 byte past the end");
	is_int(pphex(SIG "21110012"
	                 "c0000201c6336401c3500015"
	                 "04ffff"
	                 "aabbcc",
	             PP_ACCEPT_ANY, &h),
	       PP_E_V2_TLV_LENGTH, "TLV length 65535 in a 19-byte block");
	is_int(pphex(SIG "21210027"
	                 "20010db8000000000000000000000001"
	                 "20010db8000000000000000000000002"
	                 "c3500015"
	                 "010005",
	             PP_ACCEPT_ANY, &h),
	       PP_E_V2_TLV_LENGTH, "IPv6: TLV value past the end");
}

/* One case: input, accepted versions, wanted result. */
struct bad {
	const char *in; /* text, or hex if hex is set */
	int hex;
	unsigned accept;
	int want;
	const char *what;
};

static const struct bad bads[] = {
    {"GET / HTTP/1.1\r\n", 0, PP_ACCEPT_ANY, PP_E_SIGNATURE, "HTTP request"},
    {"USER anonymous\r\n", 0, PP_ACCEPT_ANY, PP_E_SIGNATURE, "an FTP command"},
    {"PROXX", 0, PP_ACCEPT_ANY, PP_E_SIGNATURE, "PROXX: bad at its 5th byte"},
    {"PROXY\r\n", 0, PP_ACCEPT_ANY, PP_E_SIGNATURE, "PROXY without its space"},
    {"proxy TCP4", 0, PP_ACCEPT_ANY, PP_E_SIGNATURE, "lower-case proxy"},
    {"160301", 1, PP_ACCEPT_ANY, PP_E_SIGNATURE, "a TLS ClientHello"},
    {"0d0a0d0a000d0a515549540b", 1, PP_ACCEPT_ANY, PP_E_SIGNATURE, "v2 signature, last byte"},
    {"0d0a0d0a010d", 1, PP_ACCEPT_ANY, PP_E_SIGNATURE, "v2 signature without its NUL"},
    {"PROXY TCP4 192.0.2.1 198.51.100.1 1 2\r\n", 0, PP_ACCEPT_V2, PP_E_NOT_ACCEPTED,
     "v1 on a v2-only site"},
    {"PROXY ", 0, PP_ACCEPT_V2, PP_E_NOT_ACCEPTED, "  decided after \"PROXY \""},
    {SIG "20000000", 1, PP_ACCEPT_V1, PP_E_NOT_ACCEPTED, "v2 on a v1-only site"},
    {SIG, 1, PP_ACCEPT_V1, PP_E_NOT_ACCEPTED, "  decided after the 12-byte signature"},
    {"PROXY TCP4 192.0.2.1 198.51.100.1 1 2\n", 0, PP_ACCEPT_ANY, PP_E_V1_BARE_CRLF,
     "v1 ending in LF"},
    {"PROXY TCP4 192.0.2.1 198.51.100.1 1 2\r\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_BARE_CRLF,
     "v1 CR CR LF"},
    {"PROXY TCP4 192.0.2.1\r198.51.100.1 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_BARE_CRLF,
     "v1 CR inside"},
    {"PROXY UNKNOWN\nx\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_BARE_CRLF, "v1 UNKNOWN LF inside"},
    {"PROXY \r\n", 0, PP_ACCEPT_ANY, PP_E_V1_PROTO, "v1 no protocol"},
    {"PROXY TCP5 192.0.2.1 198.51.100.1 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_PROTO, "v1 TCP5"},
    {"PROXY tcp4 192.0.2.1 198.51.100.1 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_PROTO,
     "v1 lower-case tcp4"},
    {"PROXY UDP4 192.0.2.1 198.51.100.1 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_PROTO, "v1 UDP4"},
    {"PROXY UNKNOWNX\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_PROTO, "v1 UNKNOWNX"},
    {"PROXY  TCP4 192.0.2.1 198.51.100.1 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_PROTO,
     "v1 two spaces before the protocol"},
    {"PROXY TCP4\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_FIELDS, "v1 TCP4 alone"},
    {"PROXY TCP4 192.0.2.1 198.51.100.1 1\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_FIELDS,
     "v1 one port missing"},
    {"PROXY TCP4 192.0.2.1 198.51.100.1 1 2 3\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_FIELDS,
     "v1 extra field"},
    {"PROXY TCP4 192.0.2.1 198.51.100.1 1 2 \r\n", 0, PP_ACCEPT_ANY, PP_E_V1_FIELDS,
     "v1 trailing space"},
    {"PROXY TCP4 192.0.2.1  198.51.100.1 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_FIELDS,
     "v1 two spaces between fields"},
    {"PROXY TCP4 192.0.2.01 198.51.100.1 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_SRC_ADDR,
     "v1 leading zero in the source"},
    {"PROXY TCP4 192.0.2.256 198.51.100.1 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_SRC_ADDR,
     "v1 source octet 256"},
    {"PROXY TCP4 192.0.2 198.51.100.1 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_SRC_ADDR,
     "v1 source with 3 parts"},
    {"PROXY TCP4 192.0.2.1.5 198.51.100.1 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_SRC_ADDR,
     "v1 source with 5 parts"},
    {"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_SRC_ADDR,
     "v1 TCP4 with an IPv6 source"},
    {"PROXY TCP4 0x7f.0.0.1 198.51.100.1 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_SRC_ADDR,
     "v1 hex octet"},
    {"PROXY TCP4 192.0.2.1 198.51.100.1111 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_DST_ADDR,
     "v1 destination octet of 4 digits"},
    {"PROXY TCP4 192.0.2.1 198..100.1 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_DST_ADDR,
     "v1 destination empty octet"},
    {"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_SRC_ADDR,
     "v1 TCP6 with an IPv4 source"},
    {"PROXY TCP6 2001:db8::1 2001:db8:::2 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_DST_ADDR,
     "v1 TCP6 destination with :::"},
    {"PROXY TCP6 2001:db8::1%lo 2001:db8::2 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_SRC_ADDR,
     "v1 TCP6 with a scope"},
    {"PROXY TCP6 1:2:3:4:5:6:7:8:9 2001:db8::2 1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_SRC_ADDR,
     "v1 TCP6 with 9 groups"},
    {"PROXY TCP4 192.0.2.1 198.51.100.1 65536 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_SRC_PORT,
     "v1 source port 65536"},
    {"PROXY TCP4 192.0.2.1 198.51.100.1 080 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_SRC_PORT,
     "v1 source port with a leading zero"},
    {"PROXY TCP4 192.0.2.1 198.51.100.1 -1 2\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_SRC_PORT,
     "v1 negative source port"},
    {"PROXY TCP4 192.0.2.1 198.51.100.1 1 2x\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_DST_PORT,
     "v1 destination port 2x"},
    {"PROXY TCP4 192.0.2.1 198.51.100.1 1 9999999999\r\n", 0, PP_ACCEPT_ANY, PP_E_V1_DST_PORT,
     "v1 destination port of 10 digits"},
    {SIG "1111000c", 1, PP_ACCEPT_ANY, PP_E_V2_VERSION, "v2 version 1"},
    {SIG "31", 1, PP_ACCEPT_ANY, PP_E_V2_VERSION, "v2 version 3, decided at byte 13"},
    {SIG "22", 1, PP_ACCEPT_ANY, PP_E_V2_COMMAND, "v2 command 2"},
    {SIG "2f11000c", 1, PP_ACCEPT_ANY, PP_E_V2_COMMAND, "v2 command 15"},
    {SIG "2141", 1, PP_ACCEPT_ANY, PP_E_V2_FAMILY, "v2 family 4"},
    {SIG "21f1000c", 1, PP_ACCEPT_ANY, PP_E_V2_FAMILY, "v2 family 15"},
    {SIG "2113", 1, PP_ACCEPT_ANY, PP_E_V2_TRANSPORT, "v2 transport 3"},
    {SIG "211f000c", 1, PP_ACCEPT_ANY, PP_E_V2_TRANSPORT, "v2 transport 15"},
    {SIG "2111ffff", 1, PP_ACCEPT_ANY, PP_E_V2_TOO_LONG, "v2 length 65535: refused after 16 bytes"},
    {SIG "20000ff1", 1, PP_ACCEPT_ANY, PP_E_V2_TOO_LONG, "v2 LOCAL of 4097 bytes"},
    {SIG "2111000b"
         "c0000201c6336401c35000",
     1, PP_ACCEPT_ANY, PP_E_V2_ADDR_SHORT, "v2 TCP4 with 11 address bytes"},
    {SIG "21110000", 1, PP_ACCEPT_ANY, PP_E_V2_ADDR_SHORT, "v2 TCP4 with no address"},
    {SIG "2121000c"
         "c0000201c6336401c3500015",
     1, PP_ACCEPT_ANY, PP_E_V2_ADDR_SHORT, "v2 TCP6 with 12 address bytes"},
    {SIG "21310010"
         "00000000000000000000000000000000",
     1, PP_ACCEPT_ANY, PP_E_V2_ADDR_SHORT, "v2 UNIX with 16 address bytes"},
};

static void test_errors(void)
{
	struct pp_header h;
	char big[PP_MAX_HEADER * 2 + 64];

	for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
		const struct bad *c = &bads[i];
		int r =
		    c->hex ? pphex(c->in, c->accept, &h) : ppn(c->in, strlen(c->in), c->accept, &h);
		unsigned char b[512];
		size_t n;

		is_int(r, c->want, "%s: %s", c->what, pp_strerror(c->want));
		n = c->hex ? unhex(c->in, b, sizeof(b)) : strlen(c->in);
		if (!c->hex)
			memcpy(b, c->in, n);
		ok(incremental_ok(b, n, c->accept), "  incremental contract");
	}

	/* The largest v2 header accepted, and one byte more. */
	snprintf(big, sizeof(big), SIG "2000%04x", PP_MAX_HEADER - PP_V2_FIXED);
	is_int(pphex(big, PP_ACCEPT_ANY, &h), 0, "v2 of PP_MAX_HEADER bytes: need more");
	is_int(h.want, PP_MAX_HEADER - PP_V2_FIXED, "  want the rest of it exactly");
	memset(big + strlen(big), '0', 2 * (PP_MAX_HEADER - PP_V2_FIXED));
	big[2 * PP_MAX_HEADER] = '\0';
	is_int(pphex(big, PP_ACCEPT_ANY, &h), PP_MAX_HEADER, "  complete");
	snprintf(big, sizeof(big), SIG "2000%04x", PP_MAX_HEADER - PP_V2_FIXED + 1);
	is_int(pphex(big, PP_ACCEPT_ANY, &h), PP_E_V2_TOO_LONG, "one byte more: too long");

	is_int(pp_parse(NULL, 1, PP_ACCEPT_ANY, &h), PP_E_ARG, "NULL buffer with a length");
	is_int(pp_parse("PROXY ", 6, PP_ACCEPT_ANY, NULL), PP_E_ARG, "NULL out");
	is_int(pp_parse(NULL, 0, PP_ACCEPT_ANY, &h), 0, "nothing yet: need more");
	is_int(h.want, 15, "  want 15 (the shortest header)");
	is_int(pp_parse(NULL, 0, PP_ACCEPT_V2, &h), 0, "nothing yet, v2 only");
	is_int(h.want, 16, "  want 16");
	is_int(pphex(SIG "2111", PP_ACCEPT_ANY, &h), 0, "v2 after 14 bytes: need more");
	is_int(h.want, 2, "  want 2 (the length field)");
	is_int(pphex(SIG "2111000c", PP_ACCEPT_ANY, &h), 0, "v2 after 16 bytes: need more");
	is_int(h.want, 12, "  want exactly the address block");
	is_int(pps("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", &h), 0, "v1 ending in CR: need more");
	is_int(h.want, 1, "  want 1 (the LF)");

	/* Every error has its own words. */
	int distinct = 1;
	for (int a = PP_E_V2_TLV_LENGTH; a <= PP_E_ARG; a++) {
		if (strstr(pp_strerror(a), "unknown PROXY") != NULL)
			distinct = 0;
		for (int b = a + 1; b <= PP_E_ARG; b++)
			if (strcmp(pp_strerror(a), pp_strerror(b)) == 0)
				distinct = 0;
	}
	ok(distinct, "every error code has a distinct message");
	is_str(pp_strerror(28), "ok", "pp_strerror of a length");
	is_str(pp_strerror(-1000), "unknown PROXY protocol error", "pp_strerror of junk");
	is_str(pp_strerror(PP_E_TRUNCATED), "truncated PROXY protocol header",
	       "PP_E_TRUNCATED for the caller's EOF or timeout");
}

/* Emit both versions for src/dst, parse them back, and refuse every short buffer. */
static void round_trip(const struct sockaddr *src, const struct sockaddr *dst, int family,
                       const char *want_v1, const char *want_src, const char *want_dst,
                       const char *what)
{
	char line[PP_EMIT_MAX];
	unsigned char bin[PP_EMIT_MAX];
	struct pp_header h;
	int n, m, refused = 1;

	n = pp_emit_v1(line, sizeof(line), src, dst);
	is_str(n > 0 ? line : "(failed)", want_v1, "%s: v1", what);
	is_int(ppn(line, (size_t)n, PP_ACCEPT_V1, &h), n, "  v1 parses back");
	is_int(h.family, family, "  v1 family");
	is_str(ssstr(&h.src), want_src, "  v1 source");
	is_str(ssstr(&h.dst), want_dst, "  v1 destination");
	for (int k = 0; k <= n; k++)
		if (pp_emit_v1(line, (size_t)k, src, dst) != -1)
			refused = 0;
	ok(refused, "  v1 refuses every buffer without room for %d bytes and a NUL", n);

	m = pp_emit_v2(bin, sizeof(bin), src, dst);
	ok(m > PP_V2_FIXED, "%s: v2 emitted (%d bytes)", what, m);
	is_int(ppn(bin, (size_t)m, PP_ACCEPT_V2, &h), m, "  v2 parses back");
	is_int(h.family, family, "  v2 family");
	is_str(ssstr(&h.src), want_src, "  v2 source");
	is_str(ssstr(&h.dst), want_dst, "  v2 destination");
	for (int k = 0; k < m; k++)
		if (pp_emit_v2(bin, (size_t)k, src, dst) != -1)
			refused = 0;
	ok(refused, "  v2 refuses every buffer smaller than %d bytes", m);
}

static void test_emit(void)
{
	struct sockaddr_in c4 = mk4("192.0.2.1", 50000), g4 = mk4("198.51.100.1", 21);
	struct sockaddr_in6 c6 = mk6("2001:db8::1", 50000), g6 = mk6("2001:db8::21", 21);
	struct sockaddr_in l4 = mk4("127.0.0.1", 48042), l4d = mk4("127.0.0.1", 50769);
	struct sockaddr_in6 l6 = mk6("::1", 60202), l6d = mk6("::1", 44207);
	struct sockaddr_un un;
	unsigned char bin[PP_EMIT_MAX], want[64];
	char line[PP_EMIT_MAX];
	struct pp_header h;
	size_t n;
	int m;

	round_trip((struct sockaddr *)&c4, (struct sockaddr *)&g4, AF_INET,
	           "PROXY TCP4 192.0.2.1 198.51.100.1 50000 21\r\n", "192.0.2.1:50000",
	           "198.51.100.1:21", "IPv4 to IPv4");
	round_trip((struct sockaddr *)&c6, (struct sockaddr *)&g6, AF_INET6,
	           "PROXY TCP6 2001:db8::1 2001:db8::21 50000 21\r\n", "[2001:db8::1]:50000",
	           "[2001:db8::21]:21", "IPv6 to IPv6");
	round_trip((struct sockaddr *)&c6, (struct sockaddr *)&g4, AF_INET6,
	           "PROXY TCP6 2001:db8::1 ::ffff:198.51.100.1 50000 21\r\n", "[2001:db8::1]:50000",
	           "[::ffff:198.51.100.1]:21", "IPv6 client, IPv4 destination: mapped");
	round_trip((struct sockaddr *)&c4, (struct sockaddr *)&g6, AF_INET6,
	           "PROXY TCP6 ::ffff:192.0.2.1 2001:db8::21 50000 21\r\n",
	           "[::ffff:192.0.2.1]:50000", "[2001:db8::21]:21",
	           "IPv4 client, IPv6 destination: mapped");

	/* Byte for byte what HAProxy sends for the same connections. */
	m = pp_emit_v2(bin, sizeof(bin), (struct sockaddr *)&l4, (struct sockaddr *)&l4d);
	n = unhex(hap_v2, want, sizeof(want));
	ok(m == (int)n && memcmp(bin, want, n) == 0, "v2 emit equals haproxy's send-proxy-v2");
	m = pp_emit_v2(bin, sizeof(bin), (struct sockaddr *)&l6, (struct sockaddr *)&l6d);
	n = unhex(hap_v2_six, want, sizeof(want));
	ok(m == (int)n && memcmp(bin, want, n) == 0, "v2 emit equals haproxy's, IPv6");
	l4 = mk4("127.0.0.1", 40806);
	l4d = mk4("127.0.0.1", 40489);
	pp_emit_v1(line, sizeof(line), (struct sockaddr *)&l4, (struct sockaddr *)&l4d);
	is_str(line, hap_v1, "v1 emit equals haproxy's send-proxy");
	l6 = mk6("::1", 39540);
	l6d = mk6("::1", 35727);
	pp_emit_v1(line, sizeof(line), (struct sockaddr *)&l6, (struct sockaddr *)&l6d);
	is_str(line, hap_v1_six, "v1 emit equals haproxy's, IPv6");

	/* No addresses: ftpgate's own connection. */
	is_int(pp_emit_v1(line, sizeof(line), NULL, NULL), 15, "v1 without addresses");
	is_str(line, "PROXY UNKNOWN\r\n", "  PROXY UNKNOWN");
	m = pp_emit_v2(bin, sizeof(bin), NULL, NULL);
	n = unhex(hap_v2_local, want, sizeof(want));
	ok(m == (int)n && memcmp(bin, want, n) == 0, "v2 without addresses: LOCAL, as haproxy's");
	is_int(ppn(bin, (size_t)m, PP_ACCEPT_V2, &h), 16, "  parses back");
	is_int(h.command, PP_CMD_LOCAL, "  LOCAL");

	/* A family the protocol cannot carry. */
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	is_int(pp_emit_v1(line, sizeof(line), (struct sockaddr *)&un, (struct sockaddr *)&g4), 15,
	       "v1 from AF_UNIX: UNKNOWN");
	m = pp_emit_v2(bin, sizeof(bin), (struct sockaddr *)&un, (struct sockaddr *)&g4);
	is_int(m, 16, "v2 from AF_UNIX: 16 bytes");
	is_int(bin[12], 0x21, "  PROXY command");
	is_int(bin[13], 0x00, "  UNSPEC");
	is_int(ppn(bin, (size_t)m, PP_ACCEPT_V2, &h), 16, "  parses back");
	is_int(h.family, AF_UNSPEC, "  AF_UNSPEC");
	is_int(pp_emit_v1(NULL, 100, NULL, NULL), -1, "v1 into NULL");
	is_int(pp_emit_v2(NULL, 100, NULL, NULL), -1, "v2 into NULL");
}

int main(void)
{
	test_spec_v1();
	test_haproxy();
	test_v2_families();
	test_v2_tlvs();
	test_errors();
	test_emit();
	return tap_done();
}
