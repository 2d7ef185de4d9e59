#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the test servers, then runs the gate
# (fmt, clippy -D warnings, every test, docs), the benchmark's quick mode and the packaging tests.
# It passes however it is started (`nohup`, a CI runner): the harness resets the signals its
# children may inherit ignored, and a test target that leaves a process running fails.
#
# Every step runs even when an earlier one failed, so one red run shows everything that is red.
# The closing line `tests: N passed, M failed` counts every test of every test binary, plus one
# failure for each test binary that did not build or crashed before reporting, and one for each
# other step that failed; the script exits non-zero whenever M > 0.
set -uo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
passed=0
failed=0
failures=()

# The closing line, printed however the run ends (a failed install included).
finish() {
    local status=$?
    [ "$failed" -gt 0 ] || [ "$status" = 0 ] || { failed=$((failed + 1)); failures+=("runner exited with status $status"); }
    if [ "${#failures[@]}" -gt 0 ]; then
        echo "== failed:"
        printf '   %s\n' "${failures[@]}"
    fi
    echo "tests: $passed passed, $failed failed"
    rm -rf "$work"
    [ "$failed" = 0 ] && exit 0
    exit 1
}
trap finish EXIT

# step NAME CMD...: runs a gate step; its failure is counted and the run goes on.
step() {
    local name="$1"
    shift
    echo "== $name"
    if ! "$@"; then
        failed=$((failed + 1))
        failures+=("$name")
    fi
}

# fatal_step NAME CMD...: a step nothing after it can do without (installing the test servers).
fatal_step() {
    step "$@"
    [ "${#failures[@]}" = 0 ] || exit 1
}

# Sums the `test result:` lines in $1 into passed/failed; returns the number of failed tests.
count_results() {
    local p f
    read -r p f < <(awk '/^test result:/ {
            for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i }
        } END { printf "%d %d\n", p, f }' "$1")
    passed=$((passed + p))
    failed=$((failed + f))
    return "$((f > 0 ? 1 : 0))"
}

# cargo_test ARGS...: one test target (or kind of target). A target whose run fails without a
# failed test in its results did not build or crashed: that is one more failure, named. Every
# process the run starts carries a marker of its own; one still running after it (a test that
# left a child behind) is one more failure, named, and is killed (scripts/check-leaks.sh).
cargo_test() {
    local log="$work/cargo-test.log" marker="$$-$RANDOM$RANDOM"
    echo "== cargo test $*"
    CREDAGENT_TEST_RUN="$marker" cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]}
    if ! scripts/check-leaks.sh "$marker"; then
        failed=$((failed + 1))
        failures+=("cargo test $*: left processes running")
    fi
    if count_results "$log" && [ "$status" != 0 ]; then
        failed=$((failed + 1))
        failures+=("cargo test $*: no test failed, yet it exited with $status (did not build, or crashed)")
    elif [ "$status" != 0 ]; then
        failures+=("cargo test $*")
    fi
}

# script_step NAME SCRIPT: a test script that closes with `WHAT: N passed, M failed`; its counts
# join the total, and a non-zero exit without a failed check in that line is one more failure.
script_step() {
    local name="$1" script="$2" log="$work/script.log"
    echo "== $name"
    "$script" 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]} p f
    read -r p f < <(awk '/^[a-z][a-z-]*: [0-9]+ passed, [0-9]+ failed$/ { p = $2; f = $4 }
        END { printf "%d %d\n", p, f }' "$log")
    passed=$((passed + p))
    failed=$((failed + f))
    if [ "$status" != 0 ] && [ "$f" = 0 ]; then
        failed=$((failed + 1))
        failures+=("$name: exited with $status without reporting a failed check")
    elif [ "$status" != 0 ]; then
        failures+=("$name")
    fi
}

fatal_step "installing test servers (pinned, into .venv)" scripts/install-test-deps.sh
fatal_step "installing packaging tools (lintian, buildah, systemd tools, cargo-deb)" \
    scripts/install-packaging-deps.sh

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy -D warnings" cargo clippy --workspace --all-targets -- -D warnings
step "no import cycle between files (src, bench, packaging/gen)" \
    python3 scripts/import-cycles.py src bench/src packaging/gen/src
# Crate sources for every platform first, so the licence check itself needs no network.
step "cargo deny check bans licenses sources (deny.toml)" \
    sh -c 'cargo fetch --locked --quiet && cargo deny --offline check bans licenses sources'

# One cargo invocation per test target (features unified over the workspace, as `cargo test
# --workspace` would), so a target that does not build cannot keep the others from running.
cargo_test --lib
cargo_test --bins
step "link/symbol-order.txt still names this build's start-up functions" scripts/check-symbol-order.sh
mapfile -t test_targets < <(cargo metadata --no-deps --format-version 1 |
    jq -r '.packages[].targets[] | select(.kind | index("test")) | .name' | sort -u)
[ "${#test_targets[@]}" -gt 0 ] || { failed=$((failed + 1)); failures+=("no test targets found"); }
for target in "${test_targets[@]}"; do
    cargo_test --test "$target"
done
cargo_test --doc

step "bench --quick (keeps the benchmark from rotting; judges no figure)" \
    cargo run -q -p credagent-bench -- all --quick

# Test scripts that report `WHAT: N passed, M failed`; a new one is one more line here.
script_step "packaging: .deb (lintian, contents, exposure) and container image (buildah)" \
    scripts/test-packaging.sh
script_step "systemd: the .deb installed, run, reloaded, stopped and purged under a real systemd (nspawn)" \
    scripts/test-systemd.sh

step "cargo doc" env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --quiet
