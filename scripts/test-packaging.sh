#!/usr/bin/env bash
# Packaging tests, run by scripts/test.sh after `cargo test` (they reuse its debug binary, so no
# release build here; scripts/build-deb.sh and scripts/build-rpm.sh make the release packages):
#   assets:    man pages and completions generated from the CLI (scripts/gen-assets.sh): they
#              render without warnings and parse in bash, zsh and fish.
#   deb:       cargo deb --no-build -> lintian (no errors) -> what the archive holds (files, modes,
#              conffiles, maintainer scripts) and the exposure of the unit it ships. Nothing is
#              installed on this machine: installing, running, removing and purging the package
#              happen under a real systemd in a container (scripts/test-systemd.sh).
#   rpm:       cargo generate-rpm (debug binary) -> rpmlint -> contents, %config(noreplace), the
#              scriptlets, and an install into a scratch root (Debian's rpm; no dnf here).
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
check "man pages and completions are generated (scripts/gen-assets.sh)" scripts/gen-assets.sh

# Man pages render without a warning from man/groff; completions parse in their shells, and bash's
# completes a subcommand. Then each package ships them in its distribution's places.
for page in target/assets/man/*.gz; do
    check "$(basename "$page") renders without warnings" sh -c \
        "out=\$(MANWIDTH=80 LC_ALL=C.UTF-8 man --warnings -l '$page' 2>&1 >/dev/null); [ -z \"\$out\" ] || { echo \"\$out\"; false; }"
done
check "the bash completion parses" bash -n target/assets/completions/credagent.bash
check "the bash completion completes 'credagent check-c' to check-config" bash -c \
    '. target/assets/completions/credagent.bash; COMP_WORDS=(credagent check-c); COMP_CWORD=1; COMP_LINE="credagent check-c"; COMP_POINT=${#COMP_LINE};
     _credagent credagent check-c credagent; [ "${COMPREPLY[*]}" = check-config ]'
check "the zsh completion parses" zsh -n target/assets/completions/_credagent
check "the fish completion parses" fish --no-execute target/assets/completions/credagent.fish

echo "== deb: build (cargo deb --no-build, debug binary), lintian, contents"
deb="$work/credagent.deb"
cargo deb --no-build --profile dev --fast --output "$deb" 2>&1 | grep -v -e "dev profile is not supported" -e "To enable debug symbols" || true
check "the .deb was built" test -s "$deb"
check "lintian reports no errors" lintian --fail-on error "$deb"
dpkg-deb -c "$deb" >"$work/contents" 2>&1 || true
for path in ./usr/bin/credagent ./etc/credagent/config.toml ./lib/systemd/system/credagent.service \
    ./lib/systemd/system/credagent.socket ./lib/systemd/system/credagent-creds.socket \
    ./usr/share/doc/credagent/README.md ./usr/share/man/man1/credagent.1.gz \
    ./usr/share/man/man1/credagent-serve.1.gz ./usr/share/man/man5/credagent.toml.5.gz \
    ./usr/share/bash-completion/completions/credagent ./usr/share/zsh/vendor-completions/_credagent \
    ./usr/share/fish/vendor_completions.d/credagent.fish; do
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

echo "== rpm: build (cargo generate-rpm, debug binary), rpmlint, contents, scriptlets, scratch-root install"
# The debug binary, stripped as build-rpm.sh strips the release one, where cargo generate-rpm
# looks for it under --target-dir.
mkdir -p "$work/rpm-target/release" "$work/rpm-out"
strip -o "$work/rpm-target/release/credagent" "$binary"
check "the .rpm was built" sh -c "cargo generate-rpm -p . --target-dir '$work/rpm-target' -o '$work/rpm-out/' >'$work/rpm-build.log' 2>&1 || { cat '$work/rpm-build.log'; false; }"
rpm_file=$(ls "$work"/rpm-out/credagent-*.rpm 2>/dev/null | head -n 1)
rpm_file=${rpm_file:-$work/rpm-out/missing.rpm}
check "rpmlint reports no errors or warnings (packaging/rpm/rpmlint.toml)" sh -c \
    "rpmlint -c packaging/rpm/rpmlint.toml '$rpm_file' >'$work/rpmlint.log' 2>&1; status=\$?; cat '$work/rpmlint.log';
     [ \$status = 0 ] && grep -q ' 0 errors, 0 warnings' '$work/rpmlint.log'"
rpm -qlp "$rpm_file" >"$work/rpm-contents" 2>/dev/null || true
for path in /usr/bin/credagent /etc/credagent/config.toml /usr/lib/systemd/system/credagent.service \
    /usr/lib/systemd/system/credagent.socket /usr/lib/systemd/system/credagent-creds.socket \
    /usr/lib/sysusers.d/credagent.conf /usr/share/man/man1/credagent.1.gz \
    /usr/share/man/man5/credagent.toml.5.gz /usr/share/bash-completion/completions/credagent \
    /usr/share/zsh/site-functions/_credagent /usr/share/fish/vendor_completions.d/credagent.fish; do
    check "the rpm ships $path" grep -qx "$path" "$work/rpm-contents"
done
check "the rpm ships nothing under /lib or Debian's places" sh -c "! grep -E '^/lib/|vendor-completions|lintian' '$work/rpm-contents'"
check "config.toml is %config(noreplace), 0640 root:credagent" sh -c \
    "rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]' '$rpm_file' 2>/dev/null |
     grep -qx 'cn -rw-r----- root:credagent /etc/credagent/config.toml'"
rpm -qp --scripts "$rpm_file" >"$work/rpm-scripts" 2>/dev/null || true
check "%pre creates the users and groups of packaging/sysusers.d/credagent.conf" sh -c \
    "grep -q 'systemd-sysusers --replace=/usr/lib/sysusers.d/credagent.conf' '$work/rpm-scripts' &&
     grep -v '^#' packaging/sysusers.d/credagent.conf | grep . | while read -r line; do grep -qF \"'\$line'\" packaging/rpm/pre || exit 1; done"
check "%post enables and starts the sockets on a first install" sh -c \
    "grep -q 'systemctl enable credagent.socket credagent-creds.socket' '$work/rpm-scripts' &&
     grep -q 'systemctl start credagent.socket credagent-creds.socket' '$work/rpm-scripts'"
check "%preun stops and disables the agent and its sockets on removal only" sh -c \
    "grep -q 'if \[ \"\$1\" -eq 0 \]' '$work/rpm-scripts' &&
     grep -q 'systemctl stop credagent.service credagent.socket credagent-creds.socket' '$work/rpm-scripts'"
# An install into a scratch root (its own rpm database; scriptlets need the target's systemd and
# are not run): the files land with their modes, and the units verify there.
root="$work/rpm-root"
mkdir -p "$root"
check "the rpm installs into a scratch root" sh -c \
    "rpm --root '$root' --initdb && rpm --root '$root' -i --nodeps --noscripts --excludedocs '$rpm_file' 2>'$work/rpm-install.log' ||
     { cat '$work/rpm-install.log'; false; }"
check "installed: /usr/bin/credagent 0755 and runs" sh -c \
    "[ \"\$(stat -c %a '$root/usr/bin/credagent')\" = 755 ] && '$root/usr/bin/credagent' --version | grep -q '^credagent '"
check "installed: the config is 0640" sh -c "[ \"\$(stat -c %a '$root/etc/credagent/config.toml')\" = 640 ]"
check "the rpm database knows the package" sh -c "rpm --root '$root' -q credagent | grep -q '^credagent-'"
# systemd's own targets (which a real host has) beside the package's units, for verify to resolve.
cp /lib/systemd/system/*.target "$root/usr/lib/systemd/system/" 2>/dev/null || true
check "the units verify in the RPM layout (/usr/lib/systemd/system; nothing Debian-specific)" sh -c \
    "out=\$(systemd-analyze verify --root='$root' /usr/lib/systemd/system/credagent.socket /usr/lib/systemd/system/credagent-creds.socket /usr/lib/systemd/system/credagent.service 2>&1 |
       grep -v -e 'Failed to .*journal' -e 'unit configures an IP firewall' -e 'Cannot add dependency job' ); [ -z \"\$out\" ] || { echo \"\$out\"; false; }"

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
