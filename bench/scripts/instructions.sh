#!/usr/bin/env bash
# User-space instructions per cached read, counted by valgrind's cachegrind: exact and
# repeatable where CPU-time figures on a shared VM swing by ±20 %. Each server runs under
# cachegrind twice, once answering no request and once answering N at one connection (oha); the
# difference divided by N is the cost of a request, start-up excluded. The kernel's share (the
# agent's per-read sender check among it) is not counted: this compares code paths, not CPU time.
#
#   bench/scripts/instructions.sh [N] [AGENT...]
#
# AGENT defaults to target/release/credagent; the floor is the bench's (cargo build --release
# -p credagent-bench). Needs `valgrind` and `oha` on PATH. Add --annotate (first argument) to
# print cg_annotate's per-function table for each server.
set -euo pipefail
cd "$(dirname "$0")/../.."
annotate=0
if [ "${1:-}" = "--annotate" ]; then annotate=1; shift; fi
n="${1:-20000}"
shift $(( $# > 0 ? 1 : 0 ))
agents=("$@")
[ "${#agents[@]}" -gt 0 ] || agents=(target/release/credagent)
for tool in valgrind oha; do
    command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done
# shellcheck source=bench/scripts/agent-config.sh
. bench/scripts/agent-config.sh

# count OUT REQUESTS SOCKET CMD...: runs CMD under cachegrind, sends REQUESTS reads, stops it
# with SIGTERM, prints the instruction total.
count() {
    local out="$1" requests="$2" socket="$3"
    shift 3
    rm -f "$socket"
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$out" "$@" \
        >/dev/null 2>"$work/valgrind.err" &
    local pid=$!
    for _ in $(seq 600); do [ -S "$socket" ] && break; sleep 0.05; done
    [ -S "$socket" ] || { cat "$work/valgrind.err" >&2; exit 1; }
    if [ "$requests" -gt 0 ]; then
        oha -n "$requests" -c 1 --no-tui --unix-socket "$socket" \
            http://localhost/v1/secrets/files/bench >/dev/null 2>&1
    fi
    sleep 0.5
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    awk '/^summary:/ {print $2}' "$out"
}

# per_request NAME SOCKET CMD...: prints one table row.
per_request() {
    local name="$1" socket="$2" idle busy
    shift 2
    idle=$(count "$work/idle.out" 0 "$socket" "$@")
    busy=$(count "$work/busy.out" "$n" "$socket" "$@")
    awk -v name="$name" -v idle="$idle" -v busy="$busy" -v n="$n" \
        'BEGIN { printf "| %s | %d |\n", name, (busy - idle) / n }'
    if [ "$annotate" = 1 ]; then
        # `head` closes the pipe early; under pipefail that must not end the script.
        cg_annotate "$work/busy.out" | sed -n '/file:function/,/^$/p' | head -40 >&2 || true
    fi
}

echo "| server | instructions per cached read (user space, 1 connection, $n reads) |"
echo "|---|---:|"
for agent in "${agents[@]}"; do
    per_request "$agent" "$work/agent.sock" "$agent" serve --config "$work/config.toml"
done
per_request floor "$work/floor.sock" "$bench" floor --socket "$work/floor.sock"
