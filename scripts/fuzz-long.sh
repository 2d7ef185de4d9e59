#!/usr/bin/env bash
# Runs the generated-input properties (src/properties/) long: N cases per property (default
# 100000) instead of proptest's default 256, and prints a summary. A failing case is shrunk and
# saved under proptest-regressions/, which `cargo test` then replays first.
#   scripts/fuzz-long.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-100000}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --lib --no-run --quiet
start=$(date +%s)
status=0
PROPTEST_CASES=$cases cargo test --lib properties:: -- --test-threads=2 >"$log" 2>&1 || status=$?
took=$(($(date +%s) - start))
properties=$(grep -c '^test properties::.* \.\.\. ' "$log" || true)
failed=$(grep -c '^test properties::.* \.\.\. FAILED' "$log" || true)
grep -E '^test properties::|^test result' "$log" || true
if [ "$status" -ne 0 ]; then
    grep -E 'minimal failing input|Test failed|panicked' "$log" || tail -40 "$log"
fi
echo "fuzz-long: $properties properties x $cases cases in ${took}s; $((properties - failed)) passed, $failed failed"
exit "$status"
