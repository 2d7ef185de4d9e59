# Sourced by the shell test scripts: `check WHAT CMD…` runs CMD, counts it in $passed or
# $failed and prints "ok: WHAT" or "FAILED: WHAT".
passed=0
failed=0
check() {
    local what=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
        echo "ok: $what"
    else
        failed=$((failed + 1))
        echo "FAILED: $what"
    fi
}
