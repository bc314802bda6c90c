/*
 * cli: the subcommands and the quick mode of the command line, apart from
 * the proxy's own start-up (main.c).
 */
#ifndef FTPGATE_CLI_H
#define FTPGATE_CLI_H

#include <stddef.h>

/* ftpgate sessions [-c FILE]: GET /sessions from the metrics listener of
 * FILE and print the table. argv[0] is "sessions". Returns the exit status. */
int cli_sessions(int argc, char **argv, const char *default_conf);

/* Quick mode: -b BACKEND[:PORT] -l [ADDR:]PORT [-a ADDR] [-p LOW-HIGH]
 * [--tls-cert F --tls-key F], one site without an ini file. */
struct quick {
	const char *backend, *listen, *public_address, *ports, *tls_cert, *tls_key;
	int line[6]; /* the line of each in the generated text (quick_ini), 0 none */
};

/* getopt_long's options of quick mode (short ones in QUICK_SHORTOPTS). */
#define QUICK_SHORTOPTS "b:l:a:p:"
enum { QUICK_OPT_TLS_CERT = 0x100, QUICK_OPT_TLS_KEY };
#define QUICK_LONGOPTS                                                                             \
	{"tls-cert", 1, NULL, QUICK_OPT_TLS_CERT},                                                 \
	{                                                                                          \
		"tls-key", 1, NULL, QUICK_OPT_TLS_KEY                                              \
	}

/* Take option opt (arg) if it is quick mode's: 1, else 0. */
int quick_option(struct quick *q, int opt, const char *arg);
/* Any quick-mode option given. */
int quick_active(const struct quick *q);
/*
 * The ini text of the one-site configuration (static storage, kept for
 * reloads), or NULL with "ftpgate: -X VALUE: what is wrong" in err.
 */
const char *quick_ini(struct quick *q, char *err, size_t errsize);
/* A message of conf_load_text(QUICK_NAME, ...) about the text of quick_ini():
 * rewritten in err to name the option ("ftpgate: -b VALUE: ..."). */
void quick_explain(const struct quick *q, char *err, size_t errsize);
#define QUICK_NAME "(command line)"

#endif
