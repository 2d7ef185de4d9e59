#!/usr/bin/env bash
# The Debian package under a real systemd (PID 1), run by scripts/test.sh after `cargo test`:
# a Debian 12 rootfs built once with mmdebstrap from Debian's packages (cached in
# target/systemd-test/), booted with systemd-nspawn, `apt-get install ./credagent.deb` inside
# (apt resolves the dependencies), then checked as a user would, one counted check each:
# the documented credential-file steps (docs/deploy.md), socket activation, a user outside the ACL, reload,
# LoadCredential=, the watchdog, the journal (also after a flood of 20,000 denied requests), drain
# on stop, systemd-analyze security, remove and purge.
# Nothing is installed on this machine but the tools (scripts/install-packaging-deps.sh).
# Skipped, with the reason printed, only where systemd-nspawn cannot boot the rootfs.
# Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/check-lib.sh
. scripts/check-lib.sh
skip() {
    echo "systemd: skipped: $1"
    exit 0
}

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test-systemd.sh must run as root (systemd-nspawn)" >&2
    exit 1
fi
for tool in systemd-nspawn mmdebstrap nsenter; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/install-packaging-deps.sh" >&2; exit 1; }
done

# The rootfs: Debian 12 minbase plus what booting and the checks need. The cache key is the list.
INCLUDE="systemd,systemd-sysv,dbus,ca-certificates,curl"
cache=target/systemd-test
mkdir -p "$cache"
tarball="$cache/bookworm-$(printf '%s' "$INCLUDE" | sha256sum | cut -c1-12).tar"
if [ ! -f "$tarball" ] || [ ! -s "$tarball" ]; then
    echo "== building the Debian 12 rootfs with mmdebstrap (once; cached as $tarball)"
    rm -rf "$tarball" "$tarball.part"
    # --format: mmdebstrap otherwise picks the format from the name, and "*.part" is a directory.
    mmdebstrap --quiet --format=tar --variant=minbase --include="$INCLUDE" bookworm "$tarball.part"
    mv "$tarball.part" "$tarball"
fi

work=$(mktemp -d /tmp/credagent-systemd.XXXXXX)
root="$work/root"
nspawn_pid=""
pid=""
cleanup() {
    if [ -n "${CREDAGENT_SYSTEMD_KEEP:-}" ] && [ -n "$nspawn_pid" ]; then
        echo "kept for debugging: container PID 1 is $pid (nsenter -t $pid -a sh), nspawn $nspawn_pid, $work"
        return
    fi
    if [ -n "$nspawn_pid" ]; then
        # The container's PID 1 first: killing it ends its whole pid namespace. Killing only
        # nspawn would leave the container's systemd running, reparented to this machine's init.
        [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
        kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== .deb from the debug binary (cargo deb --no-build)"
cargo build --quiet --bin credagent
scripts/gen-assets.sh
deb="$work/credagent.deb"
cargo deb --no-build --profile dev --fast --output "$deb" 2>&1 |
    grep -v -e "dev profile is not supported" -e "To enable debug symbols" || true
[ -s "$deb" ] || { echo "cargo deb built nothing" >&2; exit 1; }

echo "== booting the rootfs with systemd as PID 1"
mkdir -p "$root"
tar -xf "$tarball" -C "$root"
cp "$deb" "$root/root/credagent.deb"
systemd-nspawn --quiet --register=no --keep-unit --capability=all -M credagent-test \
    -D "$root" -b --console=pipe >"$work/boot.log" 2>&1 &
nspawn_pid=$!
pid=""
for _ in $(seq 1 100); do
    for child in $(cat /proc/"$nspawn_pid"/task/*/children 2>/dev/null); do
        [ "$(cat /proc/"$child"/comm 2>/dev/null)" = systemd ] && pid=$child
    done
    [ -n "$pid" ] && break
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$pid" ] || { cat "$work/boot.log"; skip "systemd-nspawn did not start systemd (log above)"; }

# Runs a shell command inside the container as root, with a clean environment.
inside() {
    nsenter -t "$pid" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        /bin/sh -c "$1"
}
state=""
for _ in $(seq 1 150); do
    state=$(inside 'systemctl is-system-running' 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.2
done
case "$state" in
    running | degraded) echo "container booted ($state), systemd $(inside 'systemctl --version | head -n1')" ;;
    *) cat "$work/boot.log"; skip "the booted container never reached running (state: ${state:-none})" ;;
esac

# The canary: a value that must reach callers and never the journal.
CANARY="canary-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"

echo "== install"
check "apt-get installs ./credagent.deb (dependencies resolved by apt)" inside \
    'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq >/tmp/apt.log 2>&1 && apt-get install -y -qq /root/credagent.deb >>/tmp/apt.log 2>&1 || { cat /tmp/apt.log; false; }'
check "system user credagent exists with no login shell, in group credagent only" inside \
    'getent passwd credagent | grep -q ":/usr/sbin/nologin$" && [ "$(id -Gn credagent)" = credagent ]'
check "clients have a group of their own, credagent-clients, without the agent in it" inside \
    'getent group credagent-clients >/dev/null && ! id -Gn credagent | grep -qw credagent-clients'
check "config.toml is a conffile, 0640 root:credagent" inside \
    'dpkg-query -W -f="\${Conffiles}" credagent | grep -q /etc/credagent/config.toml &&
     [ "$(stat -c %a:%U:%G /etc/credagent/config.toml)" = 640:root:credagent ]'
check "the installed check-config accepts the shipped config" inside \
    '/usr/bin/credagent check-config | grep -q ": ok: socket /run/credagent/agent.sock"'
check "both sockets are listening and the service is not running yet" inside \
    'systemctl is-active -q credagent.socket && systemctl is-active -q credagent-creds.socket &&
     ! systemctl is-active -q credagent.service'
check "the agent socket is 0660 root:credagent-clients" inside \
    '[ "$(stat -c %a:%U:%G /run/credagent/agent.sock)" = 660:root:credagent-clients ]'

echo "== the documented credential-file steps (docs/deploy.md), as written"
readme_block=$(awk '/^<!-- scripts\/test-systemd.sh runs this block/ { found = 1; next }
    found && /^```sh$/ { inblock = 1; next } inblock && /^```$/ { exit } inblock { print }' docs/deploy.md)
check "docs/deploy.md has the credential-file block" test -n "$readme_block"
check "the documented credential-file steps run on the installed package" inside \
    "set -e; DB_PASSWORD='$CANARY'; VAULT_TOKEN='s.not-a-real-token'; $readme_block"
check "they made each file 0600 credagent:credagent" inside \
    '[ "$(stat -c %a:%U:%G /etc/credagent/secrets/web/db-password /etc/credagent/vault-token | sort -u)" = 600:credagent:credagent ]'
inside "install -o root -g credagent -m 0640 /dev/null /etc/credagent/vault-check.toml &&
        cat >/etc/credagent/vault-check.toml <<'EOF'
[server]
socket = \"/run/credagent/agent.sock\"
[sources.vault]
type = \"vault\"
address = \"http://127.0.0.1:8200\"
auth = { method = \"token\", token_file = \"/etc/credagent/vault-token\" }
EOF"
check "the agent, as its own user, accepts the token file those steps made" inside \
    'runuser -u credagent -- credagent check-config --config /etc/credagent/vault-check.toml >/dev/null'
check "and refuses it (exit 78, naming mode and fix) once it is 0644" inside \
    'chmod 0644 /etc/credagent/vault-token; out=$(runuser -u credagent -- credagent check-config --config /etc/credagent/vault-check.toml 2>&1); rc=$?;
     chmod 0600 /etc/credagent/vault-token; [ "$rc" = 78 ] && echo "$out" | grep -q "vault-token has mode 0644 and owner credagent; .*fix: chown credagent /etc/credagent/vault-token && chmod 0600 /etc/credagent/vault-token"'

echo "== socket activation"
inside "useradd --system --no-create-home --shell /usr/sbin/nologin outsider &&
        useradd --system --no-create-home --shell /usr/sbin/nologin nonclient &&
        adduser --quiet outsider credagent-clients &&
        cat >>/etc/credagent/config.toml <<'EOF'

[[allow]]
peer = { uid = 0 }
secrets = [\"files/web/*\"]

[[allow]]
peer = { unit = \"cred-consumer.service\" }
secrets = [\"files/web/*\"]

[credentials]
db-password = \"files/web/db-password\"
EOF"
get() { # get USER PATH -> "STATUS BODY"
    inside "runuser -u $1 -- curl -s -w '\n%{http_code}' --unix-socket /run/credagent/agent.sock http://localhost$2" |
        awk '{ lines[NR] = $0 } END { printf "%s", lines[NR]; for (i = 1; i < NR; i++) printf " %s", lines[i]; print "" }'
}
out=$(get root /v1/secrets/files/web/db-password)
[ "$out" = "200 $CANARY" ] || echo "first read answered: ${out:0:120}"
check "the first connection starts the agent, which serves a file secret" test "$out" = "200 $CANARY"
check "the service was started by the socket and is active" inside 'systemctl is-active -q credagent.service'
check "the running service left the socket 0660 root:credagent-clients" inside \
    '[ "$(stat -c %a:%U:%G /run/credagent/agent.sock)" = 660:root:credagent-clients ]'

echo "== who may connect and read"
out=$(get outsider /v1/secrets/files/web/db-password)
check "a client outside the ACL gets 403 and no value" sh -c \
    "case '$out' in '403 '*) ! printf %s '$out' | grep -q '$CANARY' ;; *) echo 'got: $out'; false ;; esac"
check "a local user outside credagent-clients cannot even connect" inside \
    '! runuser -u nonclient -- curl -s --unix-socket /run/credagent/agent.sock http://localhost/v1/secrets/files/web/db-password'
check "a client cannot read anything under /etc/credagent" inside \
    '! runuser -u outsider -- cat /etc/credagent/config.toml 2>/dev/null &&
     ! runuser -u outsider -- ls /etc/credagent/secrets 2>/dev/null &&
     ! runuser -u outsider -- cat /etc/credagent/secrets/web/db-password 2>/dev/null &&
     ! runuser -u outsider -- cat /etc/credagent/vault-token 2>/dev/null'

echo "== reload"
main_pid=$(inside 'systemctl show -P MainPID credagent')
inside "cat >>/etc/credagent/config.toml <<'EOF'

[[allow]]
peer = { user = \"outsider\" }
secrets = [\"files/web/db-password\"]
EOF"
check "systemctl reload credagent succeeds" inside 'systemctl reload credagent'
reloaded() {
    for _ in $(seq 1 50); do
        [ "$(get outsider /v1/secrets/files/web/db-password)" = "200 $CANARY" ] && return 0
        sleep 0.1
    done
    false
}
check "after reload the new rule applies (the outsider now reads the secret)" reloaded
check "reload kept the same process" sh -c "[ \"$main_pid\" = \"\$(nsenter -t $pid -a systemctl show -P MainPID credagent)\" ]"

echo "== LoadCredential="
inside "cat >/etc/systemd/system/cred-consumer.service <<'EOF'
[Service]
Type=oneshot
RemainAfterExit=yes
LoadCredential=db-password:/run/credagent/creds.sock
ExecStart=/bin/cp \${CREDENTIALS_DIRECTORY}/db-password /run/cred-consumer-got
EOF
systemctl daemon-reload"
check "a unit with LoadCredential=ID:/run/credagent/creds.sock starts" inside 'systemctl start cred-consumer.service'
check "it got its secret in \$CREDENTIALS_DIRECTORY" inside "[ \"\$(cat /run/cred-consumer-got)\" = '$CANARY' ]"

echo "== watchdog"
inside 'mkdir -p /etc/systemd/system/credagent.service.d &&
        printf "[Service]\nWatchdogSec=2s\n" >/etc/systemd/system/credagent.service.d/watchdog.conf &&
        systemctl daemon-reload && systemctl restart credagent.service'
check "the drop-in's WatchdogSec=2s is in force" inside '[ "$(systemctl show -P WatchdogUSec credagent)" = 2s ]'
wd_pid=$(inside 'systemctl show -P MainPID credagent')
sleep 5
check "an idle agent outlives 2.5 watchdog periods: same MainPID, no restart" inside \
    "[ \"\$(systemctl show -P MainPID credagent)\" = '$wd_pid' ] && [ \"\$(systemctl show -P NRestarts credagent)\" = 0 ] &&
     systemctl is-active -q credagent"
inside 'rm /etc/systemd/system/credagent.service.d/watchdog.conf && systemctl daemon-reload'

echo "== the journal: priorities and audit entries of their own"
# A refused reload is an error: journalctl -p err finds it. Each audit line is an entry with
# CREDAGENT_AUDIT=1 and its own fields, so the journal selects decisions alone.
inside 'cp /etc/credagent/config.toml /tmp/good-config.toml && echo "not_a_key = 1" >>/etc/credagent/config.toml &&
        systemctl reload credagent; cp /tmp/good-config.toml /etc/credagent/config.toml'
logged_err() {
    for _ in $(seq 1 50); do
        inside 'journalctl -u credagent -b -p err -o cat | grep -q "reload refused; keeping the running configuration"' && return 0
        sleep 0.1
    done
    false
}
check "an error the agent logs (a refused reload) is found with journalctl -p err" logged_err
check "and at priority 3 (err), not info" inside \
    'journalctl -u credagent -b -p err..err -o cat | grep -q "reload refused"'
check "the agent's info lines are not found with -p warning" inside \
    '! journalctl -u credagent -b -p warning -o cat | grep -q "credagent ready"'
out=$(get outsider /v1/secrets/files/web/other)
audited() {
    for _ in $(seq 1 50); do
        inside 'journalctl -u credagent -b CREDAGENT_AUDIT=1 DECISION=deny -o cat | grep -q "\"secret\":\"files/web/other\""' && return 0
        sleep 0.1
    done
    false
}
check "a denied read is an audit entry: CREDAGENT_AUDIT=1 DECISION=deny selects it" audited
check "its entry carries SECRET, UID and PRIORITY=5 (notice) fields" inside \
    'journalctl -u credagent -b CREDAGENT_AUDIT=1 SECRET=files/web/other -o verbose |
       grep -q "UID=$(id -u outsider)" &&
     journalctl -u credagent -b CREDAGENT_AUDIT=1 SECRET=files/web/other -o verbose | grep -q "PRIORITY=5"'
check "CREDAGENT_AUDIT=1 selects audit lines only (every MESSAGE has an action and a decision)" inside \
    'n=$(journalctl -u credagent -b CREDAGENT_AUDIT=1 -o cat | wc -l); [ "$n" -gt 0 ] &&
     [ -z "$(journalctl -u credagent -b CREDAGENT_AUDIT=1 -o cat | awk "!/\"action\":/ || !/\"decision\":/")" ]'
check "no log line is an audit entry (the ready line has no CREDAGENT_AUDIT)" inside \
    '! journalctl -u credagent -b CREDAGENT_AUDIT=1 -o cat | grep -q "credagent ready"'

echo "== the journal after a flood of denied requests"
# uid 65534 (nobody, made a client for this) sends 20,000 denied requests on one keep-alive
# connection (curl's URL globbing), fast: the agent writes the first of that uid's denied lines
# and counts the rest in "suppressed" summaries, and journald (LogRateLimitIntervalSec=0) drops
# none of the agent's entries, so the allowed read of another uid right after it is in the journal.
inside 'adduser --quiet nobody credagent-clients'
cursor=$(inside 'journalctl -u credagent -n 0 --show-cursor -o cat' | sed -n 's/^-- cursor: //p')
check "the journal gives a cursor to count from" test -n "$cursor"
# The agent's audit lines (MESSAGE) since the cursor, inside the container.
since_audit="journalctl -u credagent -b --after-cursor='$cursor' CREDAGENT_AUDIT=1 -o cat"
flood_started=$(date +%s)
denied=$(inside "runuser -u nobody -- curl -s --unix-socket /run/credagent/agent.sock -w '\n@%{http_code}\n' \
    'http://localhost/v1/secrets/files/web/flood-[1-20000]'" | grep -c '^@403$' || true)
echo "20,000 denied requests in $(($(date +%s) - flood_started)) s"
check "uid 65534's 20,000 requests were all answered 403" test "$denied" = 20000
out=$(get outsider /v1/secrets/files/web/db-password)
check "another uid's allowed read right after the flood is answered" test "$out" = "200 $CANARY"
outsider_uid=$(inside 'id -u outsider')
allowed_logged() {
    for _ in $(seq 1 50); do
        inside "$since_audit | grep '\"uid\":$outsider_uid,' | grep '\"secret\":\"files/web/db-password\"' |
            grep -q '\"decision\":\"allow\"'" &&
            return 0
        sleep 0.1
    done
    inside "$since_audit | grep -v '\"uid\":65534,' | tail -n 5"
    false
}
check "the allowed read's audit entry is in the journal" allowed_logged
# Each denied request is written or counted in a summary; the summaries come out as each
# uid's 10 s window ends.
accounted() {
    for _ in $(seq 1 150); do
        written=$(inside "$since_audit | grep '\"uid\":65534,' | grep -c '\"secret\":\"files/web/flood-'" || true)
        counted=$(inside "$since_audit | grep '\"action\":\"suppressed\",\"uid\":65534,' |
            sed -n 's/.*\"count\":\([0-9]*\).*/\1/p' | awk '{ n += \$1 } END { print n + 0 }'")
        [ $((written + counted)) = 20000 ] && [ "$counted" -gt 0 ] && return 0
        sleep 0.1
    done
    echo "written: $written, counted in summaries: $counted"
    false
}
check "a suppressed summary counts uid 65534's lines left out: written + counted = 20,000" accounted
echo "uid 65534: $written denied lines written, $counted counted in summaries"
check "at most 100 of them were written per 10 s window" test "$written" -le $((100 * ($(date +%s) - flood_started + 10) / 10 + 100))
check "journald suppressed none of the agent's messages (LogRateLimitIntervalSec=0)" inside \
    '! journalctl -b _COMM=systemd-journald -o cat | grep -q "Suppressed .* credagent"'
check "and the agent dropped none (no dropped marker)" inside \
    "! $since_audit | grep -q '\"action\":\"dropped\"'"

echo "== stop drains"
# A connection open when the stop arrives: the client sends half its request, pauses, then ends
# it. The agent waits for it and answers it (503 shutting_down: it arrived after the stop) before
# it exits, instead of cutting it off.
inside "(printf 'GET /v1/secrets/files/web/db-password HTTP/1.1\r\nHost: x\r\n'; sleep 1; printf 'Connection: close\r\n\r\n') |
        curl -s --unix-socket /run/credagent/agent.sock telnet://x >/tmp/inflight 2>&1 &
        sleep 0.3; systemctl stop credagent.service; wait"
check "systemctl stop: a connection open at the stop gets a complete answer (503 shutting_down)" inside \
    "head -n1 /tmp/inflight | grep -q '^HTTP/1.1 503' && grep -q '\"shutting_down\"' /tmp/inflight"
check "systemctl stop: the agent drains and exits 0 (Result=success)" inside \
    '[ "$(systemctl show -P Result credagent)" = success ] && [ "$(systemctl show -P ExecMainStatus credagent)" = 0 ] &&
     journalctl -u credagent -b -o cat | grep -q "shutting down: draining" &&
     journalctl -u credagent -b -o cat | grep -q "all connections drained"'

echo "== journal, exposure"
# For the record: which path the file source took under the unit's seccomp filter.
inside 'journalctl -u credagent -b -o cat | grep -m1 "openat2 is refused" || echo "(openat2 was not refused here)"'
check "the journal has the agent's lines and never the value" inside \
    "journalctl -b -o cat | grep -q 'credagent ready' && ! journalctl -b -o verbose | grep -q '$CANARY'"
check "systemd-analyze security credagent.service (online) is at most 2.0" inside \
    'line=$(systemd-analyze security --no-pager credagent.service | grep "Overall exposure level for credagent.service") &&
     echo "$line" && echo "$line" | awk "{ exit !(\$(NF-1) + 0 <= 2.0) }"'

echo "== remove, purge"
check "apt-get remove removes it" inside 'DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq credagent >/dev/null'
check "the binary and units are gone, the conffile kept" inside \
    '[ ! -e /usr/bin/credagent ] && [ ! -e /lib/systemd/system/credagent.service ] && [ -f /etc/credagent/config.toml ]'
check "no credagent unit is active after remove" inside \
    '! systemctl is-active -q credagent.socket credagent-creds.socket credagent.service'
check "dpkg --purge purges it" inside 'dpkg --purge credagent >/dev/null'
check "/etc/credagent and /run/credagent are gone" inside '[ ! -e /etc/credagent ] && [ ! -e /run/credagent ]'
check "user credagent and groups credagent, credagent-clients are gone" inside \
    '! getent passwd credagent && ! getent group credagent && ! getent group credagent-clients'
check "no unit state is left (enable links, masks, deb-systemd-helper state)" inside \
    '[ -z "$(find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked -name "*credagent*" 2>/dev/null)" ]'

echo "== the binary with the units, no package (docs/deploy.md), as written"
mkdir -p "$root/root/src/target/release" "$root/root/src/packaging/sysusers.d" "$root/root/src/systemd"
cp target/debug/credagent "$root/root/src/target/release/credagent"
cp packaging/config.toml "$root/root/src/packaging/config.toml"
cp packaging/sysusers.d/credagent.conf "$root/root/src/packaging/sysusers.d/"
cp systemd/credagent.service systemd/credagent.socket systemd/credagent-creds.socket "$root/root/src/systemd/"
units_block=$(awk '/^<!-- scripts\/test-systemd.sh runs this block as written, in a fresh container/ { found = 1; next }
    found && /^```sh$/ { inblock = 1; next } inblock && /^```$/ { exit } inblock { print }' docs/deploy.md)
check "docs/deploy.md has the binary-with-units block" test -n "$units_block"
check "the documented binary-with-units steps run as written (check-config passes on the fresh host)" inside \
    "set -e; cd /root/src; $units_block"
check "then the socket is listening, 0660 root:credagent-clients" inside \
    'systemctl is-active -q credagent.socket && [ "$(stat -c %a:%U:%G /run/credagent/agent.sock)" = 660:root:credagent-clients ]'
check "and the agent starts on the first connection and answers" inside \
    'curl -sf --unix-socket /run/credagent/agent.sock http://localhost/v1/health | grep -q "\"ok\""'

echo "systemd: $passed passed, $failed failed"
[ "$failed" = 0 ]
