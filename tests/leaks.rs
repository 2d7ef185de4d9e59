//! Secrets stay in memory that is locked, not dumpable and never logged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Agent, CANARY, TestDir, file_config};

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
}

#[test]
fn cached_secrets_are_locked_and_the_process_is_not_dumpable() {
    let dir = TestDir::new();
    for i in 0..300 {
        dir.secret(&format!("many/{i}"), &vec![b'x'; 1000]);
    }
    // Run the agent unprivileged, as deployed, with its socket in a directory it owns.
    let own = dir.path().join("run");
    std::fs::create_dir(&own).unwrap();
    nix::unistd::chown(&own, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let config = file_config(&format!(
        "[[allow]]\npeer = {{ uid = {} }}\nsecrets = [\"files/*\"]\n",
        nix::unistd::geteuid()
    ))
    .replace("{socket}", &own.join("agent.sock").display().to_string())
    .replace(
        "lock_memory = \"best-effort\"",
        "lock_memory = \"required\"",
    );
    let agent = Agent::start_as(&dir, &config, 65534);
    let pid = agent.pid();

    let before = status_field(pid, "VmLck:");
    for i in 0..300 {
        assert_eq!(agent.secret(&format!("files/many/{i}")).status, 200);
    }
    let after = status_field(pid, "VmLck:");
    assert!(
        after >= before + 256,
        "VmLck grew from {before} kB to {after} kB only"
    );
    let locked = agent.metric("credagent_locked_bytes ") as u64;
    assert!(locked >= 300 * 1000, "locked_bytes metric {locked}");

    // PR_SET_DUMPABLE=0: the kernel hands /proc/PID files of a non-dumpable process to root even
    // though the agent runs as uid 65534; and RLIMIT_CORE is 0.
    let meta = std::fs::metadata(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        0,
        "agent is dumpable"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
}

#[test]
fn canary_never_reaches_log_audit_or_error_bodies() {
    let dir = TestDir::new();
    dir.secret("canary", CANARY.as_bytes());
    dir.secret(
        "canary-json",
        format!(r#"{{"password":"{CANARY}"}}"#).as_bytes(),
    );
    let audit = dir.path().join("audit.log");
    let config = file_config("").replace(
        "[cache]",
        &format!("[audit]\nfile = \"{}\"\n\n[cache]", audit.display()),
    );
    let agent = Agent::start(&dir, &config);
    // Every path a value can take: raw, JSON, field, errors about the value, a denied caller.
    assert_eq!(agent.secret("files/canary").body, CANARY.as_bytes());
    let json = agent.request(
        "GET",
        "/v1/secrets/files/canary",
        &[("Accept", "application/json")],
        b"",
    );
    assert_eq!(json.json()["value"], CANARY);
    assert_eq!(
        agent
            .get("/v1/secrets/files/canary-json?field=password")
            .body,
        CANARY.as_bytes()
    );
    for path in [
        "/v1/secrets/files/canary?field=password",
        "/v1/secrets/files/canary-json?field=nope",
        "/v1/secrets/files/canary?version=1",
    ] {
        let resp = agent.get(path);
        assert!(resp.status >= 400, "{path}");
        assert!(!resp.text().contains(CANARY), "{path}: {}", resp.text());
    }
    let denied = agent.cli_as(Some(65534), &["get", "files/canary"]);
    assert!(!String::from_utf8_lossy(&denied.stderr).contains(CANARY));

    assert!(common::wait_until(
        std::time::Duration::from_secs(5),
        || {
            std::fs::read_to_string(&audit)
                .unwrap_or_default()
                .lines()
                .count()
                >= 7
        }
    ));
    let lines = std::fs::read_to_string(&audit).unwrap();
    assert!(!lines.contains(CANARY), "canary in audit log:\n{lines}");
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["time"].is_string() && v["uid"].is_u64() && v["status"].is_u64(),
            "{line}"
        );
    }
    let denied_line = lines
        .lines()
        .find(|l| l.contains("\"decision\":\"deny\""))
        .expect("a deny line");
    assert!(
        denied_line.contains("\"uid\":65534") && denied_line.contains("files/canary"),
        "{denied_line}"
    );
    assert!(lines.contains("\"cache\":\"hit\"") && lines.contains("\"cache\":\"miss\""));
    // The harness checks the agent's own log for the canary when it is dropped.
}
