#!/usr/bin/env bash
# Regenerates link/symbol-order.txt, the order in which the release build's linker lays out the
# agent's functions (build.rs passes it to lld): first every function the agent runs from start to
# idle (start-up, a `/v1/health`, a stop), then those a request runs (reads, a miss, bad requests,
# metrics, a flush), each group sorted by name, then the rest as the linker places them.
# Start-up code then shares a few text pages instead of touching pages all over the binary, so
# idle RSS is smaller and no longer depends on where a code change happens to move things
# (docs/performance.md, "Kept").
#
#   scripts/symbol-order.sh            # builds the release binary, runs it under callgrind
#
# Needs valgrind, curl and python3. Rerun after changes that rename or add many functions on
# these paths (scripts/check-symbol-order.sh, run by scripts/test.sh, fails once over 10% of the
# agent's own functions the list names are gone); a stale list still links (names it lacks are
# laid out as usual, names it has that no longer exist are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in valgrind curl python3; do
    command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done
# The agent on its own, as `cargo build --release` and `cargo deb` build it: built together with
# the bench, its dependencies' features are unified with the bench's, and every symbol name's hash
# differs. The bench's floor separately, for agent-config.sh.
cargo build --release -p credagent
cargo build --release -p credagent-bench
bin=target/release/credagent

# The bench's config (file source, audit to a file, the caller admitted as admin) and one more
# secret, JSON, for field and format reads.
# shellcheck source=bench/scripts/agent-config.sh
. bench/scripts/agent-config.sh
printf '{"user":"app","password":"p"}' > "$work/secrets/json"

# run OUT REQUESTS: the agent under callgrind until its socket answers, then each of REQUESTS
# (curl arguments after the URL's path, one per line), then SIGTERM.
run() {
    local out="$1" requests="$2"
    rm -f "$work/agent.sock"
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$out" \
        "$bin" serve --config "$work/config.toml" >/dev/null 2>"$work/valgrind.err" &
    local pid=$!
    local up=0
    for _ in $(seq 600); do
        if curl -s -o /dev/null --unix-socket "$work/agent.sock" http://localhost/v1/health; then
            up=1
            break
        fi
        sleep 0.1
    done
    if [ "$up" != 1 ]; then
        echo "the agent did not answer under valgrind:" >&2
        cat "$work/valgrind.err" >&2
        exit 1
    fi
    set -f # a flush pattern's `*` is not a file name
    while read -r path extra; do
        [ -n "$path" ] || continue
        # shellcheck disable=SC2086 # extra holds curl options
        curl -s -o /dev/null --unix-socket "$work/agent.sock" $extra "http://localhost$path" || true
    done <<< "$requests"
    set +f
    sleep 0.5
    kill -TERM "$pid"
    wait "$pid" || true
}

run "$work/idle.out" ""
run "$work/requests.out" "/v1/secrets/files/bench
/v1/secrets/files/bench
/v1/secrets/files/json?field=password
/v1/secrets/files/json?format=json
/v1/secrets/files/missing
/v1/secrets/files/bad%zz
/v1/nowhere
/v1/ready
/v1/metrics
/v1/cache/flush -X POST --data {\"pattern\":\"files/*\"}
/v1/secrets/files/bench -H If-None-Match:\"x\"
/v1/secrets/files/bench -I"

mkdir -p link
python3 - "$work/idle.out" "$work/requests.out" "$bin" > link/symbol-order.txt <<'PY'
import re, sys

def functions(path, binary):
    """The binary's own functions with a cost in a callgrind file."""
    names, objects, current, found = {}, {}, None, set()
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        m = re.match(r"(c?ob)=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m.group(3):
                objects[m.group(2)] = m.group(3)
            if m.group(1) == "ob":
                current = objects.get(m.group(2))
            continue
        m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?$", line)
        if not m:
            continue
        if m.group(3):
            names[m.group(2)] = m.group(3)
        if m.group(1) == "fn" and current and current.endswith("/" + binary):
            # callgrind marks recursion levels with 'N; the symbol is the same. Code without a
            # symbol is named by its address, and "(below main)" is callgrind's own: no link
            # can use either.
            name = re.sub(r"'\d+$", "", names[m.group(2)])
            if not name.startswith(("0x", "(")):
                found.add(name)
    return found

binary = sys.argv[3].rsplit("/", 1)[-1]
# Sorted within each group: the order inside one matters little (all of it is touched), and
# callgrind names functions in an order that varies from run to run.
idle = functions(sys.argv[1], binary)
busy = sorted(functions(sys.argv[2], binary) - idle)
idle = sorted(idle)
print("# Generated by scripts/symbol-order.sh: the link order of the release binary's functions.")
print(f"# {len(idle)} run from start to idle, then {len(busy)} more that requests run.")
for name in idle + busy:
    print(name)
PY
echo "link/symbol-order.txt: $(grep -vc '^#' link/symbol-order.txt) functions"
