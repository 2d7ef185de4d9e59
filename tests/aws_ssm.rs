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
