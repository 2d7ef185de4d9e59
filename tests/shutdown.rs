//! Lifecycle: SIGTERM drains in-flight requests and removes the socket; stale sockets are
//! replaced and live ones refused; start-up failures exit with their own codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
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
    let out = Command::new(common::bin())
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
    let out = Command::new(common::bin())
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
    let mut command = Command::new("sh");
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
    let mut command = Command::new("sh");
    let log = std::fs::File::create(dir.path().join("nobody.log")).unwrap();
    command.args(["-c", &script]).stderr(log);
    std::os::unix::process::CommandExt::uid(&mut command, 65534);
    std::os::unix::process::CommandExt::gid(&mut command, 65534);
    let child = common::ChildGuard(command.spawn().unwrap());
    assert!(common::wait_until(Duration::from_secs(10), || {
        common::try_request(&socket, "GET", "/v1/health", &[], b"").is_ok_and(|r| r.status == 200)
    }));
    drop(child);
    let log = std::fs::read_to_string(dir.path().join("nobody.log")).unwrap();
    assert_eq!(log.matches("cannot lock secret memory").count(), 1, "{log}");
}
