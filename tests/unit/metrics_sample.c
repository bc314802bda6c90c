/*
 * Print metrics_render()'s text for a fixed sample of two sites on stdout,
 * for promtool_check.sh (promtool check metrics) and for reading by eye.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#include "metrics.h"
#include "stats.h"

int main(void)
{
	static struct site_stats a, b;
	struct evbuffer *out = evbuffer_new();
	int rc = 0;

	a.sessions_total = 120;
	a.sessions_refused = 3;
	a.sessions_ended[END_CLIENT_QUIT] = 100;
	a.sessions_ended[END_CLIENT_CLOSED] = 12;
	a.sessions_ended[END_IDLE_TIMEOUT] = 4;
	a.bytes_up = 73400320;
	a.bytes_down = 10737418240ULL;
	a.transfers[XC_RETR][XR_OK] = 250;
	a.transfers[XC_RETR][XR_ABORTED] = 2;
	a.transfers[XC_STOR][XR_OK] = 40;
	a.transfers[XC_LIST][XR_OK] = 300;
	a.transfers[XC_MLSD][XR_FAILED] = 1;
	a.backend_connect_failures = 1;
	a.tls_handshake_failures = 5;
	a.data_refused = 2;
	a.acl_refused = 6;
	a.passive_ports_in_use = 4;
	a.passive_ports_total = 100;
	b.sessions_total = 1;
	b.sessions_ended[END_BACKEND_CONNECT] = 1;
	b.passive_ports_total = 50;

	static const struct metrics_server pool[] = {
	    {"192.0.2.5:21", 1, 3, 118, 0, 1},
	    {"192.0.2.6:21", 0, 1, 2, 4, 9},
	};
	static const struct metrics_ban bans[] = {{"198.51.100.23", 840}};
	a.bans = 1;
	a.ban_refused = 17;
	const struct metrics_site sites[] = {
	    {"public", &a, 4, pool, 2, bans, 1},
	    /* A hostile name: quote, backslash, line feed, invalid UTF-8. */
	    {"odd \"name\" \\ with\nlf \xff", &b, 0, NULL, 0, NULL, 0},
	};
	if (!out || metrics_render(out, sites, 2, PACKAGE_VERSION) < 0 ||
	    evbuffer_write(out, 1) < 0)
		rc = 1;
	while (rc == 0 && evbuffer_get_length(out) > 0)
		if (evbuffer_write(out, 1) < 0)
			rc = 1;
	if (out)
		evbuffer_free(out);
	return rc;
}
