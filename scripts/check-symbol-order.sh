#!/usr/bin/env bash
# check-symbol-order.sh: fails when link/symbol-order.txt no longer names the agent's own
# start-up and request functions: at most 10% of the credagent functions it names may be missing
# from the current build. Cheap (the debug binary, no valgrind, no release build): the names are
# compared demangled, without their hashes, which differ between profiles. A function renamed,
# moved to another module or removed since the list was made shows up here; the fix is
# scripts/symbol-order.sh (a release build under callgrind), which rewrites the list.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin credagent
normalize() { c++filt | sed -E 's/::h[0-9a-f]{16}$//; s/\[[0-9a-f]+\]//g' | sort -u; }
listed="$(grep -v '^#' link/symbol-order.txt | normalize | grep -E '^<?credagent::' || true)"
present="$(nm target/debug/credagent | awk '{print $NF}' | normalize)"
total=$(printf '%s\n' "$listed" | grep -c . || true)
missing="$(comm -23 <(printf '%s\n' "$listed") <(printf '%s\n' "$present"))"
lost=$(printf '%s\n' "$missing" | grep -c . || true)
[ "$total" -gt 0 ] || { echo "link/symbol-order.txt names no credagent function" >&2; exit 1; }
if [ "$lost" -gt 0 ]; then
    echo "link/symbol-order.txt names $lost of its $total credagent functions that this build lacks:"
    printf '   %s\n' "$missing" | head -20
fi
if [ $((lost * 10)) -gt "$total" ]; then
    echo "the list is stale: rerun scripts/symbol-order.sh" >&2
    exit 1
fi
echo "link/symbol-order.txt: $((total - lost)) of its $total credagent functions are in this build"
