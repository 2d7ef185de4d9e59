//! Secrets that follow rotation: ETags on every value, reads that wait for a change
//! (`?wait=` with `If-None-Match`), and a reader's forced re-fetch (`?refresh=true`), against
//! the real binary with the file source and OpenBao.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::bao::Bao;
use common::{Agent, Response, TestDir, file_config, try_request};
use serde_json::json;

/// A waiting read, in a thread: the response and how long it took.
fn wait_for_change(
    socket: &Path,
    name: &str,
    etag: &str,
    secs: u64,
) -> JoinHandle<(Response, Duration)> {
    let socket = socket.to_path_buf();
    let sep = if name.contains('?') { '&' } else { '?' };
    let path = format!("/v1/secrets/{name}{sep}wait={secs}");
    let etag = etag.to_owned();
    std::thread::spawn(move || {
        let started = Instant::now();
        let resp = try_request(&socket, "GET", &path, &[("If-None-Match", &etag)], b"").unwrap();
        (resp, started.elapsed())
    })
}

fn etag_of(resp: &Response) -> String {
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.header("etag")
        .expect("a 200 carries an ETag")
        .to_owned()
}

#[test]
fn a_waiter_gets_the_rotated_file_secret_within_its_ttl_plus_two_seconds() {
    let dir = TestDir::new();
    dir.secret("db", b"one");
    let agent = Agent::start(
        &dir,
        &file_config("").replace("[cache]", "[cache]\nttl_secs = 1\nrefresh_ahead_secs = 0"),
    );
    let first = agent.secret("files/db");
    let etag = etag_of(&first);
    assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
    // Unchanged bytes, unchanged tag; the tag held: 304 at once without wait.
    assert_eq!(etag_of(&agent.secret("files/db")), etag);
    let held = agent.request(
        "GET",
        "/v1/secrets/files/db",
        &[("If-None-Match", &etag)],
        b"",
    );
    assert_eq!((held.status, held.body.len()), (304, 0));
    assert_eq!(held.header("etag"), Some(etag.as_str()));

    let waiter = wait_for_change(&agent.socket, "files/db", &etag, 30);
    std::thread::sleep(Duration::from_millis(300));
    let rotated = Instant::now();
    dir.secret("db", b"two");
    let (resp, _) = waiter.join().unwrap();
    // Bound: the 1 s TTL, the waiter's 1 s re-read pace, and slack for a loaded machine.
    assert!(
        rotated.elapsed() < Duration::from_secs(5),
        "{:?}",
        rotated.elapsed()
    );
    assert_eq!((resp.status, resp.text().as_str()), (200, "two"));
    assert_ne!(etag_of(&resp), etag);
}

#[test]
fn a_flush_that_changes_nothing_wakes_no_waiter_and_the_deadline_answers_304() {
    let dir = TestDir::new();
    dir.secret("db", b"same");
    let agent = Agent::start(&dir, &file_config(""));
    let etag = etag_of(&agent.secret("files/db"));
    let fetches = || agent.metric("credagent_source_fetches_total{source=\"files\"}");

    let waiter = wait_for_change(&agent.socket, "files/db", &etag, 3);
    std::thread::sleep(Duration::from_millis(500));
    let flushed = agent.request("POST", "/v1/cache/flush", &[], b"");
    assert_eq!(flushed.status, 200);
    let (resp, took) = waiter.join().unwrap();
    assert_eq!(resp.status, 304, "{}", resp.text());
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(6),
        "{took:?}"
    );
    // The flush made the waiter re-fetch at once (one fetch), without answering it.
    assert_eq!(fetches(), 2.0);

    // Now the bytes change and a flush tells: the waiter answers within a second or two.
    let waiter = wait_for_change(&agent.socket, "files/db", &etag, 30);
    std::thread::sleep(Duration::from_millis(1500));
    dir.secret("db", b"rotated");
    let flushed_at = Instant::now();
    agent.request("POST", "/v1/cache/flush", &[], b"");
    let (resp, _) = waiter.join().unwrap();
    assert!(
        flushed_at.elapsed() < Duration::from_secs(3),
        "{:?}",
        flushed_at.elapsed()
    );
    assert_eq!((resp.status, resp.text().as_str()), (200, "rotated"));
    // One audit line per waiting request, with its final status.
    let not_modified = || agent.log_text().matches("\"status\":304").count();
    assert!(
        common::wait_until(Duration::from_secs(5), || not_modified() == 1),
        "{}",
        agent.log_text()
    );
}

#[test]
fn a_waiter_gets_the_new_openbao_version_within_three_seconds() {
    let bao = Bao::start();
    bao.kv_put("app/db", json!({ "password": "one" }));
    let dir = TestDir::new();
    let config = format!(
        r#"[server]
socket = "{{socket}}"
socket_mode = "0666"

[cache]
lock_memory = "best-effort"
refresh_ahead_secs = 0

[sources.vault]
type = "vault"
address = "{address}"
kv_mount = "secret"
ttl_secs = 1
auth = {{ method = "token", token_file = "{{dir}}/token" }}

[[allow]]
peer = {{ uid = {uid} }}
secrets = ["vault/*"]
admin = true
"#,
        address = bao.address(),
        uid = nix::unistd::geteuid().as_raw()
    );
    let token = dir.path().join("token");
    std::fs::write(&token, "root\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let agent = Agent::start(&dir, &config);
    let etag = etag_of(&agent.get("/v1/secrets/vault/app/db?field=password"));
    let waiter = wait_for_change(&agent.socket, "vault/app/db?field=password", &etag, 30);
    std::thread::sleep(Duration::from_millis(300));
    bao.kv_put("app/db", json!({ "password": "two" }));
    let rotated = Instant::now();
    let (resp, _) = waiter.join().unwrap();
    assert!(
        rotated.elapsed() < Duration::from_secs(4),
        "{:?}",
        rotated.elapsed()
    );
    assert_eq!((resp.status, resp.text().as_str()), (200, "two"));
    assert_ne!(etag_of(&resp), etag);
}

#[test]
fn reader_refresh_refetches_once_then_is_throttled() {
    let dir = TestDir::new();
    dir.secret("db", b"one");
    let agent = Agent::start(&dir, &file_config(""));
    assert_eq!(agent.secret("files/db").text(), "one");
    // Rotated behind the cache's back: a plain read still serves the cached value.
    dir.secret("db", b"two");
    assert_eq!(agent.secret("files/db").text(), "one");
    let refreshed = agent.get("/v1/secrets/files/db?refresh=true");
    assert_eq!((refreshed.status, refreshed.text().as_str()), (200, "two"));
    assert_eq!(refreshed.header("x-credagent-refresh"), Some("refreshed"));
    dir.secret("db", b"three");
    let throttled = agent.get("/v1/secrets/files/db?refresh=true");
    assert_eq!((throttled.status, throttled.text().as_str()), (200, "two"));
    assert_eq!(throttled.header("x-credagent-refresh"), Some("throttled"));
    assert_eq!(
        agent.metric("credagent_source_fetches_total{source=\"files\"}"),
        2.0
    );
    // Audit lines are written behind the response: wait for them.
    let refreshes = || agent.log_text().matches("\"action\":\"refresh\"").count();
    assert!(
        common::wait_until(Duration::from_secs(5), || refreshes() == 2),
        "{}",
        agent.log_text()
    );
}

#[test]
fn the_same_value_gets_another_etag_from_another_agent_process() {
    let tags: Vec<String> = (0..2)
        .map(|_| {
            let dir = TestDir::new();
            dir.secret("db", b"same-value");
            let agent = Agent::start(&dir, &file_config(""));
            etag_of(&agent.secret("files/db"))
        })
        .collect();
    assert_ne!(tags[0], tags[1], "the ETag key is random per process");
}
