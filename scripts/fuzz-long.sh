#!/usr/bin/env bash
# The long property-test run (issue 13): every `prop_*` test target of the
# workspace, each with BADGE_PROPTEST_MULTIPLIER × its default case count, all at
# once at the lowest CPU priority, stopping at a wall-clock budget. Prints each
# test's case count, longest input and slowest case, and the total.
#
#   scripts/fuzz-long.sh [minutes (default 25)] [multiplier (default 1000)]
#
# Debug build on purpose: it reuses the tests' build and leaves the CPU to others.
# With ~27 tests sharing the cores at the lowest priority, wall-clock limits are
# scaled (BADGE_PROPTEST_TIME_SCALE, default 40 here; the short run uses 1).
# `cargo nextest run --workspace` runs the same tests with the short defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-25}"
multiplier="${2:-1000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/badge-target}"
report="${BADGE_PROPTEST_REPORT:-$(mktemp /tmp/badge-fuzz-long.XXXXXX)}"
: >"$report"

# Every test target whose name starts with prop_, with its package; and the
# end-to-end binary, whose property tests are its prop_* modules (the filter below
# keeps only those of it).
targets=()
for f in crates/*/tests/prop_*.rs; do
  dir="${f%%/tests/*}"
  pkg=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -n 1)
  name=$(basename "$f" .rs)
  targets+=("-p" "$pkg" "--test" "$name")
done
targets+=("-p" "badge-tests" "--test" "e2e")
filter='not binary_id(badge-tests::e2e) | test(/^prop_/)'

nice -n 19 cargo nextest run --no-run "${targets[@]}" >/dev/null

deadline=$(( $(date +%s) + minutes * 60 ))
# The repository's nextest profile ends tests after 2 minutes; these run to the deadline.
config=$(mktemp /tmp/badge-fuzz-nextest.XXXXXX.toml)
printf '[profile.default]\nslow-timeout = { period = "%ss", terminate-after = 2 }\n' "$((minutes * 60 + 300))" >"$config"
echo "long run: ${#targets[@]} args, multiplier $multiplier, until $(date -d "@$deadline" +%T), report $report"
BADGE_PROPTEST_MULTIPLIER="$multiplier" \
BADGE_PROPTEST_DEADLINE="$deadline" \
BADGE_PROPTEST_REPORT="$report" \
BADGE_PROPTEST_TIME_SCALE="${BADGE_PROPTEST_TIME_SCALE:-40}" \
  nice -n 19 cargo nextest run "${targets[@]}" -E "$filter" --config-file "$config" \
    --test-threads 64 --no-fail-fast --status-level fail --final-status-level fail

sort "$report"
awk '{ for (i = 1; i <= NF; i++) if ($i == "cases,") n += $(i - 1) } END { printf "total: %d cases\n", n }' "$report"
