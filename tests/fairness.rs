//! One caller cannot harm another, attack first: the attacker runs as uid 65534 against the real
//! binary and a slow backend (a command source that sleeps), and each test asserts what the
//! attacker sees and what an honest caller of another uid sees meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Agent, TestDir, first_line, python_as, request_as};

const ATTACKER: u32 = 65534;
const HONEST: u32 = 65533;

/// `argv[2]` threads read `argv[3]` + a fresh number, one request per connection, until
/// `argv[4]` seconds have passed; prints `started` at once, then one line at the end:
/// `STATUS:COUNT ...` (the error code after a `/` for non-200 replies).
const FLOOD: &str = r#"
import socket, sys, threading, time, collections, json
path, threads, prefix, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
seen = collections.Counter()
lock = threading.Lock()
counter = [0]
end = time.monotonic() + secs
def run():
    while time.monotonic() < end:
        with lock:
            counter[0] += 1
            n = counter[0]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            s.sendall(("GET /v1/secrets/%s%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (prefix, n)).encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            status = data.split(b" ")[1].decode()
            if status != "200":
                try:
                    status += "/" + json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"]
                except Exception:
                    pass
        except OSError as e:
            status = "oserror"
        finally:
            s.close()
        with lock:
            seen[status] += 1
print("started", flush=True)
workers = [threading.Thread(target=run) for _ in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(" ".join("%s:%d" % kv for kv in sorted(seen.items())), flush=True)
"#;

/// A command source `slow` whose every run takes `sleep` seconds and prints the id; the attacker
/// may read `slow/team-a/*`, the honest caller `slow/team-b/*`, this process (root) everything.
fn slow_config(sleep: &str, source_extra: &str) -> String {
    common::config_allowing_all(
        "",
        &format!(
            r#"[sources.slow]
type = "command"
argv = ["/bin/sh", "-c", "sleep {sleep}; printf %s \"$0\"", "{{id}}"]
timeout_secs = 20
{source_extra}

[[allow]]
peer = {{ uid = {ATTACKER} }}
secrets = ["slow/team-a/*"]

[[allow]]
peer = {{ uid = {HONEST} }}
secrets = ["slow/team-b/*"]
"#
        ),
    )
}

/// Counts of `STATUS:COUNT` words in a flood's summary line.
fn count(summary: &str, status: &str) -> usize {
    summary
        .split_whitespace()
        .filter_map(|w| w.rsplit_once(':'))
        .filter(|(s, _)| *s == status)
        .map(|(_, n)| n.parse::<usize>().unwrap())
        .sum()
}

#[test]
fn an_attacker_flooding_distinct_misses_of_its_own_glob_leaves_another_uids_misses_served() {
    let dir = TestDir::new();
    let agent = Agent::start(&dir, &slow_config("1", "max_concurrent_fetches = 4"));
    let socket = agent.socket.to_str().unwrap().to_owned();
    let mut flood = python_as(ATTACKER, FLOOD, &[&socket, "45", "slow/team-a/", "8"]);
    assert_eq!(first_line(&mut flood), "started");
    std::thread::sleep(Duration::from_millis(1500));

    // The honest uid's misses, one after another during the flood: each is a backend call.
    let honest: Vec<(u16, String)> = (0..4)
        .map(|i| {
            let path = format!("/v1/secrets/slow/team-b/{i}");
            let resp = request_as(HONEST, &agent.socket, "GET", &path);
            let body = if resp.status == 200 {
                resp.text()
            } else {
                resp.error_code()
            };
            (resp.status, body)
        })
        .collect();
    let summary = first_line(&mut flood);
    assert!(flood.wait().unwrap().success());
    for (i, (status, body)) in honest.iter().enumerate() {
        assert_eq!(
            (*status, body.as_str()),
            (200, format!("team-b/{i}").as_str()),
            "the honest uid's miss {i} during the flood (attacker saw {summary})"
        );
    }
    // The attacker held its share and no more: it was refused, as source_busy.
    assert!(
        count(&summary, "503/source_busy") > 0,
        "attacker: {summary}"
    );
    assert_eq!(
        count(&summary, "200") + count(&summary, "503/source_busy"),
        summary
            .split_whitespace()
            .map(|w| w.rsplit_once(':').unwrap().1.parse::<usize>().unwrap())
            .sum::<usize>(),
        "attacker saw only 200 and 503 source_busy: {summary}"
    );
    // The audit trail shows the honest reads allowed and served.
    for i in 0..4 {
        let lines = agent.audit_reads(&format!("slow/team-b/{i}"));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(
            (&lines[0]["uid"], &lines[0]["decision"], &lines[0]["status"]),
            (
                &serde_json::json!(HONEST),
                &serde_json::json!("allow"),
                &serde_json::json!(200)
            )
        );
    }
    // The refusals are counted by reason.
    assert!(agent.metric("credagent_rejections_total{reason=\"source_busy_uid\"} ") > 0.0);
}

#[test]
fn reload_pid_naming_a_process_that_is_not_credagent_signals_nothing() {
    let dir = TestDir::new();
    let agent = Agent::start(&dir, &common::file_config(""));
    // A process that SIGHUP would kill: its default action is to terminate.
    let mut victim = common::ChildGuard(
        std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap(),
    );
    let out = std::process::Command::new(common::bin())
        .args(["reload", "--pid", &victim.0.id().to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "reload of a sleep succeeded");
    assert!(stderr.contains("not credagent"), "{stderr}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        victim.0.try_wait().unwrap().is_none(),
        "the sleep was signalled"
    );
    // The agent itself is reloaded as before.
    let out = std::process::Command::new(common::bin())
        .args(["reload", "--pid", &agent.pid().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        common::wait_until(Duration::from_secs(5), || agent
            .log_text()
            .contains("reload")),
        "{}",
        agent.log_text()
    );
    assert_eq!(agent.get("/v1/health").status, 200);
}
