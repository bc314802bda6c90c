/*
 * cli: the subcommands of the command line, apart from the proxy's own
 * start-up (main.c).
 */
#ifndef FTPGATE_CLI_H
#define FTPGATE_CLI_H

#include <stddef.h>

/* ftpgate sessions [-c FILE]: GET /sessions from the metrics listener of
 * FILE and print the table. argv[0] is "sessions". Returns the exit status. */
int cli_sessions(int argc, char **argv, const char *default_conf);

#endif
