//! Test harness: runs the REAL `credagent` binary in a per-test temp dir and talks to it over
//! its Unix socket with a tiny raw HTTP/1.1 client (so tests can also send garbage bytes).
//!
//! - [`TestDir`]: a temp dir (mode 0755 so another uid can reach the socket) with `secrets/`.
//! - [`Agent::start`]: writes the config (placeholders `{dir}`, `{socket}`, `{secrets}`), spawns
//!   `credagent serve`, waits until `/v1/health` answers, kills the agent on drop.
//! - On drop (of a test that passed) the agent's log is checked for [`CANARY`]: a secret value
//!   that must never appear in any log, audit line or error body.
//! - [`venv_bin`]: the pinned test servers installed by `scripts/install-test-deps.sh`.
//! - [`command`]: every child a test spawns starts the same however the suite was started
//!   (`nohup`, a CI runner, a background job: signals reset to their defaults), in a process
//!   group of its own that [`kill_group`] ends on drop, and carries [`LEAK_MARKER`] so
//!   `scripts/test.sh` can find any process a test target left running.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bao;
pub mod cgroup;
pub mod creds;
pub mod delay_proxy;
pub mod imds;
pub mod moto;
pub mod oauth;
pub mod pass;
pub mod postgres;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A secret value that must never appear in a log, audit line or error body.
pub const CANARY: &str = "CANARY-7c1d0e55-never-log-me";

/// The binary under test: this build's, or `$CREDAGENT_TEST_BIN` (to run a test against another
/// build, e.g. an attack test against the release before its fix).
pub fn bin() -> PathBuf {
    std::env::var_os("CREDAGENT_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_credagent")))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A binary of the pinned test-server venv (`moto_server`, `bao`, `python`). Fails the test with
/// a clear message if the venv is missing: run `scripts/test.sh` (or
/// `scripts/install-test-deps.sh`) first.
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("CREDAGENT_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"));
    let path = venv.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-test-deps.sh (scripts/test.sh does) to install the test servers",
        path.display()
    );
    path
}

/// The environment variable every spawned child carries: `scripts/test.sh` sets it to a value
/// of its own for each test target and afterwards fails the run if any process still has it.
pub const LEAK_MARKER: &str = "CREDAGENT_TEST_RUN";

/// The signals `nohup`, CI runners and non-interactive shells may hand down ignored; a shell
/// cannot `trap` a signal it inherited as ignored, so children get them back at their defaults.
const DEFAULT_SIGNALS: &str = "--default-signal=HUP,INT,QUIT,PIPE,TERM,USR1,USR2";

/// `Command::new(program)` for a test: run through coreutils' `env --default-signal` (which
/// resets the dispositions, then execs `program`, so the pid and exe are the program's), in a
/// new process group (so [`kill_group`] also ends what it spawned, a `sh -c` loop's children
/// included), with [`LEAK_MARKER`] in its environment. `spawn` returns once `env` runs, just
/// before it execs `program`: a short-lived client whose exe must be the program the moment it is
/// spawned (tests/identity.rs replaces the binary right after) uses `Command::new` instead.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new("/usr/bin/env");
    command.arg(DEFAULT_SIGNALS).arg("--").arg(program);
    command.env(
        LEAK_MARKER,
        std::env::var_os(LEAK_MARKER).unwrap_or_else(|| "1".into()),
    );
    command.process_group(0);
    command
}

/// SIGKILLs the process group `child` leads (see [`command`]) and reaps `child`.
pub fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A per-test directory.
pub struct TestDir {
    pub tmp: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("credagent-test-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(tmp.path().join("secrets")).unwrap();
        TestDir { tmp }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn secrets(&self) -> PathBuf {
        self.path().join("secrets")
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("agent.sock")
    }

    /// Writes `secrets/{id}` (creating parent dirs).
    pub fn secret(&self, id: &str, value: &[u8]) {
        let path = self.secrets().join(id);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, value).unwrap();
    }

    /// Replaces `{dir}`, `{socket}` and `{secrets}` in a config template.
    pub fn render(&self, template: &str) -> String {
        template
            .replace("{dir}", &self.path().display().to_string())
            .replace("{socket}", &self.socket().display().to_string())
            .replace("{secrets}", &self.secrets().display().to_string())
    }

    /// Writes a rendered config to `config.toml` and returns its path.
    pub fn write_config(&self, template: &str) -> PathBuf {
        let path = self.path().join("config.toml");
        std::fs::write(&path, self.render(template)).unwrap();
        path
    }
}

/// A running agent.
pub struct Agent {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
}

impl Agent {
    /// Starts `credagent serve` on `template` rendered in `dir`; panics with the log if it does
    /// not become ready.
    pub fn start(dir: &TestDir, template: &str) -> Agent {
        Self::start_with_env(dir, template, &[])
    }

    /// As [`Agent::start`], with extra environment variables.
    pub fn start_with_env(dir: &TestDir, template: &str, env: &[(&str, &str)]) -> Agent {
        Self::start_full(dir, template, env, None, None)
    }

    /// As [`Agent::start`], running the agent as `uid` (gid = uid) instead of this process's user.
    pub fn start_as(dir: &TestDir, template: &str, uid: u32) -> Agent {
        Self::start_full(dir, template, &[], Some(uid), None)
    }

    /// As [`Agent::start_as`], with resource limits set by the shell's `ulimit` (e.g. `-l 256`)
    /// just before it execs the agent (so the agent's pid is the child's).
    pub fn start_as_with_ulimit(dir: &TestDir, template: &str, uid: u32, ulimit: &str) -> Agent {
        Self::start_full(dir, template, &[], Some(uid), Some(ulimit))
    }

    fn start_full(
        dir: &TestDir,
        template: &str,
        env: &[(&str, &str)],
        uid: Option<u32>,
        ulimit: Option<&str>,
    ) -> Agent {
        let config = dir.write_config(template);
        let log = dir.path().join("agent.log");
        let socket = socket_from_config(&config).unwrap_or_else(|| dir.socket());
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = match ulimit {
            None => command(bin()),
            Some(limits) => {
                let mut sh = command("/bin/sh");
                sh.arg("-c")
                    .arg(format!("ulimit {limits} && exec \"$0\" \"$@\""))
                    .arg(bin());
                sh
            }
        };
        command
            .args(["serve", "--config"])
            .arg(&config)
            .env("CREDAGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        for (k, v) in env {
            command.env(k, v);
        }
        if let Some(uid) = uid {
            command.uid(uid);
            command.gid(uid);
        }
        let child = command.spawn().unwrap();
        let mut agent = Agent {
            child: Some(child),
            socket,
            log,
            config,
        };
        agent.wait_ready();
        agent
    }

    /// An agent the test started itself (`child`, serving `config` on `dir`'s socket, logging
    /// to `agent.log` if at all); panics with the log if it does not become ready.
    pub fn adopt(dir: &TestDir, config: PathBuf, child: Child) -> Agent {
        let mut agent = Agent {
            child: Some(child),
            socket: dir.socket(),
            log: dir.path().join("agent.log"),
            config,
        };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "agent exited during start ({status}); log:\n{}",
                    self.log_text()
                );
            }
            if let Ok(resp) = try_request(&self.socket, "GET", "/v1/health", &[], b"")
                && resp.status == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready in 20 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The audit lines (JSON, from the log) of reads of `secret`, in order.
    pub fn audit_reads(&self, secret: &str) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["action"] == "read" && v["secret"] == secret)
            .collect()
    }

    /// One request on a fresh connection.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        try_request(&self.socket, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; log:\n{}", self.log_text()))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    /// `GET /v1/secrets/{name}`.
    pub fn secret(&self, name: &str) -> Response {
        self.get(&format!("/v1/secrets/{name}"))
    }

    /// Sends raw bytes and returns whatever comes back before the server closes.
    pub fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        let mut stream = UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        out
    }

    /// A metric's value from `/v1/metrics` (the test process must be an admin peer).
    pub fn metric(&self, line_prefix: &str) -> f64 {
        let resp = self.get("/v1/metrics");
        assert_eq!(resp.status, 200, "metrics: {}", resp.text());
        let text = resp.text();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(line_prefix)
                    .map(|v| v.trim().parse::<f64>().unwrap())
            })
            .unwrap_or_else(|| panic!("metric {line_prefix:?} not found in:\n{text}"))
    }

    /// `credagent ARGS --socket SOCKET` as `uid` (None: as this process), with its output.
    pub fn cli_as(&self, uid: Option<u32>, args: &[&str]) -> Output {
        let mut command = command(bin());
        command.args(args).arg("--socket").arg(&self.socket);
        if let Some(uid) = uid {
            command.uid(uid);
            command.gid(uid);
        }
        command.output().unwrap()
    }

    /// SIGTERM, then wait for the exit status (at most 20 s).
    pub fn stop(&mut self) -> ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.stop_after_signal()
    }

    /// Waits for the agent to exit after a signal the test sent itself.
    pub fn stop_after_signal(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.check_canary();
                return status;
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                panic!("agent did not exit within 20 s; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts the canary secret is in none of the agent's output.
    pub fn check_canary(&self) {
        let log = self.log_text();
        assert!(
            !log.contains(CANARY),
            "canary secret leaked into the agent's log:\n{log}"
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
        if !std::thread::panicking() {
            self.check_canary();
        }
    }
}

/// The socket path a config file names (so a test can use a socket outside `{dir}`).
fn socket_from_config(config: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(config).ok()?;
    let value: toml::Value = toml::from_str(&text).ok()?;
    value
        .get("server")?
        .get("socket")?
        .as_str()
        .map(PathBuf::from)
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The stable error code of an error response.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends one request with `Connection: close` and parses the reply.
pub fn try_request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    // A server may answer (413/431) and close before reading everything: keep what it said.
    let written = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    if raw.is_empty() {
        written?;
        read?;
    }
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::other(format!(
            "unparseable response: {:?}",
            String::from_utf8_lossy(&raw)
        ))
    })
}

/// Parses a raw HTTP/1.1 response (Content-Length or to EOF).
pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

/// A child process (spawned by [`command`]) killed with its process group on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        kill_group(&mut self.0);
    }
}

/// Starts `credagent serve` on `template` rendered in `dir`, expecting it to fail at start;
/// returns (exit code, log). The canary never reaches the log.
pub fn start_fails(dir: &TestDir, template: &str) -> (Option<i32>, String) {
    let config = dir.write_config(template);
    let out = command(bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("CREDAGENT_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!log.contains(CANARY));
    (out.status.code(), log)
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// The usual file-source config: socket mode 0666 so other uids can connect, this process
/// (root in CI) an admin, plus any extra TOML appended.
pub fn file_config(extra: &str) -> String {
    format!(
        r#"[server]
socket = "{{socket}}"
socket_mode = "0666"

[cache]
lock_memory = "best-effort"

[sources.files]
type = "file"
dir = "{{secrets}}"

[[allow]]
peer = {{ uid = {uid} }}
secrets = ["files/*"]
admin = true

{extra}
"#,
        uid = nix::unistd::geteuid().as_raw()
    )
}

/// A config with `cache` keys and `sources` tables, this process allowed every secret (and admin).
pub fn config_allowing_all(cache: &str, sources: &str) -> String {
    format!(
        r#"[server]
socket = "{{socket}}"
socket_mode = "0666"

[cache]
lock_memory = "best-effort"
{cache}

{sources}

[[allow]]
peer = {{ uid = {uid} }}
secrets = ["*"]
admin = true
"#,
        uid = nix::unistd::geteuid().as_raw()
    )
}

/// The command line of a one-request client: `/usr/bin/python3` (which any uid may run) sends
/// `METHOD PATH` on a fresh connection to `socket` and writes the raw reply to stdout; a
/// connection refused (or not permitted) makes it fail with Python's error on stderr.
pub fn python_request(socket: &Path, method: &str, path: &str) -> Vec<std::ffi::OsString> {
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(("%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % (sys.argv[2], sys.argv[3])).encode())
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.buffer.write(data)
"#;
    vec![
        "/usr/bin/python3".into(),
        "-c".into(),
        script.into(),
        socket.into(),
        method.into(),
        path.into(),
    ]
}

/// The reply a [`python_request`] client printed, parsed; panics with its stderr if it failed.
pub fn python_reply(out: &Output, who: &str) -> Response {
    assert!(
        out.status.success(),
        "client {who}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_response(&out.stdout).unwrap_or_else(|| {
        panic!(
            "unparseable response: {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// One request sent by a process running as `uid` (gid = uid, no supplementary groups), parsed;
/// for callers the `credagent` client cannot play (metrics, HEAD, raw paths).
pub fn request_as(uid: u32, socket: &Path, method: &str, path: &str) -> Response {
    let args = python_request(socket, method, path);
    let mut command = command(&args[0]);
    command.args(&args[1..]);
    command.uid(uid);
    command.gid(uid);
    python_reply(&command.output().unwrap(), &format!("as uid {uid}"))
}

/// Sends `count` pipelined copies of `request` (a full request head ending in a blank line) on
/// one connection, the last with `Connection: close`, while reading the replies; returns all
/// reply bytes.
pub fn pipelined(socket: &Path, request: &str, count: usize) -> Vec<u8> {
    let stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let last = request.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    let mut bytes = request.repeat(count.saturating_sub(1));
    bytes.push_str(&last);
    let sender = std::thread::spawn(move || writer.write_all(bytes.as_bytes()).unwrap());
    let mut reader = stream;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    sender.join().unwrap();
    out
}

/// Connections uid 0 and admin peers may hold, apart from the others' (the default of
/// `server.max_operator_connections`).
pub const MAX_OPERATOR_CONNECTIONS: usize = 16;

/// Opens `count` keep-alive connections, each answered once (so the agent has accepted it), and
/// returns them open: as root (an operator) this takes operator slots.
pub fn hold_connections(socket: &Path, count: usize) -> Vec<UnixStream> {
    (0..count)
        .map(|_| {
            let mut stream = UnixStream::connect(socket).unwrap();
            stream
                .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut answered = Vec::new();
            while !String::from_utf8_lossy(&answered).contains(r#"{"status":"ok"}"#) {
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "held connection closed");
                answered.extend_from_slice(&buf[..n]);
            }
            stream
        })
        .collect()
}

/// A process of `uid` holding one keep-alive connection, answered once (so the agent has
/// accepted it); the connection closes when the returned child is killed.
pub fn hold_connection_as(uid: u32, socket: &Path) -> Child {
    const HOLD: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
data = b""
while b'{"status":"ok"}' not in data:
    chunk = s.recv(1024)
    if not chunk:
        sys.exit(1)
    data += chunk
print("held", flush=True)
sys.stdin.read()
"#;
    let mut child = python_as(uid, HOLD, &[socket.to_str().unwrap()]);
    assert_eq!(first_line(&mut child), "held");
    child
}

/// Runs `/usr/bin/python3 -c SCRIPT ARGS` as `uid` (gid = uid) with piped stdin and stdout (a
/// script that holds its state until stdin closes ends when the child's stdin is dropped).
pub fn python_as(uid: u32, script: &str, args: &[&str]) -> Child {
    let mut command = command("/usr/bin/python3");
    command
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    std::os::unix::process::CommandExt::uid(&mut command, uid);
    std::os::unix::process::CommandExt::gid(&mut command, uid);
    command.spawn().unwrap()
}

/// The next line `child` printed, trimmed. Read a byte at a time, so nothing after the line is
/// taken from the pipe: a later call gets the next line (a buffered reader made per call would
/// keep, and drop, what it read ahead).
pub fn first_line(child: &mut Child) -> String {
    let stdout = child.stdout.as_mut().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while std::io::Read::read(stdout, &mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).trim().to_owned()
}

/// The venv's site-packages, which `/usr/bin/python3` (readable by any uid) is pointed at.
pub fn site_packages() -> PathBuf {
    let lib = venv_bin("aws")
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("lib");
    let python = std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("python3")
        })
        .unwrap();
    python.join("site-packages")
}
