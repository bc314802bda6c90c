#!/usr/bin/env bash
# Kernel TLS on data connections (issue 17.4): ktls_guest.py runs inside a
# qemu VM booted with Debian's stock kernel, which has the tls module (the
# CI machines' kernel has not), through tests/vm/vm-run.sh; the host's root
# file system, this tree and the build are shared read-only. TAP output
# (the guest's), or "Bail out!" when the VM could not run it.
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
# The tree and the binary may be where the guest has its own tmpfs (a clone
# under /tmp): share them explicitly.
shares=(--share "$top")
bin=${FTPGATE:-$top/src/ftpgate}
[ -d "$(dirname "$bin")" ] && shares+=(--share "$(dirname "$bin")")
out=$("$top/tests/vm/vm-run.sh" --timeout 1200 "${shares[@]}" -- \
	"${PYTHON3:-/usr/bin/python3}" "$here/ktls_guest.py" 2>&1)
rc=$?
if [ $rc -eq 125 ]; then
	printf '%s\n' "$out" | sed 's/^/# /'
	echo "Bail out! the VM did not run the test (tests/vm/vm-run.sh exit 125)"
	exit 1
fi
printf '%s\n' "$out"
exit $rc
