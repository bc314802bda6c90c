#!/bin/sh
# Check metrics_render()'s text with Prometheus' own linter
# (promtool check metrics, Debian package prometheus). TAP; skips without it.
set -u

sample=
for c in "${METRICS_SAMPLE:-}" tests/unit/metrics_sample "${0%/*}/metrics_sample"; do
	if [ -n "$c" ] && [ -x "$c" ]; then
		sample=$c
		break
	fi
done
if [ -z "$sample" ]; then
	echo "1..0 # SKIP metrics_sample not built"
	exit 0
fi
promtool=${PROMTOOL:-$(command -v promtool || true)}
if [ -z "$promtool" ]; then
	echo "1..0 # SKIP promtool not installed (Debian package prometheus)"
	exit 0
fi

echo "1..2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if "$sample" >"$tmp/metrics.txt"; then
	echo "ok 1 - metrics_sample printed $(wc -l <"$tmp/metrics.txt") lines"
else
	echo "not ok 1 - metrics_sample failed"
fi
# Exit status 0 and no output: valid text format and no lint problems.
if "$promtool" check metrics <"$tmp/metrics.txt" >"$tmp/out" 2>&1 && [ ! -s "$tmp/out" ]; then
	echo "ok 2 - promtool check metrics"
else
	echo "not ok 2 - promtool check metrics"
	sed 's/^/#   /' "$tmp/out"
fi
