//! Connection slots between callers, attack first against the real binary: a client that goes
//! away gives its slot back at once (also while its `?wait=` read waits), and operators (uid 0,
//! admin peers) have connection slots of their own. Attackers run as uid 65534.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Agent, TestDir, first_line, python_as, request_as, wait_until};

const ATTACKER: u32 = 65534;

/// A file source with `files/x`, readable by the attacker; this process (root) is admin.
/// `server` is added to the `[server]` table.
fn config(server: &str) -> String {
    format!(
        r#"[server]
socket = "{{socket}}"
socket_mode = "0666"
{server}

[cache]
lock_memory = "best-effort"

[sources.files]
type = "file"
dir = "{{secrets}}"

[[allow]]
peer = {{ uid = {ATTACKER} }}
secrets = ["files/x"]

[[allow]]
peer = {{ uid = 0 }}
secrets = ["files/*"]
admin = true
"#
    )
}

/// Opens `argv[3]` connections, each with a `?wait=300` read of `files/x` holding the current
/// ETag `argv[2]`; prints `full STATUS` for one more read while they wait, closes them all, then
/// prints `after STATUS SECONDS`: the first read that was not refused (or the last refusal after
/// 2 s) and how long after the close it came.
const WAIT_AND_LEAVE: &str = r#"
import socket, sys, time
path, etag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def read(extra=""):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(("GET /v1/secrets/files/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.split(b" ")[1].decode()
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(("GET /v1/secrets/files/x?wait=300 HTTP/1.1\r\nHost: x\r\nIf-None-Match: %s\r\n\r\n" % etag).encode())
    held.append(s)
time.sleep(0.5)
print("full", read(), flush=True)
for s in held:
    s.close()
closed = time.monotonic()
while True:
    status = read()
    waited = time.monotonic() - closed
    if status != "429" or waited > 2:
        break
    time.sleep(0.05)
print("after %s %.2f" % (status, waited), flush=True)
"#;

#[test]
fn an_attacker_filling_its_slots_with_waits_and_hanging_up_gets_its_slots_back_within_a_second() {
    let dir = TestDir::new();
    dir.secret("x", b"value-x");
    let agent = Agent::start(&dir, &config("max_connections_per_uid = 4"));
    let etag = agent.secret("files/x").header("etag").unwrap().to_owned();
    let socket = agent.socket.to_str().unwrap().to_owned();
    let mut client = python_as(ATTACKER, WAIT_AND_LEAVE, &[&socket, &etag, "4"]);
    // One reader for both lines: a second `first_line` would lose what the first read ahead.
    let mut out = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut line = || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        line.trim().to_owned()
    };
    // While the four waits hold the uid's four slots, its next read is refused.
    assert_eq!(line(), "full 429");
    let after = line();
    assert!(client.wait().unwrap().success());
    let (status, waited) = after
        .strip_prefix("after ")
        .and_then(|rest| rest.split_once(' '))
        .unwrap_or_else(|| panic!("{after}"));
    assert_eq!(status, "200", "{after}");
    assert!(
        waited.parse::<f64>().unwrap() <= 1.0,
        "the slots came back {waited} s after the hang-up"
    );
    // Each abandoned wait is counted and audited as the client's hang-up; the read is allowed.
    assert!(wait_until(Duration::from_secs(2), || agent
        .metric("credagent_waits_abandoned_total ")
        == 4.0));
    let lines = agent.audit_reads("files/x");
    let gone: Vec<_> = lines.iter().filter(|l| l["status"] == 499).collect();
    assert_eq!(gone.len(), 4, "{lines:?}");
    for line in gone {
        assert_eq!(
            (&line["uid"], &line["decision"], &line["reason"]),
            (
                &serde_json::json!(ATTACKER),
                &serde_json::json!("allow"),
                &serde_json::json!("client_gone")
            ),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l["uid"] == ATTACKER && l["status"] == 200),
        "{lines:?}"
    );
}

#[test]
fn a_stopped_render_watch_frees_its_slot_within_a_second() {
    let dir = TestDir::new();
    dir.secret("x", b"value-x");
    let agent = Agent::start(&dir, &config("max_connections_per_uid = 1"));
    let work = dir.path().join("render");
    std::fs::create_dir(&work).unwrap();
    nix::unistd::chown(&work, Some(ATTACKER.into()), Some(ATTACKER.into())).unwrap();
    let template = work.join("t");
    std::fs::write(&template, "{{ secret files/x }}\n").unwrap();
    nix::unistd::chown(&template, Some(ATTACKER.into()), Some(ATTACKER.into())).unwrap();
    let out = work.join("out");
    let mut render = common::command(common::bin());
    render
        .env("CREDAGENT_SOCKET", &agent.socket)
        .arg("render")
        .arg(&template)
        .arg("-o")
        .arg(&out)
        .arg("--watch")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::uid(&mut render, ATTACKER);
    std::os::unix::process::CommandExt::gid(&mut render, ATTACKER);
    let mut render = render.spawn().unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&out).unwrap_or_default() == "value-x\n"
    }));
    // The watch holds the uid's one slot.
    assert!(wait_until(Duration::from_secs(5), || request_as(
        ATTACKER,
        &agent.socket,
        "GET",
        "/v1/secrets/files/x"
    )
    .status
        == 429));
    common::kill_group(&mut render);
    let stopped = Instant::now();
    let freed = wait_until(Duration::from_secs(3), || {
        request_as(ATTACKER, &agent.socket, "GET", "/v1/secrets/files/x").status == 200
    });
    let took = stopped.elapsed();
    assert!(
        freed,
        "the uid's slot was still held 3 s after render stopped"
    );
    assert!(
        took <= Duration::from_millis(1500),
        "the slot came back {took:?} after render stopped"
    );
    assert_eq!(agent.metric("credagent_waits_abandoned_total "), 1.0);
}

/// Opens `argv[2]` connections, each sending a health request it never reads the answer of,
/// prints `held`, and keeps them open until stdin closes.
const HOLD_MANY: &str = r#"
import socket, sys, time
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(sys.argv[1])
        s.send(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    except OSError:
        pass
    held.append(s)
time.sleep(0.5)
print("held", flush=True)
sys.stdin.read()
"#;

/// One `argv[2]` request for `argv[3]` on a fresh connection; prints its status, or `timeout`
/// when none came within 5 s (the connection waited in the backlog).
const ONE_REQUEST: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
    s.sendall(("%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % (sys.argv[2], sys.argv[3])).encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    print(data.split(b" ")[1].decode(), flush=True)
except socket.timeout:
    print("timeout", flush=True)
"#;

/// The status `uid` gets for `method path`, or `timeout`.
fn status_as(uid: u32, agent: &Agent, method: &str, path: &str) -> String {
    let socket = agent.socket.to_str().unwrap();
    let mut client = python_as(uid, ONE_REQUEST, &[socket, method, path]);
    let status = first_line(&mut client);
    assert!(client.wait().unwrap().success());
    status
}

const SLOTS: &str =
    "max_connections = 8\nmax_connections_per_uid = 4\nmax_operator_connections = 4";

#[test]
fn root_opening_many_connections_does_not_stop_another_uids_read() {
    let dir = TestDir::new();
    dir.secret("x", b"value-x");
    let agent = Agent::start(&dir, &config(SLOTS));
    let socket = agent.socket.to_str().unwrap().to_owned();
    let mut flood = python_as(0, HOLD_MANY, &[&socket, "30"]);
    assert_eq!(first_line(&mut flood), "held");
    // The other uid's read is served.
    assert_eq!(
        status_as(ATTACKER, &agent, "GET", "/v1/secrets/files/x"),
        "200"
    );
    // The operator's own slots are full: its next connection is refused like anyone's.
    assert_eq!(status_as(0, &agent, "GET", "/v1/health"), "429");
    let lines = agent.audit_reads("files/x");
    assert!(
        lines
            .iter()
            .any(|l| l["uid"] == ATTACKER && l["status"] == 200),
        "{lines:?}"
    );
    drop(flood.stdin.take());
    assert!(flood.wait().unwrap().success());
}

#[test]
fn an_attacker_flooding_connections_does_not_stop_an_operators_metrics_and_flush() {
    let dir = TestDir::new();
    dir.secret("x", b"value-x");
    let agent = Agent::start(&dir, &config(SLOTS));
    let socket = agent.socket.to_str().unwrap().to_owned();
    let mut flood = python_as(ATTACKER, HOLD_MANY, &[&socket, "30"]);
    assert_eq!(first_line(&mut flood), "held");
    // The attacker holds its share and is refused past it.
    assert_eq!(
        status_as(ATTACKER, &agent, "GET", "/v1/secrets/files/x"),
        "429"
    );
    // The operator is served.
    assert_eq!(status_as(0, &agent, "GET", "/v1/metrics"), "200");
    assert_eq!(status_as(0, &agent, "POST", "/v1/cache/flush"), "200");
    assert!(agent.metric("credagent_connections_rejected_total ") > 0.0);
    drop(flood.stdin.take());
    assert!(flood.wait().unwrap().success());
}
