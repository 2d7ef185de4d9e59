#!/usr/bin/env bash
# Packaging tests, run by scripts/test.sh after `cargo test` (they reuse its debug binary, so no
# release build here; scripts/build-deb.sh makes the release package):
#   deb:       cargo deb --no-build -> lintian (no errors) -> dpkg -i on this machine -> the
#              installed `credagent check-config`, user/group, conffile mode, enabled sockets,
#              systemd-analyze verify/security on the INSTALLED units -> dpkg -r -> dpkg --purge
#              -> everything gone. Safe to run twice (a leftover install is purged first).
#   container: the Containerfile's final stage (FROM scratch) built with buildah from a rootfs
#              laid out by the same make-rootfs.sh the `rootfs` stage runs (nothing is pulled),
#              then run: it has no shell, runs as uid 65532 and serves a secret on its socket.
# Needs root (dpkg -i) and scripts/install-packaging-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

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

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test-packaging.sh must run as root (it installs the package with dpkg -i)" >&2
    exit 1
fi

work=$(mktemp -d /tmp/credagent-packaging.XXXXXX)
chmod 0755 "$work"
trap 'rm -rf "$work"' EXIT

cargo build --quiet --bin credagent
binary=target/debug/credagent

echo "== deb: build (cargo deb --no-build, debug binary), lintian"
if dpkg -s credagent >/dev/null 2>&1; then
    echo "purging a credagent package left installed by an earlier run"
    dpkg --purge credagent >/dev/null
fi
deb="$work/credagent.deb"
cargo deb --no-build --profile dev --fast --output "$deb" 2>&1 | grep -v -e "dev profile is not supported" -e "To enable debug symbols" || true
check "the .deb was built" test -s "$deb"
check "lintian reports no errors" lintian --fail-on error "$deb"

echo "== deb: install"
check "dpkg -i installs it" dpkg -i "$deb"
check "installed binary is /usr/bin/credagent" test -x /usr/bin/credagent
check "the installed credagent check-config accepts the shipped config" \
    sh -c '/usr/bin/credagent check-config | grep -q ": ok: socket /run/credagent/agent.sock"'
check "system user credagent exists with no login shell" \
    sh -c 'getent passwd credagent | grep -q ":/usr/sbin/nologin$"'
check "system group credagent exists" sh -c 'getent group credagent >/dev/null'
check "config.toml is a conffile" sh -c 'dpkg-query -W -f="\${Conffiles}" credagent | grep -q /etc/credagent/config.toml'
check "config.toml is 0640 root:credagent" \
    sh -c '[ "$(stat -c %a:%U:%G /etc/credagent/config.toml)" = "640:root:credagent" ]'
for unit in credagent.service credagent.socket credagent-creds.socket; do
    check "$unit is in /lib/systemd/system" test -f "/lib/systemd/system/$unit"
done
check "the socket units are enabled (sockets.target.wants)" sh -c \
    'test -L /etc/systemd/system/sockets.target.wants/credagent.socket && test -L /etc/systemd/system/sockets.target.wants/credagent-creds.socket'
check "systemd-analyze verify accepts the installed units" sh -c \
    'out=$(systemd-analyze verify /lib/systemd/system/credagent.service /lib/systemd/system/credagent.socket /lib/systemd/system/credagent-creds.socket 2>&1) && [ -z "$out" ] || { echo "$out"; false; }'
check "installed unit's exposure is at most 2.0" sh -c \
    'systemd-analyze security --offline=yes --no-pager /lib/systemd/system/credagent.service 2>&1 | awk "/Overall exposure level/ { split(\$0, a, \": \"); split(a[2], b, \" \"); exit !(b[1] <= 2.0) }"'

echo "== deb: remove, purge"
check "dpkg -r removes it" dpkg -r credagent
check "the binary is gone" test ! -e /usr/bin/credagent
check "the units are gone" test ! -e /lib/systemd/system/credagent.service
check "the conffile is kept until purge" test -f /etc/credagent/config.toml
check "dpkg --purge purges it" dpkg --purge credagent
check "/etc/credagent is gone" test ! -e /etc/credagent
check "user credagent is gone" sh -c '! getent passwd credagent'
check "group credagent is gone" sh -c '! getent group credagent'
check "no unit state is left (enable links, masks, deb-systemd-helper state)" sh -c \
    '[ -z "$(find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked -name "*credagent*" 2>/dev/null)" ]'
check "dpkg no longer knows the package" sh -c '! dpkg -s credagent >/dev/null 2>&1'

echo "== container: build the final stage FROM scratch (no pull), run it"
storage=(--storage-driver vfs)
image=localhost/credagent-test:packaging
rootfs="$work/rootfs"
check "make-rootfs.sh lays out the image filesystem" packaging/container/make-rootfs.sh "$binary" "$rootfs/rootfs"
mkdir -p "$work/context"
check "buildah builds the Containerfile's final stage" sh -c \
    "buildah ${storage[*]} bud --quiet --isolation chroot --build-context rootfs=$rootfs \
       -f $PWD/packaging/container/Containerfile -t $image $work/context >$work/build.log 2>&1 || { cat $work/build.log; false; }"
if buildah "${storage[@]}" inspect --type image "$image" >/dev/null 2>&1; then
    check "the image runs as uid/gid 65532" sh -c \
        "[ \"\$(buildah ${storage[*]} inspect --type image --format '{{.OCIv1.Config.User}}' $image)\" = 65532:65532 ]"
    ctr=$(buildah "${storage[@]}" from --quiet "$image")
    check "the image has no shell" sh -c \
        "! buildah ${storage[*]} run --isolation chroot $ctr -- /bin/sh -c true >/dev/null 2>&1"
    check "the image runs credagent" sh -c \
        "buildah ${storage[*]} run --isolation chroot $ctr -- /usr/bin/credagent --version | grep -q '^credagent '"
    run="$work/run"
    mkdir -p "$run/secrets"
    chmod 0777 "$run"
    printf 'from-the-image' >"$run/secrets/probe"
    chmod -R a+rX "$run"
    cat >"$run/config.toml" <<TOML
[server]
socket = "/run/credagent/agent.sock"
socket_mode = "0666"
[cache]
lock_memory = "best-effort"
[sources.files]
type = "file"
dir = "/run/credagent/secrets"
[[allow]]
peer = { uid = 0 }
secrets = ["files/*"]
TOML
    buildah "${storage[@]}" run --isolation chroot -v "$run:/run/credagent" "$ctr" -- \
        /usr/bin/credagent serve --config /run/credagent/config.toml >"$work/serve.log" 2>&1 &
    serve_pid=$!
    for _ in $(seq 1 100); do
        [ -S "$run/agent.sock" ] && break
        sleep 0.1
    done
    check "the containerised agent serves a secret over its socket" sh -c \
        "[ \"\$(curl -s --unix-socket $run/agent.sock http://localhost/v1/secrets/files/probe)\" = from-the-image ]"
    check "the containerised agent runs as uid 65532" sh -c \
        "[ \"\$(stat -c %u $run/agent.sock)\" = 65532 ]"
    # Stop the agent: it is a descendant of the `buildah run` started above (by pid, not name).
    descendants() {
        local child
        for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
            echo "$child"
            descendants "$child"
        done
    }
    for pid in $(descendants "$serve_pid"); do
        if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = credagent ]; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    check "the containerised agent exits cleanly on SIGTERM" wait "$serve_pid"
    buildah "${storage[@]}" rm "$ctr" >/dev/null || true
    buildah "${storage[@]}" rmi "$image" >/dev/null || true
fi

echo "packaging: $passed passed, $failed failed"
[ "$failed" = 0 ]
