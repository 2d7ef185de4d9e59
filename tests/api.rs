//! The HTTP API over the Unix socket: reads, fields, JSON, bad requests, and that the agent keeps
//! serving after each of them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Agent, CANARY, TestDir, file_config};

fn agent_with_demo_secrets() -> (TestDir, Agent) {
    let dir = TestDir::new();
    dir.secret("demo-password", b"s3cr3t");
    dir.secret(
        "app/db",
        br#"{"user":"app","password":"pa\"ss","port":5432}"#,
    );
    dir.secret("binary", &[0u8, 159, 146, 150, 255, 10]);
    dir.secret("canary", CANARY.as_bytes());
    let agent = Agent::start(&dir, &file_config(""));
    (dir, agent)
}

#[test]
fn reads_exact_bytes_text_and_binary() {
    let (_dir, agent) = agent_with_demo_secrets();
    let text = agent.secret("files/demo-password");
    assert_eq!(text.status, 200);
    assert_eq!(text.body, b"s3cr3t");
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(text.header("cache-control"), Some("no-store"));

    let binary = agent.secret("files/binary");
    assert_eq!(binary.status, 200);
    assert_eq!(binary.body, [0u8, 159, 146, 150, 255, 10]);
    assert_eq!(
        binary.header("content-type"),
        Some("application/octet-stream")
    );

    // Nested ids and percent-escaped slashes name the same secret.
    assert_eq!(agent.secret("files/app/db").status, 200);
    assert_eq!(
        agent.secret("files/app%2Fdb").body,
        agent.secret("files/app/db").body
    );
}

#[test]
fn field_extraction_and_json_format() {
    let (_dir, agent) = agent_with_demo_secrets();
    let field = agent.get("/v1/secrets/files/app/db?field=password");
    assert_eq!(field.status, 200);
    assert_eq!(field.body, br#"pa"ss"#);
    assert_eq!(
        agent.get("/v1/secrets/files/app/db?field=port").body,
        b"5432"
    );

    let missing = agent.get("/v1/secrets/files/app/db?field=nope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "field_not_found");

    let not_json = agent.get("/v1/secrets/files/demo-password?field=x");
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.error_code(), "bad_field");

    let json = agent.request(
        "GET",
        "/v1/secrets/files/demo-password",
        &[("Accept", "application/json")],
        b"",
    );
    assert_eq!(json.status, 200);
    let v = json.json();
    assert_eq!(v["name"], "demo-password");
    assert_eq!(v["source"], "files");
    assert_eq!(v["value"], "s3cr3t");
    assert!(v["version"].is_null());
    assert!(v["fetched_at"].as_str().unwrap().ends_with('Z'));

    let bin = agent.request(
        "GET",
        "/v1/secrets/files/binary",
        &[("Accept", "application/json")],
        b"",
    );
    assert_eq!(bin.json()["encoding"], "base64");
    assert_eq!(bin.json()["value"], "AJ+Slv8K");
}

#[test]
fn health_answers_any_peer() {
    let (_dir, agent) = agent_with_demo_secrets();
    let health = agent.get("/v1/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
}

#[test]
fn bad_requests_get_the_right_status_and_the_agent_keeps_serving() {
    let (_dir, agent) = agent_with_demo_secrets();
    let cases: &[(&str, &str, u16, &str)] = &[
        (
            "GET",
            "/v1/secrets/files/../secrets/demo-password",
            400,
            "invalid_name",
        ),
        (
            "GET",
            "/v1/secrets/files/%2e%2e/etc/passwd",
            400,
            "invalid_name",
        ),
        ("GET", "/v1/secrets/files/a%00b", 400, "invalid_name"),
        ("GET", "/v1/secrets/files/a%zz", 400, "bad_request"),
        (
            "GET",
            "/v1/secrets/files/demo-password?bogus=1",
            400,
            "bad_parameter",
        ),
        (
            "GET",
            "/v1/secrets/files/demo-password?version_stage=AWSCURRENT",
            400,
            "bad_selector",
        ),
        ("GET", "/v1/secrets/files/no-such-secret", 404, "not_found"),
        ("GET", "/v1/secrets/nosource/x", 403, "forbidden"),
        ("GET", "/v1/nothing-here", 404, "no_route"),
        (
            "DELETE",
            "/v1/secrets/files/demo-password",
            405,
            "method_not_allowed",
        ),
        ("PUT", "/v1/health", 405, "method_not_allowed"),
    ];
    for (method, path, status, code) in cases {
        let resp = agent.request(method, path, &[], b"");
        assert_eq!(resp.status, *status, "{method} {path}: {}", resp.text());
        assert_eq!(&resp.error_code(), code, "{method} {path}");
        assert_eq!(
            agent.secret("files/demo-password").status,
            200,
            "after {method} {path}"
        );
    }

    // Oversized request head: 431.
    let big = "a".repeat(64 * 1024);
    let resp = agent.request("GET", "/v1/health", &[("X-Big", &big)], b"");
    assert_eq!(resp.status, 431);
    assert_eq!(agent.secret("files/demo-password").status, 200);

    // Oversized body on the flush endpoint: 413.
    let body = vec![b' '; 100 * 1024];
    let resp = agent.request("POST", "/v1/cache/flush", &[], &body);
    assert_eq!(resp.status, 413);
    assert_eq!(resp.error_code(), "payload_too_large");

    // Garbage bytes on the socket: a 400 from the HTTP layer, or a closed connection.
    for garbage in [
        &b"\x00\x01\x02\xff\xfe garbage\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"NOT HTTP AT ALL",
    ] {
        let reply = agent.raw(garbage);
        if !reply.is_empty() {
            let resp = common::parse_response(&reply).expect("an HTTP response");
            assert_eq!(resp.status, 400, "garbage {garbage:?}");
        }
        assert_eq!(agent.secret("files/demo-password").status, 200);
    }

    // Error bodies never carry a value.
    let resp = agent.get("/v1/secrets/files/canary?field=x");
    assert_eq!(resp.status, 400);
    assert!(!resp.text().contains(CANARY));
}

#[test]
fn cli_get_prints_value_and_errors_on_stderr() {
    let (_dir, agent) = agent_with_demo_secrets();
    let ok = agent.cli_as(None, &["get", "files/demo-password"]);
    assert!(ok.status.success());
    assert_eq!(ok.stdout, b"s3cr3t");
    assert!(ok.stderr.is_empty());

    let field = agent.cli_as(None, &["get", "files/app/db", "--field", "user"]);
    assert_eq!(field.stdout, b"app");

    let missing = agent.cli_as(None, &["get", "files/nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such secret"));
}

#[test]
fn cli_render_fills_a_template_into_a_private_file() {
    let (dir, agent) = agent_with_demo_secrets();
    let template = dir.path().join("app.conf.tmpl");
    std::fs::write(
        &template,
        "user = {{ secret files/app/db field=user }}\npass = {{secret files/demo-password}}\n",
    )
    .unwrap();
    let output = dir.path().join("app.conf");
    let out = agent.cli_as(
        None,
        &[
            "render",
            template.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "user = app\npass = s3cr3t\n"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&output).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // A missing secret fails the whole render and leaves the old output alone.
    std::fs::write(&template, "x = {{ secret files/nope }}\n").unwrap();
    let out = agent.cli_as(
        None,
        &[
            "render",
            template.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "user = app\npass = s3cr3t\n"
    );

    // A malformed template names the line.
    std::fs::write(&template, "ok\n{{ secret files/../x }}\n").unwrap();
    let out = agent.cli_as(None, &["render", template.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}

#[test]
fn cli_exec_runs_a_command_with_secrets_in_its_environment() {
    let (_dir, agent) = agent_with_demo_secrets();
    // `cli_as` appends `--socket` at the end, which would land in the command: use the environment.
    let out = std::process::Command::new(common::bin())
        .env("CREDAGENT_SOCKET", &agent.socket)
        .args([
            "exec",
            "--env",
            "PW=files/demo-password",
            "--env",
            "DB_USER=files/app/db#user",
            "--",
            "sh",
            "-c",
            "printf '%s:%s' \"$PW\" \"$DB_USER\"",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"s3cr3t:app");

    let denied = std::process::Command::new(common::bin())
        .env("CREDAGENT_SOCKET", &agent.socket)
        .args(["exec", "--env", "X=files/nope", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(denied.status.code(), Some(1));
}
