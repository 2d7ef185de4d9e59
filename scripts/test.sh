#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the test servers, then runs the gate
# (fmt, clippy -D warnings, every test, docs) and the benchmark's quick mode.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test servers (pinned, into .venv)"
scripts/install-test-deps.sh

echo "== installing packaging tools (lintian, buildah, systemd tools, cargo-deb)"
scripts/install-packaging-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace

echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --quiet

echo "== packaging: .deb (lintian, dpkg -i, check-config, purge) and container image (buildah)"
scripts/test-packaging.sh
