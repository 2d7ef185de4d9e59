//! The Vault source against a real OpenBao dev server: KV v2 reads (latest, version, field),
//! AppRole, JWT and token login, a policy denial, token renewal and re-login, transit decrypt and
//! data-key mode, and a Vault outage served from the cache. Credentials never reach the log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::bao::{self, Bao, ROLE_ID, SECRET_ID};
use common::{Agent, CANARY, TestDir, wait_until};
use serde_json::json;

const APPROLE: &str =
    r#"{ method = "approle", role_id_file = "{dir}/role_id", secret_id_file = "{dir}/secret_id" }"#;

/// A config with the files source and a Vault source `vault` (transit on) logging in with `auth`.
fn config(bao: &Bao, auth: &str, extra: &str) -> String {
    format!(
        r#"[server]
socket = "{{socket}}"
socket_mode = "0666"

[cache]
lock_memory = "best-effort"
refresh_ahead_secs = 0
stale_if_error_secs = 300

[sources.files]
type = "file"
dir = "{{secrets}}"

[sources.vault]
type = "vault"
address = "{address}"
kv_mount = "secret"
transit_mount = "transit"
ttl_secs = 1
fetch_timeout_secs = 5
auth = {auth}
{extra}

[[allow]]
peer = {{ uid = {uid} }}
secrets = ["files/*", "vault/*", "vault-transit/*"]
admin = true
"#,
        address = bao.address(),
        uid = nix::unistd::geteuid().as_raw()
    )
}

fn approle_files(dir: &TestDir) {
    write_credential(&dir.path().join("role_id"), format!("{ROLE_ID}\n"));
    write_credential(&dir.path().join("secret_id"), format!("{SECRET_ID}\n"));
}

/// A credential file as the agent requires it: private to its user (mode 0600).
fn write_credential(path: &std::path::Path, text: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn kv_latest_version_field_and_denied_path_with_approle() {
    let bao = Bao::start();
    bao.setup(3600, 7200, None);
    assert_eq!(
        bao.kv_put("app/db", json!({ "user": "app", "password": "one" })),
        1
    );
    assert_eq!(
        bao.kv_put(
            "app/db",
            json!({ "user": "app", "password": "two", "note": CANARY })
        ),
        2
    );
    bao.kv_put("other/db", json!({ "password": "not-for-the-agent" }));
    let dir = TestDir::new();
    approle_files(&dir);
    let agent = Agent::start(&dir, &config(&bao, APPROLE, ""));

    let latest = agent.secret("vault/app/db");
    assert_eq!(latest.status, 200, "{}", latest.text());
    let value: serde_json::Value = serde_json::from_slice(&latest.body).unwrap();
    assert_eq!(
        value,
        json!({ "user": "app", "password": "two", "note": CANARY })
    );

    let v1 = agent.get("/v1/secrets/vault/app/db?version=1");
    assert_eq!(v1.status, 200);
    let v1: serde_json::Value = serde_json::from_slice(&v1.body).unwrap();
    assert_eq!(v1["password"], "one");

    let field = agent.get("/v1/secrets/vault/app/db?field=password");
    assert_eq!((field.status, field.text().as_str()), (200, "two"));
    let old_field = agent.get("/v1/secrets/vault/app/db?version=1&field=password");
    assert_eq!(old_field.text(), "one");

    let json = agent.request(
        "GET",
        "/v1/secrets/vault/app/db",
        &[("Accept", "application/json")],
        b"",
    );
    assert_eq!(json.json()["version"], "2");

    let missing = agent.secret("vault/app/nope");
    assert_eq!(
        (missing.status, missing.error_code().as_str()),
        (404, "not_found")
    );
    let no_version = agent.get("/v1/secrets/vault/app/db?version=9");
    assert_eq!(no_version.status, 404);
    let no_field = agent.get("/v1/secrets/vault/app/db?field=nope");
    assert_eq!(
        (no_field.status, no_field.error_code().as_str()),
        (404, "field_not_found")
    );
    let aws_selector = agent.get("/v1/secrets/vault/app/db?version_stage=AWSCURRENT");
    assert_eq!(
        (aws_selector.status, aws_selector.error_code().as_str()),
        (400, "bad_selector")
    );

    // The policy grants secret/data/app/* only.
    let denied = agent.secret("vault/other/db");
    assert_eq!(
        (denied.status, denied.error_code().as_str()),
        (502, "upstream_denied"),
        "{}",
        denied.text()
    );
    assert!(!denied.text().contains("not-for-the-agent"));

    let log = agent.log_text();
    assert!(log.contains("logged in to Vault"), "{log}");
    assert!(!log.contains(SECRET_ID), "secret_id leaked into the log");
}

#[test]
fn jwt_login_reads_kv() {
    let dir = TestDir::new();
    let (pubkey, jwt) = bao::jwt_pair(dir.path());
    let bao = Bao::start();
    bao.setup(3600, 7200, Some(&pubkey));
    bao.kv_put("app/jwt", json!({ "password": "via-jwt" }));
    write_credential(&dir.path().join("token"), &jwt);
    let auth = r#"{ method = "jwt", role = "agent", jwt_file = "{dir}/token", mount = "jwt" }"#;
    let agent = Agent::start(&dir, &config(&bao, auth, ""));
    let resp = agent.get("/v1/secrets/vault/app/jwt?field=password");
    assert_eq!((resp.status, resp.text().as_str()), (200, "via-jwt"));
    let denied = agent.secret("vault/other/x");
    assert_eq!(denied.error_code(), "upstream_denied");
    assert!(!agent.log_text().contains(&jwt), "JWT leaked into the log");
}

#[test]
fn vault_not_listening_at_start_exits_75_so_a_restart_may_succeed() {
    let bao = Bao::start();
    let dir = TestDir::new();
    approle_files(&dir);
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let (code, stderr) = common::start_fails(
        &dir,
        &config(&bao, APPROLE, "").replace(&bao.address(), &closed),
    );
    assert_eq!(code, Some(75), "{stderr}");
    assert!(stderr.contains("source \"vault\""), "{stderr}");
}

#[test]
fn wrong_credentials_fail_start_naming_the_source() {
    let bao = Bao::start();
    bao.setup(3600, 7200, None);
    let dir = TestDir::new();
    write_credential(&dir.path().join("role_id"), ROLE_ID);
    write_credential(&dir.path().join("secret_id"), "wrong-secret-id");
    let (code, stderr) = common::start_fails(&dir, &config(&bao, APPROLE, ""));
    // Credentials refused for good: 77 (no restart loop), not 75.
    assert_eq!(code, Some(77), "{stderr}");
    assert!(stderr.contains("\"vault\""), "{stderr}");
    assert!(!stderr.contains("wrong-secret-id"), "{stderr}");
}

#[test]
fn token_is_renewed_then_replaced_at_max_ttl_while_misses_keep_working() {
    let bao = Bao::start();
    // Renewal at ~2/3 of 3 s; at max_ttl 8 s renewal cannot restore the TTL: log in again.
    bao.setup(3, 8, None);
    for i in 0..20 {
        bao.kv_put(&format!("app/s{i}"), json!({ "n": i }));
    }
    let dir = TestDir::new();
    approle_files(&dir);
    let agent = Agent::start(&dir, &config(&bao, APPROLE, ""));
    // A miss (a secret never read before) needs a valid token: one after each token event.
    let mut next = 0;
    let mut miss = |agent: &Agent| {
        let resp = agent.secret(&format!("vault/app/s{next}"));
        assert_eq!(resp.status, 200, "{}\n{}", resp.text(), agent.log_text());
        next += 1;
    };
    miss(&agent);
    for (event, times) in [
        ("Vault token renewed", 1),
        ("Vault token renewed", 2),
        ("logged in to Vault again", 1),
    ] {
        assert!(
            wait_until(Duration::from_secs(40), || count(&agent.log_text(), event)
                >= times),
            "no {event:?} ({times}); log:\n{}",
            agent.log_text()
        );
        miss(&agent);
    }
}

#[test]
fn logs_in_again_after_its_token_is_revoked() {
    let bao = Bao::start();
    bao.setup(3600, 7200, None);
    bao.kv_put("app/a", json!({ "v": "a" }));
    bao.kv_put("app/b", json!({ "v": "b" }));
    let dir = TestDir::new();
    approle_files(&dir);
    let agent = Agent::start(&dir, &config(&bao, APPROLE, ""));
    assert_eq!(agent.secret("vault/app/a").status, 200);
    assert!(bao.revoke_login_tokens("approle") >= 1);
    // A miss with the revoked token: the agent notices, logs in again and answers.
    let resp = agent.get("/v1/secrets/vault/app/b?field=v");
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "b"),
        "{}",
        agent.log_text()
    );
    let log = agent.log_text();
    assert!(log.contains("no longer valid"), "{log}");
    assert!(log.contains("logged in to Vault again"), "{log}");
    // A real policy denial is still a denial, not a re-login loop.
    assert_eq!(
        agent.secret("vault/other/x").error_code(),
        "upstream_denied"
    );
}

#[test]
fn token_auth_value_never_in_logs() {
    let bao = Bao::start();
    bao.setup(3600, 7200, None);
    bao.kv_put("app/canary", json!({ "value": CANARY }));
    let created = bao.api(
        "POST",
        "auth/token/create",
        Some(json!({ "policies": ["agent"], "ttl": "1h" })),
    );
    let token = created["auth"]["client_token"].as_str().unwrap().to_owned();
    let dir = TestDir::new();
    write_credential(&dir.path().join("vault-token"), &token);
    let auth = r#"{ method = "token", token_file = "{dir}/vault-token" }"#;
    let mut agent = Agent::start(&dir, &config(&bao, auth, ""));
    let resp = agent.get("/v1/secrets/vault/app/canary?field=value");
    assert_eq!((resp.status, resp.text().as_str()), (200, CANARY));
    assert_eq!(
        agent.secret("vault/other/x").error_code(),
        "upstream_denied"
    );
    agent.stop();
    let log = agent.log_text();
    assert!(!log.contains(&token), "Vault token leaked into the log");
    assert!(!log.contains(CANARY));
}

#[test]
fn transit_decrypts_config_and_source_ciphertexts_and_data_key_envelopes() {
    let bao = Bao::start();
    bao.setup(3600, 7200, None);
    let encrypt = |key: &str, text: &str| -> String {
        let b64 = base64(text.as_bytes());
        bao.api(
            "POST",
            &format!("transit/encrypt/{key}"),
            Some(json!({ "plaintext": b64 })),
        )["data"]["ciphertext"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let in_config = encrypt("app-key", "from-config-ciphertext");
    let in_file = encrypt("app-key", CANARY);
    let other_key = encrypt("other-key", "not-allowed");

    let dir = TestDir::new();
    approle_files(&dir);
    dir.secret("cipher/db", in_file.as_bytes());
    // Data-key mode: a data key from transit, the value sealed locally with AES-256-GCM.
    let datakey = bao.api("POST", "transit/datakey/plaintext/app-key", Some(json!({})));
    let (nonce, sealed) = bao::aes_gcm_seal(
        dir.path(),
        datakey["data"]["plaintext"].as_str().unwrap(),
        "sealed-locally",
    );
    let envelope = json!({
        "ciphertext_key": datakey["data"]["ciphertext"],
        "nonce": nonce,
        "ciphertext": sealed,
    });
    dir.secret("cipher/envelope", envelope.to_string().as_bytes());
    let mut tampered = envelope.clone();
    tampered["nonce"] = json!("AAAAAAAAAAAAAAAA");
    dir.secret("cipher/tampered", tampered.to_string().as_bytes());
    dir.secret("plain", b"{\"password\":\"not-a-ciphertext\"}");
    let extra =
        format!("\n[sources.vault.ciphertexts]\ndb = \"{in_config}\"\nforeign = \"{other_key}\"\n");
    let agent = Agent::start(&dir, &config(&bao, APPROLE, &extra));

    let from_config = agent.secret("vault-transit/app-key/db");
    assert_eq!(
        (from_config.status, from_config.text().as_str()),
        (200, "from-config-ciphertext"),
        "{}",
        agent.log_text()
    );
    let from_file = agent.secret("vault-transit/app-key/files/cipher/db");
    assert_eq!((from_file.status, from_file.text().as_str()), (200, CANARY));
    let enveloped = agent.secret("vault-transit/app-key/files/cipher/envelope");
    assert_eq!(
        (enveloped.status, enveloped.text().as_str()),
        (200, "sealed-locally"),
        "{}",
        agent.log_text()
    );

    // Errors: a tampered envelope, a value that is no ciphertext (never echoed), an unknown
    // ciphertext, and a key the policy does not grant.
    let bad = agent.secret("vault-transit/app-key/files/cipher/tampered");
    assert_eq!(
        (bad.status, bad.error_code().as_str()),
        (502, "upstream_bad_reply")
    );
    let plain = agent.secret("vault-transit/app-key/files/plain");
    assert_eq!(plain.error_code(), "upstream_bad_reply");
    assert!(!plain.text().contains("not-a-ciphertext"));
    assert!(!agent.log_text().contains("not-a-ciphertext"));
    assert_eq!(agent.secret("vault-transit/app-key/nope").status, 404);
    assert_eq!(
        agent.secret("vault-transit/app-key/files/missing").status,
        404
    );
    let denied = agent.secret("vault-transit/other-key/foreign");
    assert_eq!(denied.error_code(), "upstream_denied");
    // The ciphertext itself is never served as a value of the transit source.
    assert!(!from_file.text().starts_with("vault:"));
}

#[test]
fn vault_down_serves_cached_values_then_recovers() {
    let mut bao = Bao::start();
    bao.setup(3600, 7200, None);
    bao.kv_put("app/cached", json!({ "v": "cached-1" }));
    bao.kv_put("app/later", json!({ "v": "later" }));
    let dir = TestDir::new();
    approle_files(&dir);
    let agent = Agent::start(&dir, &config(&bao, APPROLE, ""));
    let first = agent.get("/v1/secrets/vault/app/cached?field=v");
    assert_eq!((first.status, first.text().as_str()), (200, "cached-1"));

    // Sealed: Vault answers 503, which is transient. Past its 1 s TTL the cached value is
    // served stale (counted): wait for that, reading the value all along.
    bao.api("PUT", "sys/seal", None);
    let stale = |agent: &Agent| agent.metric("credagent_cache_stale_total ");
    let served_stale = wait_until(Duration::from_secs(20), || {
        let resp = agent.get("/v1/secrets/vault/app/cached?field=v");
        assert_eq!((resp.status, resp.text().as_str()), (200, "cached-1"));
        stale(&agent) >= 1.0
    });
    assert!(served_stale, "log:\n{}", agent.log_text());
    let sealed_miss = agent.secret("vault/app/later");
    assert_eq!(
        (sealed_miss.status, sealed_miss.error_code().as_str()),
        (502, "upstream_unavailable"),
        "{}",
        sealed_miss.text()
    );

    bao.stop();
    // Down (connection refused): still served stale; a value never fetched fails fast.
    let before = stale(&agent);
    let down_stale = agent.get("/v1/secrets/vault/app/cached?field=v");
    assert_eq!(
        (down_stale.status, down_stale.text().as_str()),
        (200, "cached-1")
    );
    assert!(stale(&agent) > before);
    let miss = agent.secret("vault/app/later");
    assert_eq!(
        (miss.status, miss.error_code().as_str()),
        (502, "upstream_unavailable"),
        "{}",
        miss.text()
    );

    // A new (empty) server on the same port, set up again: the old token is unknown there, so
    // the agent logs in again and recovers.
    bao.restart();
    bao.setup(3600, 7200, None);
    bao.kv_put("app/cached", json!({ "v": "cached-2" }));
    bao.kv_put("app/later", json!({ "v": "later" }));
    let recovered = wait_until(Duration::from_secs(20), || {
        agent.get("/v1/secrets/vault/app/later?field=v").status == 200
    });
    assert!(recovered, "log:\n{}", agent.log_text());
    let fresh = wait_until(Duration::from_secs(10), || {
        agent.get("/v1/secrets/vault/app/cached?field=v").text() == "cached-2"
    });
    assert!(fresh, "log:\n{}", agent.log_text());
}

#[test]
fn namespace_header_selects_the_namespace() {
    let bao = Bao::start();
    bao.api("POST", "sys/namespaces/team", Some(json!({})));
    bao.api_in(
        "team",
        "POST",
        "sys/mounts/kv",
        Some(json!({ "type": "kv", "options": { "version": "2" } })),
    );
    bao.api_in(
        "team",
        "POST",
        "kv/data/app/ns",
        Some(json!({ "data": { "where": "in-team" } })),
    );
    let dir = TestDir::new();
    write_credential(&dir.path().join("vault-token"), bao::ROOT);
    let auth = r#"{ method = "token", token_file = "{dir}/vault-token" }"#;
    let text = config(&bao, auth, "namespace = \"team\"\n")
        .replace("kv_mount = \"secret\"", "kv_mount = \"kv\"");
    let agent = Agent::start(&dir, &text);
    let resp = agent.get("/v1/secrets/vault/app/ns?field=where");
    assert_eq!((resp.status, resp.text().as_str()), (200, "in-team"));
}

#[test]
fn https_with_ca_file_and_untrusted_without_it() {
    let dir = TestDir::new();
    let certs = dir.path().join("bao-tls");
    std::fs::create_dir(&certs).unwrap();
    let bao = Bao::start_tls(&certs);
    let put = bao.cli(&["kv", "put", "-mount=secret", "app/tls", "password=over-tls"]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    write_credential(&dir.path().join("vault-token"), bao::ROOT);
    let auth = r#"{ method = "token", token_file = "{dir}/vault-token" }"#;
    let with_ca = format!("ca_file = \"{}\"\n", bao.ca_file().display());

    let agent = Agent::start(&dir, &config(&bao, auth, &with_ca));
    let resp = agent.get("/v1/secrets/vault/app/tls?field=password");
    assert_eq!((resp.status, resp.text().as_str()), (200, "over-tls"));
    drop(agent);

    // Without ca_file the dev CA is not trusted: the agent refuses to start.
    let (code, stderr) = common::start_fails(&dir, &config(&bao, auth, ""));
    assert_eq!(code, Some(75), "{stderr}");
    assert!(
        stderr.contains("\"vault\"") && stderr.contains("certificate"),
        "{stderr}"
    );
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn kv_policy(bao: &Bao, data: bool) {
    let mut policy = String::from("path \"secret/metadata/app/*\" { capabilities = [\"read\"] }\n");
    if data {
        policy.push_str("path \"secret/data/app/*\" { capabilities = [\"read\"] }\n");
    }
    bao.api(
        "PUT",
        "sys/policies/acl/kv-meta",
        Some(json!({ "policy": policy })),
    );
}

#[test]
fn an_expired_kv_value_is_checked_by_its_metadata_and_refetched_only_when_changed() {
    let bao = Bao::start();
    bao.kv_put("app/rotating", json!({ "password": "v1" }));
    kv_policy(&bao, true);
    let created = bao.api(
        "POST",
        "auth/token/create",
        Some(json!({ "policies": ["kv-meta"], "ttl": "1h" })),
    );
    let dir = TestDir::new();
    write_credential(
        &dir.path().join("vault-token"),
        created["auth"]["client_token"].as_str().unwrap(),
    );
    let auth = r#"{ method = "token", token_file = "{dir}/vault-token" }"#;
    let agent = Agent::start(&dir, &config(&bao, auth, ""));
    let read = |agent: &Agent| {
        let resp = agent.get("/v1/secrets/vault/app/rotating?field=password");
        (resp.status, resp.text())
    };
    assert_eq!(read(&agent), (200, "v1".to_owned()));
    // The data may no longer be read, the metadata may: with ttl_secs = 1, each expiry is
    // answered by the metadata alone (a data read would be denied: 502).
    kv_policy(&bao, false);
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        assert_eq!(read(&agent), (200, "v1".to_owned()), "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(250));
    }
    // A new version: the next check sees it and reads the data (denied now, then allowed).
    bao.kv_put("app/rotating", json!({ "password": "v2" }));
    assert!(wait_until(Duration::from_secs(5), || read(&agent).0 == 502));
    kv_policy(&bao, true);
    assert!(wait_until(Duration::from_secs(5), || read(&agent)
        == (200, "v2".to_owned())));
}

/// A deploy that left the directory of the agent's AppRole files to the application's user
/// (uid 65534 here): after the agent started with private, root-owned files, that user renames
/// a file of its own over `secret_id`. The agent reads the file again at its next login and
/// refuses it on the descriptor it read (another owner), instead of taking an identity a local
/// user chose; once a private file is back, it logs in again.
#[test]
fn a_user_owning_the_credential_directory_swaps_in_its_own_secret_id_and_the_relogin_refuses_it() {
    use std::os::unix::fs::MetadataExt;
    let bao = Bao::start();
    bao.setup(3600, 7200, None);
    bao.kv_put("app/a", json!({ "v": "a" }));
    bao.kv_put("app/b", json!({ "v": "b" }));
    let dir = TestDir::new();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    write_credential(&creds.join("role_id"), format!("{ROLE_ID}\n"));
    write_credential(&creds.join("secret_id"), format!("{SECRET_ID}\n"));
    nix::unistd::chown(&creds, Some(65534.into()), Some(65534.into())).unwrap();
    let auth = r#"{ method = "approle", role_id_file = "{dir}/creds/role_id", secret_id_file = "{dir}/creds/secret_id" }"#;
    let agent = Agent::start(&dir, &config(&bao, auth, "\n[audit]\nfile = \"-\"\n"));
    assert_eq!(agent.secret("vault/app/a").status, 200);

    // The attacker: a file of its own, private to it, with a secret id that works (the content
    // is not what is checked), renamed over the agent's file.
    let swap = "import os, sys\n\
        d = sys.argv[1]\n\
        fd = os.open(d + '/.new', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)\n\
        os.write(fd, (sys.argv[2] + '\\n').encode())\n\
        os.close(fd)\n\
        os.rename(d + '/.new', d + '/secret_id')\n\
        print('swapped')\n";
    let mut attacker = common::python_as(65534, swap, &[creds.to_str().unwrap(), SECRET_ID]);
    assert_eq!(common::first_line(&mut attacker), "swapped");
    attacker.wait().unwrap();
    assert_eq!(
        std::fs::metadata(creds.join("secret_id")).unwrap().uid(),
        65534
    );

    // The agent's token goes; its next miss logs in again and reads the swapped file.
    assert!(bao.revoke_login_tokens("approle") >= 1);
    let resp = agent.get("/v1/secrets/vault/app/b?field=v");
    assert_ne!(
        resp.status, 200,
        "served with a login from a file uid 65534 owns"
    );
    // The login is refused and retried with backoff (a fixed file is taken up without a
    // restart), so the read waits out its fetch timeout.
    assert_eq!(resp.error_code(), "upstream_unavailable", "{}", resp.text());
    let log = agent.log_text();
    assert!(
        log.contains("Vault login failed")
            && log.contains("creds/secret_id has mode 0600 and owner nobody"),
        "the refusal names the file and its owner: {log}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !agent
            .audit_reads("vault/app/b")
            .is_empty()),
        "the read is audited: {}",
        agent.log_text()
    );
    let audit = agent.audit_reads("vault/app/b");
    let last = audit.last().unwrap();
    assert_eq!(last["status"], resp.status, "{last}");
    assert_eq!(last["decision"], "allow", "{last}");

    // The operator puts a private file back: the honest path works again, at the login's next
    // retry (its backoff has grown meanwhile, so a read may time out before it).
    std::fs::remove_file(creds.join("secret_id")).unwrap();
    write_credential(&creds.join("secret_id"), format!("{SECRET_ID}\n"));
    assert!(
        wait_until(Duration::from_secs(40), || {
            let resp = agent.get("/v1/secrets/vault/app/b?field=v");
            (resp.status, resp.text().as_str()) == (200, "b")
        }),
        "{}",
        agent.log_text()
    );
}
