# Sourced by the bench scripts: the agent's config as the bench deploys it (file source, the
# floor's 64-byte secret, audit lines to a file, memory locked when it can be, the caller's uid
# allowed). Sets `work` (a temporary directory removed at exit) and `bench` (the floor's binary).
bench=target/release/credagent-bench
[ -x "$bench" ] || { echo "$bench not found: cargo build --release -p credagent-bench" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/secrets"
printf 'floor-0123456789abcdef0123456789abcdef0123456789abcdef0123456789' > "$work/secrets/bench"
cat > "$work/config.toml" <<TOML
[server]
socket = "$work/agent.sock"
socket_mode = "0600"
# The load runs as root, an operator: more than the operators' default 16 connections.
max_operator_connections = 8192

[cache]
lock_memory = "best-effort"

[audit]
file = "$work/audit.log"

[sources.files]
type = "file"
dir = "$work/secrets"

[[allow]]
peer = { uid = $(id -u) }
secrets = ["files/*"]
admin = true
TOML
