//! Bad configuration: `check-config` and `serve` both refuse, naming the key and the reason, with
//! the config-error exit code (78) that `RestartPreventExitStatus=` relies on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::TestDir;

const GOOD: &str = r#"[server]
socket = "{socket}"
socket_mode = "0660"

[cache]
lock_memory = "best-effort"

[sources.files]
type = "file"
dir = "{secrets}"

[[allow]]
peer = { uid = 1000 }
secrets = ["files/*"]
"#;

fn run(args: &[&str], config: &std::path::Path) -> std::process::Output {
    common::command(common::bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn good_config_passes_with_a_one_line_summary() {
    let dir = TestDir::new();
    let config = dir.write_config(GOOD);
    let out = run(&["check-config"], &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("ok") && stdout.contains("1 source(s) [files]"),
        "{stdout}"
    );
}

#[test]
fn bad_configs_are_refused_by_check_config_and_serve_naming_the_key() {
    let dir = TestDir::new();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            GOOD.replace(
                "socket_mode = \"0660\"",
                "socket_mode = \"0660\"\nsocket_moed = \"0660\"",
            ),
            "socket_moed",
        ),
        (
            "bad mode",
            GOOD.replace("\"0660\"", "\"0999\""),
            "server.socket_mode",
        ),
        (
            "missing dir",
            GOOD.replace("dir = \"{secrets}\"", "dir = \"{dir}/no-such-dir\""),
            "sources.files.dir",
        ),
        (
            "duplicate source name",
            format!("{GOOD}\n[sources.files]\ntype = \"env\"\n"),
            "files",
        ),
        (
            "unknown source type",
            GOOD.replace("type = \"file\"", "type = \"floppy\""),
            "floppy",
        ),
        (
            "rule names no source",
            GOOD.replace("\"files/*\"", "\"filez/*\""),
            "allow[0].secrets[0]",
        ),
        (
            "bad lock_memory",
            GOOD.replace("\"best-effort\"", "\"maybe\""),
            "cache.lock_memory",
        ),
        (
            "no operator connections",
            GOOD.replace(
                "socket_mode = \"0660\"",
                "socket_mode = \"0660\"\nmax_operator_connections = 0",
            ),
            "server.max_operator_connections",
        ),
        (
            "zero ttl",
            GOOD.replace("[cache]", "[cache]\nttl_secs = 0"),
            "cache.ttl_secs",
        ),
        ("not toml", "[server\nsocket = 1".to_owned(), "config.toml"),
        (
            "a source takes the name of a vault source's transit side",
            format!(
                "{GOOD}\n[sources.vault]\ntype = \"vault\"\naddress = \"http://127.0.0.1:1\"\n\
                 kv_mount = \"secret\"\ntransit_mount = \"transit\"\n\
                 auth = {{ method = \"token\", token_file = \"{{dir}}/vault-token\" }}\n\n\
                 [sources.vault-transit]\ntype = \"env\"\nprefix = \"X_\"\n"
            ),
            "sources.vault-transit",
        ),
    ];
    let token = dir.path().join("vault-token");
    std::fs::write(&token, "s.not-used").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    for (what, text, key) in cases {
        let config = dir.write_config(&text);
        for command in ["check-config", "serve"] {
            let out = run(&[command], &config);
            assert_eq!(out.status.code(), Some(78), "{what} / {command}: {out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(key), "{what} / {command}: {stderr}");
            assert!(
                stderr.contains("config.toml"),
                "{what} / {command}: names the file: {stderr}"
            );
        }
        assert!(
            !dir.socket().exists(),
            "{what}: serve must not have bound the socket"
        );
    }
}

#[test]
fn missing_config_file_is_a_config_error() {
    let out = run(
        &["check-config"],
        std::path::Path::new("/nonexistent/credagent.toml"),
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/credagent.toml"));
}

#[test]
fn shipped_example_and_demo_configs_are_valid() {
    let example = common::repo_root().join("config.example.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    // The example points at absolute system paths; check it against this checkout instead.
    let dir = TestDir::new();
    let config = dir.write_config(
        &text
            .replace("/etc/credagent/secrets", "{secrets}")
            .replace("/run/credagent/", "{dir}/"),
    );
    let out = run(&["check-config"], &config);
    assert!(
        out.status.success(),
        "config.example.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let demo = common::command(common::bin())
        .args(["check-config", "--demo"])
        .current_dir(common::repo_root())
        .output()
        .unwrap();
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
}

#[test]
fn example_backend_sections_are_valid_when_uncommented() {
    // config.example.toml ships the sources that contact their backends at start commented
    // out; uncommented, they must still pass check-config, which does not.
    let text = std::fs::read_to_string(common::repo_root().join("config.example.toml")).unwrap();
    let mut uncommented = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.starts_with("# [sources.") {
            in_block = true;
        }
        let line = if !in_block {
            line.to_owned()
        } else if line.starts_with("# #") || line.trim() == "#" {
            String::new()
        } else if let Some(rest) = line.strip_prefix("# ") {
            rest.to_owned()
        } else {
            in_block = false;
            line.to_owned()
        };
        uncommented.push(line);
    }
    let dir = TestDir::new();
    for file in ["role_id", "secret_id"] {
        // Credential files must be private to the agent.
        let path = dir.path().join(file);
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        dir.path().join("vault-ca.pem"),
    )
    .unwrap();
    let config = dir.write_config(
        &uncommented
            .join("\n")
            .replace("/etc/credagent/secrets", "{secrets}")
            .replace("/run/credagent/", "{dir}/")
            .replace("/etc/credagent/", "{dir}/"),
    );
    let out = run(&["check-config"], &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("[aws, env, files, idp, pass, s3, ssm, vault]"),
        "{summary}"
    );
}

#[test]
fn relative_socket_audit_and_control_paths_are_relative_to_the_config_file() {
    let dir = TestDir::new();
    dir.secret("x", b"relative-ok");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nsocket = \"run/agent.sock\"\n\n[control]\nfile = \"flush-control\"\n\n\
             [audit]\nfile = \"audit.log\"\n\n[cache]\nlock_memory = \"best-effort\"\n\n\
             [sources.files]\ntype = \"file\"\ndir = \"secrets\"\n\n\
             [[allow]]\npeer = {{ uid = {} }}\nsecrets = [\"files/*\"]\n",
            nix::unistd::geteuid().as_raw()
        ),
    )
    .unwrap();
    // Started from somewhere else: nothing may land in the working directory.
    let elsewhere = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let child = common::command(common::bin())
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(elsewhere.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _guard = common::ChildGuard(child);
    let socket = dir.path().join("run/agent.sock");
    assert!(
        common::wait_until(std::time::Duration::from_secs(20), || socket.exists()),
        "no socket at {}; log:\n{}",
        socket.display(),
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
    );
    let resp = common::try_request(&socket, "GET", "/v1/secrets/files/x", &[], b"").unwrap();
    assert_eq!(
        (resp.status, resp.body.as_slice()),
        (200, &b"relative-ok"[..])
    );
    assert!(common::wait_until(
        std::time::Duration::from_secs(10),
        || {
            std::fs::read_to_string(dir.path().join("audit.log"))
                .is_ok_and(|t| t.contains("files/x"))
        }
    ));
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

/// Starts `serve` on `config`; waits until it answers health or exits (10 s at most). Returns
/// the exit code if it exited, or the running child.
fn serve_or_exit(
    config: &std::path::Path,
    socket: &std::path::Path,
) -> Result<common::ChildGuard, Option<i32>> {
    let mut child = common::ChildGuard(
        common::command(common::bin())
            .args(["serve", "--config"])
            .arg(config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.0.try_wait().unwrap() {
            return Err(status.code());
        }
        if common::try_request(socket, "GET", "/v1/health", &[], b"").is_ok_and(|r| r.status == 200)
        {
            return Ok(child);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("serve neither answered nor exited in 10 s");
}

#[test]
fn uid_65534_cannot_read_through_a_rule_written_without_peer_or_with_an_empty_one() {
    for peer_line in ["", "peer = {}\n"] {
        let dir = TestDir::new();
        dir.secret("app", b"app-value");
        let config = dir.write_config(&format!(
            "[server]\nsocket = \"{{socket}}\"\nsocket_mode = \"0666\"\n\n[cache]\nlock_memory = \"best-effort\"\n\n\
             [sources.files]\ntype = \"file\"\ndir = \"{{secrets}}\"\n\n[[allow]]\n{peer_line}secrets = [\"files/app\"]\n"
        ));
        match serve_or_exit(&config, &dir.socket()) {
            Ok(_agent) => {
                let attacker =
                    common::request_as(65534, &dir.socket(), "GET", "/v1/secrets/files/app");
                panic!(
                    "a rule with {peer_line:?} was accepted; uid 65534 got {} {:?}",
                    attacker.status,
                    attacker.text()
                );
            }
            Err(code) => assert_eq!(code, Some(78), "{peer_line:?}"),
        }
        let out = run(&["check-config"], &config);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("allow[0].peer"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Said on purpose, it loads, with a warning from check-config.
    let dir = TestDir::new();
    dir.secret("app", b"app-value");
    let config = dir.write_config(
        "[server]\nsocket = \"{socket}\"\n\n[cache]\nlock_memory = \"best-effort\"\n\n\
         [sources.files]\ntype = \"file\"\ndir = \"{secrets}\"\n\n[[allow]]\npeer = { any = true }\nsecrets = [\"files/app\"]\n",
    );
    let out = run(&["check-config"], &config);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("matches every local caller"), "{text}");
}
