//! Logs the journal understands: when stderr is the journal (`JOURNAL_STREAM` names it), the agent
//! speaks journald's native protocol — each log line an entry with its level as `PRIORITY`, each
//! audit line an entry of its own with `CREDAGENT_AUDIT=1` and its fields — and never a value.
//! Here journald is a datagram socket the test binds at `/run/systemd/journal/socket` in a private
//! mount namespace (a tmpfs over `/run`), so the real binary runs as under systemd without one;
//! scripts/test-systemd.sh checks the same against the real journald. Needs root (mounts).
//! Also: `[log] format = "json"` writes one JSON object a line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Agent, CANARY, TestDir, bin, file_config, try_request, wait_until};

/// Records every datagram sent to journald's socket, each as a 4-byte little-endian length and
/// the bytes.
const FAKE_JOURNALD: &str = r#"
import socket, sys
out = open(sys.argv[1], "ab", buffering=0)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/run/systemd/journal/socket")
while True:
    data = s.recv(1 << 20)
    out.write(len(data).to_bytes(4, "little") + data)
"#;

/// The agent under a fake journald: the agent (its pid is the child's) and the recorder's pid.
struct UnderJournald {
    child: Child,
    recorder_pid: PathBuf,
    dump: PathBuf,
    log: PathBuf,
    socket: PathBuf,
}

impl UnderJournald {
    fn start(dir: &TestDir, template: &str) -> Self {
        let config = dir.write_config(template);
        let log = dir.path().join("agent.log");
        let dump = dir.path().join("journal.dump");
        let recorder_pid = dir.path().join("recorder.pid");
        let script = dir.path().join("journald.py");
        std::fs::write(&script, FAKE_JOURNALD).unwrap();
        let stderr = std::fs::File::create(&log).unwrap();
        let meta = std::fs::metadata(&log).unwrap();
        // What systemd sets for a unit whose stderr is the journal: stderr's device and inode.
        let stream = format!("{}:{}", meta.dev(), meta.ino());
        let mut command = Command::new("unshare");
        command
            .args(["-m", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(
                "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
                 { /usr/bin/python3 \"$0\" \"$1\" & echo $! >\"$2\"; } && \
                 while [ ! -S /run/systemd/journal/socket ]; do sleep 0.02; done && \
                 exec \"$3\" serve --config \"$4\"",
            )
            .arg(&script)
            .arg(&dump)
            .arg(&recorder_pid)
            .arg(bin())
            .arg(&config)
            .env("JOURNAL_STREAM", stream)
            .env("CREDAGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0);
        let child = command.spawn().unwrap();
        let agent = UnderJournald {
            child,
            recorder_pid,
            dump,
            log,
            socket: dir.socket(),
        };
        assert!(
            wait_until(Duration::from_secs(20), || {
                try_request(&agent.socket, "GET", "/v1/health", &[], b"")
                    .is_ok_and(|r| r.status == 200)
            }),
            "agent not ready; stderr:\n{}",
            std::fs::read_to_string(&agent.log).unwrap_or_default()
        );
        agent
    }

    fn get(&self, path: &str) -> u16 {
        try_request(&self.socket, "GET", path, &[], b"")
            .unwrap()
            .status
    }

    /// Every entry journald received so far, as field maps.
    fn entries(&self) -> Vec<BTreeMap<String, Vec<u8>>> {
        let bytes = std::fs::read(&self.dump).unwrap_or_default();
        let mut entries = Vec::new();
        let mut rest = bytes.as_slice();
        while rest.len() >= 4 {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            entries.push(parse_entry(&rest[4..4 + len]));
            rest = &rest[4 + len..];
        }
        entries
    }

    fn raw_dump(&self) -> Vec<u8> {
        std::fs::read(&self.dump).unwrap_or_default()
    }
}

impl Drop for UnderJournald {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        if let Some(pid) = std::fs::read_to_string(&self.recorder_pid)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
    }
}

/// journald's native format: `NAME=value\n`, or `NAME\n` + u64 LE length + value + `\n`.
fn parse_entry(mut data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut fields = BTreeMap::new();
    while !data.is_empty() {
        let line_end = data.iter().position(|&b| b == b'\n').unwrap();
        let line = &data[..line_end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(
                String::from_utf8(line[..eq].to_vec()).unwrap(),
                line[eq + 1..].to_vec(),
            );
            data = &data[line_end + 1..];
        } else {
            let name = String::from_utf8(line.to_vec()).unwrap();
            let rest = &data[line_end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            fields.insert(name, rest[8..8 + len].to_vec());
            data = &rest[8 + len + 1..];
        }
    }
    fields
}

fn field<'a>(entry: &'a BTreeMap<String, Vec<u8>>, name: &str) -> &'a str {
    entry
        .get(name)
        .map(|v| std::str::from_utf8(v).unwrap())
        .unwrap_or("")
}

fn find(
    entries: &[BTreeMap<String, Vec<u8>>],
    what: impl Fn(&BTreeMap<String, Vec<u8>>) -> bool,
) -> Option<&BTreeMap<String, Vec<u8>>> {
    entries.iter().find(|e| what(e))
}

#[test]
fn under_journald_logs_carry_priorities_and_audit_lines_are_entries_of_their_own() {
    let dir = TestDir::new();
    dir.secret("canary", CANARY.as_bytes());
    let agent = UnderJournald::start(&dir, &file_config(""));
    assert_eq!(agent.get("/v1/secrets/files/canary"), 200);
    assert_eq!(agent.get("/v1/secrets/other/x"), 403);
    // A refused reload is logged as an error.
    let config = dir.path().join("config.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}\nnot_a_key = 1\n")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();

    let refused = |e: &BTreeMap<String, Vec<u8>>| field(e, "MESSAGE").contains("reload refused");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let entries = agent.entries();
            find(&entries, refused).is_some()
                && entries
                    .iter()
                    .filter(|e| field(e, "CREDAGENT_AUDIT") == "1")
                    .count()
                    >= 2
        }),
        "entries: {:?}",
        agent.entries()
    );
    let entries = agent.entries();

    let error = find(&entries, refused).unwrap();
    assert_eq!(field(error, "PRIORITY"), "3", "{error:?}");
    assert_eq!(field(error, "SYSLOG_IDENTIFIER"), "credagent");
    assert!(
        !field(error, "ERROR").is_empty(),
        "its error is a field: {error:?}"
    );

    let ready = find(&entries, |e| {
        field(e, "MESSAGE").contains("credagent ready")
    })
    .expect("the ready line reached journald");
    assert_eq!(field(ready, "PRIORITY"), "6");
    assert_eq!(
        field(ready, "CREDAGENT_AUDIT"),
        "",
        "a log line is no audit entry"
    );

    let allowed = find(&entries, |e| {
        field(e, "CREDAGENT_AUDIT") == "1" && field(e, "SECRET") == "files/canary"
    })
    .expect("the read's audit entry");
    assert_eq!(field(allowed, "DECISION"), "allow");
    assert_eq!(field(allowed, "ACTION"), "read");
    assert_eq!(field(allowed, "PRIORITY"), "6");
    assert_eq!(field(allowed, "STATUS"), "200");
    assert_eq!(field(allowed, "UID"), nix::unistd::geteuid().to_string());
    let line: serde_json::Value = serde_json::from_str(field(allowed, "MESSAGE")).unwrap();
    assert_eq!(line["secret"], "files/canary");
    assert_eq!(line["decision"], "allow");

    let denied = find(&entries, |e| {
        field(e, "CREDAGENT_AUDIT") == "1" && field(e, "SECRET") == "other/x"
    })
    .expect("the denial's audit entry");
    assert_eq!(field(denied, "DECISION"), "deny");
    assert_eq!(field(denied, "PRIORITY"), "5", "a denial is a notice");
    assert_eq!(field(denied, "STATUS"), "403");

    // Everything went to journald; nothing was written twice to stderr, and never the value.
    let stderr = std::fs::read_to_string(&agent.log).unwrap_or_default();
    assert!(!stderr.contains("credagent ready"), "stderr: {stderr}");
    assert!(!stderr.contains("files/canary"), "stderr: {stderr}");
    let dump = agent.raw_dump();
    assert!(
        !dump.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
        "the value reached the journal"
    );
    assert!(!stderr.contains(CANARY));
}

#[test]
fn with_format_text_stderr_stays_text_even_when_it_is_the_journal() {
    let dir = TestDir::new();
    let agent = UnderJournald::start(&dir, &file_config("[log]\nformat = \"text\"\n"));
    assert_eq!(agent.get("/v1/secrets/other/x"), 403);
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&agent.log)
            .unwrap_or_default()
            .contains("\"decision\":\"deny\"")
    }));
    let stderr = std::fs::read_to_string(&agent.log).unwrap();
    assert!(stderr.contains("credagent ready"), "stderr: {stderr}");
    assert!(
        agent.entries().is_empty(),
        "journald got {:?}",
        agent.entries()
    );
}

#[test]
fn with_format_json_each_log_line_is_a_json_object() {
    let dir = TestDir::new();
    let agent = Agent::start(&dir, &file_config("[log]\nformat = \"json\"\n"));
    assert!(wait_until(Duration::from_secs(5), || agent
        .log_text()
        .contains("credagent ready")));
    let log = agent.log_text();
    let ready = log.lines().find(|l| l.contains("credagent ready")).unwrap();
    let ready: serde_json::Value = serde_json::from_str(ready).unwrap();
    assert_eq!(ready["level"], "INFO", "{ready}");
    assert!(
        ready["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("credagent ready")
    );
    // Every line is JSON: log lines and audit lines alike.
    for line in log.lines().filter(|l| !l.is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}

#[test]
fn a_log_format_outside_the_four_is_a_config_error() {
    let dir = TestDir::new();
    let (code, log) = common::start_fails(&dir, &file_config("[log]\nformat = \"syslog\"\n"));
    assert_eq!(code, Some(78), "{log}");
    assert!(
        log.contains("`syslog`") && log.contains("`journald`"),
        "{log}"
    );
}
