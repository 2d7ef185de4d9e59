#!/usr/bin/env bash
# Builds the release RPM into target/generate-rpm/ (cargo-generate-rpm; release build, 6-9 min
# cold on 2 cores), stripped, and lints it with rpmlint (packaging/rpm/rpmlint.toml). Extra arguments go to
# cargo generate-rpm (e.g. --target, -s 'release = "2"').
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-packaging-deps.sh
cargo build --release --locked --bin credagent
strip target/release/credagent
scripts/gen-assets.sh
cargo generate-rpm -p . "$@"
rpm=$(ls -t target/generate-rpm/credagent-*.rpm | head -n 1)
rpmlint -c packaging/rpm/rpmlint.toml "$rpm"
echo "built $rpm"
