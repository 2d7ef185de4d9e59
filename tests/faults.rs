//! Fault suite: the backends and the agent itself fail under load, and the agent's answers stay
//! within stated bounds. Each test names its bound and asserts it on every request it made:
//! moto killed and restarted, the agent SIGKILLed and restarted over its stale socket file, the
//! audit file's disk full (a small tmpfs, so these tests run as root, as the suite does), and
//! OpenBao with persistent storage restarted and sealed, its tokens revoked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::bao::{Bao, ROLE_ID, SECRET_ID};
use common::moto::{Moto, key_source};
use common::{
    Agent, CANARY, TestDir, config_allowing_all as config, file_config, try_request, wait_until,
};
use serde_json::json;

/// One request a load thread made.
#[derive(Debug, Clone)]
struct Sample {
    /// When it was sent.
    at: Instant,
    name: String,
    /// `None`: no HTTP answer (connection refused or reset).
    status: Option<u16>,
    body: Vec<u8>,
    latency: Duration,
}

/// Threads that request `names` round-robin on fresh connections until stopped; while paused
/// they send nothing.
struct Load {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn spawn(socket: &Path, threads: usize, names: &[&str]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|t| {
                let stop = stop.clone();
                let paused = paused.clone();
                let socket = socket.to_path_buf();
                let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
                std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        if paused.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                        let name = &names[i % names.len()];
                        i += 1;
                        let sent = Instant::now();
                        let reply =
                            try_request(&socket, "GET", &format!("/v1/secrets/{name}"), &[], b"");
                        let (status, body) = match reply {
                            Ok(r) => (Some(r.status), r.body),
                            Err(_) => {
                                // The agent is down: do not spin on ECONNREFUSED.
                                std::thread::sleep(Duration::from_millis(5));
                                (None, Vec::new())
                            }
                        };
                        samples.push(Sample {
                            at: sent,
                            name: name.clone(),
                            status,
                            body,
                            latency: sent.elapsed(),
                        });
                    }
                    samples
                })
            })
            .collect();
        Load {
            stop,
            paused,
            threads,
        }
    }

    fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

/// Secrets the agent caches before moto dies, with their values.
const CACHED: &[(&str, &[u8])] = &[
    ("aws/stale", b"stale-v1"),
    ("aws/canary", CANARY.as_bytes()),
];
/// Never fetched before moto dies.
const UNCACHED: &str = "aws/rotating";
/// `fetch_timeout_secs` of the test source; an uncached request while moto is down must answer
/// within it plus [`SLACK`].
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_secs(1);
/// `stale_if_error_secs`: longer than moto's restart takes, so cached values never fail.
const STALE_IF_ERROR_SECS: u64 = 60;

#[test]
fn moto_killed_under_load_cached_200_within_stale_if_error_uncached_fail_within_3s_then_recovers() {
    let dir = TestDir::new();
    let mut moto = Moto::start(&dir);
    let source = key_source(
        dir.path(),
        &moto,
        "aws",
        "reader",
        &format!(
            "ttl_secs = 1\nfetch_timeout_secs = {}",
            FETCH_TIMEOUT.as_secs()
        ),
    );
    let cache = format!("refresh_ahead_secs = 0\nstale_if_error_secs = {STALE_IF_ERROR_SECS}");
    let agent = Agent::start(&dir, &config(&cache, &source));
    for (name, value) in CACHED {
        let reply = agent.secret(name);
        assert_eq!((reply.status, reply.body.as_slice()), (200, *value));
    }

    let cached: Vec<&str> = CACHED.iter().map(|(n, _)| *n).collect();
    let cached_load = Load::spawn(&agent.socket, 3, &cached);
    std::thread::sleep(Duration::from_millis(300));
    moto.stop();
    let killed_at = Instant::now();
    // Never asked for before the kill, so never cached.
    let uncached_load = Load::spawn(&agent.socket, 2, &[UNCACHED]);
    // Past the 1 s TTL: every cached entry is now expired and can only be served stale.
    std::thread::sleep(Duration::from_secs(3));
    let restart_at = Instant::now();
    // No traffic while moto starts and is set up again: requests before its set-up would use up
    // its seeded randomness and it would hand out other keys. Every request in flight has
    // answered within the latency bound before the restart begins.
    for load in [&cached_load, &uncached_load] {
        load.pause(true);
    }
    std::thread::sleep(FETCH_TIMEOUT + SLACK + Duration::from_millis(500));
    moto.restart();
    for load in [&cached_load, &uncached_load] {
        load.pause(false);
    }
    let recovered = wait_until(Duration::from_secs(20), || {
        agent.secret(UNCACHED).status == 200
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut samples = cached_load.finish();
    samples.extend(uncached_load.finish());
    assert!(recovered, "no recovery after moto came back");
    assert!(
        killed_at.elapsed() < Duration::from_secs(STALE_IF_ERROR_SECS),
        "the outage outlasted the stale window; the test proves nothing"
    );

    let mut stale_served = 0;
    let mut failed_fast = 0;
    for s in &samples {
        if let Some((_, value)) = CACHED.iter().find(|(n, _)| *n == s.name) {
            // Within stale_if_error_secs of the outage, a cached secret always answers, right.
            assert_eq!(
                (s.status, s.body.as_slice()),
                (Some(200), *value),
                "cached {} {:?} after moto was killed",
                s.name,
                s.at.saturating_duration_since(killed_at)
            );
            if s.at > killed_at + Duration::from_millis(1100) && s.at < restart_at {
                stale_served += 1;
            }
        } else if s.at > killed_at && s.at < restart_at {
            // Uncached while moto is down: a fast 502/504, never a hang, never a wrong 200.
            assert!(
                matches!(s.status, Some(502 | 504)),
                "uncached {} {:?} after moto was killed: {:?} {}",
                s.name,
                s.at.saturating_duration_since(killed_at),
                s.status,
                String::from_utf8_lossy(&s.body)
            );
            assert!(
                s.latency <= FETCH_TIMEOUT + SLACK,
                "uncached request took {:?}",
                s.latency
            );
            failed_fast += 1;
        } else if s.status == Some(200) {
            assert_eq!(s.body, b"rotating-v1");
        }
    }
    assert!(stale_served > 10, "only {stale_served} stale answers");
    assert!(failed_fast > 0, "no uncached request while moto was down");
    assert!(agent.metric("credagent_cache_stale_total") >= 1.0);
    // Recovered without a restart: the same agent process fetches fresh values again.
    assert_eq!(agent.secret(UNCACHED).body, b"rotating-v1");
}

#[test]
fn agent_sigkilled_under_load_rebinds_over_its_stale_socket_within_10s_and_never_serves_a_wrong_value()
 {
    let dir = TestDir::new();
    let names: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        dir.secret(name, format!("value-{i}-{}", "x".repeat(i * 7)).as_bytes());
    }
    let config = file_config("");
    let mut agent = Agent::start(&dir, &config);
    let full: Vec<String> = names.iter().map(|n| format!("files/{n}")).collect();
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    let load = Load::spawn(&agent.socket, 4, &refs);

    let mut kills = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        let mut child = agent.child.take().unwrap();
        child.kill().unwrap(); // SIGKILL: no drain, no clean-up of the socket file.
        child.wait().unwrap();
        let killed = Instant::now();
        assert!(
            std::fs::symlink_metadata(&agent.socket).is_ok(),
            "a SIGKILLed agent cannot have removed its socket file"
        );
        drop(agent);
        agent = Agent::start(&dir, &config);
        let rebound = killed.elapsed();
        assert!(
            rebound < Duration::from_secs(10),
            "rebinding took {rebound:?}"
        );
        kills.push(Instant::now());
    }
    std::thread::sleep(Duration::from_millis(400));
    let samples = load.finish();

    let mut served = 0;
    let mut served_after_last_restart = 0;
    for s in &samples {
        match s.status {
            Some(200) => {
                let i: usize = s.name.trim_start_matches("files/k").parse().unwrap();
                let want = format!("value-{i}-{}", "x".repeat(i * 7));
                assert_eq!(
                    String::from_utf8_lossy(&s.body),
                    want,
                    "wrong value for {}",
                    s.name
                );
                served += 1;
                if s.at > *kills.last().unwrap() {
                    served_after_last_restart += 1;
                }
            }
            // The agent is down between a kill and its restart.
            None => {}
            Some(other) => panic!("{}: status {other}", s.name),
        }
    }
    assert!(served > 100, "only {served} answers");
    assert!(
        served_after_last_restart > 10,
        "only {served_after_last_restart} answers after the last restart"
    );
}

/// A small tmpfs mounted for one test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        let status = common::command("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the suite runs as root)"
        );
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = common::command("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` with `path` until a write fails for lack of space.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![b'f'; 512];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = file.sync_all();
}

#[test]
fn audit_disk_full_every_request_still_200_and_every_lost_line_counted() {
    let dir = TestDir::new();
    dir.secret("app", b"app-value");
    let disk = Tmpfs::mount(dir.path().join("audit-fs"), "64k");
    let audit = disk.0.join("audit.log");
    let agent = Agent::start(
        &dir,
        &file_config(&format!("[audit]\nfile = \"{}\"", audit.display())),
    );
    assert_eq!(agent.secret("files/app").status, 200);
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&audit).is_ok_and(|t| t.lines().count() >= 1)
    }));
    fill(&disk.0.join("filler"));

    const REQUESTS: usize = 300;
    let before = agent.metric("credagent_audit_dropped_total");
    let lines_before = std::fs::read_to_string(&audit).unwrap().lines().count();
    let load_started = Instant::now();
    for _ in 0..REQUESTS {
        let reply = agent.secret("files/app");
        assert_eq!(
            (reply.status, reply.body.as_slice()),
            (200, &b"app-value"[..])
        );
    }
    let took = load_started.elapsed();
    // Every read (and the metrics read before it) was written or counted as dropped.
    let counted = wait_until(Duration::from_secs(5), || {
        let written = std::fs::read_to_string(&audit).unwrap().lines().count() - lines_before;
        let dropped = agent.metric("credagent_audit_dropped_total") - before;
        written as f64 + dropped >= (REQUESTS + 1) as f64 && dropped >= 1.0
    });
    let dropped = agent.metric("credagent_audit_dropped_total") - before;
    assert!(
        counted,
        "lost audit lines not counted: {dropped} dropped; log:\n{}",
        agent.log_text()
    );
    assert!(
        took < Duration::from_secs(30),
        "{REQUESTS} reads took {took:?}"
    );

    // Space again: new lines are written whole, and the file holds no torn line.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    assert_eq!(agent.secret("files/app").status, 200);
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&audit).unwrap().lines().count() > lines_before
    }));
    for line in std::fs::read_to_string(&audit).unwrap().lines() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "torn audit line: {line:?}");
    }
}

/// Once OpenBao is unsealed again, a fresh read must succeed within this long.
const VAULT_RECOVERY: Duration = Duration::from_secs(30);

#[test]
fn openbao_restarted_from_disk_and_tokens_revoked_agent_logs_in_again_and_serves_within_30s() {
    let dir = TestDir::new();
    let mut bao = Bao::start_persistent(dir.path());
    bao.setup(3600, 7200, None);
    bao.kv_put("app/cached", json!({ "v": "cached-1" }));
    bao.kv_put("app/later", json!({ "v": "later" }));
    for (file, text) in [("role_id", ROLE_ID), ("secret_id", SECRET_ID)] {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let source = format!(
        r#"[sources.vault]
type = "vault"
address = "{address}"
kv_mount = "secret"
ttl_secs = 1
fetch_timeout_secs = {timeout}
auth = {{ method = "approle", role_id_file = "{{dir}}/role_id", secret_id_file = "{{dir}}/secret_id" }}
"#,
        address = bao.address(),
        timeout = FETCH_TIMEOUT.as_secs()
    );
    let cache = format!("refresh_ahead_secs = 0\nstale_if_error_secs = {STALE_IF_ERROR_SECS}");
    let agent = Agent::start(&dir, &config(&cache, &source));
    const CACHED_V: &str = "vault/app/cached?field=v";
    const LATER_V: &str = "vault/app/later?field=v";
    assert_eq!(agent.secret(CACHED_V).text(), "cached-1");

    let cached_load = Load::spawn(&agent.socket, 2, &[CACHED_V]);
    std::thread::sleep(Duration::from_millis(300));
    bao.stop();
    let killed_at = Instant::now();
    let uncached_load = Load::spawn(&agent.socket, 2, &[LATER_V]);
    std::thread::sleep(Duration::from_secs(3));
    let restart_at = Instant::now();
    // Same storage: sealed until the harness unseals it, then the same data and tokens.
    bao.restart();
    // The agent's token survived the restart; revoking it makes the agent log in again. A secret
    // written now was never cached, so only a fresh read with a new token can serve it.
    assert!(bao.revoke_login_tokens("approle") >= 1);
    bao.kv_put("app/fresh", json!({ "v": "fresh" }));
    let back_at = Instant::now();
    let recovered = wait_until(VAULT_RECOVERY, || {
        agent.secret("vault/app/fresh?field=v").text() == "fresh"
    });
    let recovered_in = back_at.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let mut samples = cached_load.finish();
    samples.extend(uncached_load.finish());
    assert!(
        recovered && recovered_in <= VAULT_RECOVERY,
        "no recovery within {VAULT_RECOVERY:?}; log:\n{}",
        agent.log_text()
    );
    assert!(killed_at.elapsed() < Duration::from_secs(STALE_IF_ERROR_SECS));

    let mut failed_fast = 0;
    for s in &samples {
        let since_kill = s.at.saturating_duration_since(killed_at);
        if s.name == CACHED_V {
            assert_eq!(
                (s.status, String::from_utf8_lossy(&s.body).as_ref()),
                (Some(200), "cached-1"),
                "cached read {since_kill:?} after the kill"
            );
        } else if s.at < restart_at {
            assert!(
                matches!(s.status, Some(502 | 504)) && s.latency <= FETCH_TIMEOUT + SLACK,
                "uncached read {since_kill:?} after the kill: {:?} in {:?}",
                s.status,
                s.latency
            );
            failed_fast += 1;
        } else if s.status == Some(200) {
            assert_eq!(s.body, b"later");
        }
    }
    assert!(failed_fast > 0, "no uncached read while OpenBao was down");
    let log = agent.log_text();
    assert!(log.contains("logged in to Vault again"), "{log}");
}
