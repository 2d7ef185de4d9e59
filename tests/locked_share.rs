//! Each uid's share of the locked-memory budget, attack first: uid 65534 stalls 16 `?field=` and
//! JSON reads of its own large secret (small receive buffer, never reads). It holds at most
//! `cache.max_locked_bytes_per_uid` (one of those responses) and then gets `503 memory_budget_uid`
//! (counted in `credagent_rejections_total{reason="memory_budget_uid"}`); no cached value of root
//! or of another uid is evicted meanwhile (their next reads are cache hits, the eviction counter
//! stays 0), and the other uid still gets its own `?field=` reads. A cache filled to the budget
//! still leaves another uid's renders the render reserve.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Agent, TestDir, file_config, first_line, python_as, request_as, wait_until};

const ATTACKER: u32 = 65534;
const HONEST: u32 = 65533;
const MIB: usize = 1024 * 1024;
/// The attacker's field: more than half of its share, so one response fills it.
const FIELD: usize = 576 * 1024;

/// Opens `argv[2]` connections with a 4 KiB receive buffer; on each sends a GET of `argv[3]`
/// (every second one with `Accept: application/json`) and never reads. Prints `sent` and holds
/// them until stdin closes.
const STALL_READS: &str = r#"
import socket, sys
path, count, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
held = []
for n in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(path)
    accept = "Accept: application/json\r\n" if n % 2 else ""
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (target, accept)).encode())
    held.append(s)
print("sent", flush=True)
sys.stdin.read()
"#;

/// One GET of `argv[2]` with `Accept: application/json`, the whole reply on stdout.
const JSON_READ: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nConnection: close\r\n\r\n" % sys.argv[2]).encode())
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.buffer.write(data)
"#;

/// The `cache` field of the audit line of `uid`'s second read of `secret` (waiting for the
/// line: audit lines are written in batches).
fn second_read_served(agent: &Agent, secret: &str, uid: u32) -> String {
    let reads = || -> Vec<serde_json::Value> {
        agent
            .audit_reads(secret)
            .into_iter()
            .filter(|l| l["uid"] == uid)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || reads().len() >= 2),
        "no second read of {secret} by {uid}: {:?}",
        reads()
    );
    reads()[1]["cache"].as_str().unwrap_or("").to_owned()
}

#[test]
fn an_attacker_stalling_large_field_and_json_reads_evicts_no_other_uids_cached_value() {
    let dir = TestDir::new();
    let mut big = b"{\"k\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', FIELD));
    big.extend_from_slice(b"\"}");
    dir.secret("big", &big);
    dir.secret("root-app", b"root-value");
    dir.secret("honest-app", b"{\"pw\":\"honest-value\"}");
    let config = file_config(&format!(
        "[[allow]]\npeer = {{ uid = {ATTACKER} }}\nsecrets = [\"files/big\"]\n\n\
         [[allow]]\npeer = {{ uid = {HONEST} }}\nsecrets = [\"files/honest-app\"]\n"
    ))
    .replace(
        "socket_mode = \"0666\"\n",
        "socket_mode = \"0666\"\nmax_connections_per_uid = 64\nwrite_timeout_secs = 60\n",
    )
    // 4 MiB in all: by default a quarter, 1 MiB, for each uid's responses: one 576 KiB field,
    // not two (nor a JSON document of one, which is rendered from the field).
    .replace(
        "[cache]\n",
        &format!("[cache]\nmax_locked_bytes = {}\n", 4 * MIB),
    );
    let agent = Agent::start(&dir, &config);
    // The victims' values are cached first.
    assert_eq!(agent.secret("files/root-app").text(), "root-value");
    let honest = |path: &str| request_as(HONEST, &agent.socket, "GET", path);
    assert_eq!(honest("/v1/secrets/files/honest-app").status, 200);
    let evictions = || agent.metric("credagent_cache_evictions_total ");
    assert_eq!(evictions(), 0.0);

    // Each stalled response is a fresh locked buffer of at least 576 KiB.
    let socket = agent.socket.display().to_string();
    let mut attacker = python_as(
        ATTACKER,
        STALL_READS,
        &[&socket, "16", "/v1/secrets/files/big?field=k"],
    );
    assert_eq!(first_line(&mut attacker), "sent");
    // Every stalled read was answered (its audit line is written when its reply is built).
    let decided = || {
        agent
            .audit_reads("files/big")
            .iter()
            .filter(|l| l["uid"] == ATTACKER)
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || decided() >= 16),
        "{} of 16 stalled reads answered",
        decided()
    );
    let held = agent.metric("credagent_secret_memory_bytes ");
    assert!(held <= (4 * MIB) as f64, "secret memory {held}");

    // Nobody else's cached value went: their reads are hits, and nothing was evicted.
    assert_eq!(agent.secret("files/root-app").text(), "root-value");
    assert_eq!(second_read_served(&agent, "files/root-app", 0), "hit");
    assert_eq!(honest("/v1/secrets/files/honest-app").status, 200);
    assert_eq!(
        second_read_served(&agent, "files/honest-app", HONEST),
        "hit"
    );
    assert_eq!(evictions(), 0.0, "a response render evicted cached values");

    // The attacker's refusal is its share's, said and counted as such.
    let resp = request_as(
        ATTACKER,
        &agent.socket,
        "GET",
        "/v1/secrets/files/big?field=k",
    );
    assert_eq!(
        (resp.status, resp.error_code()),
        (503, "memory_budget_uid".to_owned())
    );
    let refused = agent.metric("credagent_rejections_total{reason=\"memory_budget_uid\"} ");
    assert!(refused >= 12.0, "{refused} refused");
    // The other uid still has its own share for responses.
    let field = honest("/v1/secrets/files/honest-app?field=pw");
    assert_eq!(
        (field.status, field.text()),
        (200, "honest-value".to_owned())
    );

    drop(attacker.stdin.take());
    attacker.wait().unwrap();
}

/// Root's reads fill the cache past the budget (its values are evicted among themselves, least
/// recently used first); a render, which never evicts, still finds the render reserve: another
/// uid's `?field=` and JSON reads are served, not refused with `503 memory_budget`.
#[test]
fn a_cache_filled_to_the_budget_still_leaves_another_uids_field_and_json_reads_room() {
    let dir = TestDir::new();
    let mut fill = Vec::new();
    for n in 0..12 {
        let id = format!("fill-{n}");
        dir.secret(&id, &vec![b'f'; 512 * 1024]);
        fill.push(id);
    }
    let mut doc = b"{\"k\":\"".to_vec();
    doc.extend(std::iter::repeat_n(b'd', 256 * 1024));
    doc.extend_from_slice(b"\"}");
    dir.secret("doc", &doc);
    let config = file_config(&format!(
        "[[allow]]\npeer = {{ uid = {HONEST} }}\nsecrets = [\"files/doc\"]\n"
    ))
    .replace(
        "[cache]\n",
        &format!("[cache]\nmax_locked_bytes = {}\n", 4 * MIB),
    );
    let agent = Agent::start(&dir, &config);
    // 6 MiB of root's values through a 4 MiB budget: the cache is full and has evicted.
    for id in &fill {
        assert_eq!(agent.secret(&format!("files/{id}")).status, 200);
    }
    assert!(
        agent.metric("credagent_cache_evictions_total ") > 0.0,
        "the cache filled up"
    );
    let field = request_as(
        HONEST,
        &dir.socket(),
        "GET",
        "/v1/secrets/files/doc?field=k",
    );
    assert_eq!(field.status, 200, "{}", field.text());
    assert_eq!(field.body.len(), 256 * 1024);
    let mut client = common::command("/usr/bin/python3");
    client
        .arg("-c")
        .arg(JSON_READ)
        .arg(dir.socket())
        .arg("/v1/secrets/files/doc");
    std::os::unix::process::CommandExt::uid(&mut client, HONEST);
    std::os::unix::process::CommandExt::gid(&mut client, HONEST);
    let json = common::python_reply(&client.output().unwrap(), "the JSON read");
    assert_eq!(json.status, 200, "{}", json.text());
}
