#!/usr/bin/env bash
# test_service.py (reload during a download, SIGTERM drain, shutdown_timeout,
# SIGUSR1, privilege drop, metrics, xferlog) again with [global] workers = 4,
# whatever the machine's core count: the service paths with sessions spread
# over four event-loop threads (issue 11.1). TAP output.
set -u
here=$(cd "$(dirname "$0")" && pwd)
export FTPTEST_WORKERS=4
exec "${PYTHON3:-/usr/bin/python3}" "$here/test_service.py"
