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
    // Raise the core limit the agent inherits, so that only the agent's own setrlimit can make
    // it 0 (`&&`: the agent does not start if the shell could not raise it).
    let agent = Agent::start_as_with_ulimit(&dir, &config, 65534, "-c unlimited");
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
    // "Max core file size  SOFT  HARD  bytes": both limits are 0.
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(fields[4..6], ["0", "0"], "{core}");
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
    let config = file_config("[sources.env]\ntype = \"env\"\nprefix = \"APP_TEST_\"\n")
        .replace(
            "[cache]",
            &format!("[audit]\nfile = \"{}\"\n\n[cache]", audit.display()),
        )
        .replace(
            r#"secrets = ["files/*"]"#,
            r#"secrets = ["files/*", "env/*"]"#,
        );
    let agent = Agent::start_with_env(&dir, &config, &[("APP_TEST_CANARY", CANARY)]);
    // Every path a value can take: raw, JSON, field, errors about the value, a denied caller,
    // from the file source and from the env source.
    assert_eq!(agent.secret("env/CANARY").body, CANARY.as_bytes());
    let env_json = agent.request(
        "GET",
        "/v1/secrets/env/CANARY",
        &[("Accept", "application/json")],
        b"",
    );
    assert_eq!(env_json.json()["value"], CANARY);
    let env_error = agent.get("/v1/secrets/env/CANARY?field=x");
    assert_eq!(env_error.status, 400);
    assert!(!env_error.text().contains(CANARY));
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
    let denied_env = agent.cli_as(Some(65534), &["get", "env/CANARY"]);
    assert!(String::from_utf8_lossy(&denied_env.stderr).contains("forbidden"));

    assert!(common::wait_until(
        std::time::Duration::from_secs(5),
        || {
            std::fs::read_to_string(&audit)
                .unwrap_or_default()
                .lines()
                .count()
                >= 11
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

/// The `/proc/PID/smaps` mappings whose `VmFlags` include `lo` (locked): (size in kB, flags).
fn locked_mappings(pid: u32) -> Vec<(u64, Vec<String>)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut out = Vec::new();
    let mut size = 0;
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Size:") {
            size = kb.trim().trim_end_matches(" kB").trim().parse().unwrap();
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            let flags: Vec<String> = flags.split_whitespace().map(str::to_owned).collect();
            if flags.iter().any(|f| f == "lo") {
                out.push((size, flags));
            }
        }
    }
    out
}

#[test]
fn secret_mappings_are_locked_never_dumped_and_wiped_on_fork() {
    let dir = TestDir::new();
    for i in 0..50 {
        dir.secret(&format!("small/{i}"), format!("small-value-{i}").as_bytes());
    }
    dir.secret("large", &vec![b'L'; 200 * 1024]);
    let agent = Agent::start(
        &dir,
        &file_config("").replace(
            "lock_memory = \"best-effort\"",
            "lock_memory = \"required\"",
        ),
    );
    for i in 0..50 {
        assert_eq!(agent.secret(&format!("files/small/{i}")).status, 200);
    }
    assert_eq!(agent.secret("files/large").body.len(), 200 * 1024);

    // Slab chunks of small values and the large value's own mapping: all locked (`lo`), out of
    // core dumps (`dd`, MADV_DONTDUMP) and wiped in a forked child (`wf`, MADV_WIPEONFORK).
    let locked = locked_mappings(agent.pid());
    let total: u64 = locked.iter().map(|(kb, _)| kb).sum();
    assert!(
        total >= 200 + 64,
        "only {total} kB locked in {} mapping(s): {locked:?}",
        locked.len()
    );
    for (kb, flags) in &locked {
        assert!(
            flags.iter().any(|f| f == "dd") && flags.iter().any(|f| f == "wf"),
            "a locked mapping of {kb} kB lacks dd/wf: {flags:?}"
        );
    }
}

#[test]
fn rendered_responses_are_held_in_locked_memory_while_they_are_written() {
    use std::io::{Read, Write};
    const MB: usize = 1024 * 1024;
    let dir = TestDir::new();
    let blob = "b".repeat(3 * MB / 2);
    dir.secret("big-json", format!(r#"{{"blob":"{blob}"}}"#).as_bytes());
    let agent = Agent::start(&dir, &file_config(""));
    let pid = agent.pid();
    // Cached first, so what grows below is the response, not the cache.
    assert_eq!(agent.secret("files/big-json").status, 200);
    let cached = status_field(pid, "VmLck:");

    for (path, accept) in [
        ("/v1/secrets/files/big-json?field=blob", "*/*"),
        ("/v1/secrets/files/big-json", "application/json"),
    ] {
        // A slow reader: the rendered response (1.5 MB, far more than the socket buffer) is
        // still being written while we look at the agent's locked memory.
        let mut slow = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
        write!(
            slow,
            "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut first = [0u8; 1024];
        slow.read_exact(&mut first).unwrap();
        let in_flight = status_field(pid, "VmLck:");
        assert!(
            in_flight >= cached + 1400,
            "{path}: VmLck {cached} kB cached, {in_flight} kB with the response in flight"
        );
        let mut rest = Vec::new();
        slow.read_to_end(&mut rest).unwrap();
        assert!(rest.len() > 3 * MB / 2 - 1024, "{path}: response cut");
        // Written and dropped: its locked mapping is gone again.
        assert!(
            common::wait_until(std::time::Duration::from_secs(10), || status_field(
                pid, "VmLck:"
            ) < cached + 1024),
            "{path}: VmLck still {} kB after the response",
            status_field(pid, "VmLck:")
        );
    }
}

#[test]
fn a_value_that_cannot_be_locked_is_503_memory_unavailable_under_required() {
    let dir = TestDir::new();
    dir.secret("small", b"fits");
    dir.secret("large", &vec![b'x'; 1024 * 1024]);
    dir.secret("canary", CANARY.as_bytes());
    let own = dir.path().join("run");
    std::fs::create_dir(&own).unwrap();
    nix::unistd::chown(&own, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let config = file_config("")
        .replace("{socket}", &own.join("agent.sock").display().to_string())
        .replace(
            "lock_memory = \"best-effort\"",
            "lock_memory = \"required\"",
        );
    // Unprivileged (no CAP_IPC_LOCK) with 256 KiB lockable: enough for start-up and the small
    // values' slab, not for a 1 MiB value.
    let agent = Agent::start_as_with_ulimit(&dir, &config, 65534, "-l 256");
    assert_eq!(agent.secret("files/small").body, b"fits");
    let large = agent.secret("files/large");
    assert_eq!(
        (large.status, large.error_code().as_str()),
        (503, "memory_unavailable"),
        "{}",
        large.text()
    );
    // Nothing was served from unlocked memory, and the agent goes on serving what fits.
    assert_eq!(agent.secret("files/canary").body, CANARY.as_bytes());
    assert_eq!(agent.secret("files/small").body, b"fits");
    assert!(status_field(agent.pid(), "VmLck:") <= 256);
}

#[test]
fn render_holds_the_rendered_template_in_locked_memory_while_it_writes_it() {
    use std::io::Read;
    const MB: usize = 1024 * 1024;
    let dir = TestDir::new();
    dir.secret("big", "r".repeat(3 * MB / 2).as_bytes());
    let agent = Agent::start(&dir, &file_config(""));
    let template = dir.path().join("big.tmpl");
    std::fs::write(&template, "value = {{ secret files/big }}\n").unwrap();
    // Its stdout is a pipe nobody reads yet: the client blocks in the write, the rendered bytes
    // (far more than the pipe holds) still in its memory.
    let mut render = common::command(common::bin())
        .arg("render")
        .arg(&template)
        .arg("--socket")
        .arg(&agent.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = render.stdout.take().unwrap();
    let mut first = [0u8; 1024];
    stdout.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"value = rrr"));
    let locked = status_field(render.id(), "VmLck:");
    assert!(
        locked >= 1400,
        "the render client holds only {locked} kB locked while it writes a 1.5 MB rendering"
    );
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    assert_eq!(first.len() + rest.len(), "value = \n".len() + 3 * MB / 2);
    assert!(render.wait().unwrap().success());
}
