#!/usr/bin/env bash
# The whole test suite (README Quick start; CI runs it through .ci/run):
# install what the build and tests need, build with -Werror,
# run the whole test suite (plain build, then ASan/UBSan build), each fuzz
# target for FUZZ_SECONDS (default 60) in a clang build, the soak, the Debian
# package's build/install/purge cycle, distcheck, and end
# with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
top=$PWD

export DEBIAN_FRONTEND=noninteractive
tools/install-deps.sh || { echo "installing dependencies failed"; echo "0 passed, 1 failed"; exit 1; }
pass=0
fail=0
count() { # count PASS/FAIL lines of one test-suite run from its logs
	local dir=$1 p f
	p=$(grep -h '^# PASS:' "$dir/test-suite.log" 2>/dev/null | awk '{s+=$3} END {print s+0}')
	f=$(grep -h -E '^# (FAIL|ERROR|XPASS):' "$dir/test-suite.log" 2>/dev/null | awk '{s+=$3} END {print s+0}')
	pass=$((pass + p))
	fail=$((fail + f))
}

status=0
# Out-of-tree builds need a source tree that is not configured itself.
[ -f config.status ] && make distclean >/dev/null 2>&1
./autogen.sh >/dev/null 2>&1 || { echo "autogen.sh failed"; ./autogen.sh; echo "0 passed, 1 failed"; exit 1; }

run_build() { # name, configure flags...
	local name=$1; shift
	rm -rf "build-$name"; mkdir "build-$name"
	( cd "build-$name" && ../configure --enable-werror "$@" >configure.out 2>&1 ) || {
		cat "build-$name/configure.out"; echo "configure ($name) failed"; fail=$((fail + 1)); status=1; return; }
	make -C "build-$name" -j"$(nproc)" >"build-$name/make.out" 2>&1 || {
		cat "build-$name/make.out"; echo "build ($name) failed"; fail=$((fail + 1)); status=1; return; }
	echo "=== make check ($name)"
	make -C "build-$name" check >"build-$name/check.out" 2>&1
	local rc=$?
	grep -E '^(PASS|FAIL|XFAIL|XPASS|ERROR|SKIP):' "build-$name/check.out" | grep -v '^PASS' || true
	sed -n '/^====/,/^====/p; /^# /p' "build-$name/check.out" | grep '^# ' | tail -8
	if [ $rc -ne 0 ]; then
		status=1
		cat "build-$name/test-suite.log" 2>/dev/null | tail -200
	fi
	count "build-$name"
}

run_build plain
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	run_build sanitize --enable-sanitizers

# libFuzzer targets (clang, its own build dir): regression inputs, then
# FUZZ_SECONDS (default 60) of fuzzing each; a crash fails the run.
echo "=== fuzzing (${FUZZ_SECONDS:=60} s per target)"
export FUZZ_SECONDS
fuzz_start=$SECONDS
rm -rf build-fuzz; mkdir build-fuzz
if ! ( cd build-fuzz && CC=clang ../configure --enable-werror --enable-fuzzing >configure.out 2>&1 ); then
	tail -20 build-fuzz/configure.out; echo "configure (fuzz) failed"; fail=$((fail + 1)); status=1
elif ! make -C build-fuzz -j"$(nproc)" fuzz >build-fuzz/make.out 2>&1; then
	tail -40 build-fuzz/make.out; echo "build (fuzz) failed"; fail=$((fail + 1)); status=1
else
	tests/fuzz/run.sh build-fuzz | tee build-fuzz/fuzz.out
	p=$(grep -c '^fuzz .*: ok' build-fuzz/fuzz.out)
	f=$(grep -c '^fuzz .*: FAILED' build-fuzz/fuzz.out)
	pass=$((pass + p)); fail=$((fail + f))
	[ "$f" -eq 0 ] || status=1
fi
echo "fuzzing took $((SECONDS - fuzz_start)) s"

# The soak with fault injection against the sanitizer build (tests/soak/README.md):
# 2 minutes, 200 sessions; one pass or one fail (the three defects it found
# first are fixed, so no fault kind is tolerated).
echo "=== soak (sanitize, 120 s, 200 sessions)"
if [ -x build-sanitize/src/ftpgate ] && ( cd build-sanitize &&
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	FTPGATE="$top/build-sanitize/src/ftpgate" FTPGATE_SRCDIR="$top" PYTHONDONTWRITEBYTECODE=1 \
	timeout 900 /usr/bin/python3 "$top/tests/soak/soak.py" --seconds 120 --sessions 200 \
		--max-mib 8 --seed "${SOAK_SEED:-14}" >soak.out 2>soak.err ); then
	grep '^soak: ' build-sanitize/soak.out; pass=$((pass + 1))
else
	tail -60 build-sanitize/soak.err 2>/dev/null; cat build-sanitize/soak.out 2>/dev/null
	echo "soak: FAILED"; fail=$((fail + 1)); status=1
fi

# The Debian package (tools/package-test.sh): build it from a clean copy of
# the tree, lintian, install, ftpgate -t and transfers through the installed
# example config, remove and purge, nothing left behind. One pass or one fail.
echo "=== Debian package"
pkg_start=$SECONDS
if tools/package-test.sh >build-plain/package.out 2>&1; then
	grep -E '^(lintian|package): ' build-plain/package.out; pass=$((pass + 1))
else
	tail -80 build-plain/package.out; fail=$((fail + 1)); status=1
fi
echo "Debian package cycle took $((SECONDS - pkg_start)) s"

echo "=== make distcheck"
if make -C build-plain distcheck DISTCHECK_CONFIGURE_FLAGS=--enable-werror >build-plain/distcheck.out 2>&1; then
	echo "distcheck: ok"; pass=$((pass + 1))
else
	tail -60 build-plain/distcheck.out; echo "distcheck: FAILED"; fail=$((fail + 1)); status=1
fi

echo "${pass} passed, ${fail} failed"
exit $status
