//! The SSM Parameter Store source against a real moto server with signature and IAM checking
//! on: SecureString decrypted, StringList as text, `?version=N` and `?label=L`, a new version
//! picked up after the TTL, IAM denial outside the user's policy, invalid requests refused
//! before any call, and neither the value nor the agent's key in the log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::config_allowing_all as agent_config;
use common::moto::Moto;
use common::{Agent, CANARY, TestDir, wait_until};

const GET: &str = "AmazonSSM.GetParameter";

fn ssm_source(dir: &TestDir, moto: &Moto, name: &str, user: &str, extra: &str) -> String {
    moto.source_section(dir.path(), name, "aws-ssm", user, extra)
}

#[test]
fn parameters_are_served_by_name_version_and_label_within_the_iam_policy() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let sources = format!(
        "{}{}",
        ssm_source(&dir, &moto, "ssm", "ssm_reader", ""),
        ssm_source(&dir, &moto, "ssm-nobody", "nobody", ""),
    );
    let sources = format!(
        "{sources}{}",
        ssm_source(&dir, &moto, "ssm-sm-only", "getonly", "")
    );
    let agent = Agent::start(&dir, &agent_config("", &sources));

    // SecureString, decrypted; the latest version by default, its number in the JSON format.
    let current = agent.secret("ssm/app/db/password");
    assert_eq!((current.status, current.text().as_str()), (200, "ssm-pw-2"));
    let json = agent.request(
        "GET",
        "/v1/secrets/ssm/app/db/password",
        &[("Accept", "application/json")],
        b"",
    );
    assert_eq!(json.json()["version"], "2", "{}", json.text());
    let v1 = agent.get("/v1/secrets/ssm/app/db/password?version=1");
    assert_eq!((v1.status, v1.text().as_str()), (200, "ssm-pw-1"));
    let blue = agent.get("/v1/secrets/ssm/app/db/password?label=blue");
    assert_eq!((blue.status, blue.text().as_str()), (200, "ssm-pw-1"));
    // StringList as its text.
    assert_eq!(
        agent.secret("ssm/app/hosts").text(),
        "a.internal,b.internal"
    );
    assert_eq!(agent.secret("ssm/app/canary").body, CANARY.as_bytes());

    // Errors: a missing parameter, version or label is 404; a user whose policy lacks
    // ssm:GetParameter (Secrets Manager only, or nothing) is the backend denying the agent.
    for missing in [
        "/v1/secrets/ssm/app/nope",
        "/v1/secrets/ssm/app/db/password?version=9",
        "/v1/secrets/ssm/app/db/password?label=green",
    ] {
        let resp = agent.get(missing);
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (404, "not_found"),
            "{missing}: {}",
            resp.text()
        );
    }
    for denied in ["ssm-sm-only/app/hosts", "ssm-nobody/app/hosts"] {
        let resp = agent.secret(denied);
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (502, "upstream_denied"),
            "{denied}: {}",
            resp.text()
        );
    }

    // Invalid requests never reach SSM.
    moto.start_recording();
    for (path, code) in [
        ("/v1/secrets/ssm/app/db:1", "bad_request"),
        (
            "/v1/secrets/ssm/app/db/password?version_stage=AWSCURRENT",
            "bad_selector",
        ),
        (
            "/v1/secrets/ssm/app/db/password?version=1&label=blue",
            "bad_selector",
        ),
        (
            "/v1/secrets/ssm/app/db/password?label=a%3Ab",
            "bad_selector",
        ),
    ] {
        let resp = agent.get(path);
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (400, code),
            "{path}: {}",
            resp.text()
        );
    }
    assert_eq!(moto.recording().len(), 0, "invalid requests reached moto");

    let log = agent.log_text();
    for user in ["ssm_reader", "nobody", "getonly"] {
        assert!(
            !log.contains(&moto.key(user).1),
            "a secret access key reached the log"
        );
    }
    assert!(
        !log.contains("ssm-pw-"),
        "a parameter value reached the log"
    );
}

#[test]
fn a_new_parameter_version_is_served_after_the_ttl_with_one_call_per_expiry() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let sources = ssm_source(&dir, &moto, "ssm", "ssm_reader", "ttl_secs = 1");
    let agent = Agent::start(&dir, &agent_config("refresh_ahead_secs = 0", &sources));
    moto.start_recording();
    assert_eq!(agent.secret("ssm/app/db/password").text(), "ssm-pw-2");
    assert_eq!(agent.secret("ssm/app/db/password").text(), "ssm-pw-2");
    assert_eq!(
        moto.calls(GET),
        1,
        "the second read was not served from the cache"
    );
    assert_eq!(moto.put_param("/app/db/password", "ssm-pw-3"), 3);
    assert!(wait_until(Duration::from_secs(15), || {
        agent.secret("ssm/app/db/password").text() == "ssm-pw-3"
    }));
}

#[test]
fn the_get_cli_selects_a_parameter_by_label_and_version_as_the_query_does() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let sources = ssm_source(&dir, &moto, "ssm", "ssm_reader", "");
    let agent = Agent::start(&dir, &agent_config("", &sources));
    for (args, want) in [
        (&[][..], "ssm-pw-2"),
        (&["--label", "blue"][..], "ssm-pw-1"),
        (&["--version", "1"][..], "ssm-pw-1"),
        (&["--version", "2"][..], "ssm-pw-2"),
    ] {
        let out = agent.cli_as(None, &[&["get", "ssm/app/db/password"][..], args].concat());
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap(), want, "{args:?}");
    }
    for (args, code) in [
        (&["--label", "green"][..], "not_found"),
        (&["--label", "blue", "--version", "1"][..], "bad_selector"),
        (&["--label", "a:b"][..], "bad_selector"),
    ] {
        let out = agent.cli_as(None, &[&["get", "ssm/app/db/password"][..], args].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(code), "{args:?}: {stderr}");
    }
}

#[test]
fn assume_role_with_external_id_reads_parameters_and_a_wrong_id_is_refused_at_start() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    moto.start_recording();
    let role = moto.ext_reader_role("ssm", "ext-7d1f");
    let sources = ssm_source(&dir, &moto, "ssm", "hopper", &role);
    let agent = Agent::start(&dir, &agent_config("", &sources));
    for (name, want) in [
        ("ssm/app/db/password", "ssm-pw-2"),
        ("ssm/app/hosts", "a.internal,b.internal"),
        ("ssm/app/canary", CANARY),
    ] {
        let resp = agent.secret(name);
        assert_eq!((resp.status, resp.text().as_str()), (200, want), "{name}");
    }
    // The role was assumed with the external id, and Parameter Store was called with its
    // temporary credentials, not hopper's key (whose own policy has no ssm:GetParameter).
    let assumed = moto.sts_calls("AssumeRole");
    assert!(!assumed.is_empty(), "no AssumeRole call recorded");
    assert!(common::moto::body(&assumed[0]).contains("ExternalId=ext-7d1f"));
    let gets: Vec<_> = moto
        .recording()
        .into_iter()
        .filter(|r| common::moto::header(r, "X-Amz-Target") == Some(GET))
        .collect();
    assert_eq!(gets.len(), 3);
    let log = agent.log_text();
    moto.assert_signed_by_assumed_role(&gets, "hopper", &log);
    assert!(
        !log.contains("ssm-pw-"),
        "a parameter value reached the log"
    );
    drop(agent);

    // The trust policy's external id condition is enforced: refused for good at start (77),
    // naming the source and the setting, with neither key in the output.
    let dir2 = TestDir::new();
    let role = moto.ext_reader_role("ssm", "wrong-id");
    let sources = ssm_source(&dir2, &moto, "ssm", "hopper", &role);
    moto.assert_wrong_external_id_refused(&dir2, &agent_config("", &sources), "ssm", "hopper");
}
