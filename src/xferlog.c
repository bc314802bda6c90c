/* xferlog: transfer log lines in the xferlog(5) format, and their file. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xferlog.h"

/* ---- formatting (pure) ----------------------------------------------------- */

/* Bounded writer that keeps counting past the end, like snprintf. */
struct sink {
	char *buf;
	size_t size;
	size_t len;
};

static void put_char(struct sink *s, char c)
{
	if (s->len + 1 < s->size)
		s->buf[s->len] = c;
	s->len++;
}

static void put_str(struct sink *s, const char *str)
{
	while (*str)
		put_char(s, *str++);
}

/* A field from untrusted text: never empty, never a space, LF or control byte. */
static void put_field(struct sink *s, const char *str)
{
	if (!str || !*str) {
		put_char(s, '-');
		return;
	}
	for (; *str; str++) {
		unsigned char c = (unsigned char)*str;
		put_char(s, c <= 0x20 || c == 0x7f ? '_' : (char)c);
	}
}

static void put_u64(struct sink *s, uint64_t v)
{
	char b[24];
	snprintf(b, sizeof(b), "%" PRIu64, v);
	put_str(s, b);
}

/* Whole seconds, rounded, at least 1 (also for NaN and negative values). */
static uint64_t whole_seconds(double seconds)
{
	if (!(seconds >= 1.5))
		return 1;
	if (seconds >= 1e15)
		return 1000000000000000ULL;
	return (uint64_t)(seconds + 0.5);
}

int xferlog_format(char *buf, size_t size, const struct xferlog_entry *e)
{
	static const char *const wday[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char *const mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	struct sink s = {buf, size, 0};
	struct tm tm;
	char when[64];

	if (size > 0)
		buf[0] = '\0';
	if ((e->type != 'a' && e->type != 'b') || (e->direction != 'o' && e->direction != 'i') ||
	    (e->access != 'r' && e->access != 'a' && e->access != 'g')) {
		errno = EINVAL;
		return -1;
	}
	if (!localtime_r(&e->end, &tm) || tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 ||
	    tm.tm_mon > 11) {
		errno = EOVERFLOW;
		return -1;
	}
	/* ctime(3)'s layout, in English whatever LC_TIME says. */
	snprintf(when, sizeof(when), "%s %s %2d %02d:%02d:%02d %lld", wday[tm.tm_wday],
	         mon[tm.tm_mon], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
	         (long long)tm.tm_year + 1900);

	put_str(&s, when);
	put_char(&s, ' ');
	put_u64(&s, whole_seconds(e->seconds));
	put_char(&s, ' ');
	put_field(&s, e->remote_host);
	put_char(&s, ' ');
	put_u64(&s, e->bytes);
	put_char(&s, ' ');
	put_field(&s, e->path);
	put_char(&s, ' ');
	put_char(&s, e->type);
	put_str(&s, " _ ");
	put_char(&s, e->direction);
	put_char(&s, ' ');
	put_char(&s, e->access);
	put_char(&s, ' ');
	put_field(&s, e->user);
	put_str(&s, " ftp 0 * ");
	put_char(&s, e->complete ? 'c' : 'i');
	put_char(&s, '\n');

	if (size > 0)
		buf[s.len < size ? s.len : size - 1] = '\0';
	if (s.len > INT_MAX) {
		errno = EOVERFLOW;
		return -1;
	}
	return (int)s.len;
}

/* ---- the file ---------------------------------------------------------------- */

struct xferlog {
	int fd;
	char *path;
};

static int open_log(const char *path)
{
	return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
}

struct xferlog *xferlog_open(const char *path, char *err, size_t errsize)
{
	struct xferlog *x = calloc(1, sizeof(*x));

	if (!x || !(x->path = strdup(path))) {
		if (err && errsize)
			snprintf(err, errsize, "%s: %s", path, strerror(ENOMEM));
		free(x);
		return NULL;
	}
	x->fd = open_log(path);
	if (x->fd < 0) {
		if (err && errsize)
			snprintf(err, errsize, "%s: %s", path, strerror(errno));
		free(x->path);
		free(x);
		return NULL;
	}
	return x;
}

int xferlog_write(struct xferlog *x, const struct xferlog_entry *e)
{
	char stack[XFERLOG_LINE_MAX];
	char *line = stack;
	int n = xferlog_format(stack, sizeof(stack), e);
	ssize_t w;
	int saved;

	if (n < 0)
		return -1;
	if ((size_t)n >= sizeof(stack)) {
		line = malloc((size_t)n + 1);
		if (!line)
			return -1;
		if (xferlog_format(line, (size_t)n + 1, e) != n) {
			free(line);
			errno = EINVAL;
			return -1;
		}
	}
	/* One write(2) of the whole line: with O_APPEND lines never interleave. */
	do
		w = write(x->fd, line, (size_t)n);
	while (w < 0 && errno == EINTR);
	saved = errno;
	if (line != stack)
		free(line);
	if (w < 0) {
		errno = saved;
		return -1;
	}
	if (w != n) {
		errno = ENOSPC; /* a short write to a regular file: the disk is full */
		return -1;
	}
	return 0;
}

int xferlog_chown(struct xferlog *x, uid_t uid, gid_t gid)
{
	return fchown(x->fd, uid, gid);
}

int xferlog_reopen(struct xferlog *x)
{
	int fd = open_log(x->path);

	if (fd < 0)
		return -1;
	/* Same number, new file: workers writing now are never cut off. */
	if (dup3(fd, x->fd, O_CLOEXEC) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	close(fd);
	return 0;
}

void xferlog_close(struct xferlog *x)
{
	if (!x)
		return;
	close(x->fd);
	free(x->path);
	free(x);
}
