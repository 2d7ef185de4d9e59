//! Abuse by a local user, attack first: the attacker runs as uid 65534 against the real binary,
//! and each test asserts what the attacker sees and what an honest caller of another uid (and
//! the operator, root) sees meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Agent, TestDir, file_config, first_line, python_as, wait_until};

const ATTACKER: u32 = 65534;
const HONEST: u32 = 65533;

/// Opens `count` connections as the attacker, sends one keep-alive `GET /v1/health` on each and
/// reads one reply (or notes a timeout / close), then holds every connection open until stdin
/// closes. Prints one line: the status of each connection (`200`, `429`, `timeout`, `closed`).
const HOLD_SLOTS: &str = r#"
import socket, sys
path, count = sys.argv[1], int(sys.argv[2])
held, seen = [], []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(path)
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = s.recv(4096)
        seen.append(data.split(b" ")[1].decode() if data else "closed")
    except socket.timeout:
        seen.append("timeout")
    except OSError:
        seen.append("closed")
    held.append(s)
print(" ".join(seen), flush=True)
sys.stdin.read()
"#;

/// Holds one connection (with a request answered), then opens a second and sends nothing for
/// 0.3 s, then its request. Prints the bytes the second received before its request, its
/// status, and the seconds from its connect to the reply: `EARLY STATUS SECS`.
const SLOW_REQUEST: &str = r#"
import socket, sys, time
path = sys.argv[1]
held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
held.connect(path)
held.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
held.recv(4096)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
started = time.monotonic()
s.connect(path)
time.sleep(0.3)
s.setblocking(False)
try:
    early = len(s.recv(4096))
except BlockingIOError:
    early = 0
s.setblocking(True)
s.settimeout(3)
status = "closed"
try:
    s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = s.recv(4096)
    status = data.split(b" ")[1].decode() if data else "closed"
except OSError:
    pass
print(early, status, round(time.monotonic() - started, 2), flush=True)
sys.stdin.read()
"#;

/// Opens one connection, sends nothing and prints the status it is sent and the seconds until
/// then: `STATUS SECS`, or `closed SECS`.
const SILENT: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
started = time.monotonic()
s.connect(sys.argv[1])
try:
    data = s.recv(4096)
    status = data.split(b" ")[1].decode() if data else "closed"
except OSError:
    status = "closed"
print(status, round(time.monotonic() - started, 2), flush=True)
sys.stdin.read()
"#;

/// Pipelines `count` GETs of `argv[3]` on one connection and never reads; after `argv[4]`
/// seconds, reads to EOF (at most 20 s) and prints `closed BYTES` or `open BYTES`.
const PIPELINE_NEVER_READ: &str = r#"
import socket, sys, time
path, count, target, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
req = ("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target).encode()
try:
    s.sendall(req * count)
except OSError:
    pass
time.sleep(wait)
s.settimeout(20)
got = 0
state = "open"
try:
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            state = "closed"
            break
        got += len(chunk)
except socket.timeout:
    pass
except OSError:
    state = "closed"
print(state, got, flush=True)
"#;

/// A caller as `uid` reading `path`, timed: (status, how long it took).
fn timed_request_as(uid: u32, socket: &Path, path: &str) -> (u16, Duration) {
    let started = Instant::now();
    let resp = common::request_as(uid, socket, "GET", path);
    (resp.status, started.elapsed())
}

fn config(server: &str) -> String {
    file_config(&format!(
        "[[allow]]\npeer = {{ uid = {ATTACKER} }}\nsecrets = [\"files/*\"]\n\n\
         [[allow]]\npeer = {{ uid = {HONEST} }}\nsecrets = [\"files/*\"]\n"
    ))
    .replace(
        "socket_mode = \"0666\"\n",
        &format!("socket_mode = \"0666\"\n{server}\n"),
    )
}

#[test]
fn an_attacker_holding_every_slot_with_idle_keepalive_connections_gets_429_past_its_share() {
    let dir = TestDir::new();
    dir.secret("app", b"honest-value");
    // 8 slots, a quarter (2) per uid.
    let agent = Agent::start(&dir, &config("max_connections = 8"));
    let socket = agent.socket.display().to_string();

    let mut attacker = python_as(ATTACKER, HOLD_SLOTS, &[&socket, "12"]);
    let seen = first_line(&mut attacker);
    let statuses: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(statuses.len(), 12, "{seen}");
    assert_eq!(&statuses[..2], ["200", "200"], "{seen}");
    assert!(
        statuses[2..].iter().all(|s| *s == "429"),
        "past its share the attacker must get 429 at once, not wait: {seen}"
    );

    // While the attacker holds its share, an honest caller of another uid is served at once.
    let (status, took) = timed_request_as(HONEST, &agent.socket, "/v1/secrets/files/app");
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_secs(2),
        "honest caller waited {took:?}"
    );

    // The operator too, and the rejections are counted.
    assert_eq!(agent.metric("credagent_connections_rejected_total "), 10.0);
    let refused = common::request_as(ATTACKER, &agent.socket, "GET", "/v1/health");
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (429, "too_many_connections")
    );
    drop(attacker.stdin.take());
    attacker.wait().unwrap();
    // Slots come back when the attacker lets go.
    assert!(wait_until(Duration::from_secs(5), || {
        common::request_as(ATTACKER, &agent.socket, "GET", "/v1/health").status == 200
    }));
}

#[test]
fn an_attacker_allowed_every_general_slot_still_leaves_the_operator_its_reserve() {
    let dir = TestDir::new();
    dir.secret("app", b"v");
    let agent = Agent::start(
        &dir,
        &config("max_connections = 4\nmax_connections_per_uid = 4"),
    );
    let socket = agent.socket.display().to_string();
    let mut attacker = python_as(ATTACKER, HOLD_SLOTS, &[&socket, "6"]);
    let seen = first_line(&mut attacker);
    assert_eq!(seen, "200 200 200 200 429 429");

    // Every general slot is taken: another uid is refused at once (no 8 s wait in the backlog)…
    let (status, took) = timed_request_as(HONEST, &agent.socket, "/v1/secrets/files/app");
    assert_eq!(status, 429);
    assert!(took < Duration::from_secs(2), "refusal took {took:?}");
    // …while root (uid 0, the admin of this config) reaches health, metrics and flush.
    assert_eq!(agent.get("/v1/health").status, 200);
    assert_eq!(agent.get("/v1/metrics").status, 200);
    assert_eq!(
        agent.request("POST", "/v1/cache/flush", &[], b"").status,
        200
    );
    drop(attacker.stdin.take());
    attacker.wait().unwrap();
}

#[test]
fn a_client_over_its_cap_that_is_slow_to_send_gets_the_429_as_the_answer_to_its_request() {
    // A 429 written before the request arrives is an unexpected message to an HTTP client
    // (hyper's reports just that, without the status): the refusal answers the request.
    let dir = TestDir::new();
    let agent = Agent::start(&dir, &config("max_connections_per_uid = 1"));
    let socket = agent.socket.display().to_string();
    let mut client = python_as(ATTACKER, SLOW_REQUEST, &[&socket]);
    let seen = first_line(&mut client);
    drop(client.stdin.take());
    client.wait().unwrap();
    let fields: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(
        fields[..2],
        ["0", "429"],
        "bytes before the request, status: {seen}"
    );
    let took: f64 = fields[2].parse().unwrap();
    assert!(took < 1.0, "the 429 came {took} s after connecting: {seen}");
    assert_eq!(agent.metric("credagent_connections_rejected_total "), 1.0);
}

#[test]
fn a_client_over_its_cap_that_never_sends_still_gets_429_and_is_closed_within_about_a_second() {
    let dir = TestDir::new();
    let agent = Agent::start(&dir, &config("max_connections_per_uid = 1"));
    let socket = agent.socket.display().to_string();
    let mut holder = python_as(ATTACKER, HOLD_SLOTS, &[&socket, "1"]);
    assert_eq!(first_line(&mut holder), "200");
    let mut silent = python_as(ATTACKER, SILENT, &[&socket]);
    let seen = first_line(&mut silent);
    drop(silent.stdin.take());
    silent.wait().unwrap();
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let (status, took) = seen.split_once(' ').unwrap();
    assert_eq!(status, "429", "{seen}");
    let took: f64 = took.parse().unwrap();
    assert!(took < 2.5, "a silent refused client was held {took} s");
}

#[test]
fn an_attacker_that_pipelines_requests_and_never_reads_is_cut_off_after_the_write_timeout() {
    let dir = TestDir::new();
    dir.secret("big", &vec![b'x'; 1024 * 1024]);
    dir.secret("app", b"honest-value");
    let agent = Agent::start(&dir, &config("write_timeout_secs = 1"));
    let socket = agent.socket.display().to_string();

    let mut attacker = python_as(
        ATTACKER,
        PIPELINE_NEVER_READ,
        &[&socket, "64", "/v1/secrets/files/big", "4"],
    );
    // The stall is noticed and counted while the attacker still is not reading.
    assert!(
        wait_until(Duration::from_secs(4), || agent
            .metric("credagent_write_timeouts_total ")
            >= 1.0),
        "no write timeout; log:\n{}",
        agent.log_text()
    );
    let (status, took) = timed_request_as(HONEST, &agent.socket, "/v1/secrets/files/app");
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(2));

    attacker.stdin.take().unwrap().write_all(b"").unwrap();
    let seen = first_line(&mut attacker);
    attacker.wait().unwrap();
    let (state, bytes) = seen.split_once(' ').unwrap();
    let bytes: usize = bytes.parse().unwrap();
    assert_eq!(state, "closed", "{seen}");
    assert!(
        bytes < 64 * 1024 * 1024,
        "the attacker got every reply ({bytes} bytes): it was never cut off"
    );
}

/// Sends `argv[2]` requests for `argv[3]` on as many connections and never reads; prints `sent`
/// and holds them until stdin closes.
const STALL_READS: &str = r#"
import socket, sys
path, count, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
held = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target).encode())
    held.append(s)
print("sent", flush=True)
sys.stdin.read()
"#;

#[test]
fn an_attacker_stalling_reads_of_a_large_field_cannot_pin_more_than_the_memory_budget() {
    const MIB: usize = 1024 * 1024;
    const BUDGET: usize = 4 * MIB;
    let dir = TestDir::new();
    let mut big = b"{\"k\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', MIB));
    big.extend_from_slice(b"\"}");
    dir.secret("big", &big);
    dir.secret("app", b"honest-value");
    let agent = Agent::start(
        &dir,
        &config("max_connections_per_uid = 64\nwrite_timeout_secs = 3").replace(
            "[cache]\n",
            &format!("[cache]\nmax_locked_bytes = {BUDGET}\n"),
        ),
    );
    let socket = agent.socket.display().to_string();
    let memory = || agent.metric("credagent_secret_memory_bytes ");
    let status_of = |uid| {
        let resp = common::request_as(uid, &agent.socket, "GET", "/v1/secrets/files/big?field=k");
        match resp.status {
            200 => "200".to_owned(),
            status => format!("{status} {}", resp.error_code()),
        }
    };
    // Every ?field= response is a fresh locked buffer of 1 MiB, held while the reader stalls.
    let mut attacker = python_as(
        ATTACKER,
        STALL_READS,
        &[&socket, "16", "/v1/secrets/files/big?field=k"],
    );
    assert_eq!(first_line(&mut attacker), "sent");
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            last = status_of(ATTACKER);
            last == "503 memory_budget_uid"
        }),
        "last: {last}, memory {}",
        memory()
    );
    assert!(
        memory() <= BUDGET as f64,
        "secret memory {} passed the budget",
        memory()
    );
    assert_eq!(status_of(ATTACKER), "503 memory_budget_uid");
    // The stalled responses are dropped at the write timeout; the memory comes back, and an
    // honest caller of another uid is served again.
    assert!(wait_until(Duration::from_secs(10), || status_of(HONEST) == "200"));
    assert_eq!(
        timed_request_as(HONEST, &agent.socket, "/v1/secrets/files/app").0,
        200
    );
    assert!(memory() <= BUDGET as f64);
    drop(attacker.stdin.take());
    attacker.wait().unwrap();
}

/// Sends `argv[2]` (a request head) and no body, then waits up to `argv[3]` seconds for a reply.
/// Prints the status, `timeout`, or `closed`, and how long it took in milliseconds.
const HEAD_ONLY: &str = r#"
import socket, sys, time
path, head, wait = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
started = time.monotonic()
s.sendall(head.replace(b"|", b"\r\n"))
s.settimeout(wait)
try:
    data = s.recv(4096)
    seen = data.split(b" ")[1].decode() if data else "closed"
except socket.timeout:
    seen = "timeout"
except OSError:
    seen = "closed"
print(seen, int((time.monotonic() - started) * 1000), flush=True)
"#;

/// The flush endpoint reads a body. A caller that may not flush must be refused before the
/// agent waits for (or buffers) a body: else any local user holds connections open forever by
/// announcing a body and never sending it (the idle check spares a request in flight). An admin
/// who stalls its body gets `408` once the body's time bound passes.
#[test]
fn an_attacker_announcing_a_flush_body_it_never_sends_is_refused_at_once_and_an_admin_is_timed_out()
{
    let dir = TestDir::new();
    let agent = Agent::start(&dir, &config(""));
    let head = "POST /v1/cache/flush HTTP/1.1|Host: x|Content-Length: 60000|Content-Type: application/json||";
    let socket = agent.socket.to_str().unwrap().to_owned();
    // The operator (root, an admin) stalls its body in parallel.
    let operator = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let out = common::command("/usr/bin/python3")
                .args(["-c", HEAD_ONLY, &socket, head, "25"])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
    };
    let mut attacker = python_as(ATTACKER, HEAD_ONLY, &[&socket, head, "5"]);
    let seen = first_line(&mut attacker);
    let _ = attacker.wait();
    let (status, millis) = seen.split_once(' ').unwrap();
    assert_eq!(status, "403", "the attacker saw {seen}");
    assert!(
        millis.parse::<u64>().unwrap() < 2_000,
        "refused only after {millis} ms"
    );
    let denied = |v: &serde_json::Value| {
        v["action"] == "flush" && v["uid"] == ATTACKER && v["status"] == 403
    };
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| denied(&v) && v["decision"] == "deny")),
        "no deny line for the attacker's flush:\n{}",
        agent.log_text()
    );
    // The operator's stalled body ends in 408 after the body's bound (10 s), not never.
    let seen = operator.join().unwrap();
    let (status, millis) = seen.split_once(' ').unwrap();
    assert_eq!(status, "408", "the operator saw {seen}");
    let millis: u64 = millis.parse().unwrap();
    assert!((9_900..20_000).contains(&millis), "408 after {millis} ms");
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["action"] == "flush"
                && v["uid"] == 0
                && v["decision"] == "allow"
                && v["status"] == 408)),
        "no line for the operator's timed-out flush:\n{}",
        agent.log_text()
    );
    // An honest flush with its body is answered.
    let resp = agent.request(
        "POST",
        "/v1/cache/flush",
        &[("Content-Type", "application/json")],
        br#"{"pattern":"files/*"}"#,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
}
