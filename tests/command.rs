//! The command source with Debian's real `pass` and `gopass` (a GnuPG key generated in batch
//! mode in a private GNUPGHOME), and with coreutils for the limits: values served with one
//! trailing newline trimmed, missing entries 404 by exit status, other failures 502 with the
//! status in the log and never the command's stderr, a cleared environment, the timeout, the
//! 4 MiB output limit, and ids that would be options refused before anything runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::config_allowing_all as agent_config;
use common::pass::PassStore;
use common::{Agent, CANARY, TestDir};

fn command_source(name: &str, argv: &str, extra: &str) -> String {
    format!("[sources.{name}]\ntype = \"command\"\nargv = {argv}\n{extra}\n")
}

#[test]
fn pass_and_gopass_entries_are_served_and_failures_are_told_apart() {
    let dir = TestDir::new();
    let store = PassStore::new(&dir);
    store.insert("app/db", b"pw-1\n");
    store.insert("app/multi", b"line1\nline2\n");
    store.insert("app/canary", format!("{CANARY}\n").as_bytes());
    store.insert_corrupt("app/broken");
    let env = r#"env_passthrough = ["PATH", "GNUPGHOME", "PASSWORD_STORE_DIR"]
not_found_exit_codes = [1]"#;
    let sources = [
        command_source("pass", r#"["pass", "show", "{id}"]"#, env),
        command_source(
            "pass-raw",
            r#"["pass", "show", "{id}"]"#,
            &format!("{env}\ntrim_newline = false"),
        ),
        command_source("gopass", r#"["gopass", "show", "{id}"]"#, env),
    ]
    .concat();
    let store_env = store.env();
    let env: Vec<(&str, &str)> = store_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let agent = Agent::start_with_env(&dir, &agent_config("", &sources), &env);

    for source in ["pass", "gopass"] {
        let db = agent.secret(&format!("{source}/app/db"));
        assert_eq!((db.status, db.text().as_str()), (200, "pw-1"), "{source}");
        assert_eq!(
            agent.secret(&format!("{source}/app/multi")).text(),
            "line1\nline2",
            "{source}: only the last newline is trimmed"
        );
        assert_eq!(
            agent.secret(&format!("{source}/app/canary")).body,
            CANARY.as_bytes()
        );
        let missing = agent.secret(&format!("{source}/app/nope"));
        assert_eq!(
            (missing.status, missing.error_code().as_str()),
            (404, "not_found"),
            "{source}: {}",
            missing.text()
        );
    }
    assert_eq!(agent.secret("pass-raw/app/db").text(), "pw-1\n");

    // gpg cannot decrypt: pass exits 2, which is not a not-found status.
    let broken = agent.secret("pass/app/broken");
    assert_eq!(
        (broken.status, broken.error_code().as_str()),
        (502, "upstream_unavailable"),
        "{}",
        broken.text()
    );
    assert!(!broken.text().contains("gpg"), "{}", broken.text());
    let log = agent.log_text();
    assert!(log.contains("exited with status 2"), "{log}");
    assert!(
        !log.contains("gpg:") && !log.contains("decrypt"),
        "the command's stderr reached the log"
    );
    assert!(!log.contains("pw-1"), "a value reached the log");

    // An id that the command would read as an option never runs it.
    for id in ["-h", "--version"] {
        let resp = agent.secret(&format!("pass/{id}"));
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (400, "bad_request"),
            "{id}"
        );
    }
}

#[test]
fn commands_get_a_cleared_environment_a_timeout_and_an_output_limit() {
    let dir = TestDir::new();
    let sources = [
        command_source(
            "printenv",
            r#"["printenv", "{id}"]"#,
            "env_passthrough = [\"PASSED\"]\nnot_found_exit_codes = [1]",
        ),
        command_source("sleep", r#"["sleep", "{id}"]"#, "timeout_secs = 1"),
        command_source("zeros", r#"["head", "-c", "{id}", "/dev/zero"]"#, ""),
        command_source("args", r#"["/usr/bin/printf", "%s|", "{id}", "x y"]"#, ""),
    ]
    .concat();
    let agent = Agent::start_with_env(
        &dir,
        &agent_config("", &sources),
        &[("PASSED", "passed-value"), ("NOT_PASSED", "hidden")],
    );

    assert_eq!(agent.secret("printenv/PASSED").text(), "passed-value");
    for hidden in ["NOT_PASSED", "PATH", "HOME"] {
        assert_eq!(
            agent.secret(&format!("printenv/{hidden}")).status,
            404,
            "{hidden} reached the command"
        );
    }
    // `{id}` is one argument, the other elements are passed as written (no shell, no splitting).
    assert_eq!(agent.secret("args/a+b=c").text(), "a+b=c|x y|");

    let started = Instant::now();
    let slow = agent.secret("sleep/30");
    assert_eq!(
        (slow.status, slow.error_code().as_str()),
        (504, "upstream_unavailable"),
        "{}",
        slow.text()
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    let max = 4 * 1024 * 1024;
    let full = agent.secret(&format!("zeros/{max}"));
    assert_eq!((full.status, full.body.len()), (200, max));
    let over = agent.secret(&format!("zeros/{}", max + 1));
    assert_eq!(
        (over.status, over.error_code().as_str()),
        (502, "upstream_bad_reply"),
        "{}",
        over.text()
    );
}
