/* Unit tests for confwarn (TAP): the configuration warnings, from ini text
 * through conf_load_text(), with the host's facts given by the test. */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "confwarn.h"
#include "tap.h"

static char got[8][1024];
static unsigned n_got;

static void collect(void *arg, int line, const char *key, const char *text)
{
	(void)arg;
	if (n_got < 8)
		snprintf(got[n_got], sizeof(got[0]), "%d: %s: %s", line, key, text);
	n_got++;
}

/* The warnings about ini with facts f; the first in got[0]. */
static unsigned warnings(const char *ini, const struct warn_facts *f)
{
	char err[1024];
	struct conf *c = conf_load_text("t.ini", ini, err, sizeof(err));
	n_got = 0;
	memset(got, 0, sizeof(got));
	if (!c) {
		printf("# load failed: %s\n", err);
		return 99;
	}
	unsigned n = conf_warnings(c, f, collect, NULL);
	conf_free(c);
	for (unsigned i = 0; i < n && i < 8; i++)
		printf("#   %s\n", got[i]);
	return n;
}

static int has(const char *needle)
{
	for (unsigned i = 0; i < n_got && i < 8; i++)
		if (strstr(got[i], needle))
			return 1;
	return 0;
}

static int private4(const char *a)
{
	unsigned char ip[4];
	inet_pton(AF_INET, a, ip);
	return ip_is_private(AF_INET, ip);
}

static int private6(const char *a)
{
	unsigned char ip[16];
	inet_pton(AF_INET6, a, ip);
	return ip_is_private(AF_INET6, ip);
}

#define SITE "[site:s]\nbackend = 127.0.0.1:2121\n"

int main(void)
{
	struct warn_facts none = {0};

	/* The private ranges. */
	ok(private4("10.1.2.3") && private4("172.16.0.1") && private4("172.31.255.255") &&
	       private4("192.168.7.7") && private4("100.64.0.1") && private4("100.127.255.255") &&
	       private4("169.254.1.1"),
	   "RFC 1918, 100.64.0.0/10 and link-local IPv4 are private");
	ok(!private4("172.32.0.1") && !private4("100.128.0.1") && !private4("192.0.2.1") &&
	       !private4("8.8.8.8") && !private4("127.0.0.1") && !private4("11.0.0.1"),
	   "their neighbours, documentation, public and loopback addresses are not");
	ok(private6("fd00::1") && private6("fc12::1") && private6("fe80::1") &&
	       private6("::ffff:10.0.0.1"),
	   "fc00::/7, fe80::/10 and IPv4-mapped private addresses are private");
	ok(!private6("2001:db8::1") && !private6("::1") && !private6("fec0::1") &&
	       !private6("::ffff:192.0.2.1"),
	   "documentation, loopback, fec0:: and mapped public IPv6 are not");

	/* A clean configuration. */
	is_int(warnings(SITE "listen = 127.0.0.1:2100\n", &none), 0, "loopback listener: nothing");
	is_int(warnings(SITE "listen = 203.0.113.1:21\n", &none), 0, "public listener: nothing");
	struct warn_facts nat = {.host_all_private = 1};
	is_int(warnings(SITE "listen = 0.0.0.0:21\npublic_address = 203.0.113.10\n", &nat), 0,
	       "wildcard with a public public_address behind NAT: nothing");

	/* Private addresses announced to public clients. */
	is_int(warnings(SITE "listen = 0.0.0.0:21\npublic_address = 10.0.0.5\n", &none), 1,
	       "private public_address: one warning");
	ok(has("4: public_address: 10.0.0.5 is a private address"), "  with its line and key");
	is_int(warnings(SITE "listen = 0.0.0.0:21\npublic_address = 10.0.0.5\n"
	                     "allow = 10.0.0.0/8, 192.168.0.0/16, 127.0.0.1\n",
	                &none),
	       0, "... but not when allow admits only private clients");
	is_int(warnings(SITE "listen = 0.0.0.0:21\npublic_address = 10.0.0.5\nallow = "
	                     "10.0.0.0/8, 0.0.0.0/0\n",
	                &none),
	       1, "... and again when allow also admits public ones");
	is_int(warnings(SITE "listen = 192.168.1.5:21\n", &none), 1,
	       "private listen address without public_address: one warning");
	ok(has("3: listen: 192.168.1.5:21 is a private address and public_address is unset"),
	   "  naming the address");
	is_int(warnings(SITE "listen = 192.168.1.5:21\npublic_address = 203.0.113.5\n", &none), 0,
	       "private listen address with a public public_address: nothing");
	is_int(warnings(SITE "listen = 0.0.0.0:21\npublic_address = 203.0.113.5\n"
	                     "public_address_for = 192.168.0.0/16 192.168.1.5, 198.51.100.0/24 "
	                     "10.9.9.9\n",
	                &none),
	       1,
	       "public_address_for: a LAN told its LAN address is fine, a public net told a "
	       "private address is not");
	ok(has("5: public_address_for: clients in 198.51.100.0/24") && has("10.9.9.9"),
	   "  naming the network and the address");
	is_int(warnings(SITE "listen = 192.168.1.5:21\ntls = passthrough\npassive_ports = "
	                     "20000-20099\n",
	                &none),
	       0, "passthrough: the backend announces, nothing about the listener");

	/* Behind what looks like NAT. */
	is_int(warnings(SITE "listen = 0.0.0.0:21\n", &nat), 1,
	       "wildcard listener, no public_address, host all private: one warning");
	ok(has("listen: 0.0.0.0:21 with public_address unset, and every address of this host is "
	       "private"),
	   "  saying so");
	is_int(warnings(SITE "listen = 0.0.0.0:21\n", &none), 0,
	       "the same on a host with a public address: nothing");
	is_int(warnings(SITE "listen = [::]:21\n", &nat), 0,
	       "an IPv6 wildcard (EPSV carries only a port): nothing");

	/* Passive ports against max_sessions. */
	is_int(warnings(SITE "listen = 127.0.0.1:21\n", &none), 0,
	       "defaults (1000 ports, the built-in global limit): nothing");
	is_int(warnings("[global]\nmax_sessions = 2000\n" SITE "listen = 127.0.0.1:21\n", &none), 1,
	       "[global] max_sessions = 2000 with 1000 ports: one warning");
	ok(has("site:s") == 0 && has("passive_ports: 50000-50999 has 1000 ports; [global] "
	                             "max_sessions = 2000 could need 2000"),
	   "  with the figures");
	is_int(warnings("[global]\nmax_sessions = 2000\n" SITE
	                "listen = 127.0.0.1:21\nmax_sessions = 1000\n",
	                &none),
	       0, "... the site's own limit of 1000 fits");
	is_int(warnings(SITE "listen = 127.0.0.1:21\nmax_sessions = 600\nbackend_data_mode = "
	                     "active\n",
	                &none),
	       1, "600 sessions with an active backend need 1200 of 1000 ports");
	ok(has("could need 1200") && has("two with backend_data_mode"), "  counted twice");
	is_int(warnings(SITE "listen = 127.0.0.1:21\nmax_sessions = 11\npassive_ports = "
	                     "40000-40009\n",
	                &none),
	       1, "11 sessions, 10 ports: one warning");
	ok(has("5: passive_ports: 40000-40009 has 10 ports"), "  at the passive_ports line");

	/* Certificates. */
	time_t now = 1700000000;
	time_t na[1];
	struct warn_facts cf = {.now = now, .cert_not_after = na};
	const char *tls = SITE "listen = 127.0.0.1:21\ntls = terminate\ntls_cert = /c.pem\n";
	na[0] = now + 90 * 86400;
	is_int(warnings(tls, &cf), 0, "certificate valid for 90 days: nothing");
	na[0] = now + 29 * 86400 + 3600;
	is_int(warnings(tls, &cf), 1, "expiring in 29 days: one warning");
	ok(has("5: tls_cert: certificate \"/c.pem\" of [site:s] expires in 29 days (2023-12-13"),
	   "  with the days and the date");
	na[0] = now + 600;
	warnings(tls, &cf);
	ok(has("expires in less than a day"), "expiring in 10 minutes: less than a day");
	na[0] = now - 3 * 86400 - 5;
	warnings(tls, &cf);
	ok(has("expired 3 days ago"), "expired 3 days ago");
	na[0] = 0;
	is_int(warnings(tls, &cf), 0, "no certificate known: nothing");
	na[0] = now + 86400;
	is_int(warnings(SITE "listen = 127.0.0.1:21\n", &cf), 0,
	       "a site without tls: its (default) certificate is not looked at");

	/* Passthrough and the ephemeral range. */
	static uint8_t reserved[65536 / 8];
	struct warn_facts ef = {.eph_lo = 32768, .eph_hi = 60999, .reserved = reserved};
	const char *pt = SITE "listen = 127.0.0.1:21\ntls = passthrough\npassive_ports = "
	                      "50000-50999\n";
	is_int(warnings(pt, &ef), 1, "passthrough 50000-50999 in 32768-60999: one warning");
	ok(has("5: passive_ports: 1000 ports of 50000-50999 (passthrough) are in the kernel's "
	       "ephemeral range 32768-60999") &&
	       has("ip_local_reserved_ports=50000-50999"),
	   "  with the sysctl that reserves them");
	for (unsigned p = 50000; p <= 50999; p++)
		reserved[p / 8] |= (uint8_t)(1u << (p % 8));
	is_int(warnings(pt, &ef), 0, "... reserved: nothing");
	reserved[50500 / 8] &= (uint8_t) ~(1u << (50500 % 8));
	is_int(warnings(pt, &ef), 1, "... one port not reserved: one warning");
	ok(has("1 port of 50000-50999 (passthrough) is in") &&
	       has("ip_local_reserved_ports=50500-50500"),
	   "  naming that port");
	is_int(warnings(SITE "listen = 127.0.0.1:21\ntls = passthrough\npassive_ports = "
	                     "20000-20099\n",
	                &ef),
	       0, "passthrough 20000-20099: nothing");
	is_int(warnings(SITE "listen = 127.0.0.1:21\npassive_ports = 50000-50999\n", &ef), 0,
	       "a plain site in the ephemeral range: nothing (it binds a port at a time)");
	ef.reserved = NULL;
	is_int(warnings(SITE "listen = 127.0.0.1:21\ntls = passthrough\npassive_ports = "
	                     "60990-61010\n",
	                &ef),
	       1, "a range that straddles the end of the ephemeral range");
	ok(has("10 ports of 60990-61010") && has("=60990-60999"), "  counts only the overlap");
	return tap_done();
}
