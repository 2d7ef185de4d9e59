//! Access control end to end: callers running as other uids and other executables, over the
//! real socket, decided from the kernel's peer credentials.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Agent, TestDir};

const NOBODY: u32 = 65534;

fn canonical_bin() -> String {
    std::fs::canonicalize(common::bin())
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn another_uid_gets_403_for_what_it_is_not_allowed_and_200_for_what_it_is() {
    let dir = TestDir::new();
    dir.secret("nobody/token", b"for-nobody");
    dir.secret("root-only", b"for-root");
    let agent = Agent::start(
        &dir,
        &common::file_config(&format!(
            "[[allow]]\npeer = {{ uid = {NOBODY} }}\nsecrets = [\"files/nobody/*\"]\n"
        )),
    );
    let allowed = agent.cli_as(Some(NOBODY), &["get", "files/nobody/token"]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(allowed.stdout, b"for-nobody");

    let denied = agent.cli_as(Some(NOBODY), &["get", "files/root-only"]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(denied.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("forbidden"), "{stderr}");

    // Denial does not reveal whether the secret exists.
    let denied_missing = agent.cli_as(Some(NOBODY), &["get", "files/does-not-exist"]);
    assert!(String::from_utf8_lossy(&denied_missing.stderr).contains("forbidden"));

    // Admin operations are for admin rules only.
    let flush = agent.cli_as(Some(NOBODY), &["flush"]);
    assert_eq!(flush.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&flush.stderr).contains("forbidden"));

    // The test process (root in CI) is the admin of file_config.
    assert_eq!(agent.secret("files/root-only").body, b"for-root");
}

#[test]
fn exe_rule_admits_one_binary_and_not_another() {
    let dir = TestDir::new();
    dir.secret("exe-only", b"only-for-the-credagent-binary");
    // A byte-identical copy of the client at another path is a different executable.
    let copy = dir.path().join("other-client");
    std::fs::copy(common::bin(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = Agent::start(
        &dir,
        &common::file_config(&format!(
            "[[allow]]\npeer = {{ exe = \"{}\" }}\nsecrets = [\"files/exe-only\"]\n",
            canonical_bin()
        )),
    );
    for uid in [Some(NOBODY), None] {
        let ok = agent.cli_as(uid, &["get", "files/exe-only"]);
        assert!(
            ok.status.success(),
            "uid {uid:?}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert_eq!(ok.stdout, b"only-for-the-credagent-binary");
    }
    let other = std::process::Command::new(&copy)
        .args(["get", "files/exe-only", "--socket"])
        .arg(&agent.socket)
        .uid_nobody()
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stderr).contains("forbidden"));
}

#[test]
fn group_rule_matches_primary_group() {
    let dir = TestDir::new();
    dir.secret("group/x", b"for-the-group");
    let agent = Agent::start(
        &dir,
        &common::file_config(&format!(
            "[[allow]]\npeer = {{ gid = {NOBODY} }}\nsecrets = [\"files/group/*\"]\n"
        )),
    );
    let ok = agent.cli_as(Some(NOBODY), &["get", "files/group/x"]);
    assert_eq!(ok.stdout, b"for-the-group");
}

#[test]
fn socket_is_created_with_mode_and_group() {
    let dir = TestDir::new();
    let template = format!(
        "[server]\nsocket = \"{{dir}}/sub/dir/agent.sock\"\nsocket_mode = \"0640\"\nsocket_group = \"{NOBODY}\"\n\n[cache]\nlock_memory = \"best-effort\"\n"
    );
    let agent = Agent::start(&dir, &template);
    let meta = std::fs::metadata(&agent.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), NOBODY);
    // Mode 0640 with group nobody: uid 65534 (group 65534) may not write, so cannot connect.
    let out = agent.cli_as(Some(NOBODY), &["get", "files/x"]);
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

trait UidNobody {
    fn uid_nobody(&mut self) -> &mut Self;
}

impl UidNobody for std::process::Command {
    fn uid_nobody(&mut self) -> &mut Self {
        std::os::unix::process::CommandExt::uid(self, NOBODY);
        std::os::unix::process::CommandExt::gid(self, NOBODY)
    }
}

#[test]
fn a_caller_that_exits_before_it_is_served_gets_no_exe_identity() {
    // PID-reuse defence: attributes are read only while the connecting process is pinned. A
    // caller that is gone by the time the agent looks at it must not match an exe rule.
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let dir = TestDir::new();
    dir.secret("exe-only", b"x");
    let audit = dir.path().join("audit.log");
    let config = common::file_config(&format!(
        "[[allow]]\npeer = {{ exe = \"{}\" }}\nsecrets = [\"files/exe-only\"]\n",
        python.display()
    ))
    .replace(
        "socket_mode = \"0666\"",
        "socket_mode = \"0666\"\nmax_connections = 1",
    )
    .replace(
        "[cache]",
        &format!("[audit]\nfile = \"{}\"\n\n[cache]", audit.display()),
    );
    let agent = Agent::start(&dir, &config);

    // Occupy every connection slot (answered, so accepted): the operators' (as root) and the
    // only general one (as another uid), so the next caller waits in the backlog.
    let holder = common::hold_connections(&agent.socket, common::MAX_OPERATOR_CONNECTIONS);
    let mut general = common::hold_connection_as(65533, &agent.socket);
    // A caller that has connected and sent its request says so, then waits to be killed.
    let script = r#"
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b"GET /v1/secrets/files/exe-only HTTP/1.1\r\nHost: x\r\n\r\n")
print("connected", flush=True)
time.sleep(600)
"#;
    let mut caller = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(&agent.socket)
        .stdout(std::process::Stdio::piped())
        .uid_nobody()
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(caller.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "connected");
    caller.kill().unwrap();
    caller.wait().unwrap();
    // The general slot is freed, so the caller, accepted now, is served in it. The operators'
    // slots stay held until then: freed first, they would let the caller be accepted while the
    // general slot is still counted, and refused with 429.
    common::kill_group(&mut general);

    assert!(
        common::wait_until(std::time::Duration::from_secs(10), || {
            std::fs::read_to_string(&audit)
                .unwrap_or_default()
                .contains("\"uid\":65534")
        }),
        "{}",
        agent.log_text()
    );
    drop(holder);
    let lines = std::fs::read_to_string(&audit).unwrap();
    let line = lines.lines().find(|l| l.contains("\"uid\":65534")).unwrap();
    assert!(line.contains("\"decision\":\"deny\""), "{line}");
    assert!(line.contains("\"exe\":null"), "{line}");
    // A live caller of the same executable is admitted.
    let live = common::request_as(NOBODY, &agent.socket, "GET", "/v1/secrets/files/exe-only");
    assert_eq!(live.status, 200, "{}", live.text());
}

#[test]
fn an_unprivileged_agent_cannot_match_exe_rules_for_other_users_but_still_matches_uids() {
    // Reading another user's /proc/PID/exe needs CAP_SYS_PTRACE: an agent running as uid 65534
    // without it sees the exe of its own uid's callers only.
    let dir = TestDir::new();
    dir.secret("exe-only", b"for-the-credagent-binary");
    dir.secret("root-uid", b"for-uid-0");
    let own = dir.path().join("run");
    std::fs::create_dir(&own).unwrap();
    nix::unistd::chown(&own, Some(nix::unistd::Uid::from_raw(NOBODY)), None).unwrap();
    let audit = own.join("audit.log");
    let config = format!(
        r#"[server]
socket = "{own}/agent.sock"
socket_mode = "0666"

[cache]
lock_memory = "best-effort"

[audit]
file = "{audit}"

[sources.files]
type = "file"
dir = "{{secrets}}"

[[allow]]
peer = {{ exe = "{exe}" }}
secrets = ["files/exe-only"]

[[allow]]
peer = {{ uid = 0 }}
secrets = ["files/root-uid"]
admin = true
"#,
        own = own.display(),
        audit = audit.display(),
        exe = canonical_bin()
    );
    let agent = Agent::start_as(&dir, &config, NOBODY);

    // Its own uid's process: exe known, the rule matches.
    let same_uid = agent.cli_as(Some(NOBODY), &["get", "files/exe-only"]);
    assert_eq!(
        same_uid.stdout,
        b"for-the-credagent-binary",
        "{}",
        String::from_utf8_lossy(&same_uid.stderr)
    );
    // The same binary run by root: exe unknown to this agent, so the exe rule does not match.
    let other_uid = agent.cli_as(None, &["get", "files/exe-only"]);
    assert_eq!(other_uid.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other_uid.stderr).contains("forbidden"));
    // uid rules come from the kernel and still match.
    let by_uid = agent.cli_as(None, &["get", "files/root-uid"]);
    assert_eq!(by_uid.stdout, b"for-uid-0");
    let not_by_uid = agent.cli_as(Some(NOBODY), &["get", "files/root-uid"]);
    assert!(String::from_utf8_lossy(&not_by_uid.stderr).contains("forbidden"));

    assert!(common::wait_until(
        std::time::Duration::from_secs(10),
        || std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .count()
            >= 4
    ));
    let lines = std::fs::read_to_string(&audit).unwrap();
    let root_exe = lines
        .lines()
        .find(|l| l.contains("\"uid\":0,") && l.contains("files/exe-only"))
        .unwrap();
    assert!(
        root_exe.contains("\"exe\":null") && root_exe.contains("\"decision\":\"deny\""),
        "{root_exe}"
    );
}
