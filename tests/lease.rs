//! The `vault-lease` source against real servers: OpenBao's database engine minting logins
//! for a real PostgreSQL (checked with `psql`), and its PKI engine issuing certificates
//! (checked with `openssl verify`). Renewal, replacement before `max_ttl`, revocation of the
//! old login, one lease for 50 concurrent callers, revocation at SIGTERM, `render --watch`
//! rewriting once per new credential, an OpenBao outage (served until the lease lapses, then
//! `503`), a uid without a rule (403, no lease), `per_caller` (two uids, two logins, both
//! revoked at SIGTERM), and flushes through the API and the control file (a new login).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::bao::Bao;
use common::postgres::{Postgres, SUPER_PASSWORD};
use common::{Agent, TestDir, request_as, wait_until};
use serde_json::{Value, json};

/// The agent's own Vault policy: issue, renew, revoke; nothing else.
const LEASE_POLICY: &str = r#"
path "database/creds/app" { capabilities = ["read"] }
path "pki/issue/web" { capabilities = ["create", "update"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
"#;

const NOBODY: u32 = 65534;

/// The database engine over `pg`, role `app` with `ttl`/`max_ttl` seconds.
fn setup_database(bao: &Bao, pg: &Postgres, ttl: u64, max_ttl: u64) {
    bao.api(
        "POST",
        "sys/mounts/database",
        Some(json!({ "type": "database" })),
    );
    bao.api(
        "POST",
        "database/config/pg",
        Some(json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": pg.connection_url(),
            "allowed_roles": "app",
            "username": "postgres",
            "password": SUPER_PASSWORD,
            "verify_connection": true,
        })),
    );
    bao.api(
        "POST",
        "database/roles/app",
        Some(json!({
            "db_name": "pg",
            "creation_statements": [
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
            ],
            "default_ttl": ttl,
            "max_ttl": max_ttl,
        })),
    );
}

/// A token with [`LEASE_POLICY`] only, written to `{dir}/token` (mode 0600).
fn agent_token(bao: &Bao, dir: &TestDir) {
    bao.api(
        "PUT",
        "sys/policies/acl/lease-agent",
        Some(json!({ "policy": LEASE_POLICY })),
    );
    let reply = bao.api(
        "POST",
        "auth/token/create",
        Some(json!({ "policies": ["lease-agent"], "ttl": "2h" })),
    );
    let token = reply["auth"]["client_token"].as_str().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, token).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// A Vault source `bao` (token login) and a `vault-lease` source `db` with `profiles`.
fn config(bao: &Bao, source_extra: &str, profiles: &str) -> String {
    format!(
        r#"[server]
socket = "{{socket}}"
socket_mode = "0666"
shutdown_timeout_secs = 10
# The callers are root, an operator: 50 at once need more than the operators' default 16.
max_operator_connections = 64

[cache]
lock_memory = "best-effort"
refresh_ahead_secs = 0
stale_if_error_secs = 300

[sources.bao]
type = "vault"
address = "{address}"
auth = {{ method = "token", token_file = "{{dir}}/token" }}

[sources.db]
type = "vault-lease"
vault = "bao"
fetch_timeout_secs = 10
{source_extra}
{profiles}

[[allow]]
peer = {{ uid = {uid} }}
secrets = ["db/*"]
admin = true
"#,
        address = bao.address(),
        uid = nix::unistd::geteuid().as_raw()
    )
}

const APP_PROFILE: &str = r#"[sources.db.profiles.app]
path = "database/creds/app"
min_remaining_secs = 5
"#;

/// The ids (suffixes) of the leases OpenBao holds below `prefix` (none: empty).
fn leases(bao: &Bao, prefix: &str) -> Vec<String> {
    let (status, value) = bao
        .try_api(
            Some(common::bao::ROOT),
            "LIST",
            &format!("sys/leases/lookup/{prefix}/"),
            None,
        )
        .unwrap();
    if status == 404 {
        return Vec::new();
    }
    assert_eq!(status, 200, "{value}");
    value["data"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

fn lookup(bao: &Bao, lease_id: &str) -> Value {
    bao.api(
        "PUT",
        "sys/leases/lookup",
        Some(json!({ "lease_id": lease_id })),
    )["data"]
        .clone()
}

/// `(username, password, etag)` of `db/app`.
fn credential(agent: &Agent) -> (String, String, String) {
    let resp = agent.get("/v1/secrets/db/app");
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), agent.log_text());
    let value = resp.json();
    (
        value["username"].as_str().unwrap().to_owned(),
        value["password"].as_str().unwrap().to_owned(),
        resp.header("etag").unwrap().to_owned(),
    )
}

fn start(dir: &TestDir, bao: &Bao, source_extra: &str, profiles: &str) -> Agent {
    Agent::start(dir, &config(bao, source_extra, profiles))
}

/// OpenBao with the database engine over a fresh PostgreSQL (role `app`, `ttl`/`max_ttl`
/// seconds) and an agent token in a fresh directory.
fn database_servers(ttl: u64, max_ttl: u64) -> (Bao, Postgres, TestDir) {
    let bao = Bao::start();
    let pg = Postgres::start();
    setup_database(&bao, &pg, ttl, max_ttl);
    let dir = TestDir::new();
    agent_token(&bao, &dir);
    (bao, pg, dir)
}

/// OpenBao with the database engine over a fresh PostgreSQL (role `app`, `ttl`/`max_ttl`
/// seconds), an agent token, and the agent with the `app` profile and `source_extra`.
fn database_world(ttl: u64, max_ttl: u64, source_extra: &str) -> (Bao, Postgres, TestDir, Agent) {
    let (bao, pg, dir) = database_servers(ttl, max_ttl);
    let agent = start(&dir, &bao, source_extra, APP_PROFILE);
    (bao, pg, dir, agent)
}

/// Waits for `changed` (a new credential) and asserts it came less than `deadline` after `t0`.
fn switches_before(agent: &Agent, t0: Instant, deadline: Duration, changed: impl FnMut() -> bool) {
    assert!(
        wait_until(deadline + Duration::from_secs(10), changed),
        "no new credential; log:\n{}",
        agent.log_text()
    );
    let switched = t0.elapsed();
    assert!(switched < deadline, "switched at {switched:?}");
}

/// `credagent render TEMPLATE -o OUT --watch --on-change 'echo run >> RUNS'`, killed on drop.
struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn render_watch(agent: &Agent, dir: &TestDir) -> (Watch, std::path::PathBuf, std::path::PathBuf) {
    let template = dir.path().join("db.conf.tmpl");
    std::fs::write(
        &template,
        "user={{ secret db/app field=username }}\npassword={{ secret db/app field=password }}\n",
    )
    .unwrap();
    let out = dir.path().join("db.conf");
    let runs = dir.path().join("runs");
    let child = Command::new(common::bin())
        .arg("render")
        .arg(&template)
        .arg("-o")
        .arg(&out)
        .arg("--watch")
        .arg("--on-change")
        .arg(format!("echo run >> {}", runs.display()))
        .arg("--socket")
        .arg(&agent.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("watch.log")).unwrap())
        .spawn()
        .unwrap();
    (Watch(child), out, runs)
}

fn count_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn database_login_is_renewed_replaced_before_max_ttl_and_the_old_one_revoked() {
    let (bao, pg, dir, agent) = database_world(20, 60, "revoke_grace_secs = 1");
    let t0 = Instant::now();

    let (user1, pass1, etag1) = credential(&agent);
    assert!(pg.login_works(&user1, &pass1), "the served login works");
    let field = agent.get("/v1/secrets/db/app?field=username");
    assert_eq!(field.text(), user1);
    let ids = leases(&bao, "database/creds/app");
    assert_eq!(ids.len(), 1, "one lease: {ids:?}");
    let lease_id = format!("database/creds/app/{}", ids[0]);
    // Lease ids are never served nor logged.
    assert!(!field.text().contains(&ids[0]));
    let audit = agent.audit_reads("db/app");
    assert!(audit[0]["expires_at"].is_string(), "{}", audit[0]);

    let (watch, out, runs) = render_watch(&agent, &dir);
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.contains(&user1))
    }));
    let runs_at_start = count_lines(&runs);

    // Renewed at about 67 % of 20 s: OpenBao's lookup shows it; same credential, same tag.
    assert!(
        wait_until(Duration::from_secs(25), || {
            !lookup(&bao, &lease_id)["last_renewal"].is_null()
        }),
        "no renewal; log:\n{}",
        agent.log_text()
    );
    let (user, _, etag) = credential(&agent);
    assert_eq!(
        (user.as_str(), etag.as_str()),
        (user1.as_str(), etag1.as_str())
    );

    // Replaced before the 60 s cap, with min_remaining_secs (5) left.
    switches_before(&agent, t0, Duration::from_secs(58), || {
        credential(&agent).0 != user1
    });
    let (user2, pass2, etag2) = credential(&agent);
    assert_ne!(etag2, etag1);
    assert!(pg.login_works(&user2, &pass2), "the new login works");
    // The old one is revoked after revoke_grace_secs (1 s), before its own end at 60 s.
    assert!(
        wait_until(Duration::from_secs(3), || !pg.role_exists(&user1)),
        "the old role is still there; log:\n{}",
        agent.log_text()
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
    assert!(!pg.login_works(&user1, &pass1), "the old login is revoked");
    assert!(agent.log_text().contains("lease revoked"));
    assert!(!agent.log_text().contains(&ids[0]), "a lease id was logged");

    // render --watch rewrote its file exactly once, for the new credential.
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.contains(&user2))
    }));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count_lines(&runs) - runs_at_start, 1, "rewrites");
    assert_eq!(
        agent.metric("credagent_lease_issued_total{source=\"db\",profile=\"app\"}"),
        2.0
    );
    assert!(agent.metric("credagent_lease_renewed_total{source=\"db\",profile=\"app\"}") >= 1.0);
    assert_eq!(
        agent.metric("credagent_lease_revoked_total{source=\"db\",profile=\"app\"}"),
        1.0
    );
    assert!(agent.metric("credagent_lease_seconds_left{source=\"db\",profile=\"app\"}") > 5.0);
    drop(watch);
}

#[test]
fn fifty_concurrent_callers_cause_one_lease() {
    let (bao, pg, _dir, agent) = database_world(300, 600, "");
    let users: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50).map(|_| s.spawn(|| credential(&agent).0)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(users.iter().all(|u| u == &users[0]), "{users:?}");
    assert_eq!(leases(&bao, "database/creds/app").len(), 1);
    assert_eq!(pg.roles_like("v-").len(), 1, "one database role");
    assert_eq!(
        agent.metric("credagent_lease_issued_total{source=\"db\",profile=\"app\"}"),
        1.0
    );
}

#[test]
fn sigterm_revokes_the_lease_and_the_database_role_is_gone() {
    let (bao, pg, _dir, mut agent) = database_world(300, 600, "");
    let (user, pass, _) = credential(&agent);
    assert!(pg.login_works(&user, &pass));
    let status = agent.stop();
    assert!(status.success(), "{status}");
    assert!(!pg.role_exists(&user), "the role outlived the agent");
    assert!(!pg.login_works(&user, &pass));
    assert!(leases(&bao, "database/creds/app").is_empty());
    assert!(agent.log_text().contains("lease revoked"));
}

/// `flush(pattern)` of another profile leaves the login alone; of `db/app` it gives a new
/// login at the next read, and the old one works through the grace, then is revoked.
fn flushed_profile_gets_a_new_login(bao: &Bao, pg: &Postgres, agent: &Agent, flush: impl Fn(&str)) {
    let (user1, pass1, _) = credential(agent);
    flush("db/other");
    assert_eq!(credential(agent).0, user1);
    flush("db/app");
    let (user2, pass2, _) = credential(agent);
    assert_ne!(user2, user1, "a flush re-issues");
    assert!(pg.login_works(&user2, &pass2));
    // Still working within the grace, revoked after it.
    assert!(pg.login_works(&user1, &pass1), "revoked before the grace");
    assert!(
        wait_until(Duration::from_secs(6), || !pg.role_exists(&user1)),
        "the old role outlived its grace; log:\n{}",
        agent.log_text()
    );
    assert_eq!(leases(bao, "database/creds/app").len(), 1);
    assert_eq!(
        credential(agent).0,
        user2,
        "the read after the flush keeps the new one"
    );
}

#[test]
fn a_flush_reissues_the_login_and_revokes_the_old_one_after_the_grace() {
    let (bao, pg, _dir, agent) = database_world(300, 600, "revoke_grace_secs = 2");
    flushed_profile_gets_a_new_login(&bao, &pg, &agent, |pattern| {
        let body = json!({ "pattern": pattern }).to_string();
        let resp = agent.request(
            "POST",
            "/v1/cache/flush",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
    });
}

#[test]
fn a_reload_revokes_the_leases_of_the_replaced_source() {
    let (_bao, pg, _dir, agent) = database_world(300, 600, "revoke_grace_secs = 1");
    let (user1, pass1, _) = credential(&agent);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || agent
        .log_text()
        .contains("configuration reloaded")));
    assert!(
        wait_until(Duration::from_secs(5), || !pg.role_exists(&user1)),
        "the replaced source's login outlived the reload; log:\n{}",
        agent.log_text()
    );
    assert!(!pg.login_works(&user1, &pass1));
    let (user2, pass2, _) = credential(&agent);
    assert_ne!(user2, user1);
    assert!(pg.login_works(&user2, &pass2));
}

#[test]
fn without_revoke_on_shutdown_the_lease_outlives_the_agent() {
    let (bao, pg, _dir, mut agent) = database_world(300, 600, "revoke_on_shutdown = false");
    let (user, pass, _) = credential(&agent);
    assert!(agent.stop().success());
    assert!(pg.login_works(&user, &pass));
    assert_eq!(leases(&bao, "database/creds/app").len(), 1);
}

#[test]
fn a_uid_without_a_rule_is_refused_and_causes_no_lease() {
    let (bao, pg, _dir, agent) = database_world(300, 600, "");
    for path in [
        "/v1/secrets/db/app",
        "/v1/secrets/db/app?field=password",
        "/v1/secrets/db/app?wait=1",
    ] {
        let resp = request_as(NOBODY, &agent.socket, "GET", path);
        assert_eq!(resp.status, 403, "{path}: {}", resp.text());
        assert!(!resp.text().contains("password\":"));
    }
    assert!(
        leases(&bao, "database/creds/app").is_empty(),
        "the attacker caused a lease"
    );
    assert!(pg.roles_like("v-").is_empty());
    let denied = agent.audit_reads("db/app");
    assert!(
        denied
            .iter()
            .all(|l| l["decision"] == "deny" && l["uid"] == NOBODY)
    );
    // The honest caller gets one.
    let (user, pass, _) = credential(&agent);
    assert!(pg.login_works(&user, &pass));
    assert_eq!(leases(&bao, "database/creds/app").len(), 1);
}

#[test]
fn openbao_down_at_a_renewal_serves_the_login_until_it_lapses_then_503() {
    let (mut bao, _pg, _dir, agent) = database_world(20, 60, "");
    let t0 = Instant::now();
    let (user, pass, _) = credential(&agent);
    bao.stop();
    // Until shortly before the lease's end (20 s): the same login, every time.
    while t0.elapsed() < Duration::from_secs(18) {
        let (u, p, _) = credential(&agent);
        assert_eq!((u.as_str(), p.as_str()), (user.as_str(), pass.as_str()));
        std::thread::sleep(Duration::from_millis(500));
    }
    // After it: never the lapsed login, a 503.
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..3 {
        let resp = agent.get("/v1/secrets/db/app");
        assert_eq!(resp.status, 503, "{}", resp.text());
        assert_eq!(resp.error_code(), "lease_unavailable");
        assert!(!resp.text().contains(&pass));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(agent.log_text().contains("lease renewal failed"));
}

#[test]
fn pki_certificate_is_reissued_with_min_remaining_left_and_verifies() {
    let bao = Bao::start();
    bao.api("POST", "sys/mounts/pki", Some(json!({ "type": "pki" })));
    bao.api(
        "POST",
        "sys/mounts/pki/tune",
        Some(json!({ "max_lease_ttl": "87600h" })),
    );
    let root = bao.api(
        "POST",
        "pki/root/generate/internal",
        Some(json!({ "common_name": "credagent test CA", "ttl": "87600h" })),
    );
    let ca = root["data"]["certificate"].as_str().unwrap().to_owned();
    bao.api(
        "POST",
        "pki/roles/web",
        Some(json!({
            "allowed_domains": "web.internal",
            "allow_bare_domains": true,
            "max_ttl": "1h",
        })),
    );
    let dir = TestDir::new();
    agent_token(&bao, &dir);
    let profile = r#"[sources.db.profiles.web]
path = "pki/issue/web"
method = "POST"
params = { common_name = "web.internal", ttl = "30s" }
renew_at_percent = 30
min_remaining_secs = 20
"#;
    let agent = start(&dir, &bao, "", profile);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let cert = |agent: &Agent| {
        let resp = agent.get("/v1/secrets/db/web?field=certificate");
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.text()
    };
    let verify = |pem: &str| {
        let path = dir.path().join("leaf.pem");
        std::fs::write(&path, pem).unwrap();
        let out = Command::new("openssl")
            .args(["verify", "-verify_hostname", "web.internal", "-CAfile"])
            .arg(&ca_file)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let t0 = Instant::now();
    let first = cert(&agent);
    verify(&first);
    let key = agent.get("/v1/secrets/db/web?field=private_key");
    assert!(key.text().contains("PRIVATE KEY"));
    // 30 s certificate, replaced with 20 s left: at about 10 s.
    switches_before(&agent, t0, Duration::from_secs(13), || {
        cert(&agent) != first
    });
    let second = cert(&agent);
    verify(&second);
    assert_eq!(
        agent.metric("credagent_lease_issued_total{source=\"db\",profile=\"web\"}"),
        2.0
    );
}

/// The `app` profile with `per_caller = true`, readable by root and by uid 65534.
const PER_CALLER_PROFILE: &str = r#"[sources.db.profiles.app]
path = "database/creds/app"
min_remaining_secs = 5
per_caller = true

[[allow]]
peer = { uid = 65534 }
secrets = ["db/app"]
"#;

/// `(username, password)` of `db/app` as read by uid `uid`.
fn credential_as(agent: &Agent, uid: u32) -> (String, String) {
    let resp = request_as(uid, &agent.socket, "GET", "/v1/secrets/db/app");
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), agent.log_text());
    let value = resp.json();
    (
        value["username"].as_str().unwrap().to_owned(),
        value["password"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn a_second_uid_reading_a_per_caller_profile_gets_its_own_login_never_the_first_callers() {
    let (bao, pg, dir) = database_servers(300, 600);
    let mut agent = start(&dir, &bao, "", PER_CALLER_PROFILE);
    // Concurrent first reads by both uids: one lease each (single flight per caller).
    let (roots, nobodies): (Vec<String>, Vec<String>) = std::thread::scope(|s| {
        let root: Vec<_> = (0..10).map(|_| s.spawn(|| credential(&agent).0)).collect();
        let nobody: Vec<_> = (0..10)
            .map(|_| s.spawn(|| credential_as(&agent, NOBODY).0))
            .collect();
        (
            root.into_iter().map(|h| h.join().unwrap()).collect(),
            nobody.into_iter().map(|h| h.join().unwrap()).collect(),
        )
    });
    assert!(roots.iter().all(|u| u == &roots[0]), "{roots:?}");
    assert!(nobodies.iter().all(|u| u == &nobodies[0]), "{nobodies:?}");
    let (root_user, root_pass, _) = credential(&agent);
    let (nobody_user, nobody_pass) = credential_as(&agent, NOBODY);
    assert_eq!(root_user, roots[0], "a re-read takes the caller's lease");
    assert_eq!(
        nobody_user, nobodies[0],
        "a re-read takes the caller's lease"
    );
    assert_ne!(nobody_user, root_user, "uid 65534 was served root's login");
    assert_ne!(nobody_pass, root_pass);
    assert!(pg.login_works(&root_user, &root_pass));
    assert!(pg.login_works(&nobody_user, &nobody_pass));
    // Two leases, two database roles, however often each caller read.
    assert_eq!(leases(&bao, "database/creds/app").len(), 2);
    assert_eq!(pg.roles_like("v-").len(), 2, "one database role per caller");
    assert_eq!(
        agent.metric("credagent_lease_issued_total{source=\"db\",profile=\"app\"}"),
        2.0
    );
    // The audit lines name the profile, the caller and the lease's expiry.
    let audit = agent.audit_reads("db/app");
    assert_eq!(audit.len(), 22, "{audit:?}");
    for uid in [0, NOBODY] {
        let own: Vec<_> = audit.iter().filter(|l| l["uid"] == uid).collect();
        assert_eq!(own.len(), 11, "uid {uid}");
        assert!(
            own.iter()
                .all(|l| l["decision"] == "allow" && l["expires_at"].is_string()),
            "{own:?}"
        );
    }
    assert!(!agent.log_text().contains(&root_pass));
    assert!(!agent.log_text().contains(&nobody_pass));
    // SIGTERM revokes both.
    assert!(agent.stop().success());
    assert!(
        !pg.role_exists(&root_user),
        "root's role outlived the agent"
    );
    assert!(
        !pg.role_exists(&nobody_user),
        "65534's role outlived the agent"
    );
    assert!(!pg.login_works(&nobody_user, &nobody_pass));
    assert!(leases(&bao, "database/creds/app").is_empty());
}

#[test]
fn a_control_file_flush_reissues_the_login_like_an_api_flush() {
    let (bao, pg, dir) = database_servers(300, 600);
    let control = dir.path().join("control");
    std::fs::write(&control, "# initial\n").unwrap();
    let profiles = format!(
        "{APP_PROFILE}\n[control]\nfile = \"{}\"\n",
        control.display()
    );
    let agent = start(&dir, &bao, "revoke_grace_secs = 2", &profiles);
    let applied = || agent.log_text().matches("control file applied").count();
    flushed_profile_gets_a_new_login(&bao, &pg, &agent, |pattern| {
        let before = applied();
        std::fs::write(&control, format!("flush {pattern}\n")).unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || applied() > before),
            "{}",
            agent.log_text()
        );
    });
}
