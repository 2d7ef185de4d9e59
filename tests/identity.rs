//! Caller identity that cannot be forged: each attack runs as uid 65534 against the real binary
//! and must be denied with the right audit line, and the honest caller beside it must still be
//! served.
//!
//! - exec after connect: a process connects, forks a helper that keeps the socket and execs the
//!   program an `exe` rule admits; the helper writes the request (`403 peer_changed`).
//! - a program bind-mounted over the allowed path in a user namespace (`exe` is a file).
//! - a unit named `web.service` inside the attacker's own user manager (`unit` is the system unit).
//! - a root process of another unit asking the credentials socket for `web.service`'s secret.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cgroup::TestCgroup;
use common::creds::load_credential_in;
use common::{Agent, CANARY, TestDir, parse_response, wait_until};

const NOBODY: u32 = 65534;
const PYTHON: &str = "/usr/bin/python3";

/// Audit lines (JSON) from the agent's log that satisfy `pred`, waiting up to 10 s for one.
fn audit_lines(agent: &Agent, pred: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    let find = || -> Vec<serde_json::Value> {
        agent
            .log_text()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v| pred(v))
            .collect()
    };
    wait_until(Duration::from_secs(10), || !find().is_empty());
    find()
}

/// A directory uid 65534 can write results into.
fn scratch(dir: &TestDir) -> std::path::PathBuf {
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    out
}

/// `curl --unix-socket` as uid 65534: (HTTP status, body).
fn curl_as_nobody(socket: &Path, path: &str) -> (u16, Vec<u8>) {
    let out = Command::new("/usr/bin/curl")
        .args(["-s", "-i", "--unix-socket"])
        .arg(socket)
        .arg(format!("http://localhost{path}"))
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let response =
        parse_response(&out.stdout).unwrap_or_else(|| panic!("curl got no response: {:?}", out));
    (response.status, response.body)
}

/// What every client script below starts with: `request(sock, path)` sends one GET for
/// `path` on a connected socket and returns the raw response.
const PRELUDE: &str = r#"
import os, socket, sys, threading, time

def read_all(s):
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk

def deliver(out, data):
    # Written whole, then renamed: the test sees all of it or nothing.
    with open(out + ".tmp", "wb") as f:
        f.write(data)
    os.rename(out + ".tmp", out)
    os._exit(0)

def request(s, path):
    s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return read_all(s)
"#;

/// `PRELUDE` then `body`, as one `python3 -c` script.
fn script(body: &str) -> String {
    format!("{PRELUDE}{body}")
}

/// Runs `command SOCKET OUT /usr/bin/sleep` as uid 65534 until its helper has written the
/// response to `out`, then kills it: its pid, and the response.
fn run_attacker(agent: &Agent, mut command: Command, out: &Path) -> (u32, common::Response) {
    let mut child = command
        .arg(&agent.socket)
        .arg(out)
        .arg("/usr/bin/sleep")
        .uid(NOBODY)
        .gid(NOBODY)
        .spawn()
        .unwrap();
    let answered = wait_until(Duration::from_secs(20), || out.exists());
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        answered,
        "the helper got no answer; log:\n{}",
        agent.log_text()
    );
    (pid, parse_response(&std::fs::read(out).unwrap()).unwrap())
}

const EXEC_AFTER_CONNECT: &str = r#"
path, out, allowed = sys.argv[1], sys.argv[2], sys.argv[3]

# Take the agent's last connection slot (max_connections = 1; the test holds the operator
# slots), and see that it was accepted.
holder = socket.socket(socket.AF_UNIX)
holder.connect(path)
holder.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
holder.recv(65536)
# This connection now waits in the backlog, not yet identified.
s = socket.socket(socket.AF_UNIX)
s.connect(path)
connector = os.getpid()
if os.fork() == 0:
    # The helper keeps the socket and waits until the connector runs the allowed program.
    while True:
        try:
            if os.readlink("/proc/%d/exe" % connector) == allowed:
                break
        except OSError:
            pass
        time.sleep(0.01)
    holder.close()  # the slot frees up: the agent accepts s and looks at the connector
    data = request(s, b"/v1/secrets/files/exe-only")
    deliver(out, data)
os.execv(allowed, [allowed, "60"])
"#;

#[test]
fn helper_forked_before_the_connector_execs_an_allowed_binary_gets_403_peer_changed() {
    let dir = TestDir::new();
    dir.secret("exe-only", CANARY.as_bytes());
    dir.secret("curl-only", b"for-curl");
    let agent = Agent::start(
        &dir,
        &common::file_config(
            "[[allow]]\npeer = { exe = \"/usr/bin/sleep\" }\nsecrets = [\"files/exe-only\"]\n\n\
             [[allow]]\npeer = { exe = \"/usr/bin/curl\" }\nsecrets = [\"files/curl-only\"]\n",
        )
        .replace(
            "socket_mode = \"0666\"",
            "socket_mode = \"0666\"\nmax_connections = 1",
        ),
    );
    // The operator slots are taken here, so the connector's holder takes the last slot.
    let _reserve = common::hold_connections(&agent.socket, common::MAX_OPERATOR_CONNECTIONS);
    let out = scratch(&dir).join("response");
    let mut connector = Command::new(PYTHON);
    connector.arg("-c").arg(script(EXEC_AFTER_CONNECT));
    let (connector_pid, response) = run_attacker(&agent, connector, &out);

    // What the attacker sees.
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(response.error_code(), "peer_changed");
    assert_eq!(response.header("connection"), Some("close"));
    assert!(!response.text().contains(CANARY));

    // What the audit trail says: the connector's established identity, denied for the change.
    let lines = audit_lines(&agent, |l| l["secret"] == "files/exe-only");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["decision"], "deny", "{line}");
    assert_eq!(line["reason"], "peer_changed", "{line}");
    assert_eq!(line["status"], 403, "{line}");
    assert_eq!(line["uid"], NOBODY, "{line}");
    assert_eq!(line["pid"], connector_pid, "{line}");
    assert_eq!(line["exe"], "/usr/bin/sleep", "{line}");

    // The honest caller: a process that connects and writes its own request.
    let (status, body) = curl_as_nobody(&agent.socket, "/v1/secrets/files/curl-only");
    assert_eq!((status, body.as_slice()), (200, &b"for-curl"[..]));
}

/// Run as `unshare -Urpf --mount-proc` (no privilege): this process is pid 1 of a new pid
/// namespace. It connects (waiting in the agent's backlog, as above), forks a helper and execs
/// the allowed program; the helper writes the request with `SCM_CREDENTIALS` naming pid 1 — the
/// connector — which its namespace lets it do and the kernel translates to the connector's pid.
const FORGED_CREDENTIALS_FROM_A_PID_NAMESPACE: &str = r#"
import struct
path, out, allowed = sys.argv[1], sys.argv[2], sys.argv[3]
holder = socket.socket(socket.AF_UNIX)
holder.connect(path)
holder.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
holder.recv(65536)
s = socket.socket(socket.AF_UNIX)
s.connect(path)
assert os.getpid() == 1
if os.fork() == 0:
    while True:
        try:
            if os.readlink("/proc/1/exe") == allowed:
                break
        except OSError:
            pass
        time.sleep(0.01)
    holder.close()
    creds = struct.pack("iII", 1, 0, 0)
    s.sendmsg([b"GET /v1/secrets/files/exe-only HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"],
              [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)])
    data = read_all(s)
    deliver(out, data)
os.execv(allowed, [allowed, "60"])
"#;

#[test]
fn helper_in_its_own_pid_namespace_forging_scm_credentials_for_an_allowed_exe_is_refused_20_times()
{
    let dir = TestDir::new();
    dir.secret("exe-only", CANARY.as_bytes());
    dir.secret("curl-only", b"for-curl");
    let agent = Agent::start(
        &dir,
        &common::file_config(
            "[[allow]]\npeer = { uid = 65534, exe = \"/usr/bin/sleep\" }\nsecrets = [\"files/exe-only\"]\n\n\
             [[allow]]\npeer = { uid = 65534, exe = \"/usr/bin/curl\" }\nsecrets = [\"files/curl-only\"]\n",
        )
        .replace(
            "socket_mode = \"0666\"",
            "socket_mode = \"0666\"\nmax_connections = 1",
        ),
    );
    let _reserve = common::hold_connections(&agent.socket, common::MAX_OPERATOR_CONNECTIONS);
    let scratch = scratch(&dir);
    for attempt in 0..20 {
        let out = scratch.join(format!("response-{attempt}"));
        let mut attacker = Command::new("unshare");
        attacker
            .args(["-Urpf", "--mount-proc", "--kill-child", PYTHON, "-c"])
            .arg(script(FORGED_CREDENTIALS_FROM_A_PID_NAMESPACE));
        let (_, response) = run_attacker(&agent, attacker, &out);
        assert_eq!(
            response.status,
            403,
            "attempt {attempt}: {}",
            response.text()
        );
        assert_eq!(response.error_code(), "forbidden");
        assert!(!response.text().contains(CANARY));
    }

    // The audit trail: uid 65534, no exe or unit, and why.
    let exe_only = |l: &serde_json::Value| l["secret"] == "files/exe-only";
    // The last lines may still be on their way to the log.
    wait_until(Duration::from_secs(10), || {
        audit_lines(&agent, exe_only).len() == 20
    });
    let lines = audit_lines(&agent, exe_only);
    assert_eq!(lines.len(), 20, "{lines:?}");
    for line in &lines {
        assert_eq!(line["decision"], "deny", "{line}");
        assert_eq!(line["status"], 403, "{line}");
        assert_eq!(line["uid"], NOBODY, "{line}");
        assert!(line["exe"].is_null() && line["unit"].is_null(), "{line}");
        assert_eq!(line["unknown"], "other_pid_namespace", "{line}");
    }

    // The honest caller in the agent's namespace still matches its exe rule.
    let (status, body) = curl_as_nobody(&agent.socket, "/v1/secrets/files/curl-only");
    assert_eq!((status, body.as_slice()), (200, &b"for-curl"[..]));
    let honest = audit_lines(&agent, |l| l["secret"] == "files/curl-only");
    assert_eq!(honest[0]["exe"], "/usr/bin/curl", "{}", honest[0]);
    assert!(honest[0]["unknown"].is_null(), "{}", honest[0]);
}

const REQUEST_FROM_A_THREAD: &str = r#"
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
result = []
t = threading.Thread(target=lambda: result.append(request(s, b"/v1/secrets/files/nobody/token")))
t.start()
t.join()
sys.stdout.buffer.write(result[0])
"#;

#[test]
fn a_thread_of_the_connector_is_the_connector() {
    let dir = TestDir::new();
    dir.secret("nobody/token", b"for-nobody");
    let agent = Agent::start(
        &dir,
        &common::file_config(&format!(
            "[[allow]]\npeer = {{ uid = {NOBODY} }}\nsecrets = [\"files/nobody/*\"]\n"
        )),
    );
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(script(REQUEST_FROM_A_THREAD))
        .arg(&agent.socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let response = parse_response(&out.stdout).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.body, b"for-nobody");
}

const IMPOSTOR: &str = r#"
sys.stdout.write("exe=%s\n" % os.readlink("/proc/self/exe"))
sys.stdout.flush()
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
sys.stdout.buffer.write(request(s, b"/v1/secrets/files/curl-only"))
"#;

#[test]
fn program_bind_mounted_over_the_allowed_path_in_a_user_namespace_is_denied() {
    let dir = TestDir::new();
    dir.secret("curl-only", CANARY.as_bytes());
    let agent = Agent::start(
        &dir,
        &common::file_config(
            "[[allow]]\npeer = { exe = \"/usr/bin/curl\" }\nsecrets = [\"files/curl-only\"]\n",
        ),
    );
    let python = std::fs::canonicalize(PYTHON).unwrap();
    // As uid 65534: a user and mount namespace of its own, python bind-mounted over
    // /usr/bin/curl there, then exec'd as /usr/bin/curl.
    let out = Command::new("/usr/bin/unshare")
        .args(["-Urm", "/bin/sh", "-c"])
        .arg("mount --bind \"$1\" /usr/bin/curl && exec /usr/bin/curl -c \"$2\" \"$3\"")
        .arg("sh")
        .arg(&python)
        .arg(script(IMPOSTOR))
        .arg(&agent.socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // The disguise works: /proc shows the allowed path.
    let (shown, raw) = stdout
        .split_once('\n')
        .unwrap_or_else(|| panic!("impostor did not run: {out:?}"));
    assert_eq!(shown, "exe=/usr/bin/curl", "{out:?}");

    // What the attacker sees.
    let response = parse_response(raw.as_bytes()).unwrap();
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(response.error_code(), "forbidden");
    assert!(!response.text().contains(CANARY));

    // The audit line records no executable: the path it showed names another file here.
    let lines = audit_lines(&agent, |l| {
        l["secret"] == "files/curl-only" && l["uid"] == NOBODY
    });
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["decision"], "deny", "{}", lines[0]);
    assert_eq!(lines[0]["exe"], serde_json::Value::Null, "{}", lines[0]);

    // The honest caller: the real /usr/bin/curl.
    let (status, body) = curl_as_nobody(&agent.socket, "/v1/secrets/files/curl-only");
    assert_eq!(status, 200);
    assert_eq!(body, CANARY.as_bytes());
    let honest = audit_lines(&agent, |l| {
        l["secret"] == "files/curl-only" && l["decision"] == "allow"
    });
    assert_eq!(honest[0]["exe"], "/usr/bin/curl", "{}", honest[0]);
}

const TOOL_CLIENT: &str = r#"
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
sys.stdout.buffer.write(request(s, b"/v1/secrets/files/tool-only"))
"#;

#[test]
fn process_still_running_a_replaced_binary_is_denied_and_the_upgrade_matches_at_once() {
    let dir = TestDir::new();
    dir.secret("tool-only", b"for-the-tool");
    // The "tool" is a copy of python, so it can be a client; the rule names its path.
    let tool = dir.path().join("tool");
    let install = |to: &Path| {
        std::fs::copy(std::fs::canonicalize(PYTHON).unwrap(), to).unwrap();
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    install(&tool);
    let agent = Agent::start(
        &dir,
        &common::file_config(&format!(
            "[[allow]]\npeer = {{ uid = {NOBODY}, exe = \"{}\" }}\nsecrets = [\"files/tool-only\"]\n",
            tool.display()
        )),
    );
    let go = scratch(&dir).join("go");
    let client = |go: &Path| {
        let mut command = Command::new(&tool);
        command
            .arg("-c")
            .arg(script(TOOL_CLIENT))
            .arg(&agent.socket)
            .arg(go)
            .env("PYTHONHOME", "/usr")
            .stdout(std::process::Stdio::piped())
            .uid(NOBODY)
            .gid(NOBODY);
        command
    };
    // An old process of the tool is running when the tool is upgraded (replaced by rename).
    let old = client(&go).spawn().unwrap();
    let staged = dir.path().join("tool.new");
    install(&staged);
    std::fs::rename(&staged, &tool).unwrap();
    std::fs::write(&go, b"").unwrap();
    let old = old.wait_with_output().unwrap();
    let response = parse_response(&old.stdout).unwrap();
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(response.error_code(), "forbidden");

    // A process of the upgraded binary matches at once, without a reload.
    let new = client(&go).output().unwrap();
    let response = parse_response(&new.stdout).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.body, b"for-the-tool");
}

#[test]
fn unit_named_web_service_in_the_attackers_own_user_manager_is_not_web_service() {
    let dir = TestDir::new();
    dir.secret("web-only", CANARY.as_bytes());
    let agent = Agent::start(
        &dir,
        &common::file_config(
            "[[allow]]\npeer = { unit = \"web.service\" }\nsecrets = [\"files/web-only\"]\n",
        ),
    );
    let bin = common::bin();
    // The attacker's user manager, delegated to it as systemd does at login.
    let manager = TestCgroup::new("user@65534.service");
    manager.delegate(NOBODY);
    let attack = "mkdir -p \"$1/app.slice/web.service\" \
                  && echo $$ > \"$1/app.slice/web.service/cgroup.procs\" \
                  && exec \"$2\" get files/web-only --socket \"$3\"";
    let argv: [&OsStr; 7] = [
        "/bin/sh".as_ref(),
        "-c".as_ref(),
        attack.as_ref(),
        "sh".as_ref(),
        manager.dir().as_os_str(),
        bin.as_os_str(),
        agent.socket.as_os_str(),
    ];
    let (ok, stdout, stderr) = manager.run(Some(NOBODY), &argv);

    // What the attacker sees.
    assert!(!ok, "the attacker was served: {stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("forbidden"), "{stderr}");

    // The audit line names the units systemd would.
    let lines = audit_lines(&agent, |l| {
        l["secret"] == "files/web-only" && l["uid"] == NOBODY
    });
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["decision"], "deny", "{}", lines[0]);
    assert_eq!(lines[0]["unit"], "user@65534.service", "{}", lines[0]);
    assert_eq!(lines[0]["user_unit"], "web.service", "{}", lines[0]);

    // The honest caller: a process root placed in the system unit web.service.
    let system = TestCgroup::new("web.service");
    let get: [&OsStr; 5] = [
        bin.as_os_str(),
        "get".as_ref(),
        "files/web-only".as_ref(),
        "--socket".as_ref(),
        agent.socket.as_os_str(),
    ];
    let (ok, stdout, stderr) = system.run(Some(NOBODY), &get);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, CANARY.as_bytes());
    let allowed = audit_lines(&agent, |l| {
        l["secret"] == "files/web-only" && l["decision"] == "allow"
    });
    assert_eq!(allowed[0]["unit"], "web.service", "{}", allowed[0]);
    assert_eq!(allowed[0]["user_unit"], serde_json::Value::Null);
}

#[test]
fn user_unit_rule_admits_that_users_unit_and_no_other_users() {
    let dir = TestDir::new();
    dir.secret("user-web", b"for-nobodys-web");
    let agent = Agent::start(
        &dir,
        &common::file_config(&format!(
            "[[allow]]\npeer = {{ uid = {NOBODY}, user_unit = \"web.service\" }}\nsecrets = [\"files/user-web\"]\n"
        )),
    );
    let bin = common::bin();
    let get = |cgroup: &TestCgroup, uid: u32| {
        let argv: [&OsStr; 5] = [
            bin.as_os_str(),
            "get".as_ref(),
            "files/user-web".as_ref(),
            "--socket".as_ref(),
            agent.socket.as_os_str(),
        ];
        cgroup.run(Some(uid), &argv)
    };
    let in_user_manager = TestCgroup::new("user@65534.service/app.slice/web.service");
    let (ok, stdout, stderr) = get(&in_user_manager, NOBODY);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, b"for-nobodys-web");
    // The same unit name as a system unit is not a user unit.
    let system = TestCgroup::new("web.service");
    let (ok, _, stderr) = get(&system, NOBODY);
    assert!(!ok);
    assert!(stderr.contains("forbidden"), "{stderr}");
}

#[test]
fn root_process_of_another_unit_claiming_web_service_gets_no_credential() {
    let dir = TestDir::new();
    dir.secret("app/database", CANARY.as_bytes());
    let agent = Agent::start(
        &dir,
        &common::file_config(
            "[[allow]]\npeer = { unit = \"web.service\" }\nsecrets = [\"files/app/*\"]\n\n\
             [credentials]\ndb-password = \"files/app/database\"\n",
        )
        .replace(
            "socket_mode = \"0666\"",
            "socket_mode = \"0666\"\ncreds_socket = \"{dir}/creds.sock\"",
        ),
    );
    let creds = dir.path().join("creds.sock");

    // A root process in other.service binds an address that names web.service.
    let other = TestCgroup::new("other.service");
    let (ok, data) = load_credential_in(&other, None, &creds, "web.service", "db-password");
    assert!(ok);
    assert_eq!(data, b"", "another unit must get nothing");
    let lines = audit_lines(&agent, |l| l["action"] == "credential");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["decision"], "deny", "{}", lines[0]);
    assert_eq!(lines[0]["reason"], "unit_mismatch", "{}", lines[0]);
    assert_eq!(lines[0]["unit"], "other.service", "{}", lines[0]);

    // PID 1's child for web.service itself gets it.
    let web = TestCgroup::new("web.service");
    let (ok, data) = load_credential_in(&web, None, &creds, "web.service", "db-password");
    assert!(ok);
    assert_eq!(data, CANARY.as_bytes());
}

#[test]
fn check_config_warns_about_every_rule_that_names_exe() {
    let dir = TestDir::new();
    let config = dir.write_config(&common::file_config(
        "[[allow]]\npeer = { exe = \"/usr/bin/curl\" }\nsecrets = [\"files/x\"]\n\n\
         [[allow]]\npeer = { exe = \"/usr/bin/curl\", uid = 65534 }\nsecrets = [\"files/y\"]\n",
    ));
    let out = Command::new(common::bin())
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<_> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(
        warnings,
        vec![
            "credagent: warning: allow[1]: peer names only exe = \"/usr/bin/curl\": anyone who can run that file can run it with LD_PRELOAD or under a debugger of their own; add uid, user, group or unit",
            "credagent: warning: allow[2]: peer names exe = \"/usr/bin/curl\": exe is no boundary against other processes of the same uid (one that writes its request and then execs that file is identified as it, about 7 of 20 tries); the rule's other attributes are what it trusts"
        ]
    );
}

/// A server that is not the agent: binds `path`, records what it is sent in `seen`, and answers
/// every request with a forged value.
const IMPOSTOR_SERVER: &str = r#"
import socket, sys
path, seen = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(8)
while True:
    c, _ = s.accept()
    try:
        data = c.recv(65536)
        if data:
            with open(seen, "ab") as f:
                f.write(data)
            c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 6\r\nETag: "x"\r\nConnection: close\r\n\r\nforged')
    except OSError:
        pass
    c.close()
"#;

#[test]
fn a_server_of_another_uid_answering_on_the_socket_path_is_refused_by_the_clients_with_exit_69() {
    let dir = TestDir::new();
    let scratch = scratch(&dir);
    let socket = scratch.join("agent.sock");
    let seen = scratch.join("seen");
    let _impostor = common::ChildGuard(
        Command::new(PYTHON)
            .arg("-c")
            .arg(IMPOSTOR_SERVER)
            .arg(&socket)
            .arg(&seen)
            .uid(NOBODY)
            .gid(NOBODY)
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(10), || socket.exists()));
    let client = |args: &[&str], agent_uid: Option<&str>| {
        let mut command = Command::new(common::bin());
        command
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .env_remove("CREDAGENT_AGENT_UID");
        if let Some(uid) = agent_uid {
            command.env("CREDAGENT_AGENT_UID", uid);
        }
        command.output().unwrap()
    };
    let refused = |out: &std::process::Output| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(69), "{stderr}");
        assert!(
            stderr.contains("refusing the server") && stderr.contains("uid 65534"),
            "{stderr}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("forged"));
    };

    // The agent is expected as root: the impostor's own socket file does not make it the agent.
    refused(&client(&["get", "files/db"], Some("0")));
    refused(&client(&["health"], Some("0")));
    let template = scratch.join("t");
    std::fs::write(&template, "{{ secret files/db }}").unwrap();
    refused(&client(&["render", template.to_str().unwrap()], Some("0")));
    // By default the socket file's owner (or root) is the agent: a file root owns, answered by
    // uid 65534, is refused too.
    nix::unistd::chown(&socket, Some(0.into()), Some(0.into())).unwrap();
    refused(&client(&["get", "files/db"], None));
    // Nothing was sent to it: not even the name of a secret.
    assert!(!seen.exists(), "the impostor was sent a request");

    // The check is what refused: named as the agent, the same server is believed.
    let believed = client(&["get", "files/db"], Some("65534"));
    assert_eq!(believed.stdout, b"forged");
}
