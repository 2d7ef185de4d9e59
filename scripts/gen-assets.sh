#!/usr/bin/env bash
# Generates what the packages install beside the binary into target/assets/ (credagent-gen, from
# the CLI definition and docs/config.md): man pages credagent(1), credagent-SUBCOMMAND(1) and
# credagent.toml(5), compressed as the distributions ship them (gzip -9n), and completions for
# bash, zsh and fish. Run by build-deb.sh, build-rpm.sh and test-packaging.sh before packaging.
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/assets
rm -rf "$out"
cargo run --quiet --locked -p credagent-gen -- "$out" docs/config.md >/dev/null
gzip -9n "$out"/man/*.1 "$out"/man/*.5
