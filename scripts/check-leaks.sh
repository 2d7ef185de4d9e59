#!/usr/bin/env bash
# check-leaks.sh MARKER: fails (exit 1) when any process still carries CREDAGENT_TEST_RUN=MARKER
# in its environment, that is, when a test run started with that marker left a process running.
# The harness (tests/common `command`) gives the marker to every child it spawns and the
# environment passes it down to theirs. Such processes are listed and then killed, so the next
# test target starts clean. Processes that are already exiting get two seconds to go.
set -uo pipefail
marker="CREDAGENT_TEST_RUN=${1:?usage: check-leaks.sh MARKER}"

marked() {
    grep -lzxF -- "$marker" /proc/[0-9]*/environ 2>/dev/null |
        sed -n 's|^/proc/\([0-9]*\)/environ$|\1|p' | grep -vx "$$"
}

for _ in $(seq 20); do
    mapfile -t pids < <(marked)
    [ "${#pids[@]}" = 0 ] && exit 0
    sleep 0.1
done
echo "left running by the tests (${#pids[@]}):"
ps -o pid,ppid,pgid,etime,args -p "$(IFS=,; echo "${pids[*]}")" || true
kill -KILL "${pids[@]}" 2>/dev/null || true
exit 1
