/*
 * sessinfo: renders struct session_info as JSON or as a table line (see
 * include/sessinfo.h). Pure; owns nothing.
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#include "metrics.h"
#include "sessinfo.h"

/* A JSON string: " \ and control characters escaped, invalid UTF-8 -> U+FFFD. */
static void json_str(struct evbuffer *out, const char *v)
{
	const unsigned char *s = (const unsigned char *)v;
	evbuffer_add(out, "\"", 1);
	while (*s) {
		size_t n = utf8_len(s);
		if (n == 0) {
			evbuffer_add(out, "\\ufffd", 6);
			s++;
		} else if (*s == '"' || *s == '\\') {
			evbuffer_add_printf(out, "\\%c", *s);
			s++;
		} else if (*s < 0x20 || *s == 0x7f) {
			evbuffer_add_printf(out, "\\u%04x", *s);
			s++;
		} else {
			evbuffer_add(out, s, n);
			s += n;
		}
	}
	evbuffer_add(out, "\"", 1);
}

/* For the table: printable text only; anything else becomes '?'. */
static void plain(char *dst, size_t size, const char *v)
{
	const unsigned char *s = (const unsigned char *)v;
	size_t o = 0;
	while (*s && o + 4 < size) {
		size_t n = utf8_len(s);
		if (n == 0 || *s < 0x20 || *s == 0x7f) {
			dst[o++] = '?';
			s++;
			continue;
		}
		memcpy(dst + o, s, n);
		o += n;
		s += n;
	}
	dst[o] = '\0';
}

int sessinfo_json_begin(struct evbuffer *out, const char *version)
{
	evbuffer_add_printf(out, "{\"version\": ");
	json_str(out, version);
	return evbuffer_add_printf(out, ", \"sessions\": [") < 0 ? -1 : 0;
}

int sessinfo_json(struct evbuffer *out, const struct session_info *si, int first)
{
	evbuffer_add_printf(out, "%s\n  {\"id\": %" PRIu64 ", \"site\": ", first ? "" : ",",
	                    si->id);
	json_str(out, si->site);
	evbuffer_add_printf(out, ", \"client\": ");
	json_str(out, si->client);
	evbuffer_add_printf(out, ", \"user\": ");
	json_str(out, si->user);
	evbuffer_add_printf(out, ", \"backend\": ");
	if (si->backend[0])
		json_str(out, si->backend);
	else
		evbuffer_add_printf(out, "null");
	evbuffer_add_printf(out, ", \"state\": ");
	json_str(out, si->state);
	evbuffer_add_printf(out,
	                    ", \"tls\": %s, \"data_tls\": %s, \"backend_tls\": %s, "
	                    "\"age_seconds\": %.3f, \"bytes_up\": %" PRIu64
	                    ", \"bytes_down\": %" PRIu64 ", \"transfer\": ",
	                    si->tls ? "true" : "false", si->data_tls ? "true" : "false",
	                    si->backend_tls ? "true" : "false", (double)si->age_ms / 1000.0,
	                    si->bytes_up, si->bytes_down);
	if (!si->xfer_cmd[0])
		return evbuffer_add_printf(out, "null}") < 0 ? -1 : 0;
	evbuffer_add_printf(out, "{\"command\": ");
	json_str(out, si->xfer_cmd);
	uint64_t rate = si->xfer_ms ? si->xfer_bytes * 1000u / si->xfer_ms : 0;
	return evbuffer_add_printf(out,
	                           ", \"bytes\": %" PRIu64 ", \"seconds\": %.3f, "
	                           "\"bytes_per_second\": %" PRIu64 "}}",
	                           si->xfer_bytes, (double)si->xfer_ms / 1000.0, rate) < 0
	           ? -1
	           : 0;
}

int sessinfo_json_end(struct evbuffer *out, unsigned n)
{
	return evbuffer_add_printf(out, "%s], \"count\": %u}\n", n ? "\n" : "", n) < 0 ? -1 : 0;
}

static const char *fmt_bytes(char *buf, size_t size, uint64_t b)
{
	static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	double v = (double)b;
	int u = 0;
	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, size, "%" PRIu64 " B", b);
	else
		snprintf(buf, size, "%.1f %s", v, unit[u]);
	return buf;
}

static const char *fmt_age(char *buf, size_t size, uint64_t ms)
{
	uint64_t s = ms / 1000;
	if (s < 60)
		snprintf(buf, size, "%" PRIu64 "s", s);
	else if (s < 3600)
		snprintf(buf, size, "%" PRIu64 "m%02" PRIu64 "s", s / 60, s % 60);
	else
		snprintf(buf, size, "%" PRIu64 "h%02" PRIu64 "m", s / 3600, s / 60 % 60);
	return buf;
}

#define TABLE_FMT "%-6s %-12s %-22s %-14s %-22s %-10s %-4s %-7s %s\n"

int sessinfo_table_head(struct evbuffer *out)
{
	return evbuffer_add_printf(out, TABLE_FMT, "ID", "SITE", "CLIENT", "USER", "BACKEND",
	                           "STATE", "TLS", "AGE", "TRANSFER") < 0
	           ? -1
	           : 0;
}

int sessinfo_table_row(struct evbuffer *out, const struct session_info *si)
{
	char id[24], site[sizeof(si->site)], user[sizeof(si->user)], be[sizeof(si->backend)];
	char cmd[sizeof(si->xfer_cmd)], age[32], xfer[sizeof(si->xfer_cmd) + 64], b1[32], b2[32];
	snprintf(id, sizeof(id), "%" PRIu64, si->id);
	plain(site, sizeof(site), si->site);
	plain(user, sizeof(user), si->user[0] ? si->user : "-");
	plain(be, sizeof(be), si->backend[0] ? si->backend : "-");
	plain(cmd, sizeof(cmd), si->xfer_cmd);
	if (si->xfer_cmd[0])
		snprintf(xfer, sizeof(xfer), "%s: %s, %s/s", cmd,
		         fmt_bytes(b1, sizeof(b1), si->xfer_bytes),
		         fmt_bytes(b2, sizeof(b2),
		                   si->xfer_ms ? si->xfer_bytes * 1000u / si->xfer_ms : 0));
	else
		snprintf(xfer, sizeof(xfer), "-");
	return evbuffer_add_printf(out, TABLE_FMT, id, site, si->client, user, be, si->state,
	                           si->tls ? "yes" : "no", fmt_age(age, sizeof(age), si->age_ms),
	                           xfer) < 0
	           ? -1
	           : 0;
}
