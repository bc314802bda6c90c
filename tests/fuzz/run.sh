#!/usr/bin/env bash
# Run the libFuzzer targets of a `configure --enable-fuzzing` build (CC=clang,
# then `make fuzz`): for each target, first its regression inputs
# (tests/fuzz/regress/NAME/, each once), then FUZZ_SECONDS seconds (default 60)
# of fuzzing from its seed corpus (tests/fuzz/corpus/NAME/, never written).
#   tests/fuzz/run.sh BUILDDIR [NAME...]     NAME: ftp_cmd ftp_reply ftp_addr conf proxyproto session_core
# What the fuzzer finds stays in BUILDDIR/fuzz-work/NAME/ (the next run goes
# on from there); a crash leaves BUILDDIR/fuzz-work/NAME-crash-* (or -leak-,
# -timeout-, -oom-) and fails the run. One line per target; exit status 1
# if any target failed. FUZZ_JOBS (default 1) runs that many fuzzing
# processes per target (libFuzzer -fork).
set -u
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 BUILDDIR [NAME...]" >&2; exit 2; }
build=$(cd "$1" && pwd) || exit 2
shift
secs=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-1}
names=${*:-ftp_cmd ftp_reply ftp_addr conf proxyproto session_core}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=0
for n in $names; do
	bin=$build/tests/fuzz/fuzz_$n
	work=$build/fuzz-work/$n
	log=$build/fuzz-work/$n.log
	mkdir -p "$work"
	if [ ! -x "$bin" ]; then
		echo "fuzz $n: FAILED: $bin not built (configure --enable-fuzzing CC=clang; make fuzz)"
		failed=$((failed + 1))
		continue
	fi
	regress=("$src/tests/fuzz/regress/$n"/*)
	if [ -e "${regress[0]}" ] && ! "$bin" "${regress[@]}" >"$log" 2>&1; then
		echo "fuzz $n: FAILED on a regression input ($log):"
		tail -40 "$log"
		failed=$((failed + 1))
		continue
	fi
	args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
	      -artifact_prefix="$build/fuzz-work/$n-")
	[ "$jobs" -gt 1 ] && args+=(-fork="$jobs" -ignore_crashes=0)
	[ -f "$here/$n.dict" ] && args+=(-dict="$here/$n.dict")
	if "$bin" "${args[@]}" "$work" "$src/tests/fuzz/corpus/$n" >"$log" 2>&1; then
		execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
		cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' || true)
		echo "fuzz $n: ok, ${execs:-?} runs in $secs s, ${cov:-no coverage line}"
	else
		echo "fuzz $n: FAILED ($log):"
		grep -E 'ERROR|CHECK failed|SUMMARY|Test unit written|artifact_prefix' "$log" | head -20
		tail -30 "$log"
		failed=$((failed + 1))
	fi
done
[ $failed -eq 0 ]
