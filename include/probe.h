/* probe: `ftpgate probe`, a site's backends checked the way the proxy would use them. */
#ifndef FTPGATE_PROBE_H
#define FTPGATE_PROBE_H

/*
 * `ftpgate probe [-c FILE] [--json] [--user U --pass P] [SITE...]` or
 * `ftpgate probe [options] ftp://[user[:pass]@]host[:port]`: argv[0] is
 * "probe". default_conf is the configuration read without -c. Prints the
 * findings (text or one JSON document) on stdout. Returns the exit status:
 * 0 when nothing is a problem, 1 otherwise, 2 for a usage or configuration
 * error.
 */
int probe_main(int argc, char **argv, const char *default_conf);

#endif
