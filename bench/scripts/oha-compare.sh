#!/usr/bin/env bash
# The cross-check the performance issue was measured with: oha (an independent HTTP load
# generator) against the agent and the bench's floor, unpinned, 1 and 16 connections, rounds
# interleaved. Prints req/s and the server's CPU per request (utime+stime from /proc/PID/stat).
#
#   bench/scripts/oha-compare.sh [ROUNDS] [SECS] [AGENT...]
#
# AGENT defaults to target/release/credagent; give several to compare builds in one run. Needs
# `oha` on PATH (cargo install oha --locked) and a release build of the bench
# (cargo build --release -p credagent-bench) for the floor.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-3}"
secs="${2:-5}"
shift $(( $# > 2 ? 2 : $# ))
agents=("$@")
[ "${#agents[@]}" -gt 0 ] || agents=(target/release/credagent)
command -v oha >/dev/null || { echo "oha not found: cargo install oha --locked" >&2; exit 1; }
# shellcheck source=bench/scripts/agent-config.sh
. bench/scripts/agent-config.sh

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# measure NAME CONNS CMD...: starts the server CMD, warms up, measures, prints one line.
measure() {
    local name="$1" conns="$2" socket
    shift 2
    rm -f "$work"/*.sock
    # Each run starts with a fresh audit file and no dirty pages: with one file appended to by
    # every run, the second of two identical agents ran up to 0.12x slower at 16 connections,
    # whichever came second (likely the writeback of earlier runs' lines landing in later runs).
    rm -f "$work/audit.log"
    sync
    "$@" >/dev/null 2>&1 &
    local pid=$!
    socket="$work/agent.sock"
    [ "$1" = "$bench" ] && socket="$work/floor.sock"
    for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.05; done
    local url=http://localhost/v1/secrets/files/bench
    oha -c "$conns" -z 2s --no-tui --unix-socket "$socket" "$url" >/dev/null 2>&1
    local before after out n rps
    before=$(cpu_ticks "$pid")
    out=$(oha -c "$conns" -z "${secs}s" --no-tui --unix-socket "$socket" "$url" 2>&1)
    after=$(cpu_ticks "$pid")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    n=$(echo "$out" | grep -E '^\s+\[200\]' | grep -oE '[0-9]+ responses' | grep -oE '[0-9]+')
    rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
    awk -v name="$name" -v c="$conns" -v rps="$rps" -v t=$((after - before)) -v n="$n" \
        -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "| %s | %d | %d | %.1f |\n", name, c, rps, t / hz * 1e6 / n }'
}

echo "| server | conns | req/s | CPU µs/req |"
echo "|---|---:|---:|---:|"
for _ in $(seq "$rounds"); do
    for conns in 1 16; do
        for agent in "${agents[@]}"; do
            measure "$agent" "$conns" "$agent" serve --config "$work/config.toml"
        done
        measure floor "$conns" "$bench" floor --socket "$work/floor.sock"
    done
done | tee "$work/rows"

# Each agent's row against the floor's row of the same round and connection count; the medians
# (and ranges) over the rounds are what to compare: single rounds swing by ±20 % on a shared VM.
echo
echo "| server | conns | req/s ÷ floor, median (range) | CPU per request ÷ floor, median (range) |"
echo "|---|---:|---:|---:|"
awk -F'|' '
    NF > 4 && $4 + 0 > 0 {
        name = $2; gsub(/ /, "", name); conns = $3 + 0
        if (name == "floor") {
            for (a in pending) if (pending[a] == conns) {
                key = a SUBSEP conns; n = ++count[key]
                rps[key, n] = prps[a] / $4; cpu[key, n] = pcpu[a] / $5
                delete pending[a]
            }
        } else { pending[name] = conns; prps[name] = $4; pcpu[name] = $5; order[name] = 1 }
    }
    function median(arr, key, n,    i, j, t, v) {
        for (i = 1; i <= n; i++) v[i] = arr[key, i]
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
        lo = v[1]; hi = v[n]
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    END {
        for (key in count) {
            split(key, part, SUBSEP); n = count[key]
            m1 = median(rps, key, n); l1 = lo; h1 = hi
            m2 = median(cpu, key, n); l2 = lo; h2 = hi
            printf "| %s | %d | %.2f× (%.2f–%.2f) | %.2f× (%.2f–%.2f) |\n", part[1], part[2], m1, l1, h1, m2, l2, h2
        }
    }' "$work/rows" | sort
