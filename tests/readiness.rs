//! Start without the backend, prefetch and readiness, against the real binary with real moto and
//! OpenBao servers: `startup_check = "retry"` sources answer `503 source_starting` until their
//! backend comes up, `/v1/ready` goes from `503` (counts only) to `200`, `credagent health`
//! exits 0/1 as a probe, and `startup_check = "required"` still exits 75.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::bao::{Bao, ROLE_ID, SECRET_ID};
use common::moto::Moto;
use common::{Agent, TestDir, wait_until};
use serde_json::json;

/// How soon after its backend is up a retrying source serves and its prefetch is cached: the
/// longest wait of a retry loop (`startup::MAX_BACKOFF`, 60 s) before the next check, plus 10 s
/// for the check and the fetch (a prefetch waiting for its source is woken when it comes up).
const RETRY_BOUND: Duration = Duration::from_secs(70);

fn write_private(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// An agent with a moto source `aws` and an OpenBao source `vault` (AppRole), both with
/// `startup_check`, prefetching one secret of each.
fn config(dir: &TestDir, moto: &Moto, bao: &Bao, startup_check: &str) -> String {
    format!(
        r#"[server]
socket = "{{socket}}"
socket_mode = "0666"

[cache]
lock_memory = "best-effort"

{aws}
{vault}
[sources.files]
type = "file"
dir = "{{secrets}}"

[prefetch]
secrets = ["aws/app/db", "vault/app/db"]
jitter_secs = 1

[[allow]]
peer = {{ uid = {uid} }}
secrets = ["*"]
admin = true
"#,
        aws = moto.source_section(
            dir.path(),
            "aws",
            "aws-secretsmanager",
            "reader",
            &format!("fetch_timeout_secs = 5\nstartup_check = \"{startup_check}\""),
        ),
        vault = vault_section(dir, &bao.address(), startup_check),
        uid = nix::unistd::geteuid().as_raw()
    )
}

/// `credagent health [--ready] --socket SOCKET`: exit code and stderr.
fn health(socket: &std::path::Path, ready: bool) -> (Option<i32>, String) {
    let mut command = common::command(common::bin());
    command.arg("health");
    if ready {
        command.arg("--ready");
    }
    let out = command.arg("--socket").arg(socket).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `/v1/ready` as (status, body), asserting the body names no secret and no source.
fn ready(agent: &Agent) -> (u16, serde_json::Value) {
    let resp = agent.get("/v1/ready");
    let text = resp.text();
    for name in ["app/db", "aws", "vault", "files"] {
        assert!(!text.contains(name), "/v1/ready names {name:?}: {text}");
    }
    (resp.status, resp.json())
}

/// Audit lines (JSON lines of the agent's log) for `secret` with `status`.
fn audited(agent: &Agent, secret: &str, status: u64) -> bool {
    agent
        .log_text()
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|v| v["secret"] == secret && v["status"] == status && v["action"] == "read")
}

#[test]
fn ready_503_then_200_within_70_s_of_moto_and_openbao_starting_after_the_agent() {
    let dir = TestDir::new();
    // Both servers are started once for their ports and keys, then stopped: the agent starts
    // with neither backend listening.
    let mut moto = Moto::start(&dir);
    moto.stop();
    let mut bao = Bao::start();
    bao.stop();
    let text = config(&dir, &moto, &bao, "retry");
    // The AWS key arrives after the agent starts too (empty files, filled later): until then
    // the agent cannot sign a request, so none reaches moto while it is re-created with the
    // same seeded keys (a request during its set-up would change them).
    let (id_file, secret_file) = moto.key_files(dir.path(), "reader");
    write_private(&id_file, "");
    write_private(&secret_file, "");
    let agent = Agent::start(&dir, &text);

    // Up, not ready: both sources starting, both prefetches pending; counts only.
    let (status, body) = ready(&agent);
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body,
        json!({ "ready": false, "prefetch_pending": 2, "sources_starting": 2 })
    );
    assert_eq!(health(&agent.socket, false), (Some(0), String::new()));
    let (code, stderr) = health(&agent.socket, true);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("2 prefetched secret(s) not cached yet, 2 source(s) starting"),
        "{stderr}"
    );

    // A source still starting answers 503 source_starting, audited.
    for name in ["aws/app/db", "vault/app/db"] {
        let resp = agent.secret(name);
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (503, "source_starting"),
            "{name}"
        );
        assert!(
            wait_until(Duration::from_secs(10), || audited(&agent, name, 503)),
            "no audit line for the 503 of {name}"
        );
    }
    // The file source has no start-up check and serves meanwhile.
    std::fs::write(dir.secrets().join("plain"), "p").unwrap();
    assert_eq!(agent.secret("files/plain").status, 200);

    bao.restart();
    bao.setup(3600, 7200, None);
    bao.kv_put("app/db", json!({ "password": "from-vault" }));
    moto.restart();
    moto.key_files(dir.path(), "reader");
    let up = Instant::now();
    let became_ready = wait_until(RETRY_BOUND, || ready(&agent).0 == 200);
    assert!(
        became_ready,
        "not ready {:?} after the backends came up: {:?}; log:\n{}",
        up.elapsed(),
        ready(&agent),
        agent.log_text()
    );
    assert_eq!(ready(&agent).1, json!({ "ready": true }));
    assert_eq!(health(&agent.socket, true), (Some(0), String::new()));

    // Both sources serve now; the prefetched values are cache hits.
    let aws = agent.secret("aws/app/db");
    assert_eq!(aws.status, 200, "{}", aws.text());
    assert_eq!(aws.json()["password"], "pw-1");
    let vault = agent.get("/v1/secrets/vault/app/db?field=password");
    assert_eq!((vault.status, vault.text().as_str()), (200, "from-vault"));
    let log = agent.log_text();
    for line in [
        "source aws starting:",
        "source vault starting:",
        "source aws up",
        "source vault up",
    ] {
        assert!(log.contains(line), "log lacks {line:?}:\n{log}");
    }
    assert_eq!(log.matches("source aws up").count(), 1, "{log}");
    let hits = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["secret"] == "aws/app/db" && v["status"] == 200)
        .all(|v| v["cache"] == "hit");
    assert!(
        hits,
        "the prefetched value was not served from the cache:\n{log}"
    );

    // Ready is a latch: the backend going away does not make the agent unready.
    bao.stop();
    assert_eq!(ready(&agent).0, 200);
}

#[test]
fn a_required_source_whose_backend_is_unreachable_still_exits_75() {
    let dir = TestDir::new();
    let mut moto = Moto::start(&dir);
    moto.stop();
    let bao = Bao::start();
    let (code, log) = common::start_fails(&dir, &config(&dir, &moto, &bao, "required"));
    assert_eq!(code, Some(75), "{log}");
    assert!(log.contains("source \"aws\""), "{log}");
}

#[test]
fn health_exits_0_on_a_live_agent_and_1_with_a_reason_when_the_socket_is_missing() {
    let dir = TestDir::new();
    let agent = Agent::start(&dir, &common::file_config(""));
    assert_eq!(health(&agent.socket, false), (Some(0), String::new()));
    // No prefetch, no retrying source: ready at once.
    assert_eq!(health(&agent.socket, true), (Some(0), String::new()));
    assert_eq!(agent.get("/v1/ready").json(), json!({ "ready": true }));
    for ready in [false, true] {
        let (code, stderr) = health(&dir.path().join("no-such.sock"), ready);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("cannot reach the agent"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

/// `[sources.vault]`: OpenBao at `address`, AppRole (its files written into `dir`).
fn vault_section(dir: &TestDir, address: &str, startup_check: &str) -> String {
    write_private(&dir.path().join("role_id"), ROLE_ID);
    write_private(&dir.path().join("secret_id"), SECRET_ID);
    format!(
        r#"[sources.vault]
type = "vault"
address = "{address}"
auth = {{ method = "approle", role_id_file = "{{dir}}/role_id", secret_id_file = "{{dir}}/secret_id" }}
fetch_timeout_secs = 5
startup_check = "{startup_check}"
"#
    )
}

/// An agent with one OpenBao source `vault` at `address`, `startup_check = "retry"`.
fn vault_only(dir: &TestDir, address: &str) -> String {
    format!(
        r#"[server]
socket = "{{socket}}"

[cache]
lock_memory = "best-effort"

{vault}
[[allow]]
peer = {{ uid = {uid} }}
secrets = ["*"]
"#,
        vault = vault_section(dir, address, "retry"),
        uid = nix::unistd::geteuid().as_raw()
    )
}

#[test]
fn a_replaced_configs_retry_loop_never_installs_its_source_and_a_reload_to_a_live_openbao_serves_at_once()
 {
    let dir = TestDir::new();
    // The first config's backend: started for its port, stopped before the agent starts.
    let mut first = Bao::start();
    first.stop();
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let agent = Agent::start(&dir, &vault_only(&dir, &first.address()));
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    };
    let reloads = || agent.log_text().matches("configuration reloaded").count();
    let read = || {
        let resp = agent.get("/v1/secrets/vault/app/db?field=password");
        (resp.status, resp.text())
    };
    assert_eq!(agent.secret("vault/app/db").error_code(), "source_starting");
    assert_eq!(ready(&agent).0, 503);
    // Let the first config's retry loop back off once or twice.
    std::thread::sleep(Duration::from_secs(2));

    // The source now points at an address nobody listens on: still starting.
    dir.write_config(&vault_only(&dir, &dead));
    hup();
    assert!(wait_until(Duration::from_secs(10), || reloads() == 1));
    assert_eq!(agent.secret("vault/app/db").error_code(), "source_starting");

    // The first config's backend comes up. Its retry loop belongs to a replaced config: it must
    // end at its next wake-up, not install a source the running config does not name (which
    // would serve the first server's value under the second config).
    first.restart();
    first.setup(3600, 7200, None);
    first.kv_put("app/db", json!({ "password": "from-the-first-config" }));
    std::thread::sleep(Duration::from_secs(10));
    let resp = agent.secret("vault/app/db");
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (503, "source_starting"),
        "{}",
        agent.log_text()
    );
    assert_eq!(agent.log_text().matches("source vault up").count(), 0);
    assert_eq!(ready(&agent).0, 503);

    // Moved back to the live server: the reload's own check passes, so the source serves as
    // soon as the reload is done, without waiting for a retry.
    dir.write_config(&vault_only(&dir, &first.address()));
    hup();
    assert!(wait_until(Duration::from_secs(10), || reloads() == 2));
    assert_eq!(read(), (200, "from-the-first-config".to_owned()));
    assert_eq!(ready(&agent).0, 200);
}
