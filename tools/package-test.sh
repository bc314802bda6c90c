#!/usr/bin/env bash
# The Debian package's whole life, as tools/test.sh runs it (one step: one
# pass or one fail; README "Installing the Debian package"). As root, on a
# machine where the package is not installed and no ftpgate user exists:
#   1. copy the tree's files (tracked and untracked, not ignored: no build
#      directory) to a temp directory and run dpkg-buildpackage -us -uc -b;
#   2. lintian on the .changes: no error and no warning (overrides in
#      debian/ftpgate.lintian-overrides say why); its whole output is printed;
#   3. dpkg -i: the ftpgate system user and group, the conffile, the unit
#      installed and not enabled, nothing running;
#   4. the unit's ExecStartPre command (ftpgate -t on the installed
#      ftpgate.ini) and plain `ftpgate -t` (the built-in default path), then
#      tools/package-transfer.py in a network namespace of its own: the
#      unit's ExecStart command in front of pyftpdlib, transfers compared by
#      SHA-256, and a run as the ftpgate user;
#   5. dpkg -r (conffile and user kept), dpkg -P, then nothing left: no file
#      that dpkg -L listed (directories only where another package owns
#      them), no /etc/ftpgate, no /var/log/ftpgate, no ftpgate user or group,
#      no systemd state, no process of /usr/sbin/ftpgate.
# Ends with "package: ok (...)" and exit 0, or "package: FAILED: why" and 1.
# Whatever it installed it purges on the way out, also after a failure.
set -u
cd "$(dirname "$0")/.."
top=$PWD
start=$SECONDS
work=
installed=0

say() { printf '%s\n' "$*"; }
fail() {
	say "package: FAILED: $*"
	exit 1
}
leftovers=0
cleanup() {
	if [ "$installed" = 1 ]; then
		dpkg --purge ftpgate >"$work/cleanup-purge.log" 2>&1 ||
			{ say "cleanup: dpkg --purge ftpgate failed:"; cat "$work/cleanup-purge.log"; }
	fi
	# What a broken purge left (none of it was there before): gone, so that
	# the next run starts clean. The check above has already reported it.
	if [ "$leftovers" = 1 ]; then
		rm -rf /etc/ftpgate /var/log/ftpgate
		if getent passwd ftpgate >/dev/null; then deluser --system --quiet ftpgate >/dev/null 2>&1; fi
		if getent group ftpgate >/dev/null; then delgroup --system --quiet ftpgate; fi
	fi
	[ -n "$work" ] && rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP

# Processes running /usr/sbin/ftpgate (by executable, not by name: other
# ftpgate processes on the machine are not ours).
pkg_procs() {
	local p exe
	for p in /proc/[0-9]*; do
		exe=$(readlink "$p/exe" 2>/dev/null) || continue
		case $exe in /usr/sbin/ftpgate | "/usr/sbin/ftpgate (deleted)") printf '%s ' "${p#/proc/}" ;; esac
	done
}

[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i, the ftpgate user)"
for t in dpkg-buildpackage lintian unshare; do
	command -v "$t" >/dev/null || fail "$t not found (tools/install-deps.sh installs it)"
done
command -v git >/dev/null && git rev-parse --git-dir >/dev/null 2>&1 ||
	fail "not a git checkout: the clean copy is made from git ls-files"
if dpkg-query -W -f='${Status}' ftpgate 2>/dev/null | grep -qv 'not-installed'; then
	fail "the package ftpgate is on this machine already ($(dpkg-query -W -f='${Status}' ftpgate)): this test installs and purges it (dpkg -P ftpgate)"
fi
getent passwd ftpgate >/dev/null &&
	fail "a user ftpgate exists already: the test could not tell whether purge removes the package's"
getent group ftpgate >/dev/null &&
	fail "a group ftpgate exists already: the test could not tell whether purge removes the package's"
for d in /etc/ftpgate /var/log/ftpgate; do
	[ ! -e "$d" ] || fail "$d exists already: the test could not tell whether purge removes it"
done
leftovers=1

version=$(dpkg-parsechangelog -l debian/changelog -S Version) || fail "debian/changelog unreadable"
arch=$(dpkg --print-architecture)
work=$(mktemp -d /tmp/ftpgate-package.XXXXXX)
src=$work/ftpgate-$version
mkdir "$src"

# ---- 1. build from a clean copy
t0=$SECONDS
git ls-files -z --cached --others --exclude-standard |
	while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
	tar --null -T - -cf - | tar -x -C "$src" || fail "copying the tree to $src failed"
if ! (cd "$src" && timeout 1200 dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1; then
	tail -80 "$work/build.log"
	fail "dpkg-buildpackage -us -uc -b failed"
fi
deb=$work/ftpgate_${version}_${arch}.deb
changes=$work/ftpgate_${version}_${arch}.changes
[ -f "$deb" ] && [ -f "$changes" ] || { ls -l "$work"; fail "no $deb or $changes"; }
build_s=$((SECONDS - t0))
say "built $(basename "$deb") in ${build_s} s"

# ---- 2. lintian
t0=$SECONDS
lintian --fail-on error,warning --display-info --display-experimental --pedantic --show-overrides "$changes" >"$work/lintian.out" 2>&1
lrc=$?
grep -v '^running with root privileges is not recommended!$' "$work/lintian.out" | sed 's/^/lintian: /'
[ $lrc -eq 0 ] || fail "lintian reports errors or warnings (exit $lrc)"
say "lintian: no error, no warning ($((SECONDS - t0)) s)"

# ---- 3. install
t0=$SECONDS
installed=1
dpkg -i "$deb" >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "dpkg -i failed"; }
dpkg -L ftpgate | sort >"$work/files"
pw=$(getent passwd ftpgate) || fail "no ftpgate user after install"
IFS=: read -r _ _ uid gid _ home shell <<<"$pw"
[ "$uid" -lt 1000 ] || fail "ftpgate is not a system user: $pw"
[ "$(getent group ftpgate | cut -d: -f3)" = "$gid" ] || fail "ftpgate's group is not ftpgate: $pw"
[ "$home" = /nonexistent ] && [ ! -e /nonexistent ] || fail "ftpgate's home: $pw"
case $shell in */nologin | */false) ;; *) fail "ftpgate can log in: $pw" ;; esac
dpkg-query -W -f='${Conffiles}\n' ftpgate | grep -q '^ /etc/ftpgate/ftpgate.ini ' ||
	fail "/etc/ftpgate/ftpgate.ini is not a conffile: $(dpkg-query -W -f='${Conffiles}' ftpgate)"
cmp -s /etc/ftpgate/ftpgate.ini "$top/etc/ftpgate.ini" || fail "/etc/ftpgate/ftpgate.ini is not etc/ftpgate.ini"
unit=/lib/systemd/system/ftpgate.service
[ -f "$unit" ] || fail "no $unit"
for f in /usr/sbin/ftpgate /usr/share/man/man8/ftpgate.8.gz /usr/share/man/man5/ftpgate.ini.5.gz \
	/etc/logrotate.d/ftpgate; do
	[ -f "$f" ] || fail "not installed: $f"
done
enabled=$(find /etc/systemd/system -name 'ftpgate*' 2>/dev/null)
[ -z "$enabled" ] || fail "the unit is enabled after install: $enabled"
! DPKG_MAINTSCRIPT_PACKAGE=ftpgate deb-systemd-helper --quiet is-enabled ftpgate.service || fail "deb-systemd-helper: ftpgate.service is enabled"
[ -z "$(pkg_procs)" ] || fail "ftpgate runs after install (pids $(pkg_procs)): it must wait until enabled"
if command -v logrotate >/dev/null; then
	logrotate -d /etc/logrotate.d/ftpgate >"$work/logrotate.out" 2>&1 ||
		{ cat "$work/logrotate.out"; fail "logrotate -d /etc/logrotate.d/ftpgate"; }
fi
say "installed: user ftpgate (uid $uid), conffile /etc/ftpgate/ftpgate.ini, $unit not enabled, not running"

# ---- 4. run it: the unit's own command lines on the installed config
pre=$(sed -n 's/^ExecStartPre=//p' "$unit")
exe=$(sed -n 's/^ExecStart=//p' "$unit")
[ "$pre" = "/usr/sbin/ftpgate -t -c /etc/ftpgate/ftpgate.ini" ] || fail "$unit: ExecStartPre=$pre"
[ "$exe" = "/usr/sbin/ftpgate -f -c /etc/ftpgate/ftpgate.ini" ] || fail "$unit: ExecStart=$exe"
out=$($pre 2>&1) || fail "ExecStartPre ($pre) refuses the installed config: $out"
out=$(/usr/sbin/ftpgate -t 2>&1) || fail "ftpgate -t (the built-in default path) refuses: $out"
say "ok - $pre; ftpgate -t (default path)"
# shellcheck disable=SC2086 # the unit's command line, split as systemd does
if ! FTPGATE_SRCDIR=$top PYTHONPATH=$top/tests/integration PYTHONDONTWRITEBYTECODE=1 \
	timeout 300 unshare --net -- sh -c 'ip link set lo up && exec /usr/bin/python3 "$@"' sh \
	"$top/tools/package-transfer.py" $exe >"$work/transfer.out" 2>&1; then
	cat "$work/transfer.out"
	fail "transfers through the installed package"
fi
cat "$work/transfer.out"
[ -z "$(pkg_procs)" ] || fail "ftpgate still runs after the transfers (pids $(pkg_procs))"
[ -d /var/log/ftpgate ] || fail "no /var/log/ftpgate after the run that logged there"

# ---- 5. remove, purge, nothing left
dpkg -r ftpgate >"$work/remove.log" 2>&1 || { cat "$work/remove.log"; fail "dpkg -r failed"; }
[ ! -e /usr/sbin/ftpgate ] || fail "dpkg -r left /usr/sbin/ftpgate"
[ -f /etc/ftpgate/ftpgate.ini ] || fail "dpkg -r removed the conffile (only purge may)"
getent passwd ftpgate >/dev/null || fail "dpkg -r removed the user (only purge may)"
dpkg -P ftpgate >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "dpkg -P failed"; }
installed=0
left=
while IFS= read -r p; do
	[ -e "$p" ] || [ -L "$p" ] || continue
	[ "$p" = /. ] && continue
	if [ -d "$p" ] && dpkg-query -S "$p" >/dev/null 2>&1; then
		continue # a shared directory (/usr/sbin, /etc/logrotate.d, /lib -> usr/lib, ...)
	fi
	left="$left $p"
done <"$work/files"
[ -z "$left" ] || fail "left behind after purge:$left"
for p in /etc/ftpgate /var/log/ftpgate /lib/systemd/system/ftpgate.service; do
	[ ! -e "$p" ] || fail "left behind after purge: $p"
done
state=$(find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled \
	/var/lib/systemd/deb-systemd-helper-masked -name '*ftpgate*' 2>/dev/null)
[ -z "$state" ] || fail "systemd state left behind after purge: $state"
! getent passwd ftpgate >/dev/null || fail "user ftpgate left behind after purge"
! getent group ftpgate >/dev/null || fail "group ftpgate left behind after purge"
[ -z "$(pkg_procs)" ] || fail "ftpgate processes left behind (pids $(pkg_procs))"
dpkg-query -W -f='${Status}' ftpgate 2>/dev/null | grep -qv 'not-installed' &&
	fail "dpkg still knows ftpgate: $(dpkg-query -W -f='${Status}' ftpgate)"
say "removed and purged: nothing left ($(wc -l <"$work/files") paths checked) ($((SECONDS - t0)) s)"
say "package: ok ($((SECONDS - start)) s: build ${build_s} s)"
