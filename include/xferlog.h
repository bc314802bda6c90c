/*
 * xferlog: the transfer log in the classic xferlog(5) format of wu-ftpd,
 * ProFTPD and vsftpd, one line per finished file transfer:
 *
 *   current-time transfer-time remote-host file-size filename transfer-type
 *   special-action-flag direction access-mode username service-name
 *   authentication-method authenticated-user-id completion-status
 *
 *   Wed Nov 25 16:07:59 2026 1 127.0.0.1 10485760 /f10 b _ o r u ftp 0 * c
 */
#ifndef FTPGATE_XFERLOG_H
#define FTPGATE_XFERLOG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* Room for a line whose strings are short; xferlog_write copes with longer. */
#define XFERLOG_LINE_MAX 1024

struct xferlog_entry {
	time_t end;              /* when the transfer finished (written in local time) */
	double seconds;          /* how long it took */
	const char *remote_host; /* client address, e.g. "192.0.2.7" or "2001:db8::7" */
	uint64_t bytes;          /* bytes transferred */
	const char *path;        /* file name as the client gave it */
	char type;               /* 'a' ASCII or 'b' binary */
	char direction;          /* 'o' outgoing (download) or 'i' incoming (upload) */
	char access;             /* 'r' real user, 'a' anonymous, 'g' guest */
	const char *user;        /* user name given with USER */
	int complete;            /* 1: completed ('c'), 0: incomplete ('i') */
};

/*
 * Format e as one xferlog line, LF-terminated, into buf (always
 * NUL-terminated when size > 0). Like snprintf, returns the length of the
 * whole line (without the NUL) even if it did not fit, or -1 (errno EINVAL)
 * if type, direction or access is not one of the letters above.
 *
 * - current-time: e->end in local time, "%a %b %e %H:%M:%S %Y" in English
 *   whatever the locale, the day padded like ctime(3) ("Nov  5");
 * - transfer-time: e->seconds rounded to whole seconds, at least 1;
 * - remote-host, filename and username: every space, control character and
 *   DEL becomes '_' (wu-ftpd writes spaces in file names as '_'), so no
 *   field can be split and no line broken; an empty or NULL string is "-";
 * - special-action-flag "_", service-name "ftp", authentication-method "0",
 *   authenticated-user-id "*".
 *
 * Pure: no I/O (it reads the time zone through localtime_r).
 */
int xferlog_format(char *buf, size_t size, const struct xferlog_entry *e);

struct xferlog;

/*
 * Open (create, mode 0640) path for appending. Returns NULL with a message in
 * err on failure.
 */
struct xferlog *xferlog_open(const char *path, char *err, size_t errsize);

/*
 * Give the open file to uid:gid (fchown), before dropping root, so that the
 * file logrotate creates in its place ("create" keeps owner and group) can be
 * reopened by that user. Returns 0, or -1 with errno set.
 */
int xferlog_chown(struct xferlog *x, uid_t uid, gid_t gid);

/* Append one line with one write(2). Returns 0, or -1 with errno set. */
int xferlog_write(struct xferlog *x, const struct xferlog_entry *e);

/*
 * Open the path again (after logrotate moved the file away; SIGUSR1). On
 * failure the old file stays in use and -1 is returned with errno set.
 */
int xferlog_reopen(struct xferlog *x);

/* Close; NULL is a no-op. */
void xferlog_close(struct xferlog *x);

#endif
