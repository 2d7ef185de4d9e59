//! The AWS Secrets Manager source against a real moto server with signature and IAM checking
//! on: every auth method, assume-role (external id, custom STS endpoint and region),
//! cross-account reads, version stages, binary values, fields, rotation checks, credential
//! refresh, and stale-if-error while moto is down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::imds::Imds;
use common::moto::{ACCOUNT_A, ACCOUNT_B, Moto, header, key_source};
use common::{Agent, CANARY, TestDir, config_allowing_all as config, start_fails, wait_until};

const GET: &str = "secretsmanager.GetSecretValue";
const DESCRIBE: &str = "secretsmanager.DescribeSecret";

#[test]
fn access_key_serves_text_binary_fields_arns_and_stages() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let sources = format!(
        "{}{}",
        key_source(dir.path(), &moto, "aws", "reader", ""),
        key_source(dir.path(), &moto, "aws-nobody", "nobody", "")
    );
    let agent = Agent::start(&dir, &config("", &sources));

    let text = agent.secret("aws/app/db");
    assert_eq!(text.status, 200, "{}", text.text());
    assert_eq!(text.json()["password"], "pw-1");
    let field = agent.get("/v1/secrets/aws/app/db?field=password");
    assert_eq!((field.status, field.text().as_str()), (200, "pw-1"));
    assert_eq!(agent.get("/v1/secrets/aws/app/db?field=port").body, b"5432");
    assert_eq!(
        agent.get("/v1/secrets/aws/app/db?field=nope").error_code(),
        "field_not_found"
    );

    let binary = agent.secret("aws/bin/blob");
    assert_eq!(binary.status, 200);
    assert_eq!(binary.body, [0u8, 159, 146, 150, 255, 10]);
    assert_eq!(
        binary.header("content-type"),
        Some("application/octet-stream")
    );

    assert_eq!(agent.secret("aws/canary").body, CANARY.as_bytes());

    // By full ARN, and the JSON format carries the VersionId.
    let arn = moto.setup["app_db_arn"].as_str().unwrap();
    let by_arn = agent.request(
        "GET",
        &format!("/v1/secrets/aws/{arn}"),
        &[("Accept", "application/json")],
        b"",
    );
    assert_eq!(by_arn.status, 200, "{}", by_arn.text());
    let version = by_arn.json()["version"].as_str().unwrap().to_owned();
    assert_eq!(version.len(), 36, "VersionId: {version}");

    // Rotation: AWSPREVIOUS serves the old value, AWSCURRENT (default) the new one.
    let v2 = moto.put_value("staged", "staged-v2");
    assert_eq!(agent.secret("aws/staged").body, b"staged-v2");
    let prev = agent.get("/v1/secrets/aws/staged?version_stage=AWSPREVIOUS");
    assert_eq!(
        (prev.status, prev.body.as_slice()),
        (200, &b"staged-v1"[..])
    );
    let by_id = agent.get(&format!("/v1/secrets/aws/staged?version_id={v2}"));
    assert_eq!(by_id.body, b"staged-v2");

    // Errors map to stable codes; invalid requests are rejected before any call.
    let missing = agent.secret("aws/no/such/secret");
    assert_eq!(
        (missing.status, missing.error_code().as_str()),
        (404, "not_found")
    );
    let no_stage = agent.get("/v1/secrets/aws/app/db?version_stage=NOPE");
    assert_eq!(no_stage.status, 404);
    let denied = agent.secret("aws-nobody/app/db");
    assert_eq!(
        (denied.status, denied.error_code().as_str()),
        (502, "upstream_denied")
    );
    moto.start_recording();
    let bad_name = agent.secret("aws/name:with-colon");
    assert_eq!(bad_name.status, 400, "{}", bad_name.text());
    let bad_arn = agent.secret("aws/arn:aws:secretsmanager:eu-west-1:1:secret:x");
    assert_eq!(bad_arn.status, 400);
    let bad_selector = agent.get("/v1/secrets/aws/app/db?version=2");
    assert_eq!(
        (bad_selector.status, bad_selector.error_code().as_str()),
        (400, "bad_selector")
    );
    let bad_id = agent.get("/v1/secrets/aws/app/db?version_id=short");
    assert_eq!(bad_id.status, 400);
    assert_eq!(moto.recording().len(), 0, "invalid requests reached moto");
    let log = agent.log_text();
    for user in ["reader", "nobody"] {
        assert!(
            !log.contains(&moto.key(user).1),
            "a secret access key reached the log"
        );
    }
}

#[test]
fn rotation_is_picked_up_after_ttl_via_describe_secret() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let sources = format!(
        "{}{}",
        key_source(dir.path(), &moto, "aws", "reader", "ttl_secs = 1"),
        key_source(dir.path(), &moto, "aws-getonly", "getonly", "ttl_secs = 1")
    );
    let agent = Agent::start(&dir, &config("refresh_ahead_secs = 0", &sources));
    moto.start_recording();

    // Without secretsmanager:DescribeSecret the expiry check falls back to GetSecretValue.
    assert_eq!(agent.secret("aws-getonly/stale").body, b"stale-v1");
    assert!(wait_until(Duration::from_secs(15), || {
        let resp = agent.secret("aws-getonly/stale");
        assert_eq!(resp.status, 200, "{}", resp.text());
        moto.calls_for(GET, "stale") >= 2
    }));

    assert_eq!(agent.secret("aws/rotating").body, b"rotating-v1");
    assert_eq!(moto.calls_for(GET, "rotating"), 1);
    // Past the TTL the agent asks DescribeSecret, sees the same version, and keeps the value.
    assert!(wait_until(Duration::from_secs(15), || {
        assert_eq!(agent.secret("aws/rotating").body, b"rotating-v1");
        moto.calls_for(DESCRIBE, "rotating") >= 2
    }));
    assert_eq!(
        moto.calls_for(GET, "rotating"),
        1,
        "unchanged value fetched again"
    );

    moto.put_value("rotating", "rotating-v2");
    assert!(
        wait_until(Duration::from_secs(15), || agent
            .secret("aws/rotating")
            .body
            == b"rotating-v2"),
        "rotation not picked up"
    );
    assert_eq!(
        moto.calls_for(GET, "rotating"),
        2,
        "exactly one GetSecretValue for the new version"
    );
}

#[test]
fn assume_role_with_external_id_custom_sts_endpoint_and_region() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let role = |external_id: &str| {
        format!(
            r#"
[sources.aws.assume_role]
role_arn = "arn:aws:iam::{ACCOUNT_A}:role/ext-reader"
external_id = "{external_id}"
session_name = "credagent-test-{{hostname}}"
duration_secs = 900
sts_endpoint = "http://localhost:{port}"
sts_region = "us-east-2"
"#,
            port = moto.port
        )
    };
    moto.start_recording();
    let sources = key_source(dir.path(), &moto, "aws", "hopper", &role("ext-7d1f"));
    let agent = Agent::start(&dir, &config("", &sources));
    let resp = agent.secret("aws/app/db");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["user"], "app");

    // AssumeRole went to the custom STS endpoint, signed for the STS region, with the external id.
    let assumes = moto.sts_calls("AssumeRole");
    assert!(!assumes.is_empty(), "no AssumeRole call recorded");
    for call in &assumes {
        assert_eq!(
            header(call, "Host"),
            Some(format!("localhost:{}", moto.port).as_str())
        );
        assert!(
            header(call, "Authorization")
                .unwrap()
                .contains("/us-east-2/sts/aws4_request")
        );
        let body = common::moto::body(call);
        assert!(body.contains("ExternalId=ext-7d1f"), "{body}");
        assert!(body.contains("RoleSessionName=credagent-test-"), "{body}");
        assert!(body.contains("DurationSeconds=900"), "{body}");
    }
    // Secrets Manager calls are signed with the assumed (temporary) credentials.
    let gets: Vec<_> = moto
        .recording()
        .into_iter()
        .filter(|r| header(r, "X-Amz-Target") == Some(GET))
        .collect();
    assert!(!gets.is_empty());
    let log = agent.log_text();
    for call in &gets {
        assert!(
            header(call, "Authorization")
                .unwrap()
                .contains("Credential=ASIA")
        );
        let token = header(call, "X-Amz-Security-Token").unwrap();
        assert!(!log.contains(token), "a session token reached the log");
    }
    assert!(!log.contains(&moto.key("hopper").1));
    drop(agent);

    // The trust policy's external id condition is enforced: a wrong one fails at start,
    // naming the source.
    let dir2 = TestDir::new();
    let sources = key_source(dir2.path(), &moto, "aws", "hopper", &role("wrong-id"));
    let (code, log) = start_fails(&dir2, &config("", &sources));
    // Refused for good: 77, which the unit's RestartPreventExitStatus= does not restart.
    assert_eq!(code, Some(77), "{log}");
    assert!(log.contains("source \"aws\""), "{log}");
    assert!(log.contains("sources.aws.assume_role"), "{log}");
}

#[test]
fn bad_base_identity_is_a_startup_error_naming_the_source() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let sources = key_source(dir.path(), &moto, "aws-prod", "reader", "");
    // Same key id, wrong secret: moto's signature check refuses it.
    let secret_file = dir.path().join("reader.secret-key");
    std::fs::write(&secret_file, "not-the-secret\n").unwrap();
    let (code, log) = start_fails(&dir, &config("", &sources));
    assert_eq!(code, Some(77), "{log}");
    assert!(log.contains("source \"aws-prod\""), "{log}");
    assert!(log.contains("GetCallerIdentity"), "{log}");
    assert!(!log.contains("not-the-secret"), "{log}");

    // A key file readable by others is refused before anything is sent.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, log) = start_fails(&dir, &config("", &sources));
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("sources.aws-prod.secret_access_key_file"),
        "{log}"
    );
    assert!(log.contains("0600"), "{log}");
}

#[test]
fn cross_account_by_arn_denied_without_the_role_served_with_it() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let role_b = format!(
        r#"
[sources.aws-b.assume_role]
role_arn = "arn:aws:iam::{ACCOUNT_B}:role/secrets-reader"
external_id = "ext-7d1f"
"#
    );
    let sources = format!(
        "{}{}",
        key_source(dir.path(), &moto, "aws", "hopper", ""),
        key_source(dir.path(), &moto, "aws-b", "hopper", &role_b)
    );
    let agent = Agent::start(&dir, &config("", &sources));
    let arn = moto.setup["shared_arn"].as_str().unwrap();
    assert!(arn.contains(ACCOUNT_B));

    let without = agent.secret(&format!("aws/{arn}"));
    assert_eq!(
        (without.status, without.error_code().as_str()),
        (502, "upstream_denied"),
        "{}",
        without.text()
    );
    let with = agent.secret(&format!("aws-b/{arn}"));
    assert_eq!(with.status, 200, "{}", with.text());
    assert_eq!(with.body, b"cross-account-value");
    assert_eq!(agent.secret("aws-b/shared/db").body, b"cross-account-value");
    // The role's credentials see account B only.
    assert_eq!(agent.secret("aws-b/app/db").status, 404);
}

#[test]
fn instance_profile_credentials_are_refreshed_before_they_expire() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    // The stand-in's protocol is honest: no token, no answer.
    let imds = Imds::start(&moto, Duration::from_secs(14));
    let imds_port: u16 = imds.url.rsplit(':').next().unwrap().parse().unwrap();
    let (status, _) = common::moto::http(
        imds_port,
        "GET",
        "/latest/meta-data/iam/security-credentials/",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(status, 401);

    let sources = format!(
        r#"[sources.aws]
type = "aws-secretsmanager"
region = "eu-west-1"
endpoint_url = "{}"
auth = "instance-profile"
ttl_secs = 1
"#,
        moto.url
    );
    moto.start_recording();
    let agent = Agent::start_with_env(
        &dir,
        &config("refresh_ahead_secs = 0", &sources),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url)],
    );
    // Read across more than one credential lifetime; every read must succeed.
    let until = std::time::Instant::now() + Duration::from_secs(22);
    while std::time::Instant::now() < until {
        let resp = agent.secret("aws/app/db");
        assert_eq!(resp.status, 200, "{}", resp.text());
        std::thread::sleep(Duration::from_millis(300));
    }
    let served = imds.served();
    assert!(served.len() >= 2, "credentials never refreshed: {served:?}");
    // Every signed request used a credential before its advertised expiry.
    let mut used = std::collections::BTreeSet::new();
    for call in moto.recording() {
        let Some(auth) = header(&call, "Authorization") else {
            continue;
        };
        let akid = auth
            .split("Credential=")
            .nth(1)
            .and_then(|c| c.split('/').next())
            .unwrap();
        let Some(cred) = served.iter().find(|s| s.access_key_id == akid) else {
            continue;
        };
        let date = header(&call, "X-Amz-Date").unwrap();
        let signed = format!(
            "{}-{}-{}T{}:{}:{}",
            &date[0..4],
            &date[4..6],
            &date[6..8],
            &date[9..11],
            &date[11..13],
            &date[13..15]
        );
        let expires = credagent::timefmt::rfc3339(cred.expires);
        assert!(
            signed.as_str() < &expires[..19],
            "request signed at {signed} with a credential that expired at {expires}"
        );
        used.insert(akid.to_owned());
    }
    assert!(used.len() >= 2, "only {used:?} used");
    let log = agent.log_text();
    for cred in &served {
        assert!(!log.contains(&cred.secret) && !log.contains(&cred.token));
    }
}

#[test]
fn stale_if_error_while_moto_is_down_then_recovery() {
    let dir = TestDir::new();
    let mut moto = Moto::start(&dir);
    let sources = key_source(
        dir.path(),
        &moto,
        "aws",
        "reader",
        "ttl_secs = 1\nfetch_timeout_secs = 10",
    );
    let agent = Agent::start(&dir, &config("refresh_ahead_secs = 0", &sources));
    assert_eq!(agent.secret("aws/canary").body, CANARY.as_bytes());
    assert_eq!(agent.secret("aws/stale").body, b"stale-v1");

    moto.stop();
    std::thread::sleep(Duration::from_millis(1500));
    // Expired entries are served stale while the backend is unreachable.
    let stale = agent.secret("aws/stale");
    assert_eq!(
        (stale.status, stale.body.as_slice()),
        (200, &b"stale-v1"[..])
    );
    assert_eq!(agent.secret("aws/canary").body, CANARY.as_bytes());
    assert!(agent.metric("credagent_cache_stale_total") >= 1.0);
    // A fresh miss fails as unavailable (502: refused connections, not a 504 timeout).
    let miss = agent.secret("aws/rotating");
    assert_eq!(
        (miss.status, miss.error_code().as_str()),
        (502, "upstream_unavailable"),
        "{}",
        miss.text()
    );

    moto.restart();
    assert!(
        wait_until(Duration::from_secs(20), || agent
            .secret("aws/rotating")
            .status
            == 200),
        "no recovery after moto came back"
    );
    assert_eq!(agent.secret("aws/stale").body, b"stale-v1");
}

#[test]
fn a_hanging_backend_times_out_as_504_and_stale_values_are_still_served() {
    use nix::sys::signal::Signal;
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let sources = key_source(
        dir.path(),
        &moto,
        "aws",
        "reader",
        "ttl_secs = 1\nfetch_timeout_secs = 2",
    );
    let agent = Agent::start(&dir, &config("refresh_ahead_secs = 0", &sources));
    assert_eq!(agent.secret("aws/stale").body, b"stale-v1");

    moto.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1200));
    let miss = agent.secret("aws/rotating");
    let stale = agent.secret("aws/stale");
    moto.signal(Signal::SIGCONT);
    assert_eq!(
        (miss.status, miss.error_code().as_str()),
        (504, "upstream_unavailable"),
        "{}",
        miss.text()
    );
    assert_eq!(
        (stale.status, stale.body.as_slice()),
        (200, &b"stale-v1"[..])
    );
    assert!(
        wait_until(Duration::from_secs(20), || agent
            .secret("aws/rotating")
            .status
            == 200),
        "no recovery after moto resumed"
    );
}

#[test]
fn default_chain_uses_environment_credentials() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let (id, secret) = moto.key("reader");
    let sources = format!(
        r#"[sources.aws]
type = "aws-secretsmanager"
region = "eu-west-1"
endpoint_url = "{}"
auth = "default-chain"
"#,
        moto.url
    );
    let agent = Agent::start_with_env(
        &dir,
        &config("", &sources),
        &[
            ("AWS_ACCESS_KEY_ID", id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    assert_eq!(agent.get("/v1/secrets/aws/app/db?field=user").body, b"app");
}
