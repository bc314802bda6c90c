/* Unit tests for ftp_addr (TAP). */
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

#include "ftp_addr.h"
#include "tap.h"
#include "testutil.h"

static int p227n(const char *s, size_t n, struct sockaddr_in *sin)
{
	char *p = exact(s, n);
	int r = ftp_parse_227(p, n, sin);

	free(p);
	return r;
}

static int p227(const char *s, struct sockaddr_in *sin)
{
	return p227n(s, strlen(s), sin);
}

static int p229n(const char *s, size_t n, uint16_t *port)
{
	char *p = exact(s, n);
	int r = ftp_parse_229(p, n, port);

	free(p);
	return r;
}

static int p229(const char *s, uint16_t *port)
{
	return p229n(s, strlen(s), port);
}

static int pportn(const char *s, size_t n, struct sockaddr_in *sin)
{
	char *p = exact(s, n);
	int r = ftp_parse_port(p, n, sin);

	free(p);
	return r;
}

static int pport(const char *s, struct sockaddr_in *sin)
{
	return pportn(s, strlen(s), sin);
}

static int peprtn(const char *s, size_t n, struct sockaddr_storage *ss)
{
	char *p = exact(s, n);
	int r = ftp_parse_eprt(p, n, ss);

	free(p);
	return r;
}

static int peprt(const char *s, struct sockaddr_storage *ss)
{
	return peprtn(s, strlen(s), ss);
}

static void test_227(void)
{
	struct sockaddr_in sin;

	is_int(p227("227 Entering Passive Mode (192,0,2,1,195,80).\r\n", &sin), 0, "227 std");
	is_str(v4str(&sin), "192.0.2.1:50000", "227 std address");
	is_int(p227("227 =10,0,0,1,0,21\r\n", &sin), 0, "227 '=' form");
	is_str(v4str(&sin), "10.0.0.1:21", "227 '=' address");
	is_int(p227("227 Entering Passive Mode 10,1,2,3,255,255\r\n", &sin), 0, "227 no parens");
	is_str(v4str(&sin), "10.1.2.3:65535", "227 no parens address");
	is_int(p227("227 Entering Passive Mode (010,001,002,003,000,001)", &sin), 0,
	       "227 leading zeros, 3 digits");
	is_str(v4str(&sin), "10.1.2.3:1", "227 leading zeros address");
	is_int(p227("227 Mode 2 (v4) (1,2,3,4,5,6)\r\n", &sin), 0, "227 skips other numbers");
	is_str(v4str(&sin), "1.2.3.4:1286", "227 skipping address");
	is_int(p227("227-(1,2,3,4,0,1)\r\n", &sin), 0, "227- accepted");
	is_int(p227("227 (0,0,0,0,4,0)\r\n", &sin), 0, "227 0.0.0.0 parsed (caller's policy)");

	sin = mk4("9.9.9.9", 9);
	is_int(p227("227 (192,0,2,1,0,0)\r\n", &sin), -1, "227 port 0 rejected");
	is_str(v4str(&sin), "9.9.9.9:9", "failed parse leaves *sin untouched");
	is_int(p227("227 (256,0,2,1,4,1)\r\n", &sin), -1, "227 256 rejected");
	is_int(p227("227 (192,0,2,1,4,256)\r\n", &sin), -1, "227 port byte 256 rejected");
	is_int(p227("227 (1192,0,2,1,4,1)\r\n", &sin), -1, "227 4-digit number rejected");
	is_int(p227("227 (0192,0,2,1,4,1)\r\n", &sin), -1, "227 4-digit leading zero rejected");
	is_int(p227("227 (192,0,2,1,4)\r\n", &sin), -1, "227 five numbers rejected");
	is_int(p227("227 (192,0,2,1,4,1,7)\r\n", &sin), -1, "227 seven numbers rejected");
	is_int(p227("227 (192,0,2,1,4,1,)\r\n", &sin), -1, "227 trailing comma rejected");
	is_int(p227("227 (-1,0,2,1,4,1)\r\n", &sin), -1, "227 negative rejected");
	is_int(p227("227 (+1,0,2,1,4,1)\r\n", &sin), -1, "227 plus sign rejected");
	is_int(p227("227 (192, 0,2,1,4,1)\r\n", &sin), -1, "227 space in list rejected");
	is_int(p227("227 (192;0;2;1;4;1)\r\n", &sin), -1, "227 wrong delimiter rejected");
	is_int(p227("227 (192,0,,2,1,4,1)\r\n", &sin), -1, "227 empty field rejected");
	is_int(p227("227 Entering Passive Mode\r\n", &sin), -1, "227 no numbers rejected");
	is_int(p227("228 (192,0,2,1,4,1)\r\n", &sin), -1, "wrong code rejected");
	is_int(p227("2271,2,3,4,5,6\r\n", &sin), -1, "code not exactly 3 digits rejected");
	is_int(p227("227", &sin), -1, "bare 227 rejected");
	is_int(p227n("227 (1,2,3,4,5,\0"
	             "6)",
	             18, &sin),
	       -1, "227 embedded NUL rejected");
	/* len shorter than the text */
	is_int(p227n("227 (192,0,2,1,4,1)\r\n", 17, &sin), -1, "227 cut before last number");
	is_int(p227n("227 (192,0,2,1,4,16)\r\n", 18, &sin), 0, "227 cut after '4,1'");
	is_str(v4str(&sin), "192.0.2.1:1025", "227 cut: bytes past len ignored");
	is_int(ftp_parse_227(NULL, 10, &sin), -1, "227 NULL text");
	is_int(ftp_parse_227("227 (1,2,3,4,5,6)", 17, NULL), -1, "227 NULL out");
}

static void test_229(void)
{
	uint16_t port = 0;

	is_int(p229("229 Entering Extended Passive Mode (|||6446|)\r\n", &port), 0, "229 std");
	is_int(port, 6446, "229 port");
	is_int(p229("229 Entering Extended Passive Mode (!!!1!)", &port), 0, "229 '!' delim");
	is_int(port, 1, "229 port 1");
	is_int(p229("229 ok (|||65535|).\r\n", &port), 0, "229 max port");
	is_int(port, 65535, "229 port 65535");
	is_int(p229("229 x (y) (|||21|)\r\n", &port), 0, "229 second '(' tried");
	is_int(port, 21, "229 second paren port");

	port = 77;
	is_int(p229("229 (|||0|)\r\n", &port), -1, "229 port 0 rejected");
	is_int(port, 77, "229 failure leaves port untouched");
	is_int(p229("229 (|||65536|)\r\n", &port), -1, "229 port 65536 rejected");
	is_int(p229("229 (|||123456|)\r\n", &port), -1, "229 6-digit port rejected");
	is_int(p229("229 (|||99999999999999999999|)\r\n", &port), -1, "229 huge port rejected");
	is_int(p229("229 (|||-1|)\r\n", &port), -1, "229 negative rejected");
	is_int(p229("229 (||| 21|)\r\n", &port), -1, "229 space rejected");
	is_int(p229("229 (|||21 |)\r\n", &port), -1, "229 trailing space rejected");
	is_int(p229("229 (|1|1.2.3.4|21|)\r\n", &port), -1, "229 non-empty net-prt rejected");
	is_int(p229("229 (||1.2.3.4|21|)\r\n", &port), -1, "229 non-empty net-addr rejected");
	is_int(p229("229 (|||21!)\r\n", &port), -1, "229 mismatched delimiter rejected");
	is_int(p229("229 (|||21|\r\n", &port), -1, "229 missing ')' rejected");
	is_int(p229("229 (|||21)\r\n", &port), -1, "229 missing final delimiter rejected");
	is_int(p229("229 (111211)\r\n", &port), -1, "229 digit delimiter rejected");
	is_int(p229("229 (   21 )\r\n", &port), -1, "229 space delimiter rejected");
	is_int(p229("229 (|||)\r\n", &port), -1, "229 empty port rejected");
	is_int(p229("227 (|||21|)\r\n", &port), -1, "229 wrong code rejected");
	is_int(p229("229 Entering Extended Passive Mode\r\n", &port), -1, "229 no parens");
	is_int(p229n("229 (|||2\0"
	             "1|)",
	             13, &port),
	       -1, "229 embedded NUL rejected");
	is_int(p229n("229 (|||21|)", 11, &port), -1, "229 cut before ')' rejected");
	is_int(p229n("229 (|||21|)", 9, &port), -1, "229 cut inside port rejected");
	is_int(ftp_parse_229(NULL, 5, &port), -1, "229 NULL text");
}

static void test_port(void)
{
	struct sockaddr_in sin;

	is_int(pport("192,0,2,1,4,1", &sin), 0, "PORT std");
	is_str(v4str(&sin), "192.0.2.1:1025", "PORT address");
	is_int(pport("255,255,255,255,255,255", &sin), 0, "PORT max values");
	is_str(v4str(&sin), "255.255.255.255:65535", "PORT max address");
	is_int(pport("0,0,0,0,0,1", &sin), 0, "PORT min port 1");

	is_int(pport("192,0,2,1,0,0", &sin), -1, "PORT port 0 rejected");
	is_int(pport("192,0,2,256,4,1", &sin), -1, "PORT 256 rejected");
	is_int(pport("192,0,2,1,4,1000", &sin), -1, "PORT 4 digits rejected");
	is_int(pport("192,0,2,1,4", &sin), -1, "PORT missing field rejected");
	is_int(pport("192,0,2,1,4,1,5", &sin), -1, "PORT extra field rejected");
	is_int(pport("192,0,2,-1,4,1", &sin), -1, "PORT negative rejected");
	is_int(pport("192,0,2,+1,4,1", &sin), -1, "PORT plus rejected");
	is_int(pport(" 192,0,2,1,4,1", &sin), -1, "PORT leading space rejected");
	is_int(pport("192,0,2,1,4,1 ", &sin), -1, "PORT trailing space rejected");
	is_int(pport("192, 0,2,1,4,1", &sin), -1, "PORT inner space rejected");
	is_int(pport("192.0.2.1.4.1", &sin), -1, "PORT dots rejected");
	is_int(pport("192,0,2,1,4,1\r\n", &sin), -1, "PORT with CRLF rejected (arg is trimmed)");
	is_int(pport("", &sin), -1, "PORT empty rejected");
	is_int(pport("a,b,c,d,e,f", &sin), -1, "PORT letters rejected");
	is_int(pportn("192,0,2,1,4,1\0", 14, &sin), -1, "PORT trailing NUL rejected");
	is_int(pportn("192,0,2,1,4,17", 13, &sin), 0, "PORT len cut before last digit");
	is_str(v4str(&sin), "192.0.2.1:1025", "PORT cut: bytes past len ignored");
	is_int(pportn("192,0,2,1,4,1", 12, &sin), -1, "PORT cut to '4,' rejected");
}

static void test_eprt(void)
{
	struct sockaddr_storage ss;

	is_int(peprt("|1|192.0.2.1|6446|", &ss), 0, "EPRT v4");
	is_str(ssstr(&ss), "192.0.2.1:6446", "EPRT v4 address");
	is_int(peprt("|2|2001:db8::1|6446|", &ss), 0, "EPRT v6");
	is_str(ssstr(&ss), "[2001:db8::1]:6446", "EPRT v6 address");
	is_int(peprt("!2!::ffff:1.2.3.4!65535!", &ss), 0, "EPRT v6 mapped, '!' delim");
	is_str(ssstr(&ss), "[::ffff:1.2.3.4]:65535", "EPRT mapped address");
	is_int(peprt("#1#10.0.0.1#1#", &ss), 0, "EPRT '#' delim, port 1");
	is_int(peprt("|2|0000:0000:0000:0000:0000:ffff:255.255.255.255|1|", &ss), 0,
	       "EPRT 45-char v6 address");

	is_int(peprt("|3|192.0.2.1|6446|", &ss), -2, "EPRT proto 3 -> -2");
	is_int(peprt("|12|192.0.2.1|6446|", &ss), -2, "EPRT proto 12 -> -2");
	is_int(peprt("|x|192.0.2.1|6446|", &ss), -1, "EPRT non-numeric proto -> -1");
	is_int(peprt("||192.0.2.1|6446|", &ss), -1, "EPRT empty proto -> -1");
	is_int(peprt("|1|2001:db8::1|6446|", &ss), -1, "EPRT v6 address with proto 1");
	is_int(peprt("|2|192.0.2.1|6446|", &ss), -1, "EPRT v4 address with proto 2");
	is_int(peprt("|1|192.0.2|6446|", &ss), -1, "EPRT short dotted quad");
	is_int(peprt("|1|192.0.2.256|6446|", &ss), -1, "EPRT octet 256");
	is_int(peprt("|1|0x7f.0.0.1|6446|", &ss), -1, "EPRT hex octet");
	is_int(peprt("|2|fe80::1%eth0|6446|", &ss), -1, "EPRT v6 zone id");
	is_int(peprt("|2|0000:0000:0000:0000:0000:ffff:255.255.255.2555|1|", &ss), -1,
	       "EPRT 46-char address rejected");
	is_int(peprt("|1|192.0.2.1|0|", &ss), -1, "EPRT port 0");
	is_int(peprt("|1|192.0.2.1|65536|", &ss), -1, "EPRT port 65536");
	is_int(peprt("|1|192.0.2.1|0000021|", &ss), -1, "EPRT 7-digit port");
	is_int(peprt("|1|192.0.2.1|-21|", &ss), -1, "EPRT negative port");
	is_int(peprt("|1|192.0.2.1||", &ss), -1, "EPRT empty port");
	is_int(peprt("|1|192.0.2.1|21", &ss), -1, "EPRT missing final delimiter");
	is_int(peprt("|1|192.0.2.1|21|x", &ss), -1, "EPRT junk after final delimiter");
	is_int(peprt("|1|192.0.2.1|21||", &ss), -1, "EPRT five delimiters");
	is_int(peprt("|1| 192.0.2.1|21|", &ss), -1, "EPRT space in address");
	is_int(peprt("|1|192.0.2.1|2 1|", &ss), -1, "EPRT space in port");
	is_int(peprt(" |1|192.0.2.1|21|", &ss), -1, "EPRT space delimiter");
	is_int(peprt("|1||21|", &ss), -1, "EPRT empty address");
	is_int(peprt("", &ss), -1, "EPRT empty");
	is_int(peprt("|1|192.0.2.1!21!", &ss), -1, "EPRT mixed delimiters");
	is_int(peprtn("|1|192.0.2.1\0junk|21|", 21, &ss), -1, "EPRT NUL in address");
	is_int(peprtn("|1|192.0.2.1|21|", 15, &ss), -1, "EPRT cut before final delimiter");
	is_int(ftp_parse_eprt(NULL, 3, &ss), -1, "EPRT NULL arg");
}

static void test_format(void)
{
	char buf[128];
	struct sockaddr_in sin = mk4("192.0.2.1", 50000), back;
	struct sockaddr_in6 sin6 = mk6("2001:db8::1", 6446);
	struct sockaddr_storage ss;
	uint16_t port;
	int n;

	n = ftp_format_227(buf, sizeof(buf), &sin);
	is_str(buf, "227 Entering Passive Mode (192,0,2,1,195,80).\r\n", "format 227");
	is_int(n, (int)strlen(buf), "format 227 length");
	is_int(p227(buf, &back), 0, "227 round-trip parses");
	ok(memcmp(&back, &sin, sizeof(sin)) == 0, "227 round-trip identical");
	is_int(ftp_format_227(buf, (size_t)n, &sin), -1, "227 truncation -> -1 (size = len)");
	is_int(ftp_format_227(buf, (size_t)n + 1, &sin), n, "227 exact fit");
	is_int(ftp_format_227(buf, sizeof(buf), (const struct sockaddr_in *)(void *)&sin6), -1,
	       "227 with AF_INET6 -> -1");
	is_int(ftp_format_227(buf, 0, &sin), -1, "227 size 0");

	n = ftp_format_229(buf, sizeof(buf), 6446);
	is_str(buf, "229 Entering Extended Passive Mode (|||6446|)\r\n", "format 229");
	is_int(n, (int)strlen(buf), "format 229 length");
	is_int(p229(buf, &port), 0, "229 round-trip parses");
	is_int(port, 6446, "229 round-trip port");
	is_int(ftp_format_229(buf, 10, 6446), -1, "229 truncation -> -1");

	n = ftp_format_port(buf, sizeof(buf), &sin);
	is_str(buf, "PORT 192,0,2,1,195,80\r\n", "format PORT");
	is_int(n, 23, "format PORT length");
	is_int(pportn(buf + 5, (size_t)n - 7, &back), 0, "PORT round-trip parses");
	ok(memcmp(&back, &sin, sizeof(sin)) == 0, "PORT round-trip identical");
	is_int(ftp_format_port(buf, 23, &sin), -1, "PORT truncation -> -1");

	n = ftp_format_eprt(buf, sizeof(buf), (const struct sockaddr *)&sin);
	is_str(buf, "EPRT |1|192.0.2.1|50000|\r\n", "format EPRT v4");
	is_int(peprtn(buf + 5, (size_t)n - 7, &ss), 0, "EPRT v4 round-trip parses");
	ok(memcmp(&ss, &sin, sizeof(sin)) == 0, "EPRT v4 round-trip identical");
	n = ftp_format_eprt(buf, sizeof(buf), (const struct sockaddr *)&sin6);
	is_str(buf, "EPRT |2|2001:db8::1|6446|\r\n", "format EPRT v6");
	is_int(peprtn(buf + 5, (size_t)n - 7, &ss), 0, "EPRT v6 round-trip parses");
	ok(memcmp(&ss, &sin6, sizeof(sin6)) == 0, "EPRT v6 round-trip identical");
	is_int(ftp_format_eprt(buf, 10, (const struct sockaddr *)&sin6), -1,
	       "EPRT truncation -> -1");
	{
		struct sockaddr_storage un;

		memset(&un, 0, sizeof(un));
		un.ss_family = AF_UNIX;
		is_int(ftp_format_eprt(buf, sizeof(buf), (const struct sockaddr *)&un), -1,
		       "EPRT AF_UNIX -> -1");
	}
	is_int(ftp_format_eprt(buf, sizeof(buf), NULL), -1, "EPRT NULL -> -1");
}

static void test_unmap_same(void)
{
	struct sockaddr_storage ss, ss2;
	struct sockaddr_in6 m = mk6("::ffff:192.0.2.7", 2121), v6 = mk6("2001:db8::7", 21);
	struct sockaddr_in v4 = mk4("192.0.2.7", 21), v4b = mk4("192.0.2.7", 999),
	                   v4c = mk4("192.0.2.8", 21);

	memset(&ss, 0, sizeof(ss));
	memcpy(&ss, &m, sizeof(m));
	is_int(ftp_addr_unmap(&ss), 1, "unmap ::ffff:192.0.2.7");
	is_str(ssstr(&ss), "192.0.2.7:2121", "unmapped address and port");
	is_int(ftp_addr_unmap(&ss), 0, "unmap AF_INET -> 0");
	memset(&ss2, 0, sizeof(ss2));
	memcpy(&ss2, &v6, sizeof(v6));
	is_int(ftp_addr_unmap(&ss2), 0, "unmap native v6 -> 0");
	is_str(ssstr(&ss2), "[2001:db8::7]:21", "native v6 untouched");
	is_int(ftp_addr_unmap(NULL), 0, "unmap NULL -> 0");

	is_int(ftp_addr_same_ip((struct sockaddr *)&v4, (struct sockaddr *)&v4b), 1,
	       "same v4 IP, different port");
	is_int(ftp_addr_same_ip((struct sockaddr *)&v4, (struct sockaddr *)&v4c), 0,
	       "different v4 IP");
	is_int(ftp_addr_same_ip((struct sockaddr *)&v4, (struct sockaddr *)&ss), 1,
	       "v4 vs unmapped storage");
	is_int(ftp_addr_same_ip((struct sockaddr *)&v4, (struct sockaddr *)&m), 0,
	       "v4 vs v4-mapped v6 (different family)");
	is_int(ftp_addr_same_ip((struct sockaddr *)&v6, (struct sockaddr *)&ss2), 1, "same v6");
	is_int(ftp_addr_same_ip((struct sockaddr *)&v6, (struct sockaddr *)&m), 0, "different v6");
	is_int(ftp_addr_same_ip(NULL, (struct sockaddr *)&v4), 0, "NULL -> 0");
}

int main(void)
{
	test_227();
	test_229();
	test_port();
	test_eprt();
	test_format();
	test_unmap_same();
	return tap_done();
}
