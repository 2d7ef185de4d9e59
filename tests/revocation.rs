//! Access that holds over time, against the real binary: a read that waits (`?wait=`, as
//! `render --watch` and `exec --watch` hold one all the time) is decided again under the config
//! in force whenever it wakes, so a reload that removes a caller's rule ends its wait with `403`
//! (audit `"reason":"revoked"`), and a reload that repoints a source is not undone by a waiter
//! fetching through the old one. The attacker runs as uid 65534.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Agent, TestDir, file_config, wait_until};

const NOBODY: u32 = 65534;

/// The rule that admits uid 65534 to `files/db`.
const NOBODY_RULE: &str = "[[allow]]\npeer = { uid = 65534 }\nsecrets = [\"files/db\"]\n";

fn hup(agent: &Agent) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

/// Sends SIGHUP and waits until the agent has logged its `reloads`-th reload.
fn reload(agent: &Agent, reloads: usize) {
    hup(agent);
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.log_text().matches("configuration reloaded").count() < reloads {
        assert!(
            Instant::now() < deadline,
            "no reload within 10 s:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /v1/secrets/{name}?wait={secs}` with `If-None-Match: etag`, sent by curl as uid 65534
/// in a thread: the status and body it got.
fn wait_as_nobody(socket: &Path, name: &str, etag: &str, secs: u64) -> JoinHandle<(u16, String)> {
    let mut command = Command::new("curl");
    command
        .args(["-s", "--max-time", "60", "--unix-socket"])
        .arg(socket)
        .args(["-H", &format!("If-None-Match: {etag}")])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://localhost/v1/secrets/{name}?wait={secs}"))
        .stdin(Stdio::null());
    std::os::unix::process::CommandExt::uid(&mut command, NOBODY);
    std::os::unix::process::CommandExt::gid(&mut command, NOBODY);
    std::thread::spawn(move || {
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    })
}

/// The ETag of `files/db` as root reads it, with its value.
fn etag_of_db(agent: &Agent) -> (String, String) {
    let resp = agent.secret("files/db");
    assert_eq!(resp.status, 200, "{}", resp.text());
    (resp.header("etag").unwrap().to_owned(), resp.text())
}

/// The audit lines of uid 65534's reads of `files/db`.
fn nobody_reads(agent: &Agent) -> Vec<serde_json::Value> {
    agent
        .audit_reads("files/db")
        .into_iter()
        .filter(|line| line["uid"] == NOBODY)
        .collect()
}

#[test]
fn a_render_watch_whose_rule_is_removed_while_it_waits_gets_403_and_never_the_rotated_value() {
    let dir = TestDir::new();
    dir.secret("db", b"old-value");
    let agent = Agent::start(&dir, &file_config(NOBODY_RULE));
    let base = dir.path().join("watch");
    std::fs::create_dir(&base).unwrap();
    nix::unistd::chown(&base, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    let template = base.join("t");
    std::fs::write(&template, "db={{ secret files/db }}\n").unwrap();
    let out = base.join("out");
    let log = std::fs::File::create(dir.path().join("watcher.log")).unwrap();
    let mut command = Command::new(common::bin());
    command
        .arg("render")
        .arg("--socket")
        .arg(&agent.socket)
        .arg(&template)
        .arg("-o")
        .arg(&out)
        .arg("--watch")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    std::os::unix::process::CommandExt::uid(&mut command, NOBODY);
    std::os::unix::process::CommandExt::gid(&mut command, NOBODY);
    let _watcher = common::ChildGuard(command.spawn().unwrap());
    let read_out = || std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), || read_out() == "db=old-value\n"),
        "first render: {:?}",
        read_out()
    );
    // Let the watcher's waiting read reach the agent (it holds one at all times from here).
    std::thread::sleep(Duration::from_millis(500));

    // The operator revokes uid 65534, rotates the secret and reloads.
    dir.write_config(&file_config(""));
    dir.secret("db", b"new-value");
    reload(&agent, 1);

    // The waiter's read ends with a 403 recorded as a revocation, at the time it was answered.
    assert!(
        wait_until(Duration::from_secs(5), || nobody_reads(&agent)
            .iter()
            .any(|l| l["reason"] == "revoked")),
        "no revoked line; log:\n{}",
        agent.log_text()
    );
    let revoked: Vec<_> = nobody_reads(&agent)
        .into_iter()
        .filter(|l| l["reason"] == "revoked")
        .collect();
    for line in &revoked {
        assert_eq!(line["decision"], "deny", "{line}");
        assert_eq!(line["status"], 403, "{line}");
        assert!(line["arrived"].is_string(), "{line}");
        assert!(line["time"].as_str() > line["arrived"].as_str(), "{line}");
    }
    // It never hears the new value, however long it keeps asking.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(read_out(), "db=old-value\n");
    assert!(
        nobody_reads(&agent)
            .iter()
            .filter(|l| l["decision"] == "allow")
            .all(|l| l["status"] != 200 || l["arrived"].is_null()),
        "a read admitted before the reload was answered with a value after it"
    );
    // A fresh read by the same uid is refused too; the operator reads the new value.
    let fresh = agent.cli_as(Some(NOBODY), &["get", "files/db"]);
    assert!(!fresh.status.success());
    assert!(!String::from_utf8_lossy(&fresh.stdout).contains("new-value"));
    assert_eq!(agent.secret("files/db").text(), "new-value");
}

#[test]
fn a_waiter_holding_its_read_across_a_reload_that_repoints_the_source_does_not_bring_back_the_old_directory()
 {
    let dir = TestDir::new();
    dir.secret("db", b"from-old-dir");
    let new_dir = dir.path().join("secrets2");
    std::fs::create_dir(&new_dir).unwrap();
    std::fs::write(new_dir.join("db"), b"from-new-dir").unwrap();
    let agent = Agent::start(&dir, &file_config(NOBODY_RULE));
    let (etag, value) = etag_of_db(&agent);
    assert_eq!(value, "from-old-dir");
    let waiter = wait_as_nobody(&agent.socket, "files/db", &etag, 30);
    std::thread::sleep(Duration::from_millis(500));

    let moved = file_config(NOBODY_RULE).replace("{secrets}", new_dir.to_str().unwrap());
    dir.write_config(&moved);
    reload(&agent, 1);
    // Time for the woken waiter to read again (at once: its last read is long past).
    std::thread::sleep(Duration::from_millis(1500));

    // Every reader, root included, gets the new directory's value.
    assert_eq!(agent.secret("files/db").text(), "from-new-dir");
    // The waiter itself follows the repointed source.
    let (status, body) = waiter.join().unwrap();
    assert_eq!((status, body.as_str()), (200, "from-new-dir"));
    assert_eq!(agent.secret("files/db").text(), "from-new-dir");
}

#[test]
fn an_honest_waiter_still_follows_a_rotation_and_a_reload_that_keeps_its_rule() {
    let dir = TestDir::new();
    dir.secret("db", b"first");
    let agent = Agent::start(&dir, &file_config(NOBODY_RULE));
    let (etag, _) = etag_of_db(&agent);
    let waiter = wait_as_nobody(&agent.socket, "files/db", &etag, 30);
    std::thread::sleep(Duration::from_millis(500));
    dir.secret("db", b"second");
    reload(&agent, 1);
    let (status, body) = waiter.join().unwrap();
    assert_eq!((status, body.as_str()), (200, "second"));
    assert!(
        wait_until(Duration::from_secs(2), || nobody_reads(&agent)
            .iter()
            .any(|l| l["decision"] == "allow" && l["status"] == 200)),
        "{}",
        agent.log_text()
    );
    assert!(nobody_reads(&agent).iter().all(|l| l["reason"].is_null()));
}
