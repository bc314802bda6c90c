/* log: leveled diagnostics to stderr (foreground) or syslog (daemon). */
#ifndef FTPGATE_LOG_H
#define FTPGATE_LOG_H

#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/*
 * target: LOGT_STDERR, LOGT_SYSLOG (with facility) or LOGT_FILE (path,
 * opened for appending). Returns 0, or -1 with why in err (the previous
 * target stays).
 */
int log_open(enum log_level level, int target, const char *path, int facility, char *err,
             size_t errsize);
/* Reopen the log file (after rotation); no-op for other targets. */
int log_reopen(void);
void log_set_level(enum log_level level);
int log_enabled(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
	do {                                                                                       \
		if (log_enabled(LOG_LVL_DEBUG))                                                    \
			log_msg(LOG_LVL_DEBUG, __VA_ARGS__);                                       \
	} while (0)

/*
 * One line a second for a kind of message a peer can repeat at will (a
 * stranger on a data port): log_limit_pass() says whether a line may be
 * written at now_ms; if so, *suppressed is how many were left out since
 * the last one written (then reset), else the one left out is counted.
 * Starts zeroed.
 */
struct log_limit {
	uint64_t last_ms;
	unsigned suppressed;
	int used;
};
int log_limit_pass(struct log_limit *l, uint64_t now_ms, unsigned *suppressed);
/* A warning at the pace of l (every one if l is NULL), with " (N more suppressed)". */
void log_warn_limited(struct log_limit *l, uint64_t now_ms, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Copy untrusted bytes into dst as printable ASCII: control bytes, backslash
 * and bytes >= 0x7f become \xNN escapes, so that network input can never
 * forge or split a log line. Always NUL-terminates; truncates with "...".
 * Returns dst.
 */
char *log_escape(char *dst, size_t size, const char *src, size_t len);

#endif
