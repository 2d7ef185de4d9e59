//! systemd integration, as systemd does it: the `LoadCredential=` protocol on the credentials
//! socket (bind an abstract `\0<random>/unit/<unit>/<id>`, connect, read to EOF) as root and as
//! another uid; socket activation (`systemd-socket-activate` passes both named sockets) with
//! `sd_notify` READY/RELOADING/WATCHDOG/STOPPING read from a NOTIFY_SOCKET the test binds; and the
//! shipped unit files checked by `systemd-analyze verify` and `systemd-analyze security`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::cgroup::TestCgroup;
use common::creds::load_credential_in;
use common::{Agent, CANARY, TestDir, bin, repo_root, try_request, wait_until};

/// The rule set every credentials test uses: `web.service` may have `files/app/*` as a
/// credential; `db-password` and `api-token` map to secrets, `nothing-here` maps to nothing.
fn creds_config() -> String {
    common::file_config(
        r#"
[[allow]]
peer = { unit = "web.service" }
secrets = ["files/app/*"]

[credentials]
db-password = "files/app/database"
other-token = "files/other/token"
"#,
    )
    .replace(
        "socket_mode = \"0666\"",
        "socket_mode = \"0666\"\ncreds_socket = \"{dir}/creds.sock\"",
    )
}

fn start_creds_agent(dir: &TestDir) -> Agent {
    dir.secret("app/database", CANARY.as_bytes());
    dir.secret("other/token", b"not-for-web");
    Agent::start(dir, &creds_config())
}

/// Exactly what PID 1 does for `LoadCredential=ID:PATH`: from a process (root) already in the
/// unit's cgroup, bind the abstract address `\0<random>/unit/<unit>/<id>`, connect, shut down
/// the write side, read to EOF.
fn load_credential(path: &Path, unit: &str, id: &str) -> Vec<u8> {
    let cgroup = TestCgroup::new(unit);
    let (ok, data) = load_credential_in(&cgroup, None, path, unit, id);
    assert!(ok, "the credential client failed");
    data
}

/// The same exchange from a process running as `uid` in the unit's cgroup.
fn load_credential_as(uid: u32, path: &Path, unit: &str, id: &str) -> (bool, Vec<u8>) {
    let cgroup = TestCgroup::new(unit);
    load_credential_in(&cgroup, Some(uid), path, unit, id)
}

/// Audit lines with `"action":"credential"` from the agent's log.
fn credential_audit(agent: &Agent) -> Vec<serde_json::Value> {
    agent
        .log_text()
        .lines()
        .filter(|l| l.starts_with('{') && l.contains("\"action\":\"credential\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_for_audit(agent: &Agent, count: usize) -> Vec<serde_json::Value> {
    wait_until(Duration::from_secs(5), || {
        credential_audit(agent).len() >= count
    });
    credential_audit(agent)
}

#[test]
fn credential_is_served_to_pid1_for_an_allowed_unit() {
    let dir = TestDir::new();
    let agent = start_creds_agent(&dir);
    let creds = dir.path().join("creds.sock");
    let mode = std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the credentials socket is for root only");

    let value = load_credential(&creds, "web.service", "db-password");
    assert_eq!(value, CANARY.as_bytes());

    let audit = wait_for_audit(&agent, 1);
    let line = &audit[0];
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["unit"], "web.service");
    assert_eq!(line["secret"], "files/app/database");
    assert_eq!(line["uid"], 0);
    assert_eq!(line["status"], 200);
}

#[test]
fn unknown_or_denied_credentials_close_with_nothing_written() {
    let dir = TestDir::new();
    let agent = start_creds_agent(&dir);
    let creds = dir.path().join("creds.sock");

    // Not in [credentials].
    assert_eq!(load_credential(&creds, "web.service", "nothing-here"), b"");
    // Mapped, but no rule lets web.service have files/other/token.
    assert_eq!(load_credential(&creds, "web.service", "other-token"), b"");
    // Mapped and allowed for web.service, but asked for another unit.
    assert_eq!(load_credential(&creds, "db.service", "db-password"), b"");
    // The agent still serves the allowed one afterwards.
    assert_eq!(
        load_credential(&creds, "web.service", "db-password"),
        CANARY.as_bytes()
    );

    let audit = wait_for_audit(&agent, 4);
    let by_status: Vec<(String, u64, String)> = audit
        .iter()
        .map(|l| {
            (
                l["decision"].as_str().unwrap().to_owned(),
                l["status"].as_u64().unwrap(),
                l["unit"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        by_status,
        vec![
            ("deny".to_owned(), 404, "web.service".to_owned()),
            ("deny".to_owned(), 403, "web.service".to_owned()),
            ("deny".to_owned(), 403, "db.service".to_owned()),
            ("allow".to_owned(), 200, "web.service".to_owned()),
        ]
    );
}

#[test]
fn credential_request_from_a_non_root_peer_gets_nothing() {
    let dir = TestDir::new();
    let agent = start_creds_agent(&dir);
    let creds = dir.path().join("creds.sock");
    // Let the other uid reach the socket at all, so the agent's own uid check is what stops it
    // (anyone can bind an abstract name that claims to be PID 1 acting for a unit).
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o666)).unwrap();

    let (ok, data) = load_credential_as(65534, &creds, "web.service", "db-password");
    assert!(ok, "the python client could not connect as uid 65534");
    assert_eq!(data, b"", "a non-root peer must get nothing");

    let audit = wait_for_audit(&agent, 1);
    assert_eq!(audit[0]["uid"], 65534);
    assert_eq!(audit[0]["decision"], "deny");
    assert_eq!(audit[0]["status"], 403);
    // Root still gets it.
    assert_eq!(
        load_credential(&creds, "web.service", "db-password"),
        CANARY.as_bytes()
    );
}

/// `systemd-socket-activate`, which execs the agent in its own process on the first connection
/// (so the agent's pid is the activator's); killed on drop.
struct Activated {
    activator: std::process::Child,
    log: PathBuf,
}

impl Activated {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.activator.id() as i32)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.activator.kill();
        let _ = self.activator.wait();
    }
}

/// Reads notify datagrams until one equals or starts with `want`.
fn expect_notify(notify: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = notify.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push(text.clone());
            if text.lines().any(|l| l == want) {
                return;
            }
        }
    }
    panic!("no {want:?} from the agent; got {seen:?}");
}

/// Checks that `WATCHDOG=1` comes every `period` (half of `WATCHDOG_USEC`): the mean gap over
/// five intervals, received in real time, is within 0.6–1.6 times the period (systemd kills the
/// service when a whole `WATCHDOG_USEC` passes without one; a ping storm is a bug too).
fn assert_watchdog_interval(notify: &UnixDatagram, period: Duration, seen: &mut Vec<String>) {
    let mut buf = [0u8; 4096];
    // Messages queued while the test was busy elsewhere would arrive all at once: drop them.
    while let Ok(n) = notify.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let mut pings = Vec::new();
    let deadline = Instant::now() + period * 20;
    while pings.len() < 6 {
        assert!(
            Instant::now() < deadline,
            "only {} WATCHDOG=1 in {:?}: {seen:?}",
            pings.len(),
            period * 20
        );
        if let Ok(n) = notify.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text == "WATCHDOG=1" {
                pings.push(Instant::now());
            }
            seen.push(text);
        }
    }
    let mean = (pings[5] - pings[0]) / 5;
    assert!(
        mean >= period.mul_f64(0.6) && mean <= period.mul_f64(1.6),
        "WATCHDOG=1 every {mean:?} on average; expected about {period:?}"
    );
}

#[test]
fn socket_activation_with_named_sockets_and_sd_notify() {
    let dir = TestDir::new();
    dir.secret("app/database", CANARY.as_bytes());
    // The config names other paths: the agent must use the sockets it is given, not bind these.
    let config = dir.write_config(&creds_config().replace(
        "creds_socket = \"{dir}/creds.sock\"",
        "creds_socket = \"{dir}/not-this-creds.sock\"",
    ));
    let agent_sock = dir.path().join("activated.sock");
    let creds_sock = dir.path().join("activated-creds.sock");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let log = dir.path().join("agent.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let activator = common::command("systemd-socket-activate")
        .arg("-l")
        .arg(&creds_sock)
        .arg("-l")
        .arg(&agent_sock)
        .arg("--fdname=creds:agent")
        .arg(format!("-ENOTIFY_SOCKET={}", notify_path.display()))
        .arg("-EWATCHDOG_USEC=1000000")
        .arg("-ECREDAGENT_LOG=debug")
        .arg("--")
        .arg(bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("systemd-socket-activate (Debian package systemd) must be installed");
    let activated = Activated { activator, log };

    // The first connection makes systemd-socket-activate start the agent with both sockets. It
    // was made before the agent existed (so before it could ask for SO_PASSCRED on the
    // listener): it must be served all the same, not refused as another process's bytes.
    assert!(
        wait_until(Duration::from_secs(20), || agent_sock.exists()),
        "systemd-socket-activate did not bind {}",
        agent_sock.display()
    );
    let first = try_request(
        &agent_sock,
        "GET",
        "/v1/secrets/files/app/database",
        &[],
        b"",
    )
    .unwrap_or_else(|e| panic!("agent did not answer ({e}); log:\n{}", activated.log_text()));
    assert_eq!(
        (first.status, first.body.as_slice()),
        (200, CANARY.as_bytes()),
        "{}; log:\n{}",
        first.text(),
        activated.log_text()
    );
    let mut seen = Vec::new();
    expect_notify(&notify, "READY=1", &mut seen);
    expect_notify(&notify, "WATCHDOG=1", &mut seen);
    assert_watchdog_interval(&notify, Duration::from_millis(500), &mut seen);

    let resp = try_request(
        &agent_sock,
        "GET",
        "/v1/secrets/files/app/database",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(resp.body, CANARY.as_bytes());
    assert_eq!(
        load_credential(&creds_sock, "web.service", "db-password"),
        CANARY.as_bytes()
    );
    assert!(!dir.path().join("agent.sock").exists());
    assert!(!dir.path().join("not-this-creds.sock").exists());
    let log_text = activated.log_text();
    assert!(
        log_text.contains("using the agent socket passed by systemd"),
        "{log_text}"
    );
    assert!(
        log_text.contains("using the credentials socket passed by systemd"),
        "{log_text}"
    );

    let pid = activated.pid();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        bin(),
        "systemd-socket-activate should have exec'd the agent"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    expect_notify(&notify, "RELOADING=1", &mut seen);
    expect_notify(&notify, "READY=1", &mut seen);
    assert!(
        seen.iter()
            .any(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC=")),
        "{seen:?}"
    );

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    expect_notify(&notify, "STOPPING=1", &mut seen);
    let mut activated = activated;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = activated.activator.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "agent exit: {status}; log:\n{}",
        activated.log_text()
    );
    // Socket activation: systemd owns the socket files; the agent must not delete them.
    assert!(
        agent_sock.exists(),
        "the agent removed a socket it did not create"
    );
    assert!(!activated.log_text().contains(CANARY));
}

/// The shipped unit with ExecStart= pointing at the binary under test (verify checks that the
/// command exists; everything else is the file as shipped).
fn units_for_verify(dir: &Path) -> Vec<PathBuf> {
    let units = [
        "credagent.service",
        "credagent.socket",
        "credagent-creds.socket",
    ];
    units
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(repo_root().join("systemd").join(name)).unwrap();
            let text = text.replace("/usr/bin/credagent", &bin().display().to_string());
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

#[test]
fn unit_files_pass_systemd_analyze_verify() {
    let dir = TestDir::new();
    let units = units_for_verify(dir.path());
    let out = common::command("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(stderr.trim().is_empty(), "verify warnings:\n{stderr}");
}

/// "→ Overall exposure level for credagent.service: 1.8 OK 🙂" -> 1.8
fn parse_exposure(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    line.rsplit_once(": ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn unit_exposure_is_at_most_2() {
    let unit = repo_root().join("systemd/credagent.service");
    let out = common::command("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze must be installed");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let exposure = parse_exposure(&text)
        .unwrap_or_else(|| panic!("no exposure line in systemd-analyze output:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{text}");
    // The capabilities are exactly CAP_IPC_LOCK.
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(unit_text.contains("\nCapabilityBoundingSet=CAP_IPC_LOCK\n"));
    assert!(unit_text.contains("\nAmbientCapabilities=CAP_IPC_LOCK\n"));
    assert!(unit_text.contains("\nRestartPreventExitStatus=78 71 77\n"));
}

#[test]
fn exposure_parser_reads_the_summary_line() {
    assert_eq!(
        parse_exposure("x\n→ Overall exposure level for credagent.service: 1.8 OK 🙂\n"),
        Some(1.8)
    );
    assert_eq!(parse_exposure("nothing"), None);
}
