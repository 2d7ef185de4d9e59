#!/usr/bin/env bash
# Builds the release Debian package into target/debian/ (cargo-deb; release build, 6-9 min cold
# on 2 cores) and lints it. Extra arguments go to cargo deb (e.g. --target, --deb-revision).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-packaging-deps.sh
cargo build --release --locked --bin credagent
scripts/gen-assets.sh
cargo deb --locked --no-build "$@"
deb=$(ls -t target/debian/credagent_*.deb | head -n 1)
lintian --fail-on error "$deb"
echo "built $deb"
