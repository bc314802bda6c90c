/* Unit tests for xferlog (TAP): the line format, field by field, and the file. */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tap.h"
#include "xferlog.h"

#define T_NOV25 1795622879 /* Wed Nov 25 16:07:59 2026 UTC */
#define T_NOV05 1793847845 /* Thu Nov  5 03:04:05 2026 UTC */

static struct xferlog_entry sample(void)
{
	return (struct xferlog_entry){
	    .end = T_NOV25,
	    .seconds = 0.8,
	    .remote_host = "127.0.0.1",
	    .bytes = 10485760,
	    .path = "/f10",
	    .type = 'b',
	    .direction = 'o',
	    .access = 'r',
	    .user = "u",
	    .complete = 1,
	};
}

/* Split line on runs of spaces (the LF ends the last field). Returns the count. */
static int split(const char *line, char f[][256], int max)
{
	int n = 0;
	const char *p = line;

	while (*p && *p != '\n') {
		while (*p == ' ')
			p++;
		if (!*p || *p == '\n')
			break;
		size_t len = strcspn(p, " \n");
		if (n < max) {
			snprintf(f[n], 256, "%.*s", (int)len, p);
		}
		n++;
		p += len;
	}
	return n;
}

static char *fmt(const struct xferlog_entry *e)
{
	static char buf[4096];
	if (xferlog_format(buf, sizeof(buf), e) < 0)
		snprintf(buf, sizeof(buf), "(error %d)", errno);
	return buf;
}

static void test_fields(void)
{
	struct xferlog_entry e = sample();
	char buf[512];
	char f[20][256];
	int n = xferlog_format(buf, sizeof(buf), &e);

	is_str(buf, "Wed Nov 25 16:07:59 2026 1 127.0.0.1 10485760 /f10 b _ o r u ftp 0 * c\n",
	       "the known line");
	is_int(n, (long long)strlen(buf), "returns the length");
	is_int(split(buf, f, 20), 18, "5 time tokens + 13 fields");
	is_str(f[0], "Wed", "current-time: weekday");
	is_str(f[1], "Nov", "current-time: month");
	is_str(f[2], "25", "current-time: day");
	is_str(f[3], "16:07:59", "current-time: time");
	is_str(f[4], "2026", "current-time: year");
	is_str(f[5], "1", "transfer-time");
	is_str(f[6], "127.0.0.1", "remote-host");
	is_str(f[7], "10485760", "file-size");
	is_str(f[8], "/f10", "filename");
	is_str(f[9], "b", "transfer-type");
	is_str(f[10], "_", "special-action-flag");
	is_str(f[11], "o", "direction");
	is_str(f[12], "r", "access-mode");
	is_str(f[13], "u", "username");
	is_str(f[14], "ftp", "service-name");
	is_str(f[15], "0", "authentication-method");
	is_str(f[16], "*", "authenticated-user-id");
	is_str(f[17], "c", "completion-status");

	e.end = T_NOV05;
	e.seconds = 125.4;
	e.remote_host = "2001:db8::7";
	e.bytes = UINT64_MAX;
	e.type = 'a';
	e.direction = 'i';
	e.access = 'a';
	e.user = "anonymous";
	e.complete = 0;
	is_str(fmt(&e),
	       "Thu Nov  5 03:04:05 2026 125 2001:db8::7 18446744073709551615 /f10 a _ i a "
	       "anonymous ftp 0 * i\n",
	       "day padded like ctime; upload, ASCII, anonymous, incomplete, IPv6");
	e.access = 'g';
	ok(strstr(fmt(&e), " a _ i g anonymous ") != NULL, "guest access mode");
}

static void test_time(void)
{
	struct xferlog_entry e = sample();

	setenv("TZ", "XXX-2", 1); /* two hours east of UTC, no DST */
	tzset();
	ok(strncmp(fmt(&e), "Wed Nov 25 18:07:59 2026 ", 25) == 0, "local time: %.24s", fmt(&e));
	setenv("TZ", "UTC", 1);
	tzset();

	static const struct {
		double in;
		const char *out;
	} secs[] = {
	    {0, "1"},   {0.4, "1"},   {1.49, "1"},    {1.5, "2"},
	    {2.6, "3"}, {59.9, "60"}, {3600, "3600"}, {-5, "1"},
	};
	for (size_t i = 0; i < sizeof(secs) / sizeof(secs[0]); i++) {
		char f[20][256];
		e.seconds = secs[i].in;
		split(fmt(&e), f, 20);
		is_str(f[5], secs[i].out, "transfer-time of %g s", secs[i].in);
	}
	char f[20][256];
	e.seconds = NAN;
	split(fmt(&e), f, 20);
	is_str(f[5], "1", "transfer-time of NaN");
	e.seconds = INFINITY;
	split(fmt(&e), f, 20);
	ok(strspn(f[5], "0123456789") == strlen(f[5]) && f[5][0] != '0',
	   "transfer-time of infinity is a number: %s", f[5]);
}

static void test_escaping(void)
{
	struct xferlog_entry e = sample();
	char f[20][256];

	e.path = "/dir with space/a\nb\tc\rd\x7f\x01\xc3\xa9.txt";
	e.user = "evil user\n0 * c\nWed";
	e.remote_host = "h o\ns\tt";
	const char *line = fmt(&e);
	is_int(split(line, f, 20), 18, "still 18 fields");
	is_str(f[8], "/dir_with_space/a_b_c_d__\xc3\xa9.txt",
	       "filename: spaces and control bytes -> _, UTF-8 kept");
	is_str(f[13], "evil_user_0_*_c_Wed", "username cannot forge fields or lines");
	is_str(f[6], "h_o_s_t", "remote-host sanitized");
	ok(strchr(line, '\n') == line + strlen(line) - 1, "exactly one LF, at the end");
	ok(strchr(line, '\r') == NULL && strchr(line, '\t') == NULL, "no CR, no TAB");

	e.path = "";
	e.user = NULL;
	e.remote_host = NULL;
	line = fmt(&e);
	is_int(split(line, f, 20), 18, "empty and NULL strings keep 18 fields");
	is_str(f[8], "-", "empty filename -> -");
	is_str(f[13], "-", "NULL user -> -");
	is_str(f[6], "-", "NULL remote-host -> -");
}

static void test_errors(void)
{
	struct xferlog_entry e = sample();
	char buf[64];
	char full[512];
	int n = xferlog_format(full, sizeof(full), &e);

	is_int(xferlog_format(buf, 10, &e), n, "too small: returns the full length");
	is_int(strlen(buf), 9, "too small: truncated and NUL-terminated");
	ok(strncmp(buf, full, 9) == 0, "too small: a prefix of the line");
	is_int(xferlog_format(NULL, 0, &e), n, "size 0: only measures");

	e.type = 'x';
	errno = 0;
	is_int(xferlog_format(buf, sizeof(buf), &e), -1, "bad transfer-type refused");
	is_int(errno, EINVAL, "errno EINVAL");
	ok(buf[0] == '\0', "buffer left empty");
	e = sample();
	e.direction = 'd';
	is_int(xferlog_format(buf, sizeof(buf), &e), -1, "bad direction refused");
	e = sample();
	e.access = 0;
	is_int(xferlog_format(buf, sizeof(buf), &e), -1, "bad access-mode refused");
}

static char *slurp(const char *path)
{
	static char buf[65536];
	FILE *f = fopen(path, "r");
	size_t n = 0;

	buf[0] = '\0';
	if (f) {
		n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
	}
	buf[n] = '\0';
	return buf;
}

static int count_char(const char *s, char c)
{
	int n = 0;
	for (; *s; s++)
		n += *s == c;
	return n;
}

static void test_file(void)
{
	char dir[] = "/tmp/test_xferlog.XXXXXX";
	char path[256], moved[256], dir2[300];
	char err[512] = "";
	struct stat st;
	struct xferlog_entry e = sample();

	if (!mkdtemp(dir)) {
		ok(0, "mkdtemp: %s", strerror(errno));
		return;
	}
	snprintf(path, sizeof(path), "%s/xferlog", dir);
	snprintf(moved, sizeof(moved), "%s/xferlog.1", dir);

	mode_t old = umask(022);
	struct xferlog *x = xferlog_open(path, err, sizeof(err));
	umask(old);
	ok(x != NULL, "xferlog_open (%s)", err);
	if (!x)
		return;
	ok(stat(path, &st) == 0 && (st.st_mode & 0777) == 0640, "created with mode 0640 (%o)",
	   (unsigned)(st.st_mode & 0777));
	is_int(xferlog_write(x, &e), 0, "write 1");
	e.path = "/second";
	is_int(xferlog_write(x, &e), 0, "write 2");
	is_str(slurp(path),
	       "Wed Nov 25 16:07:59 2026 1 127.0.0.1 10485760 /f10 b _ o r u ftp 0 * c\n"
	       "Wed Nov 25 16:07:59 2026 1 127.0.0.1 10485760 /second b _ o r u ftp 0 * c\n",
	       "two lines appended");

	/* A path longer than the stack buffer still goes out as one whole line. */
	char *longp = malloc(3 * XFERLOG_LINE_MAX);
	if (!longp)
		abort();
	memset(longp, 'p', 3 * XFERLOG_LINE_MAX - 1);
	longp[0] = '/';
	longp[3 * XFERLOG_LINE_MAX - 1] = '\0';
	e.path = longp;
	is_int(xferlog_write(x, &e), 0, "long line written");
	const char *all = slurp(path);
	is_int(count_char(all, '\n'), 3, "three lines");
	ok(strstr(all, longp) != NULL && strstr(all, " b _ o r u ftp 0 * c\n") != NULL,
	   "long line whole");
	free(longp);
	e.path = "/after-rotate";

	/* logrotate: rename, then SIGUSR1 -> reopen. */
	ok(rename(path, moved) == 0, "rotate: rename");
	is_int(xferlog_write(x, &e), 0, "write after rename goes to the old file");
	is_int(count_char(slurp(moved), '\n'), 4, "old file has 4 lines");
	is_int(xferlog_reopen(x), 0, "reopen");
	e.path = "/new";
	is_int(xferlog_write(x, &e), 0, "write after reopen");
	ok(strstr(slurp(path), " /new ") != NULL && count_char(slurp(path), '\n') == 1,
	   "new file has the one new line");
	is_int(count_char(slurp(moved), '\n'), 4, "old file unchanged");

	/* Reopen failing (directory gone) keeps the old file in use. */
	snprintf(dir2, sizeof(dir2), "%s.gone", dir);
	ok(rename(dir, dir2) == 0, "directory moved away");
	errno = 0;
	is_int(xferlog_reopen(x), -1, "reopen fails");
	is_int(errno, ENOENT, "with ENOENT");
	is_int(xferlog_write(x, &e), 0, "old file still written");
	ok(rename(dir2, dir) == 0, "directory back");
	is_int(count_char(slurp(path), '\n'), 2, "the write went to the open file");

	if (geteuid() == 0) {
		ok(xferlog_chown(x, 65534, 65534) == 0 && stat(path, &st) == 0 &&
		       st.st_uid == 65534 && st.st_gid == 65534,
		   "xferlog_chown gives the file away");
	} else {
		ok(xferlog_chown(x, getuid(), getgid()) == 0,
		   "xferlog_chown to oneself # SKIP not root");
	}

	e.type = 'z';
	is_int(xferlog_write(x, &e), -1, "bad entry not written");
	is_int(count_char(slurp(path), '\n'), 2, "nothing appended");

	xferlog_close(x);
	xferlog_close(NULL);
	ok(1, "closed");

	snprintf(path, sizeof(path), "%s/no/such/dir/xferlog", dir);
	x = xferlog_open(path, err, sizeof(err));
	ok(x == NULL && strstr(err, "No such file or directory") != NULL,
	   "open in a missing directory fails: %s", err);

	unlink(moved);
	snprintf(path, sizeof(path), "%s/xferlog", dir);
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	setenv("TZ", "UTC", 1);
	tzset();
	test_fields();
	test_time();
	test_escaping();
	test_errors();
	test_file();
	return tap_done();
}
