//! The S3 source against a real moto server with signature and IAM checking on: objects under
//! the prefix, `?version_id=`, an SSE-KMS object, the 4 MiB limit, IAM denial outside the
//! user's policy, and neither the value nor the agent's key in the log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::config_allowing_all as agent_config;
use common::moto::Moto;
use common::{Agent, CANARY, TestDir};

#[test]
fn objects_under_the_prefix_are_served_with_versions_and_limits() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let bucket = "bucket = \"app-secrets\"";
    let sources = [
        moto.source_section(
            dir.path(),
            "s3",
            "aws-s3",
            "s3_reader",
            &format!("{bucket}\nprefix = \"prod/\""),
        ),
        moto.source_section(dir.path(), "s3-root", "aws-s3", "s3_reader", bucket),
        moto.source_section(dir.path(), "s3-nobody", "aws-s3", "nobody", bucket),
    ]
    .concat();
    let agent = Agent::start(&dir, &agent_config("", &sources));

    let db = agent.secret("s3/db");
    assert_eq!(
        (db.status, db.text().as_str()),
        (200, "s3-pw-2"),
        "{}",
        db.text()
    );
    let v1 = moto.setup["s3_db_v1"].as_str().unwrap();
    let old = agent.get(&format!("/v1/secrets/s3/db?version_id={v1}"));
    assert_eq!((old.status, old.text().as_str()), (200, "s3-pw-1"));
    let json = agent.request(
        "GET",
        &format!("/v1/secrets/s3/db?version_id={v1}"),
        &[("Accept", "application/json")],
        b"",
    );
    assert_eq!(json.json()["version"], v1);
    assert_eq!(agent.secret("s3/kms").text(), "kms-encrypted");
    assert_eq!(agent.secret("s3/canary").body, CANARY.as_bytes());
    assert_eq!(agent.secret("s3/max").body.len(), 4 * 1024 * 1024);

    for (name, status, code) in [
        ("s3/too-big", 502, "upstream_bad_reply"),
        ("s3/nope", 404, "not_found"),
        // Outside the policy's prefix, and a user without any policy.
        ("s3-root/other/key", 502, "upstream_denied"),
        ("s3-nobody/prod/db", 502, "upstream_denied"),
    ] {
        let resp = agent.secret(name);
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (status, code),
            "{name}: {}",
            resp.text()
        );
    }
    moto.start_recording();
    for path in [
        "/v1/secrets/s3/db?version=1",
        "/v1/secrets/s3/db?version_stage=AWSCURRENT",
    ] {
        assert_eq!(agent.get(path).error_code(), "bad_selector", "{path}");
    }
    assert_eq!(moto.recording().len(), 0, "invalid requests reached moto");

    let log = agent.log_text();
    for user in ["s3_reader", "nobody"] {
        assert!(
            !log.contains(&moto.key(user).1),
            "a secret access key reached the log"
        );
    }
    assert!(!log.contains("s3-pw-"), "a value reached the log");
}

#[test]
fn assume_role_with_external_id_reads_objects_within_the_role_policy_and_a_wrong_id_is_refused() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    moto.start_recording();
    let bucket = "bucket = \"app-secrets\"";
    let sources = [
        moto.source_section(
            dir.path(),
            "s3",
            "aws-s3",
            "hopper",
            &format!(
                "{bucket}\nprefix = \"prod/\"{}",
                moto.ext_reader_role("s3", "ext-7d1f")
            ),
        ),
        moto.source_section(
            dir.path(),
            "s3-root",
            "aws-s3",
            "hopper",
            &format!("{bucket}{}", moto.ext_reader_role("s3-root", "ext-7d1f")),
        ),
    ]
    .concat();
    let agent = Agent::start(&dir, &agent_config("", &sources));
    assert_eq!(agent.secret("s3/db").text(), "s3-pw-2");
    assert_eq!(agent.secret("s3/canary").body, CANARY.as_bytes());
    // The role's policy covers prod/* only: IAM is evaluated for the assumed role.
    let outside = agent.secret("s3-root/other/key");
    assert_eq!(
        (outside.status, outside.error_code().as_str()),
        (502, "upstream_denied"),
        "{}",
        outside.text()
    );

    let assumed = moto.sts_calls("AssumeRole");
    assert!(!assumed.is_empty(), "no AssumeRole call recorded");
    for call in &assumed {
        assert!(common::moto::body(call).contains("ExternalId=ext-7d1f"));
    }
    let log = agent.log_text();
    let gets: Vec<_> = moto
        .recording()
        .into_iter()
        .filter(|r| r["method"] == "GET" && r["url"].as_str().unwrap_or("").contains("app-secrets"))
        .collect();
    assert!(gets.len() >= 3, "{gets:?}");
    moto.assert_signed_by_assumed_role(&gets, "hopper", &log);
    assert!(!log.contains("s3-pw-"), "an object's value reached the log");
    drop(agent);

    let dir2 = TestDir::new();
    let sources = moto.source_section(
        dir2.path(),
        "s3",
        "aws-s3",
        "hopper",
        &format!("{bucket}{}", moto.ext_reader_role("s3", "wrong-id")),
    );
    moto.assert_wrong_external_id_refused(&dir2, &agent_config("", &sources), "s3", "hopper");
}
