//! The HTTP API over the Unix socket: reads, fields, JSON, bad requests, and that the agent keeps
//! serving after each of them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Agent, CANARY, TestDir, file_config, wait_until};
use std::os::unix::process::CommandExt;
use std::time::Duration;

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

/// The agent answers a read in the header map the request was parsed into (emptied first): a
/// caller that sends response headers of its own (`Set-Cookie`, a false `ETag`, a long-lived
/// `Cache-Control`) gets none of them back, on the first request of a connection or a later one.
#[test]
fn headers_a_caller_sends_never_come_back_in_the_response() {
    let (_dir, agent) = agent_with_demo_secrets();
    let honest = agent.secret("files/demo-password");
    let planted = "Set-Cookie: planted=1\r\nETag: \"planted\"\r\nCache-Control: max-age=86400\r\n\
                   Content-Type: text/html\r\nX-Planted: 1\r\n";
    let raw = agent.raw(
        format!(
            "GET /v1/secrets/files/demo-password HTTP/1.1\r\nHost: x\r\n{planted}\r\n\
             GET /v1/secrets/files/demo-password HTTP/1.1\r\nHost: x\r\n{planted}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    let lower = text.to_ascii_lowercase();
    for planted in ["set-cookie", "planted", "max-age", "text/html"] {
        assert!(!lower.contains(planted), "{planted} came back: {text}");
    }
    // Each answer carries the read's own headers, as the honest read's.
    let etag = honest.header("etag").unwrap();
    assert_eq!(text.matches(&format!("etag: {etag}")).count(), 2, "{text}");
    assert_eq!(text.matches("cache-control: no-store").count(), 2, "{text}");
    assert_eq!(
        text.matches("content-type: text/plain; charset=utf-8")
            .count(),
        2,
        "{text}"
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

/// After a client read `secret` and then `last`, the audit holds one read of each. Audit lines
/// are written in batches; the last secret fetched is the last line queued.
fn assert_read_once(agent: &Agent, secret: &str, last: &str) {
    assert!(wait_until(Duration::from_secs(5), || {
        agent.audit_reads(last).len() == 1
    }));
    assert_eq!(agent.audit_reads(secret).len(), 1, "{}", agent.log_text());
}

/// `credagent exec ARGS…` against `agent`, its socket in the environment (`cli_as` appends
/// `--socket` at the end, which would land in the command).
fn exec(agent: &Agent, args: &[&str]) -> std::process::Output {
    common::command(common::bin())
        .env("CREDAGENT_SOCKET", &agent.socket)
        .arg("exec")
        .args(args)
        .output()
        .unwrap()
}

/// `credagent render TEMPLATE` (to stdout) with `text` as the template; its stdout after a
/// success.
fn render_stdout(agent: &Agent, template: &std::path::Path, text: &str) -> Vec<u8> {
    std::fs::write(template, text).unwrap();
    let out = agent.cli_as(None, &["render", template.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Plain `render` asks the agent once for a secret its template names twice (as `render --watch`
/// does): one audit line, one read, both places filled.
#[test]
fn cli_render_fetches_a_secret_named_twice_once() {
    let (dir, agent) = agent_with_demo_secrets();
    let rendered = render_stdout(
        &agent,
        &dir.path().join("twice.tmpl"),
        "a={{ secret files/demo-password }}\nb={{secret files/demo-password}}\nu={{ secret files/app/db field=user }}\n",
    );
    assert_eq!(rendered, b"a=s3cr3t\nb=s3cr3t\nu=app\n");
    assert_read_once(&agent, "files/demo-password", "files/app/db");
}

#[test]
fn cli_exec_runs_a_command_with_secrets_in_its_environment() {
    let (_dir, agent) = agent_with_demo_secrets();
    let out = exec(
        &agent,
        &[
            "--env",
            "PW=files/demo-password",
            "--env",
            "DB_USER=files/app/db#user",
            "--",
            "sh",
            "-c",
            "printf '%s:%s' \"$PW\" \"$DB_USER\"",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"s3cr3t:app");

    let denied = exec(&agent, &["--env", "X=files/nope", "--", "true"]);
    assert_eq!(denied.status.code(), Some(1));
}

/// Plain `exec` asks the agent once for a secret bound to two variables (as `exec --watch`
/// does): one audit line, both variables set.
#[test]
fn cli_exec_fetches_a_secret_bound_twice_once() {
    let (_dir, agent) = agent_with_demo_secrets();
    let out = exec(
        &agent,
        &[
            "--env",
            "A=files/demo-password",
            "--env",
            "B=files/demo-password",
            "--env",
            "U=files/app/db#user",
            "--",
            "sh",
            "-c",
            "printf '%s:%s:%s' \"$A\" \"$B\" \"$U\"",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"s3cr3t:s3cr3t:app");
    assert_read_once(&agent, "files/demo-password", "files/app/db");
}

/// The client commands lock what they hold best effort (README "Memory locking"): a caller
/// whose memlock limit is 0 still renders and execs, with the values in ordinary memory.
#[test]
fn cli_render_and_exec_work_for_a_caller_whose_memlock_limit_is_zero() {
    let dir = TestDir::new();
    dir.secret("pw", b"s3cr3t");
    let agent = Agent::start(
        &dir,
        &file_config("[[allow]]\npeer = { uid = 65534 }\nsecrets = [\"files/*\"]\n"),
    );
    let template = dir.path().join("t.tmpl");
    std::fs::write(&template, "x={{ secret files/pw }}\n").unwrap();
    let nobody_without_memlock = |args: &[&str]| {
        common::command("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["/bin/sh", "-c", "ulimit -l 0 && exec \"$0\" \"$@\""])
            .arg(common::bin())
            .args(args)
            .env("CREDAGENT_SOCKET", &agent.socket)
            .output()
            .unwrap()
    };
    let rendered = nobody_without_memlock(&["render", template.to_str().unwrap()]);
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert_eq!(rendered.stdout, b"x=s3cr3t\n");
    let execed = nobody_without_memlock(&[
        "exec",
        "--env",
        "P=files/pw",
        "--",
        "sh",
        "-c",
        "printf %s \"$P\"",
    ]);
    assert!(
        execed.status.success(),
        "{}",
        String::from_utf8_lossy(&execed.stderr)
    );
    assert_eq!(execed.stdout, b"s3cr3t");
}

#[test]
fn env_source_serves_the_agents_prefixed_variables() {
    let dir = TestDir::new();
    let config = file_config("[sources.env]\ntype = \"env\"\nprefix = \"APP_TEST_\"\n").replace(
        r#"secrets = ["files/*"]"#,
        r#"secrets = ["files/*", "env/*"]"#,
    );
    let agent = Agent::start_with_env(
        &dir,
        &config,
        &[
            ("APP_TEST_DB_PASSWORD", CANARY),
            ("APP_TEST_APP", r#"{"user":"app"}"#),
            ("UNPREFIXED", "not-served"),
        ],
    );
    let raw = agent.secret("env/DB_PASSWORD");
    assert_eq!((raw.status, raw.body.as_slice()), (200, CANARY.as_bytes()));
    let json = agent.request(
        "GET",
        "/v1/secrets/env/DB_PASSWORD",
        &[("Accept", "application/json")],
        b"",
    );
    assert_eq!(json.json()["value"], CANARY);
    assert_eq!(json.json()["source"], "env");
    assert_eq!(agent.get("/v1/secrets/env/APP?field=user").body, b"app");
    // Only `{prefix}{id}` is read: the variable without the prefix is not a secret.
    let unprefixed = agent.secret("env/UNPREFIXED");
    assert_eq!(
        (unprefixed.status, unprefixed.error_code().as_str()),
        (404, "not_found")
    );
    // Ids are variable-name characters.
    let bad = agent.secret("env/DB.PASSWORD");
    assert_eq!(
        (bad.status, bad.error_code().as_str()),
        (400, "bad_request")
    );
    let not_json = agent.get("/v1/secrets/env/DB_PASSWORD?field=x");
    assert!(!not_json.text().contains(CANARY));
    // The harness checks the agent's log for the canary when it is dropped.
}

#[test]
fn head_is_accepted_wherever_get_is() {
    let (_dir, agent) = agent_with_demo_secrets();
    for path in [
        "/v1/secrets/files/demo-password",
        "/v1/secrets/files/app/db?field=user",
        "/v1/health",
        "/v1/metrics",
    ] {
        let get = agent.get(path);
        let head = agent.request("HEAD", path, &[], b"");
        assert_eq!(get.status, 200, "GET {path}");
        assert_eq!(head.status, 200, "HEAD {path}: {}", head.text());
        assert!(head.body.is_empty(), "HEAD {path} sent a body");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "{path}"
        );
        if path.starts_with("/v1/secrets/") {
            assert_eq!(head.header("cache-control"), Some("no-store"));
            assert_eq!(
                head.header("content-length"),
                Some(get.body.len().to_string().as_str()),
                "{path}"
            );
        }
    }
    // The same answers as GET for what GET refuses, without a body.
    let missing = agent.request("HEAD", "/v1/secrets/files/nope", &[], b"");
    assert_eq!((missing.status, missing.body.len()), (404, 0));
    let denied = common::request_as(65534, &agent.socket, "HEAD", "/v1/metrics");
    assert_eq!((denied.status, denied.body.len()), (403, 0));
    // And HEAD is not a way around POST-only endpoints.
    let flush = agent.request("HEAD", "/v1/cache/flush", &[], b"");
    assert_eq!(flush.status, 405);
}

#[test]
fn metrics_are_for_admin_peers_only() {
    let (_dir, agent) = agent_with_demo_secrets();
    let admin = agent.get("/v1/metrics");
    assert_eq!(admin.status, 200);
    assert!(admin.text().contains("credagent_requests_total"));
    let nobody = common::request_as(65534, &agent.socket, "GET", "/v1/metrics");
    assert_eq!(
        (nobody.status, nobody.error_code().as_str()),
        (403, "forbidden"),
        "{}",
        nobody.text()
    );
    assert!(!nobody.text().contains("credagent_"));
}

#[test]
fn fifos_and_devices_in_the_secrets_directory_are_not_found() {
    let (dir, agent) = agent_with_demo_secrets();
    nix::unistd::mkfifo(&dir.secrets().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    // The node of /dev/null: readable (it would answer 200 with no bytes if it were served).
    nix::sys::stat::mknod(
        &dir.secrets().join("null-device"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    std::fs::create_dir(dir.secrets().join("a-directory")).unwrap();
    for name in ["files/fifo", "files/null-device", "files/a-directory"] {
        let resp = agent.secret(name);
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (404, "not_found"),
            "{name}: {}",
            resp.text()
        );
    }
    assert_eq!(agent.secret("files/demo-password").status, 200);
}

#[test]
fn file_values_are_capped_at_4_mib() {
    const MIB: usize = 1024 * 1024;
    let (dir, agent) = agent_with_demo_secrets();
    let at_cap: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8).collect();
    dir.secret("at-cap", &at_cap);
    dir.secret("over-cap", &vec![b'x'; 4 * MIB + 1]);
    let ok = agent.secret("files/at-cap");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.body == at_cap, "a 4 MiB value came back altered");
    let over = agent.secret("files/over-cap");
    assert_eq!(
        (over.status, over.error_code().as_str()),
        (502, "upstream_bad_reply"),
        "{}",
        over.text()
    );
}

#[test]
fn a_flood_of_bad_requests_is_logged_at_most_20_lines_a_second_with_the_rest_counted() {
    let (_dir, agent) = agent_with_demo_secrets();
    const FLOOD: usize = 500;
    let started = std::time::Instant::now();
    let replies = common::pipelined(
        &agent.socket,
        "GET /v1/secrets/files/a%zz HTTP/1.1\r\nHost: x\r\n\r\n",
        FLOOD,
    );
    let flood_secs = started.elapsed().as_secs();
    assert_eq!(
        String::from_utf8_lossy(&replies)
            .matches("HTTP/1.1 400")
            .count(),
        FLOOD
    );
    // Past the limiter's one-second window, the next rejected request is logged with the count
    // of lines suppressed since the last one written. (A lower bound on time: never flaky.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(agent.get("/v1/secrets/files/a%zz").status, 400);
    let rejected = |log: &str| -> Vec<u64> {
        log.lines()
            .filter(|l| l.contains("rejected request"))
            .map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("suppressed="))
                    .unwrap_or_else(|| panic!("no suppressed= in {l}"))
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    assert!(
        common::wait_until(std::time::Duration::from_secs(10), || {
            let lines = rejected(&agent.log_text());
            lines.len() as u64 + lines.iter().sum::<u64>() == FLOOD as u64 + 1
        }),
        "every rejected request is either a log line or counted in a later line's suppressed=; log:\n{}",
        agent.log_text()
    );
    let lines = rejected(&agent.log_text()).len() as u64;
    // 20 a second, in windows of at least a second each, over the flood plus the last line.
    let bound = 20 * (flood_secs + 2) + 1;
    assert!(
        lines <= bound,
        "{lines} log lines for {FLOOD} rejected requests in about {flood_secs} s (at most {bound})"
    );
}

#[test]
fn a_3_mib_secret_whose_json_escaping_passes_4_mib_is_503_and_the_agent_lives() {
    const MIB: usize = 1024 * 1024;
    let (dir, agent) = agent_with_demo_secrets();
    // Every quote escapes to two bytes: 6 MiB of JSON from a 3 MiB value.
    dir.secret("quotes", &vec![b'"'; 3 * MIB]);
    let resp = agent.request(
        "GET",
        "/v1/secrets/files/quotes",
        &[("Accept", "application/json")],
        b"",
    );
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (503, "memory_unavailable"),
        "{}",
        resp.text()
    );
    // Raw it is served, and the agent is still up for everyone else.
    let raw = agent.secret("files/quotes");
    assert_eq!(raw.status, 200);
    assert_eq!(raw.body.len(), 3 * MIB);
    assert_eq!(agent.secret("files/demo-password").status, 200);
}

#[test]
fn method_not_allowed_names_the_methods_the_route_takes() {
    let dir = TestDir::new();
    let agent = Agent::start(&dir, &file_config(""));
    for (method, path, allow) in [
        ("DELETE", "/v1/secrets/files/x", "GET, HEAD"),
        ("POST", "/v1/health", "GET, HEAD"),
        ("POST", "/v1/metrics", "GET, HEAD"),
        ("GET", "/v1/cache/flush", "POST"),
    ] {
        let resp = agent.request(method, path, &[], b"");
        assert_eq!(resp.status, 405, "{method} {path}");
        assert_eq!(resp.error_code(), "method_not_allowed", "{method} {path}");
        assert_eq!(resp.header("allow"), Some(allow), "{method} {path}");
    }
}

#[test]
fn a_secret_replacer_template_renders_unchanged_through_scheme_mappings() {
    let dir = TestDir::new();
    dir.secret("prod/db", b"db-pass");
    dir.secret("team/key", b"team-key");
    // Sources named as the Secret Replacer's default schemes expect (awsSecret -> aws, gopass ->
    // gopass), plus one reached only through --scheme.
    let config = file_config(&format!(
        "[sources.aws]\ntype = \"file\"\ndir = \"{0}\"\n\n[sources.gopass]\ntype = \"file\"\ndir = \"{0}\"\n\n[sources.kv]\ntype = \"file\"\ndir = \"{0}\"\n",
        dir.secrets().display()
    ))
    .replace(r#"secrets = ["files/*"]"#, r#"secrets = ["*"]"#);
    let agent = Agent::start(&dir, &config);
    let template = dir.path().join("app.conf.tmpl");
    let rendered = render_stdout(
        &agent,
        &template,
        "db={{ secret awsSecret://prod/db }}\nkey={{ secret gopass://team/key }}\nplain={{ secret files/prod/db }}\n",
    );
    assert_eq!(rendered, b"db=db-pass\nkey=team-key\nplain=db-pass\n");

    // A scheme of the user's own, by flag and by environment.
    std::fs::write(&template, "v={{ secret vault://team/key }}\n").unwrap();
    let out = agent.cli_as(
        None,
        &["render", template.to_str().unwrap(), "--scheme", "vault=kv"],
    );
    assert_eq!(
        out.stdout,
        b"v=team-key\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = common::command(common::bin())
        .args(["render", template.to_str().unwrap(), "--socket"])
        .arg(&agent.socket)
        .env("CREDAGENT_SCHEMES", "x=files,vault=kv")
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        b"v=team-key\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An unknown scheme is an error naming the line; nothing is written.
    std::fs::write(&template, "ok\n{{ secret nope://a }}\n").unwrap();
    let out = agent.cli_as(None, &["render", template.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("unknown scheme \"nope\""),
        "{stderr}"
    );

    // exec takes the same names.
    let out = common::command(common::bin())
        .args(["exec", "--env", "DB=awsSecret://prod/db", "--socket"])
        .arg(&agent.socket)
        .args(["--", "printenv", "DB"])
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        b"db-pass\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The file source's confinement (`openat2(RESOLVE_BENEATH)`, or the component walk where that is
/// refused): uid 65534, who may write a directory below the secrets directory and read the
/// secrets below it, plants symlinks there to a root-only file outside (absolute, relative
/// through `..`, and a directory link) and asks the agent, which runs as root, for them.
#[test]
fn a_caller_plants_symlinks_out_of_the_secrets_directory_and_reads_nothing_outside() {
    const NOBODY: u32 = 65534;
    let dir = TestDir::new();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("root-only"), b"root-only-value").unwrap();
    std::fs::set_permissions(
        outside.join("root-only"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let own = dir.secrets().join("nobody");
    std::fs::create_dir(&own).unwrap();
    nix::unistd::chown(&own, Some(nix::unistd::Uid::from_raw(NOBODY)), None).unwrap();
    dir.secret("nobody/own", b"own-value");
    let agent = Agent::start(
        &dir,
        &file_config(&format!(
            "[[allow]]\npeer = {{ uid = {NOBODY} }}\nsecrets = [\"files/nobody/*\"]\n"
        )),
    );
    let plant = |target: &str, link: &str| {
        let out = common::command("/bin/ln")
            .arg("-s")
            .arg(target)
            .arg(own.join(link))
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    plant(&outside.join("root-only").display().to_string(), "absolute");
    plant("../../outside/root-only", "relative");
    plant("../../outside", "dir");

    for name in ["absolute", "relative", "dir/root-only"] {
        let resp = common::request_as(
            NOBODY,
            &agent.socket,
            "GET",
            &format!("/v1/secrets/files/nobody/{name}"),
        );
        assert_eq!(resp.status, 404, "{name}: {}", resp.text());
        assert_eq!(resp.error_code(), "not_found", "{name}");
    }
    // The honest read of a file inside still works.
    let resp = common::request_as(NOBODY, &agent.socket, "GET", "/v1/secrets/files/nobody/own");
    assert_eq!(
        (resp.status, resp.body.as_slice()),
        (200, &b"own-value"[..])
    );
    assert!(!agent.log_text().contains("root-only-value"));
    let denied = agent
        .audit_reads("files/nobody/relative")
        .into_iter()
        .next()
        .unwrap();
    assert_eq!(denied["status"], 404, "{denied}");
}

/// An id segment longer than a file name may be (255 bytes) names no file: `404`, not a backend
/// failure.
#[test]
fn a_file_id_segment_over_255_bytes_is_not_found() {
    let (_dir, agent) = agent_with_demo_secrets();
    for id in ["a".repeat(256), format!("app/{}", "b".repeat(300))] {
        let resp = agent.secret(&format!("files/{id}"));
        assert_eq!(resp.status, 404, "{}: {}", id.len(), resp.text());
        assert_eq!(resp.error_code(), "not_found");
    }
    assert_eq!(agent.secret("files/demo-password").status, 200);
}

/// `credagent get`'s exit status for answers only a broken or foreign server gives (README "Exit
/// codes"): a `304` to a plain read is an error answer (1); a `200` without an `ETag` is a value
/// (0, printed); a connection closed before any answer is no agent answering (69).
#[test]
fn get_exits_1_on_a_304_0_on_a_200_without_an_etag_and_69_when_the_answer_breaks_off() {
    let dir = TestDir::new();
    let socket = dir.path().join("foreign.sock");
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(4)
for reply in [b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n",
              b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nvalue",
              b""]:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            break
        data += chunk
    c.sendall(reply)
    c.close()
"#;
    let _server = common::ChildGuard(
        common::command("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .arg(&socket)
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(5), || socket.exists()));
    let get = || {
        common::command(common::bin())
            .args(["get", "files/x", "--socket"])
            .arg(&socket)
            .output()
            .unwrap()
    };
    let out = get();
    assert_eq!(out.status.code(), Some(1), "304: {out:?}");
    assert!(out.stdout.is_empty());
    let out = get();
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), &b"value"[..]),
        "200 without ETag: {out:?}"
    );
    let out = get();
    assert_eq!(out.status.code(), Some(69), "closed: {out:?}");
}
