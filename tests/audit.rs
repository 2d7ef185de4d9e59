//! The audit file: one JSON line per access decision reaches the file while the agent runs
//! (lines are batched, not held back), with the secret's name and never its value.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Agent, CANARY, TestDir, file_config, wait_until};

const NOBODY: u32 = 65534;

#[test]
fn every_read_and_denial_is_a_line_in_the_audit_file() {
    let dir = TestDir::new();
    dir.secret("canary", CANARY.as_bytes());
    let audit = dir.path().join("audit.log");
    let agent = Agent::start(
        &dir,
        &file_config(&format!("[audit]\nfile = \"{}\"\n", audit.display())),
    );
    for _ in 0..20 {
        assert_eq!(agent.secret("files/canary").status, 200);
    }
    assert_eq!(agent.secret("files/missing").status, 404);
    // uid 65534 is in no rule: denied, and the line says so.
    let denied = common::request_as(NOBODY, &agent.socket, "GET", "/v1/secrets/files/canary");
    assert_eq!(denied.status, 403, "{}", denied.text());
    let lines = || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    // Written while the agent keeps running: no shutdown flush needed.
    assert!(
        wait_until(Duration::from_secs(5), || lines().len() == 22),
        "audit lines: {:?}",
        lines()
    );
    let lines = lines();
    let reads = lines
        .iter()
        .filter(|l| l["secret"] == "files/canary" && l["decision"] == "allow" && l["status"] == 200)
        .count();
    assert_eq!(reads, 20);
    let denials: Vec<_> = lines.iter().filter(|l| l["uid"] == NOBODY).collect();
    assert_eq!(denials.len(), 1, "{lines:?}");
    let line = denials[0];
    assert_eq!(
        (
            &line["secret"],
            &line["decision"],
            &line["reason"],
            &line["status"]
        ),
        (
            &serde_json::json!("files/canary"),
            &serde_json::json!("deny"),
            &serde_json::Value::Null,
            &serde_json::json!(403)
        ),
        "{line}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["secret"] == "files/missing" && l["status"] == 404)
    );
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains(CANARY), "a value reached the audit file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777,
        0o640
    );
}

#[test]
fn audit_lines_a_blocked_sink_cannot_take_are_dropped_and_counted_without_blocking_requests() {
    use std::io::Read;
    use std::process::Stdio;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let dir = TestDir::new();
    dir.secret("x", b"value");
    let config = dir.write_config(&file_config("[audit]\nfile = \"-\"\n"));
    // stderr is a pipe of one page that nobody reads yet: the audit writer blocks on it.
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    nix::fcntl::fcntl(&read_end, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
    let mut pipe = std::fs::File::from(read_end);
    let child = common::command(common::bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("CREDAGENT_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(write_end))
        .spawn()
        .unwrap();
    let agent = Agent::adopt(&dir, config, child);

    // More reads than the queue (8192) and the pipe can hold, on parallel connections.
    const PER_CONNECTION: usize = 2000;
    const CONNECTIONS: usize = 6;
    let floods: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let socket = agent.socket.clone();
            std::thread::spawn(move || {
                common::pipelined(
                    &socket,
                    "GET /v1/secrets/files/x HTTP/1.1\r\nHost: x\r\n\r\n",
                    PER_CONNECTION,
                )
            })
        })
        .collect();
    for flood in floods {
        let replies = flood.join().unwrap();
        // Every request was answered although no audit line could be written.
        assert_eq!(
            String::from_utf8_lossy(&replies)
                .matches("HTTP/1.1 200")
                .count(),
            PER_CONNECTION
        );
    }
    let reads = PER_CONNECTION * CONNECTIONS;
    let dropped = agent.metric("credagent_audit_dropped_total ") as usize;
    assert!(dropped > 0, "no audit line dropped for {reads} reads");

    // Drain the pipe: every event is then either a line or counted as dropped. The metrics
    // requests are audited too; each response counts the drops before its own event. Once the
    // sink takes lines again, a marker line (not an event) counts the lines lost before it.
    let lines = Arc::new(AtomicUsize::new(0));
    let marked = Arc::new(AtomicUsize::new(0));
    let (counter, marked_counter) = (lines.clone(), marked.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut partial = Vec::new();
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            partial.extend_from_slice(&buf[..n]);
            while let Some(end) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=end).collect();
                let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
                if value["action"] == "dropped" {
                    let count = value["count"].as_u64().unwrap() as usize;
                    marked_counter.fetch_add(count, Ordering::SeqCst);
                } else {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    });
    let mut metrics_calls = 1;
    let balanced = wait_until(Duration::from_secs(30), || {
        let written = lines.load(Ordering::SeqCst);
        let dropped = agent.metric("credagent_audit_dropped_total ") as usize;
        metrics_calls += 1;
        written + dropped == reads + metrics_calls - 1 && marked.load(Ordering::SeqCst) == dropped
    });
    assert!(
        balanced,
        "{} lines written + {} dropped (marker lines counted {}) != {reads} reads + {} metrics \
         requests",
        lines.load(Ordering::SeqCst),
        agent.metric("credagent_audit_dropped_total ") as usize,
        marked.load(Ordering::SeqCst),
        metrics_calls
    );
}

/// Sends `argv[2]` pipelined `GET argv[3]` on one connection, 200 at a time, reading each
/// group's replies; prints the number of `403` replies.
const DENIED_FLOOD: &str = r#"
import socket, sys
path, total, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
req = ("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target).encode()
denied, sent, buf = 0, 0, b""
while sent < total:
    n = min(200, total - sent)
    s.sendall(req * n)
    sent += n
    while buf.count(b"HTTP/1.1 ") < n:
        buf += s.recv(1 << 20)
    denied += buf.count(b"HTTP/1.1 403")
    buf = b""
print(denied, flush=True)
"#;

#[test]
fn an_attacker_writing_twenty_thousand_denied_lines_cannot_hide_another_uids_read() {
    const ATTACKER: u32 = 65534;
    const HONEST: u32 = 65533;
    const FLOOD: usize = 20_000;
    let dir = TestDir::new();
    dir.secret("app", b"value");
    let audit = dir.path().join("audit.log");
    let mut agent = Agent::start(
        &dir,
        &file_config(&format!(
            "[audit]\nfile = \"{}\"\n\n[[allow]]\npeer = {{ uid = {HONEST} }}\nsecrets = [\"files/app\"]\n",
            audit.display()
        )),
    );
    let socket = agent.socket.to_str().unwrap().to_owned();
    let mut flood = common::python_as(
        ATTACKER,
        DENIED_FLOOD,
        &[&socket, &FLOOD.to_string(), "/v1/secrets/files/app"],
    );
    // The honest read lands in the middle of the flood.
    std::thread::sleep(Duration::from_millis(300));
    let honest = common::request_as(HONEST, &agent.socket, "GET", "/v1/secrets/files/app");
    assert_eq!((honest.status, honest.text()), (200, "value".to_owned()));
    assert_eq!(
        common::first_line(&mut flood),
        FLOOD.to_string(),
        "every flood request denied"
    );
    drop(flood);
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // The attacker's summary comes once its window ends, while the agent runs.
    assert!(
        wait_until(Duration::from_secs(15), || lines()
            .iter()
            .any(|l| l["action"] == "suppressed" && l["uid"] == ATTACKER)),
        "no summary line for the attacker"
    );
    assert_eq!(agent.metric("credagent_audit_dropped_total "), 0.0);
    agent.stop();
    let lines = lines();
    let honest_reads: Vec<_> = lines
        .iter()
        .filter(|l| l["action"] == "read" && l["uid"] == HONEST)
        .collect();
    assert_eq!(
        honest_reads.len(),
        1,
        "the honest read is in the audit file"
    );
    assert_eq!(
        (&honest_reads[0]["decision"], &honest_reads[0]["status"]),
        (&"allow".into(), &200.into())
    );
    let denied_written = lines
        .iter()
        .filter(|l| l["uid"] == ATTACKER && l["decision"] == "deny" && l["status"] == 403)
        .count();
    let suppressed: u64 = lines
        .iter()
        .filter(|l| l["action"] == "suppressed" && l["uid"] == ATTACKER)
        .map(|l| l["count"].as_u64().unwrap())
        .sum();
    // A few hundred lines at most (100 per 10 s window), and every denied request accounted for.
    assert!(
        denied_written <= 300,
        "{denied_written} denied lines written"
    );
    assert_eq!(denied_written as u64 + suppressed, FLOOD as u64);
    for summary in lines.iter().filter(|l| l["action"] == "suppressed") {
        assert!(
            summary["since"].as_str().unwrap().ends_with('Z'),
            "{summary}"
        );
    }
}
