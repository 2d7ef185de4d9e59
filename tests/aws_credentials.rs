//! The `aws-credentials` source against a real moto server with signature and IAM checking on
//! (role `reader` trusts user `vendor` with external id `ext-29`), and the real AWS CLI
//! (botocore) and the Rust SDK (aws-config) as clients, run as uid 65534 through `credential_process = credagent
//! aws-credentials roles/reader`: each caller its own STS session, a caller without a rule gets
//! the agent's one-line reason inside the SDK's error, a wrong external id stops the start,
//! concurrent callers share one AssumeRole, and sessions are renewed before
//! `min_remaining_secs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use common::moto::{ACCOUNT_A, Moto};
use common::{Agent, TestDir, bin, request_as, site_packages, start_fails, venv_bin};

const CALLER: u32 = 65534;
const OTHER: u32 = 65533;

/// The agent's config: source `roles` signing as `vendor`, profile `reader` with `profile`
/// extra keys, `source` extra keys, and `rules`.
fn config(dir: &TestDir, moto: &Moto, source: &str, profile: &str, rules: &str) -> String {
    let section = moto.source_section(dir.path(), "roles", "aws-credentials", "vendor", source);
    format!(
        r#"[server]
socket = "{{socket}}"
socket_mode = "0666"

[cache]
lock_memory = "best-effort"

{section}
[sources.roles.roles.reader]
role_arn = "arn:aws:iam::{ACCOUNT_A}:role/reader"
external_id = "ext-29"
{profile}

{rules}
"#
    )
}

fn allow(uid: u32) -> String {
    format!("[[allow]]\npeer = {{ uid = {uid} }}\nsecrets = [\"roles/reader\"]\n")
}

/// Runs the AWS CLI as `uid` with a `~/.aws/config` whose default profile takes its
/// credentials from `credagent aws-credentials roles/reader` on the agent's socket.
fn aws_cli(dir: &TestDir, agent: &Agent, moto: &Moto, uid: u32, args: &[&str]) -> Output {
    let home = dir.path().join(format!("home-{uid}"));
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    let config = home.join(".aws/config");
    std::fs::write(
        &config,
        format!(
            "[default]\nregion = eu-west-1\ncredential_process = {} aws-credentials roles/reader --socket {}\n",
            bin().display(),
            agent.socket.display()
        ),
    )
    .unwrap();
    nix::unistd::chown(&home, Some(uid.into()), Some(uid.into())).unwrap();
    let mut command = Command::new("/usr/bin/python3");
    command
        .arg(venv_bin("aws"))
        .args(args)
        .args(["--endpoint-url", &moto.url, "--output", "json"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PYTHONPATH", site_packages())
        .env("HOME", &home)
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("none"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
    std::os::unix::process::CommandExt::uid(&mut command, uid);
    std::os::unix::process::CommandExt::gid(&mut command, uid);
    command.output().unwrap()
}

fn stdout_json(out: &Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Seconds from now until a `credential_process` JSON's `Expiration`.
fn remaining(json: &serde_json::Value) -> f64 {
    let text = json["Expiration"].as_str().unwrap();
    // 2026-12-04T18:00:00.000Z
    let (date, time) = text.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    let at = secs as f64 + format!("0.{frac}").parse::<f64>().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    at - now
}

#[test]
fn a_uid_with_the_rule_gets_its_own_role_session_and_a_uid_without_gets_the_reason() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let agent = Agent::start(&dir, &config(&dir, &moto, "", "", &allow(CALLER)));

    // The honest caller: the role, in a session named after its uid (the default template,
    // `credagent-{hostname}-{unit}`, takes the uid for a caller outside any unit).
    let who = stdout_json(
        &aws_cli(&dir, &agent, &moto, CALLER, &["sts", "get-caller-identity"]),
        "get-caller-identity as the allowed uid",
    );
    let arn = who["Arn"].as_str().unwrap();
    assert!(
        arn.starts_with(&format!(
            "arn:aws:sts::{ACCOUNT_A}:assumed-role/reader/credagent-"
        )),
        "{arn}"
    );
    assert!(arn.ends_with(&format!("-{CALLER}")), "{arn}");
    // A call the role allows succeeds with those credentials.
    let listed = stdout_json(
        &aws_cli(
            &dir,
            &agent,
            &moto,
            CALLER,
            &["s3api", "list-objects-v2", "--bucket", "app-secrets"],
        ),
        "s3 list as the allowed uid",
    );
    assert!(listed["Contents"].as_array().unwrap().len() > 1, "{listed}");

    // The attacker: another uid, no rule. The SDK's error carries the agent's one line.
    let denied = aws_cli(&dir, &agent, &moto, OTHER, &["sts", "get-caller-identity"]);
    assert!(!denied.status.success());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("credagent: forbidden: this peer is not allowed to read that secret"),
        "{stderr}"
    );
    assert!(!stderr.contains("AccessKeyId"), "{stderr}");
    // The command itself: one line on stderr, get's exit code (1), nothing on stdout.
    let out = agent.cli_as(Some(OTHER), &["aws-credentials", "roles/reader"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    let out = agent.cli_as(Some(CALLER), &["aws-credentials", "roles/reader"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["Version"], 1);
    assert!(json["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
    assert_eq!(json["AccountId"], ACCOUNT_A, "the role's account");

    // The audit: profile, session name, expiration for the allowed reads; a deny for the
    // other uid; never a key, in the audit or anywhere in the log.
    let lines = agent.audit_reads("roles/reader");
    let allowed: Vec<_> = lines.iter().filter(|l| l["uid"] == CALLER).collect();
    assert!(!allowed.is_empty());
    for line in &allowed {
        assert_eq!(line["decision"], "allow", "{line}");
        assert_eq!(line["profile"], "reader", "{line}");
        assert!(
            line["session_name"]
                .as_str()
                .unwrap()
                .ends_with(&format!("-{CALLER}")),
            "{line}"
        );
        assert!(line["expiration"].as_str().is_some(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["uid"] == OTHER && l["decision"] == "deny" && l["status"] == 403)
    );
    let log = agent.log_text();
    for key in ["SecretAccessKey", "SessionToken"] {
        assert!(
            !log.contains(json[key].as_str().unwrap()),
            "{key} in the log"
        );
    }
    assert!(
        !log.contains(&moto.key("vendor").1),
        "the base key in the log"
    );
}

#[test]
fn a_wrong_external_id_stops_the_start_with_exit_77() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let wrong = config(&dir, &moto, "", "", &allow(CALLER)).replace("ext-29", "ext-wrong");
    let (code, log) = start_fails(&dir, &wrong);
    assert_eq!(code, Some(77), "{log}");
    assert!(log.contains("source \"roles\""), "{log}");
    assert!(log.contains("sources.roles.roles.reader"), "{log}");
    assert!(!log.contains(&moto.key("vendor").1), "{log}");
}

#[test]
fn another_uid_asking_for_a_cached_profile_gets_its_own_session_not_the_first_callers() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let rules = format!("{}{}", allow(CALLER), allow(OTHER));
    let agent = Agent::start(&dir, &config(&dir, &moto, "", "", &rules));
    let first = agent.cli_as(Some(CALLER), &["aws-credentials", "roles/reader"]);
    assert_eq!(first.status.code(), Some(0));
    let first_json: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    // The role's trust now asks for another external id. The second uid, whose session is
    // not cached, must get a session of its own: STS refuses it, so 502 upstream_denied (and
    // the command exit 1) — never the first caller's cached keys.
    let (key, secret) = moto.key("admin");
    moto.script(&["reader-trust", &key, &secret, "ext-rotated"]);
    let refused = request_as(OTHER, &agent.socket, "GET", "/v1/secrets/roles/reader");
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert_eq!(refused.error_code(), "upstream_denied");
    assert!(
        !refused
            .text()
            .contains(first_json["AccessKeyId"].as_str().unwrap())
    );
    let out = agent.cli_as(Some(OTHER), &["aws-credentials", "roles/reader"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("upstream_denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The first caller keeps its own session.
    let again = agent.cli_as(Some(CALLER), &["aws-credentials", "roles/reader"]);
    assert_eq!(again.stdout, first.stdout);
    // Trust restored: the second uid gets a session of its own, named after its uid.
    moto.script(&["reader-trust", &key, &secret, "ext-29"]);
    let second = agent.cli_as(Some(OTHER), &["aws-credentials", "roles/reader"]);
    assert_eq!(second.status.code(), Some(0));
    let second_json: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_ne!(second_json["AccessKeyId"], first_json["AccessKeyId"]);
    let sessions: Vec<String> = agent
        .audit_reads("roles/reader")
        .iter()
        .filter(|l| l["status"] == 200)
        .map(|l| format!("{}:{}", l["uid"], l["session_name"].as_str().unwrap()))
        .collect();
    assert!(
        sessions.iter().all(|s| {
            let (uid, name) = s.split_once(':').unwrap();
            name.ends_with(&format!("-{uid}"))
        }),
        "{sessions:?}"
    );
}

#[test]
fn fifty_concurrent_callers_cause_one_assume_role() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let agent = Agent::start(&dir, &config(&dir, &moto, "", "", &allow(CALLER)));
    moto.start_recording();
    let outputs: Vec<Output> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                scope.spawn(|| agent.cli_as(Some(CALLER), &["aws-credentials", "roles/reader"]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for out in &outputs {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.stdout, outputs[0].stdout,
            "every caller got the one session"
        );
    }
    assert_eq!(moto.sts_calls("AssumeRole").len(), 1);
}

#[test]
fn sessions_are_renewed_and_never_served_with_less_than_min_remaining_secs() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    // A 900 s session served at most 10 s (900 - 890), renewed after 9 s (1 %).
    let agent = Agent::start(
        &dir,
        &config(
            &dir,
            &moto,
            "min_remaining_secs = 890\nrefresh_at_percent = 1",
            "duration_secs = 900",
            &allow(CALLER),
        ),
    );
    moto.start_recording();
    let started = Instant::now();
    let mut keys = Vec::new();
    while started.elapsed() < Duration::from_secs(13) {
        let out = agent.cli_as(Some(CALLER), &["aws-credentials", "roles/reader"]);
        assert_eq!(out.status.code(), Some(0));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let left = remaining(&json);
        assert!(left >= 889.0, "served with {left} s left");
        let key = json["AccessKeyId"].as_str().unwrap().to_owned();
        if keys.last() != Some(&key) {
            keys.push(key);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(keys.len() >= 2, "not renewed in 13 s: {keys:?}");
    let calls = moto.sts_calls("AssumeRole").len();
    assert!((2..=3).contains(&calls), "{calls} AssumeRole calls in 13 s");
}

#[test]
fn the_rust_sdk_takes_the_role_through_credential_process() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let agent = Agent::start(&dir, &config(&dir, &moto, "", "", &allow(CALLER)));
    // The provider runs the command through `sh -c`; the command drops to the caller's uid.
    let command = format!(
        "setpriv --reuid={CALLER} --regid={CALLER} --clear-groups {} aws-credentials roles/reader --socket {}",
        bin().display(),
        agent.socket.display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let arn = rt.block_on(async {
        let provider = aws_config::credential_process::CredentialProcessProvider::new(command);
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .endpoint_url(&moto.url)
            .credentials_provider(provider)
            .load()
            .await;
        let out = aws_sdk_sts::Client::new(&sdk)
            .get_caller_identity()
            .send()
            .await
            .unwrap();
        out.arn().unwrap().to_owned()
    });
    assert!(
        arn.starts_with(&format!(
            "arn:aws:sts::{ACCOUNT_A}:assumed-role/reader/credagent-"
        )),
        "{arn}"
    );
    assert!(arn.ends_with(&format!("-{CALLER}")), "{arn}");
}
