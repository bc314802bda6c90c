#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "log.h"

/* Worker threads log while the main thread reopens or reconfigures: the
 * settings are atomic, and the file descriptor keeps its number for the
 * life of the process once opened (a reopen dup2()s onto it). */
static _Atomic int log_level_cur = LOG_LVL_INFO;
static _Atomic int log_target = LOGT_STDERR;
static _Atomic int log_fd = -1;                                /* LOGT_FILE */
static pthread_mutex_t limit_lock = PTHREAD_MUTEX_INITIALIZER; /* struct log_limit */
static char log_path[CONF_PATH_MAX];

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int log_open(enum log_level level, int target, const char *path, int facility, char *err,
             size_t errsize)
{
	if (target == LOGT_FILE) {
		int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
		if (fd < 0) {
			snprintf(err, errsize, "cannot open log file %s: %s", path,
			         strerror(errno));
			return -1;
		}
		if (log_fd >= 0) {
			/* Same number, new file: a line being written by another
			 * thread goes to the old file or the new one, never elsewhere. */
			dup3(fd, log_fd, O_CLOEXEC);
			close(fd);
		} else {
			log_fd = fd;
		}
		if (path != log_path)
			snprintf(log_path, sizeof(log_path), "%s", path);
	}
	/* Another target: an open file stays open (unused) for a later reload. */
	if (target == LOGT_SYSLOG) {
		closelog();
		openlog("ftpgate", LOG_PID | LOG_NDELAY, facility);
	}
	log_target = target;
	log_level_cur = level;
	return 0;
}

int log_reopen(void)
{
	char err[CONF_PATH_MAX + 128];
	if (log_target != LOGT_FILE)
		return 0;
	if (log_open(log_level_cur, LOGT_FILE, log_path, 0, err, sizeof(err)) < 0) {
		/* Keep writing to the old file; say so there. */
		log_msg(LOG_LVL_ERROR, "%s", err);
		return -1;
	}
	return 0;
}

void log_set_level(enum log_level level)
{
	log_level_cur = level;
}

int log_enabled(enum log_level level)
{
	return (int)level <= log_level_cur;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	char msg[2048];
	va_list ap;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	if (log_target == LOGT_SYSLOG) {
		static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
		syslog(prio[level], "%s", msg);
		return;
	}
	struct timespec ts;
	struct tm tm;
	char when[32];
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	if (log_target == LOGT_FILE && log_fd >= 0) {
		char line[2200];
		int n = snprintf(line, sizeof(line), "%s.%03ldZ %s: %s\n", when,
		                 ts.tv_nsec / 1000000L, level_names[level], msg);
		if (n > (int)sizeof(line) - 1)
			n = (int)sizeof(line) - 1;
		/* One write per line: concurrent appends never interleave. */
		ssize_t w = write(log_fd, line, (size_t)n);
		(void)w;
		return;
	}
	fprintf(stderr, "%s.%03ldZ %s: %s\n", when, ts.tv_nsec / 1000000L, level_names[level], msg);
}

char *log_escape(char *dst, size_t size, const char *src, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	if (size == 0)
		return dst;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)src[i];
		size_t need = (c < 0x20 || c >= 0x7f || c == '\\') ? 4 : 1;
		if (o + need + 4 > size) {
			if (o + 4 <= size) {
				memcpy(dst + o, "...", 3);
				o += 3;
			}
			break;
		}
		if (need == 1) {
			dst[o++] = (char)c;
		} else {
			dst[o++] = '\\';
			dst[o++] = 'x';
			dst[o++] = hex[c >> 4];
			dst[o++] = hex[c & 15];
		}
	}
	dst[o] = '\0';
	return dst;
}

int log_limit_pass(struct log_limit *l, uint64_t now_ms, unsigned *suppressed)
{
	int pass = 0;
	pthread_mutex_lock(&limit_lock);
	if (l->used && now_ms - l->last_ms < 1000u) {
		if (l->suppressed < UINT_MAX)
			l->suppressed++;
	} else {
		*suppressed = l->suppressed;
		l->suppressed = 0;
		l->last_ms = now_ms;
		l->used = 1;
		pass = 1;
	}
	pthread_mutex_unlock(&limit_lock);
	return pass;
}

void log_warn_limited(struct log_limit *l, uint64_t now_ms, const char *fmt, ...)
{
	char line[1024], more[48] = "";
	unsigned n = 0;
	va_list ap;

	if (l && !log_limit_pass(l, now_ms, &n))
		return;
	if (n)
		snprintf(more, sizeof(more), " (%u more suppressed)", n);
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	log_msg(LOG_LVL_WARN, "%s%s", line, more);
}
