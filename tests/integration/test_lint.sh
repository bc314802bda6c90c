#!/usr/bin/env bash
# Lint of the shipped service files (TAP):
#   - the man pages, with mandoc -T lint -W warning (groff -ww -z -man if
#     mandoc is missing): no message at all;
#   - etc/ftpgate.service.in with @sbindir@/@pkgsysconfdir@ substituted to a temp
#     directory holding a copy of the binary and a small ftpgate.ini, with
#     systemd-analyze verify: exit 0 and no message at all (it only warns,
#     exit 0, about an unknown key or a bad value);
#   - README.md's Layout table names every src/*.c;
#   - one layout: the binary's default -c, its default tls_cert and the built
#     unit's -c in one directory;
#   - make install into a DESTDIR twice: an edited ftpgate.ini is kept.
# Environment: FTPGATE_SRCDIR (default: the repo root), FTPGATE (the binary,
# default $FTPGATE_SRCDIR/src/ftpgate), FTPGATE_BUILDDIR (default: the
# binary's ..), MAKE.
set -u
here=$(cd "$(dirname "$0")" && pwd)
srcdir=${FTPGATE_SRCDIR:-$(cd "$here/../.." && pwd)}
bin=${FTPGATE:-$srcdir/src/ftpgate}

n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
skip() { n=$((n + 1)); echo "ok $n - $1 # SKIP $2"; }
notok() { # name, output
	n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"
	printf '%s\n' "$2" | sed 's/^/# /'
}

tmp=$(mktemp -d /tmp/ftpgate-lint.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# ---- man pages
for page in man/ftpgate.8 man/ftpgate.ini.5; do
	f=$srcdir/$page
	if [ ! -f "$f" ]; then
		notok "$page lint" "missing: $f"
		continue
	fi
	if command -v mandoc >/dev/null 2>&1; then
		out=$(mandoc -T lint -W warning "$f" 2>&1)
		rc=$?
		tool="mandoc -T lint -W warning"
	elif command -v groff >/dev/null 2>&1; then
		out=$(groff -ww -z -man "$f" 2>&1)
		rc=$?
		tool="groff -ww -z -man"
	else
		skip "$page lint" "neither mandoc nor groff installed"
		continue
	fi
	if [ "$rc" -eq 0 ] && [ -z "$out" ]; then
		ok "$page: $tool reports nothing"
	else
		notok "$page: $tool reports nothing" "exit $rc:
$out"
	fi
done

# ---- systemd unit
unit_in=$srcdir/etc/ftpgate.service.in
name="etc/ftpgate.service.in: systemd-analyze verify reports nothing"
if ! command -v systemd-analyze >/dev/null 2>&1; then
	skip "$name" "systemd-analyze not installed"
elif [ ! -f "$unit_in" ]; then
	notok "$name" "missing: $unit_in"
elif [ ! -x "$bin" ]; then
	notok "$name" "ftpgate binary not found: $bin"
else
	cp "$bin" "$tmp/ftpgate"
	cat >"$tmp/ftpgate.ini" <<-'EOF'
	[global]
	log_level = info
	[site:main]
	listen = 127.0.0.1:2121
	backend = 127.0.0.1:21
	EOF
	sed -e "s|@sbindir@|$tmp|g" -e "s|@pkgsysconfdir@|$tmp|g" "$unit_in" >"$tmp/ftpgate.service"
	if grep -q '@[a-z_]*@' "$tmp/ftpgate.service"; then
		notok "$name" "placeholders left after substitution:
$(grep -n '@[a-z_]*@' "$tmp/ftpgate.service")"
	else
		# Documentation=man:... is checked with man(1): let it find the pages of this tree.
		mkdir -p "$tmp/man/man8" "$tmp/man/man5"
		cp "$srcdir/man/ftpgate.8" "$tmp/man/man8/" 2>/dev/null
		cp "$srcdir/man/ftpgate.ini.5" "$tmp/man/man5/" 2>/dev/null
		man_opt=()
		command -v man >/dev/null 2>&1 || man_opt=(--man=no)
		out=$(cd "$tmp" && MANPATH=$tmp/man SYSTEMD_LOG_COLOR=0 \
			timeout 60 systemd-analyze verify "${man_opt[@]}" "$tmp/ftpgate.service" 2>&1)
		rc=$?
		if [ "$rc" -eq 0 ] && [ -z "$out" ]; then
			ok "$name"
		elif printf '%s' "$out" | grep -qiE 'Failed to (initialize|connect|create).*(manager|bus)|System has not been booted with systemd|Operation not permitted.*(namespace|cgroup)'; then
			skip "$name" "systemd-analyze cannot run here: $(printf '%s' "$out" | head -1)"
		else
			notok "$name" "exit $rc:
$out
--- unit as verified:
$(cat "$tmp/ftpgate.service")"
		fi
		# The ExecStartPre/ExecReload check of the unit, on the temp ini.
		out=$("$tmp/ftpgate" -t -c "$tmp/ftpgate.ini" 2>&1)
		rc=$?
		if [ "$rc" -eq 0 ]; then
			ok "ExecStartPre command (ftpgate -t -c ftpgate.ini) accepts a minimal file"
		else
			notok "ExecStartPre command (ftpgate -t -c ftpgate.ini) accepts a minimal file" \
				"exit $rc: $out"
		fi
	fi
fi

# ---- the README's layout table names every source file
name="README.md: the Layout table names every src/*.c"
layout=$(sed -n '/^## Layout/,/^## /p' "$srcdir/README.md")
missing=
for f in "$srcdir"/src/*.c; do
	f=src/${f##*/}
	printf '%s\n' "$layout" | grep -qF "\`$f\`" || missing="$missing $f"
done
if [ -z "$missing" ]; then ok "$name"; else notok "$name" "missing:$missing"; fi

# ---- one layout: the binary's default -c, its default tls_cert and the
# built unit's -c are in one directory
name="one configuration directory: default -c, default tls_cert, the unit's -c"
if [ ! -x "$bin" ]; then
	notok "$name" "ftpgate binary not found: $bin"
else
	conf=$("$bin" -h | sed -n 's/.*configuration file (default \(.*\))$/\1/p')
	printf '[site:a]\nlisten = 127.0.0.1:2121\nbackend = 127.0.0.1:21\ntls = terminate\n' \
		>"$tmp/deftls.ini"
	out=$("$bin" -t -c "$tmp/deftls.ini" 2>&1)
	cert=$(printf '%s\n' "$out" | sed -n 's/.*tls_cert: [^"]*"\([^"]*\)".*/\1/p')
	unit=$(dirname "$bin")/../etc/ftpgate.service
	unit_conf=
	[ -f "$unit" ] && unit_conf=$(sed -n 's/^ExecStart=.* -c //p' "$unit")
	if [ -n "$conf" ] && [ -n "$cert" ] && [ "$(dirname "$conf")" = "$(dirname "$cert")" ] &&
		{ [ ! -f "$unit" ] || [ "$unit_conf" = "$conf" ]; }; then
		ok "$name ($(dirname "$conf"))"
	else
		notok "$name" "default -c: '$conf'; default tls_cert: '$cert' (from: $out);
unit $unit: -c '$unit_conf'"
	fi
fi

# ---- make install keeps an operator's ftpgate.ini; uninstall keeps it too
name="make install twice: an edited ftpgate.ini is kept, the example installed beside it"
builddir=${FTPGATE_BUILDDIR:-$(cd "$(dirname "$bin")/.." && pwd)}
if [ ! -f "$builddir/Makefile" ]; then
	skip "$name" "no Makefile in $builddir"
else
	dest=$tmp/dest
	mk() { env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL ${MAKE:-make} -s -C "$builddir" \
		DESTDIR="$dest" "$@" >"$tmp/make.out" 2>&1; }
	conf=$("$bin" -h | sed -n 's/.*configuration file (default \(.*\))$/\1/p')
	ini=$dest$conf
	why=
	if ! mk install; then
		why="first make install failed: $(cat "$tmp/make.out")"
	elif [ ! -f "$ini" ] || [ ! -f "$ini.example" ]; then
		why="after a fresh install: want $ini and $ini.example; have:
$(find "$dest" -name 'ftpgate.ini*')"
	elif ! cmp -s "$ini" "$srcdir/etc/ftpgate.ini"; then
		why="fresh install: $ini is not the example"
	else
		echo '; edited by the operator' >>"$ini"
		cp "$ini" "$tmp/edited.ini"
		if ! mk install; then
			why="second make install failed: $(cat "$tmp/make.out")"
		elif ! cmp -s "$ini" "$tmp/edited.ini"; then
			why="second make install overwrote the edited $ini"
		elif ! cmp -s "$ini.example" "$srcdir/etc/ftpgate.ini"; then
			why="$ini.example is not the example"
		elif ! mk uninstall; then
			why="make uninstall failed: $(cat "$tmp/make.out")"
		elif ! cmp -s "$ini" "$tmp/edited.ini" || [ -e "$ini.example" ]; then
			why="make uninstall: want the edited $ini kept and the example removed; have:
$(find "$dest" -name 'ftpgate.ini*')"
		fi
	fi
	if [ -z "$why" ]; then ok "$name"; else notok "$name" "$why"; fi
fi

echo "1..$n"
[ $failed -eq 0 ]
