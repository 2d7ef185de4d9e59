//! The command source with Debian's real `pass` and `gopass` (a GnuPG key generated in batch
//! mode in a private GNUPGHOME), and with coreutils for the limits: values served with one
//! trailing newline trimmed, missing entries 404 by exit status, other failures 502 with the
//! status in the log and never the command's stderr, a cleared environment, the timeout, the
//! 4 MiB output limit, and ids that would be options refused before anything runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::config_allowing_all as agent_config;
use common::pass::PassStore;
use common::{Agent, CANARY, TestDir};

fn command_source(name: &str, argv: &str, extra: &str) -> String {
    format!("[sources.{name}]\ntype = \"command\"\nargv = {argv}\n{extra}\n")
}

#[test]
fn pass_and_gopass_entries_are_served_and_failures_are_told_apart() {
    let dir = TestDir::new();
    let store = PassStore::new(&dir);
    store.insert("app/db", b"pw-1\n");
    store.insert("app/multi", b"line1\nline2\n");
    store.insert("app/canary", format!("{CANARY}\n").as_bytes());
    store.insert_corrupt("app/broken");
    let env = r#"env_passthrough = ["PATH", "GNUPGHOME", "PASSWORD_STORE_DIR"]
not_found_exit_codes = [1]"#;
    let sources = [
        command_source("pass", r#"["pass", "show", "{id}"]"#, env),
        command_source(
            "pass-raw",
            r#"["pass", "show", "{id}"]"#,
            &format!("{env}\ntrim_newline = false"),
        ),
        command_source("gopass", r#"["gopass", "show", "{id}"]"#, env),
    ]
    .concat();
    let store_env = store.env();
    let env: Vec<(&str, &str)> = store_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let agent = Agent::start_with_env(&dir, &agent_config("", &sources), &env);

    for source in ["pass", "gopass"] {
        let db = agent.secret(&format!("{source}/app/db"));
        assert_eq!((db.status, db.text().as_str()), (200, "pw-1"), "{source}");
        assert_eq!(
            agent.secret(&format!("{source}/app/multi")).text(),
            "line1\nline2",
            "{source}: only the last newline is trimmed"
        );
        assert_eq!(
            agent.secret(&format!("{source}/app/canary")).body,
            CANARY.as_bytes()
        );
        let missing = agent.secret(&format!("{source}/app/nope"));
        assert_eq!(
            (missing.status, missing.error_code().as_str()),
            (404, "not_found"),
            "{source}: {}",
            missing.text()
        );
    }
    assert_eq!(agent.secret("pass-raw/app/db").text(), "pw-1\n");

    // gpg cannot decrypt: pass exits 2, which is not a not-found status.
    let broken = agent.secret("pass/app/broken");
    assert_eq!(
        (broken.status, broken.error_code().as_str()),
        (502, "upstream_unavailable"),
        "{}",
        broken.text()
    );
    assert!(!broken.text().contains("gpg"), "{}", broken.text());
    let log = agent.log_text();
    assert!(log.contains("exited with status 2"), "{log}");
    assert!(
        !log.contains("gpg:") && !log.contains("decrypt"),
        "the command's stderr reached the log"
    );
    assert!(!log.contains("pw-1"), "a value reached the log");

    // An id that the command would read as an option never runs it.
    for id in ["-h", "--version"] {
        let resp = agent.secret(&format!("pass/{id}"));
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (400, "bad_request"),
            "{id}"
        );
    }
}

#[test]
fn commands_get_a_cleared_environment_a_timeout_and_an_output_limit() {
    let dir = TestDir::new();
    let sources = [
        command_source(
            "printenv",
            r#"["printenv", "{id}"]"#,
            "env_passthrough = [\"PASSED\"]\nnot_found_exit_codes = [1]",
        ),
        command_source("sleep", r#"["sleep", "{id}"]"#, "timeout_secs = 1"),
        command_source("zeros", r#"["head", "-c", "{id}", "/dev/zero"]"#, ""),
        command_source("args", r#"["/usr/bin/printf", "%s|", "{id}", "x y"]"#, ""),
    ]
    .concat();
    let agent = Agent::start_with_env(
        &dir,
        &agent_config("", &sources),
        &[("PASSED", "passed-value"), ("NOT_PASSED", "hidden")],
    );

    assert_eq!(agent.secret("printenv/PASSED").text(), "passed-value");
    for hidden in ["NOT_PASSED", "PATH", "HOME"] {
        assert_eq!(
            agent.secret(&format!("printenv/{hidden}")).status,
            404,
            "{hidden} reached the command"
        );
    }
    // `{id}` is one argument, the other elements are passed as written (no shell, no splitting).
    assert_eq!(agent.secret("args/a+b=c").text(), "a+b=c|x y|");

    let started = Instant::now();
    let slow = agent.secret("sleep/30");
    assert_eq!(
        (slow.status, slow.error_code().as_str()),
        (504, "upstream_unavailable"),
        "{}",
        slow.text()
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    let max = 4 * 1024 * 1024;
    let full = agent.secret(&format!("zeros/{max}"));
    assert_eq!((full.status, full.body.len()), (200, max));
    let over = agent.secret(&format!("zeros/{}", max + 1));
    assert_eq!(
        (over.status, over.error_code().as_str()),
        (502, "upstream_bad_reply"),
        "{}",
        over.text()
    );
}

/// Emulates socket activation as systemd does it: binds the agent socket at fd 3 with
/// `FD_CLOEXEC` cleared, leaves a stray inheritable descriptor at fd 5 as well, sets
/// `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` and execs the agent (same pid).
const SOCKET_ACTIVATION: &str = r#"
import os, socket, sys
agent, config, path = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
os.chmod(path, 0o666)
s.listen(64)
fd = s.detach()
if fd != 3:
    os.dup2(fd, 3, inheritable=True)
    os.close(fd)
os.set_inheritable(3, True)
stray = os.open("/dev/null", os.O_RDONLY)
os.dup2(stray, 5, inheritable=True)
env = dict(os.environ, LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="agent")
os.execve(agent, [agent, "serve", "--config", config], env)
"#;

#[test]
fn a_command_started_by_a_socket_activated_agent_holds_no_descriptor_but_0_1_2() {
    let dir = TestDir::new();
    // `$$` is the shell: what it holds is what the agent passed on (ls's own directory
    // descriptor is ls's).
    let sources = command_source("fds", r#"["/bin/sh", "-c", "ls /proc/$$/fd", "{id}"]"#, "");
    let config = dir.write_config(&agent_config("", &sources));
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let child = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(SOCKET_ACTIVATION)
        .arg(common::bin())
        .arg(&config)
        .arg(dir.socket())
        .env("CREDAGENT_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let agent = Agent::adopt(&dir, config, child);
    assert!(
        agent
            .log_text()
            .contains("using the agent socket passed by systemd")
    );
    // The adopted listener itself is close-on-exec now, as sd_listen_fds(3) leaves it.
    let fdinfo = std::fs::read_to_string(format!("/proc/{}/fdinfo/3", agent.pid())).unwrap();
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap();
    assert_ne!(flags & 0o2000000, 0, "fd 3 lacks O_CLOEXEC: {fdinfo}");
    let listing = agent.secret("fds/x");
    assert_eq!(listing.status, 200, "{}", listing.text());
    assert_eq!(
        listing.text(),
        "0\n1\n2",
        "the command inherited descriptors"
    );
}

#[test]
fn exec_and_exec_watch_children_hold_no_descriptor_but_0_1_2() {
    let dir = TestDir::new();
    dir.secret("db", b"value");
    let agent = Agent::start(&dir, &common::file_config(""));
    // A descriptor this process leaves open across exec, as a caller of `credagent exec` may.
    let stray = std::fs::File::open("/dev/null").unwrap();
    let inherited = nix::unistd::dup(&stray).unwrap();
    nix::fcntl::fcntl(
        &inherited,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    for watch in [false, true] {
        let mut args = vec!["exec"];
        if watch {
            args.push("--watch");
        }
        args.extend(["--env", "DB=files/db", "--socket"]);
        let out = std::process::Command::new(common::bin())
            .args(&args)
            .arg(&agent.socket)
            .args(["--", "/bin/sh", "-c", "ls /proc/$$/fd"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "0\n1\n2\n",
            "watch = {watch}: the child inherited descriptors"
        );
    }
    drop(inherited);
}
