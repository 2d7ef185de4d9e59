//! `credagent exec --aws` and the loopback container-credentials listener against a real moto
//! server with IAM checking on (role `reader` trusts user `vendor` with external id `ext-29`):
//! boto3 run by `exec --aws` as uid 65534 lists a bucket with its caller's role session, and the
//! listener refuses a token presented from another uid's socket, a wrong token (counted, then
//! throttled) and a forwarded request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::moto::{ACCOUNT_A, Moto};
use common::{Agent, TestDir, bin, free_port, request_as, site_packages};

const CALLER: u32 = 65534;
const OTHER: u32 = 65533;

/// The agent's config: source `roles` signing as `vendor`, profile `reader`, a rule letting
/// `CALLER` read it, and the listener on `port`.
fn config(dir: &TestDir, moto: &Moto, port: u16) -> String {
    let section = moto.source_section(dir.path(), "roles", "aws-credentials", "vendor", "");
    format!(
        r#"[server]
socket = "{{socket}}"
socket_mode = "0666"
aws_container_listen = "127.0.0.1:{port}"

[cache]
lock_memory = "best-effort"

{section}
[sources.roles.roles.reader]
role_arn = "arn:aws:iam::{ACCOUNT_A}:role/reader"
external_id = "ext-29"

[[allow]]
peer = {{ uid = {CALLER} }}
secrets = ["roles/reader"]

[[allow]]
peer = {{ uid = 0 }}
admin = true
"#
    )
}

/// A directory owned by `uid`.
fn home(dir: &TestDir, uid: u32) -> PathBuf {
    let home = dir.path().join(format!("home-{uid}"));
    std::fs::create_dir_all(&home).unwrap();
    nix::unistd::chown(&home, Some(uid.into()), Some(uid.into())).unwrap();
    home
}

/// What the listener answered a GET from a socket of `uid`.
struct Answer {
    status: u16,
    body: serde_json::Value,
}

/// `GET /v1/aws-container-credentials` on the listener from a process running as `uid`, with
/// `token` (read from stdin, not argv) as `Authorization` and optionally `X-Forwarded-For`.
fn fetch_as(uid: u32, port: u16, token: Option<&str>, forwarded: bool) -> Answer {
    let script = r#"
import http.client, json, sys
token = sys.stdin.read()
headers = {}
if token:
    headers["Authorization"] = token
if sys.argv[2] == "1":
    headers["X-Forwarded-For"] = "127.0.0.1"
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
c.request("GET", "/v1/aws-container-credentials", headers=headers)
r = c.getresponse()
print(json.dumps({"status": r.status, "body": r.read().decode()}))
"#;
    let mut command = Command::new("/usr/bin/python3");
    command
        .args([
            "-c",
            script,
            &port.to_string(),
            if forwarded { "1" } else { "0" },
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::uid(&mut command, uid);
    std::os::unix::process::CommandExt::gid(&mut command, uid);
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(token.unwrap_or_default().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Answer {
        status: u16::try_from(printed["status"].as_u64().unwrap()).unwrap(),
        body: serde_json::from_str(printed["body"].as_str().unwrap()).unwrap(),
    }
}

/// A token issued to `uid` over the Unix socket.
fn token_for(agent: &Agent, uid: u32) -> String {
    let reply = request_as(uid, &agent.socket, "POST", "/v1/aws-token/roles/reader");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["token"].as_str().unwrap().to_owned()
}

/// `credagent exec --aws roles/reader -- python3 SCRIPT` as `uid`, `TMPDIR` in its home.
fn exec_aws(dir: &TestDir, agent: &Agent, uid: u32, script: &Path) -> Output {
    let home = home(dir, uid);
    let mut command = Command::new(bin());
    command
        .args(["exec", "--aws", "roles/reader", "--socket"])
        .arg(&agent.socket)
        .args(["--", "/usr/bin/python3"])
        .arg(script)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PYTHONPATH", site_packages())
        .env("HOME", &home)
        .env("TMPDIR", &home)
        .env("AWS_CONFIG_FILE", home.join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("none"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // A key in the caller's environment would win over the container provider: exec removes it.
        .env("AWS_ACCESS_KEY_ID", "AKIASTALEKEY")
        .env("AWS_SECRET_ACCESS_KEY", "stale");
    std::os::unix::process::CommandExt::uid(&mut command, uid);
    std::os::unix::process::CommandExt::gid(&mut command, uid);
    command.output().unwrap()
}

#[test]
fn exec_aws_runs_boto3_that_lists_a_bucket_with_its_callers_role_session() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let port = free_port();
    let agent = Agent::start(&dir, &config(&dir, &moto, port));
    let script = home(&dir, CALLER).join("list.py");
    std::fs::write(
        &script,
        format!(
            r#"
import json, os, boto3
f = os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]
s3 = boto3.client("s3", endpoint_url="{url}", region_name="eu-west-1")
keys = [o["Key"] for o in s3.list_objects_v2(Bucket="app-secrets").get("Contents", [])]
sts = boto3.client("sts", endpoint_url="{url}", region_name="eu-west-1")
print(json.dumps({{
    "keys": keys,
    "arn": sts.get_caller_identity()["Arn"],
    "file": f,
    "file_mode": os.stat(f).st_mode & 0o777,
    "dir_mode": os.stat(os.path.dirname(f)).st_mode & 0o777,
    "uri": os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
    "stale_key": os.environ.get("AWS_ACCESS_KEY_ID"),
}}))
"#,
            url = moto.url
        ),
    )
    .unwrap();
    let out = exec_aws(&dir, &agent, CALLER, &script);
    assert!(
        out.status.success(),
        "exec --aws: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(seen["keys"].as_array().unwrap().len() > 1, "{seen}");
    let arn = seen["arn"].as_str().unwrap();
    assert!(
        arn.starts_with(&format!(
            "arn:aws:sts::{ACCOUNT_A}:assumed-role/reader/credagent-"
        )) && arn.ends_with(&format!("-{CALLER}")),
        "{arn}"
    );
    assert_eq!(seen["file_mode"], 0o600);
    assert_eq!(seen["dir_mode"], 0o700);
    assert_eq!(
        seen["uri"],
        format!("http://127.0.0.1:{port}/v1/aws-container-credentials")
    );
    assert_eq!(seen["stale_key"], serde_json::Value::Null);
    // The token file is gone once the child exited.
    assert!(!Path::new(seen["file"].as_str().unwrap()).exists());
    // A uid without the rule: exec gets no token, says why in one line, and never starts CMD.
    let denied = exec_aws(&dir, &agent, OTHER, &script);
    assert_eq!(denied.status.code(), Some(1));
    assert!(denied.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("forbidden"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // The listener's reads are the caller's reads: audited under its uid, with its session.
    let reads = agent.audit_reads("roles/reader");
    assert!(
        reads.iter().any(|l| l["uid"] == CALLER
            && l["decision"] == "allow"
            && l["session_name"]
                .as_str()
                .unwrap()
                .ends_with(&format!("-{CALLER}"))),
        "{reads:?}"
    );
}

#[test]
fn another_uid_presenting_a_stolen_token_on_the_listener_is_refused() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let port = free_port();
    let agent = Agent::start(&dir, &config(&dir, &moto, port));
    let token = token_for(&agent, CALLER);

    // The attacker: another uid, holding the caller's token bytes.
    let stolen = fetch_as(OTHER, port, Some(&token), false);
    assert_eq!(stolen.status, 403, "{}", stolen.body);
    assert_eq!(stolen.body["code"], "token_other_uid");
    assert!(stolen.body.get("AccessKeyId").is_none());
    // The honest caller, same token, its own socket: the container shape.
    let honest = fetch_as(CALLER, port, Some(&token), false);
    assert_eq!(honest.status, 200, "{}", honest.body);
    for key in ["AccessKeyId", "SecretAccessKey", "Token", "Expiration"] {
        assert!(
            honest.body[key].as_str().is_some(),
            "{key}: {}",
            honest.body
        );
    }
    // The role's account, which the SDKs use for account-based endpoints.
    assert_eq!(honest.body["AccountId"], ACCOUNT_A, "{}", honest.body);
    assert!(
        honest.body["AccessKeyId"]
            .as_str()
            .unwrap()
            .starts_with("ASIA")
    );
    // The audit line names the token's owner, the profile and why.
    let log = agent.log_text();
    let refused: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["action"] == "aws-container")
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert_eq!(refused[0]["uid"], CALLER);
    assert_eq!(refused[0]["secret"], "roles/reader");
    assert_eq!(refused[0]["decision"], "deny");
    assert_eq!(refused[0]["reason"], "token_other_uid");
    assert_eq!(refused[0]["status"], 403);
    assert_eq!(refused[0]["presented_by_uid"], OTHER);
    // The token itself is never logged.
    assert!(!log.contains(&token), "the token is in the log");
    assert_eq!(
        agent.metric("credagent_aws_container_bad_tokens_total "),
        1.0
    );
}

#[test]
fn wrong_tokens_are_refused_counted_and_then_throttled() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let port = free_port();
    let agent = Agent::start(&dir, &config(&dir, &moto, port));
    let token = token_for(&agent, CALLER);
    let none = fetch_as(CALLER, port, None, false);
    assert_eq!(none.status, 401, "{}", none.body);
    assert_eq!(none.body["code"], "bad_token");
    let mut wrong = token.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    for _ in 0..9 {
        let refused = fetch_as(CALLER, port, Some(&wrong), false);
        assert_eq!(refused.status, 401, "{}", refused.body);
    }
    assert_eq!(
        agent.metric("credagent_aws_container_bad_tokens_total "),
        10.0
    );
    // Ten bad tokens from this uid: even the right one waits out the window.
    let throttled = fetch_as(CALLER, port, Some(&token), false);
    assert_eq!(throttled.status, 429, "{}", throttled.body);
    assert_eq!(throttled.body["code"], "too_many_bad_tokens");
}

#[test]
fn a_forwarded_request_with_a_valid_token_is_refused() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let port = free_port();
    let agent = Agent::start(&dir, &config(&dir, &moto, port));
    let token = token_for(&agent, CALLER);
    let forwarded = fetch_as(CALLER, port, Some(&token), true);
    assert_eq!(forwarded.status, 400, "{}", forwarded.body);
    assert_eq!(forwarded.body["code"], "forwarded_request");
    assert!(forwarded.body.get("AccessKeyId").is_none());
    // A uid without the rule gets no token at all.
    let denied = request_as(OTHER, &agent.socket, "POST", "/v1/aws-token/roles/reader");
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert!(!denied.text().contains("token\""));
}
