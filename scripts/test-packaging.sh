#!/usr/bin/env bash
# Packaging tests, run by scripts/test.sh after `cargo test` (they reuse its debug binary, so no
# release build here; scripts/build-deb.sh makes the release package):
#   deb:       cargo deb --no-build -> lintian (no errors) -> what the archive holds (files, modes,
#              conffiles, maintainer scripts) and the exposure of the unit it ships. Nothing is
#              installed on this machine: installing, running, removing and purging the package
#              happen under a real systemd in a container (scripts/test-systemd.sh).
#   container: the Containerfile's final stage (FROM scratch) built with buildah from a rootfs
#              laid out by the same make-rootfs.sh the `rootfs` stage runs (nothing is pulled),
#              then run: it has no shell, runs as uid 65532 and serves a secret on its socket.
# Needs root (buildah) and scripts/install-packaging-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/check-lib.sh
. scripts/check-lib.sh

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test-packaging.sh must run as root (buildah)" >&2
    exit 1
fi

work=$(mktemp -d /tmp/credagent-packaging.XXXXXX)
chmod 0755 "$work"
trap 'rm -rf "$work"' EXIT

cargo build --quiet --bin credagent
binary=target/debug/credagent

echo "== deb: build (cargo deb --no-build, debug binary), lintian, contents"
deb="$work/credagent.deb"
cargo deb --no-build --profile dev --fast --output "$deb" 2>&1 | grep -v -e "dev profile is not supported" -e "To enable debug symbols" || true
check "the .deb was built" test -s "$deb"
check "lintian reports no errors" lintian --fail-on error "$deb"
dpkg-deb -c "$deb" >"$work/contents" 2>&1 || true
for path in ./usr/bin/credagent ./etc/credagent/config.toml ./lib/systemd/system/credagent.service \
    ./lib/systemd/system/credagent.socket ./lib/systemd/system/credagent-creds.socket \
    ./usr/share/doc/credagent/README.md; do
    check "the package ships $path" grep -q " $path\$" "$work/contents"
done
check "config.toml is shipped 0640 (postinst gives it to root:credagent)" \
    grep -q '^-rw-r----- .* ./etc/credagent/config.toml$' "$work/contents"
check "config.toml is a conffile" sh -c "dpkg-deb -I '$deb' conffiles | grep -qx /etc/credagent/config.toml"
check "postinst creates the agent's group, its user and the clients' group credagent-clients" sh -c \
    "dpkg-deb -I '$deb' postinst | grep -q 'addgroup --system --quiet credagent-clients' &&
     dpkg-deb -I '$deb' postinst | grep -q 'adduser --system'"
check "the shipped socket's group is credagent-clients" sh -c \
    "dpkg-deb --fsys-tarfile '$deb' | tar -xO ./lib/systemd/system/credagent.socket | grep -qx 'SocketGroup=credagent-clients'"
mkdir -p "$work/pkg"
dpkg-deb -x "$deb" "$work/pkg"
exposure=$(systemd-analyze security --offline=yes --no-pager "$work/pkg/lib/systemd/system/credagent.service" 2>&1 |
    grep "Overall exposure level" || true)
echo "${exposure:-no exposure line from systemd-analyze security}"
# An absent line is a failure, not a pass.
check "the shipped unit's exposure is at most 2.0 (systemd-analyze security --offline)" sh -c \
    "[ -n '$exposure' ] && echo '$exposure' | awk '{ exit !(\$(NF-1) + 0 <= 2.0) }'"

echo "== container: build the final stage FROM scratch (no pull), run it"
storage=(--storage-driver vfs)
image=localhost/credagent-test:packaging
rootfs="$work/rootfs"
check "make-rootfs.sh lays out the image filesystem" packaging/container/make-rootfs.sh "$binary" "$rootfs/rootfs"
mkdir -p "$work/context"
check "buildah builds the Containerfile's final stage" sh -c \
    "buildah ${storage[*]} bud --quiet --isolation chroot --build-context rootfs=$rootfs \
       -f $PWD/packaging/container/Containerfile -t $image $work/context >$work/build.log 2>&1 || { cat $work/build.log; false; }"
# Without the image the checks below cannot run: that is a failure, counted here.
check "buildah has the built image" sh -c "buildah ${storage[*]} inspect --type image $image >/dev/null"
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
