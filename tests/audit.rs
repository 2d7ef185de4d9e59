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
    // requests are audited too; each response counts the drops before its own event.
    let lines = Arc::new(AtomicUsize::new(0));
    let counter = lines.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let newlines = buf[..n].iter().filter(|&&b| b == b'\n').count();
            counter.fetch_add(newlines, Ordering::SeqCst);
        }
    });
    let mut metrics_calls = 1;
    let balanced = wait_until(Duration::from_secs(30), || {
        let written = lines.load(Ordering::SeqCst);
        let dropped = agent.metric("credagent_audit_dropped_total ") as usize;
        metrics_calls += 1;
        written + dropped == reads + metrics_calls - 1
    });
    assert!(
        balanced,
        "{} lines written + {} dropped != {reads} reads + {} metrics requests",
        lines.load(Ordering::SeqCst),
        agent.metric("credagent_audit_dropped_total ") as usize,
        metrics_calls
    );
}
