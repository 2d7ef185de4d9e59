#!/bin/sh
# Usage: make-rootfs.sh BINARY OUTDIR
# Lays out the final image's whole filesystem in OUTDIR: the credagent binary, exactly the
# shared libraries it links (glibc, libgcc_s, the dynamic loader, found with ldd), a passwd and
# group entry for uid/gid 65532 and the mount points the agent uses. No shell, no package
# manager, nothing else. Used by the Containerfile's `rootfs` stage and by
# scripts/test-packaging.sh (which builds the final stage here without pulling an image).
set -eu

binary=$1
out=$2

mkdir -p "$out/usr/bin" "$out/etc/credagent" "$out/run/credagent" "$out/tmp"
cp "$binary" "$out/usr/bin/credagent"
strip "$out/usr/bin/credagent" 2>/dev/null || true
chmod 0755 "$out/usr/bin/credagent"
for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
done
printf 'credagent:x:65532:65532:credagent:/nonexistent:/nonexistent\n' >"$out/etc/passwd"
printf 'credagent:x:65532:\n' >"$out/etc/group"
chmod 1777 "$out/tmp"
chown 65532:65532 "$out/run/credagent" 2>/dev/null || true
