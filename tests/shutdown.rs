//! Lifecycle: SIGTERM drains in-flight requests and removes the socket; stale sockets are
//! replaced and live ones refused; start-up failures exit with their own codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{Agent, TestDir, file_config};

#[test]
fn sigterm_finishes_in_flight_requests_removes_the_socket_and_exits_0() {
    let dir = TestDir::new();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    dir.secret("big", &big);
    let mut agent = Agent::start(&dir, &file_config(""));

    // A slow reader: its response is still being written when SIGTERM arrives.
    let mut slow = UnixStream::connect(&agent.socket).unwrap();
    slow.write_all(b"GET /v1/secrets/files/big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 1024];
    slow.read_exact(&mut first).unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // The listener closes and the socket file goes at once, while the slow response continues.
    assert!(
        common::wait_until(Duration::from_secs(5), || !agent.socket.exists()),
        "socket file still present after SIGTERM"
    );
    assert!(UnixStream::connect(&agent.socket).is_err());

    let mut rest = Vec::new();
    slow.read_to_end(&mut rest).unwrap();
    let mut raw = first.to_vec();
    raw.extend_from_slice(&rest);
    let resp = common::parse_response(&raw).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), big.len());
    assert!(resp.body == big, "in-flight response was cut or corrupted");

    let status = agent.stop_after_signal();
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log_text());
    assert!(agent.log_text().contains("all connections drained"));
}

#[test]
fn stale_socket_is_replaced_and_live_one_refused() {
    let dir = TestDir::new();
    dir.secret("x", b"value");
    // A stale socket: bound, then its owner went away.
    drop(std::os::unix::net::UnixListener::bind(dir.socket()).unwrap());
    assert!(dir.socket().exists());
    let agent = Agent::start(&dir, &file_config(""));
    assert_eq!(agent.secret("files/x").body, b"value");

    // A second agent on the same, live socket refuses to start, and the first keeps serving.
    let config = dir.path().join("config.toml");
    let out = common::command(common::bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(73), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    assert_eq!(agent.secret("files/x").body, b"value");
}

#[test]
fn refuses_to_replace_a_regular_file_at_the_socket_path() {
    let dir = TestDir::new();
    std::fs::write(dir.socket(), b"not a socket").unwrap();
    let config = dir.write_config(&file_config(""));
    let out = common::command(common::bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(73));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(dir.socket()).unwrap(), b"not a socket");
}

#[test]
fn required_memory_lock_refuses_to_start_without_memlock_and_names_the_limit() {
    let dir = TestDir::new();
    let config = dir.write_config(&file_config("").replace(
        "lock_memory = \"best-effort\"",
        "lock_memory = \"required\"",
    ));
    // As an unprivileged user with RLIMIT_MEMLOCK = 0, mlock must fail.
    let script = format!(
        "ulimit -l 0 && exec {} serve --config {}",
        common::bin().display(),
        config.display()
    );
    let mut command = common::command("sh");
    command.args(["-c", &script]);
    std::os::unix::process::CommandExt::uid(&mut command, 65534);
    std::os::unix::process::CommandExt::gid(&mut command, 65534);
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(71), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("RLIMIT_MEMLOCK") && stderr.contains("CAP_IPC_LOCK"),
        "{stderr}"
    );

    // The same with best-effort starts (and warns once). The unprivileged agent needs a socket
    // directory it may write.
    let own = dir.path().join("nobody");
    std::fs::create_dir(&own).unwrap();
    nix::unistd::chown(&own, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let socket = own.join("agent.sock");
    let config =
        dir.write_config(&file_config("").replace("{socket}", &socket.display().to_string()));
    let script = format!(
        "ulimit -l 0 && exec {} serve --config {}",
        common::bin().display(),
        config.display()
    );
    let mut command = common::command("sh");
    let log = std::fs::File::create(dir.path().join("nobody.log")).unwrap();
    command.args(["-c", &script]).stderr(log);
    std::os::unix::process::CommandExt::uid(&mut command, 65534);
    std::os::unix::process::CommandExt::gid(&mut command, 65534);
    let child = common::ChildGuard(command.spawn().unwrap());
    assert!(common::wait_until(Duration::from_secs(10), || {
        common::try_request(&socket, "GET", "/v1/health", &[], b"").is_ok_and(|r| r.status == 200)
    }));
    // Every new mapping fails to lock again (slabs of other size classes, a value over 4 KiB
    // with a mapping of its own): the warning still appears once.
    dir.secret("small", b"s");
    dir.secret("medium", &[b'm'; 1000]);
    dir.secret("large", &[b'l'; 100_000]);
    for name in ["small", "medium", "large"] {
        let resp = common::try_request(
            &socket,
            "GET",
            &format!("/v1/secrets/files/{name}"),
            &[],
            b"",
        )
        .unwrap();
        assert_eq!(resp.status, 200, "{name}: {}", resp.text());
    }
    drop(child);
    let log = std::fs::read_to_string(dir.path().join("nobody.log")).unwrap();
    assert_eq!(log.matches("cannot lock secret memory").count(), 1, "{log}");
}

/// `credagent ARGS`, with its output.
fn run(args: &[&str]) -> std::process::Output {
    common::command(common::bin()).args(args).output().unwrap()
}

#[test]
fn bad_command_line_usage_exits_2() {
    for args in [
        &[][..],
        &["serve", "--no-such-flag"],
        &["no-such-command"],
        &["get"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "credagent {args:?}: {out:?}");
    }
}

#[test]
fn unopenable_audit_file_exits_73_naming_it() {
    let dir = TestDir::new();
    let missing = dir.path().join("no-such-dir/audit.log");
    let config = dir.write_config(&file_config("").replace(
        "[cache]",
        &format!("[audit]\nfile = \"{}\"\n\n[cache]", missing.display()),
    ));
    let out = run(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(73), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot open audit file") && stderr.contains("no-such-dir"),
        "{stderr}"
    );
}

/// Runs the agent under a seccomp filter that makes `rt_sigaction(SIGHUP, …)` fail with EPERM
/// (set up by /usr/bin/python3 through prctl, then exec), so installing the reload handler fails.
#[test]
fn a_signal_handler_that_cannot_be_installed_exits_70_and_leaves_no_socket_file() {
    let dir = TestDir::new();
    let config = dir.write_config(&file_config(""));
    let script = r#"
import ctypes, os, platform, struct, sys
arch, nr = {"x86_64": (0xC000003E, 13), "aarch64": (0xC00000B7, 134)}[platform.machine()]
# BPF: if arch matches and nr == rt_sigaction and args[0] == SIGHUP: ERRNO(EPERM), else ALLOW.
code = [(0x20, 0, 0, 4), (0x15, 0, 5, arch), (0x20, 0, 0, 0), (0x15, 0, 3, nr),
        (0x20, 0, 0, 16), (0x15, 0, 1, 1), (0x06, 0, 0, 0x00050001), (0x06, 0, 0, 0x7FFF0000)]
insns = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *c) for c in code))
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Fprog(len(code), ctypes.addressof(insns))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0, "PR_SET_NO_NEW_PRIVS"
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, "PR_SET_SECCOMP"
os.execv(sys.argv[1], sys.argv[1:])
"#;
    let out = common::command("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(common::bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{stderr}");
    assert!(stderr.contains("cannot install signal handler"), "{stderr}");
    // It fails before binding: no socket file is left for the next start to find.
    assert!(
        !dir.socket().exists(),
        "exit 70 left {} behind",
        dir.socket().display()
    );
}

/// Bytes queued unread at the agent's end of the connections to `socket` (`ss -x`: Recv-Q of
/// established sockets whose local address is the socket path); None when there is none.
fn unread_by_agent(socket: &std::path::Path) -> Option<u64> {
    let out = common::command("ss")
        .args(["-x", "-H", "-n"])
        .output()
        .unwrap();
    let path = socket.to_str().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 4 && f[1] == "ESTAB" && f[4] == path)
        .map(|f| f[2].parse::<u64>().unwrap_or(u64::MAX))
        .reduce(|a, b| a.saturating_add(b))
}

/// The sockets (`socket:[INODE]`) the agent holds: its listener and accepted connections.
fn sockets(pid: u32) -> std::collections::HashSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.starts_with("socket:"))
        .collect()
}

#[test]
fn a_request_that_arrives_during_the_drain_gets_503_shutting_down_and_ready_says_so() {
    let dir = TestDir::new();
    dir.secret("x", b"value");
    let mut agent = Agent::start(&dir, &file_config(""));
    let pid = agent.pid();

    // Clients that are connected (accepted: the agent holds sockets it did not hold before)
    // and have sent only the start of their requests when SIGTERM arrives.
    let heads = [
        "GET /v1/secrets/files/x HTTP/1.1\r\n",
        "GET /v1/ready HTTP/1.1\r\n",
        "GET /v1/health HTTP/1.1\r\n",
    ];
    let before = sockets(pid);
    let mut late: Vec<UnixStream> = heads
        .iter()
        .map(|_| UnixStream::connect(&agent.socket).unwrap())
        .collect();
    assert!(
        common::wait_until(Duration::from_secs(10), || sockets(pid)
            .difference(&before)
            .count()
            == heads.len()),
        "the agent did not accept the connections"
    );
    for (stream, head) in late.iter_mut().zip(heads) {
        stream.write_all(head.as_bytes()).unwrap();
    }
    // ...and the agent has read those starts (hyper closes a connection it has read nothing
    // from as idle when the drain begins; this test is about ones it has).
    assert!(
        common::wait_until(Duration::from_secs(10), || unread_by_agent(&agent.socket)
            == Some(0)),
        "the agent did not read the start of the requests"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // The socket file goes once the agent is draining.
    assert!(common::wait_until(Duration::from_secs(10), || !agent
        .socket
        .exists()));

    let mut answers = late.into_iter().map(|mut stream| {
        stream
            .write_all(b"Host: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        common::parse_response(&raw).expect("an HTTP response")
    });
    // A read is refused, and no value leaves; a readiness probe learns that the agent takes
    // no more work (so it is unrouted at once);
    for what in ["read", "ready"] {
        let resp = answers.next().unwrap();
        let got = (resp.status, resp.error_code());
        assert_eq!(
            got,
            (503, "shutting_down".into()),
            "{what}: {}",
            resp.text()
        );
        assert!(!resp.text().contains("value"));
    }
    // a liveness probe, that it is still alive (draining is not a reason to restart it).
    let health = answers.next().unwrap();
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(agent.stop_after_signal().code(), Some(0));
}

#[test]
fn a_client_that_does_not_send_its_request_head_within_10_s_is_disconnected() {
    let dir = TestDir::new();
    let agent = Agent::start(&dir, &file_config(""));
    let slow_client = |first_bytes: &'static [u8]| {
        let socket = agent.socket.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut stream = UnixStream::connect(&socket).unwrap();
            stream.write_all(first_bytes).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(25)))
                .unwrap();
            let mut reply = Vec::new();
            // Closed by the agent (possibly after a 408): Ok. Our own read timeout: Err.
            let closed = stream.read_to_end(&mut reply).is_ok();
            (closed, started.elapsed(), reply)
        })
    };
    let partial = slow_client(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n");
    let silent = slow_client(b"");
    for (what, client) in [("partial head", partial), ("no bytes", silent)] {
        let (closed, elapsed, reply) = client.join().unwrap();
        assert!(closed, "{what}: still connected after {elapsed:?}");
        // Timers never fire early: a close before 10 s is some other limit.
        assert!(
            elapsed >= Duration::from_millis(9_900),
            "{what}: closed after only {elapsed:?}"
        );
        if !reply.is_empty() {
            let resp = common::parse_response(&reply).expect("an HTTP response");
            assert_eq!(resp.status, 408, "{what}");
        }
    }
    // Other clients were served all along.
    assert_eq!(agent.get("/v1/health").status, 200);
}
