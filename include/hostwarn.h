/*
 * hostwarn: the configuration warnings (confwarn.h) with the facts about
 * this host gathered (its addresses, the kernel's ephemeral and reserved
 * ports, the certificates' expiry dates), reported at -t and at start-up,
 * and the daily log line for a certificate about to expire.
 */
#ifndef FTPGATE_HOSTWARN_H
#define FTPGATE_HOSTWARN_H

#include "ftpgate.h"

/* Report the warnings about g: to_stderr as "file:line: key: warning: text"
 * (-t), else as log warnings. Returns how many. */
unsigned host_warnings(const struct gen *g, int to_stderr);

/*
 * Every interval seconds, log the certificate warning of each site of gw's
 * current configuration whose certificate expires within CERT_WARN_DAYS.
 * Returns the timer (the caller frees it with event_free), or NULL.
 */
struct event *cert_watch_start(struct ftpgate *gw, unsigned interval);

#endif
