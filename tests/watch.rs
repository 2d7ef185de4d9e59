//! `render --watch` and `exec --watch` against the real binary and real backends: a secret
//! rotated in the file source, moto (PutSecretValue) or OpenBao (KV v2 put) reaches the rendered
//! file (content, mode, owner) and the `--on-change` command, the `--signal` target, or the exec
//! child (restart, signal) within the bound in each test's name; a flush that changes nothing
//! rewrites nothing and restarts nothing; the agent going away and coming back; exit statuses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::bao::Bao;
use common::moto::{Moto, key_source};
use common::{Agent, TestDir, config_allowing_all, file_config, wait_until};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::json;

const NOBODY: u32 = 65534;

/// A `credagent` client command kept running (killed on drop with its process group, so an
/// `exec` child goes too), its stderr in a file.
struct Watcher {
    child: Option<Child>,
    group: Pid,
    log: PathBuf,
}

impl Watcher {
    fn spawn(socket: &Path, dir: &TestDir, args: &[&str], uid: Option<u32>) -> Watcher {
        let log = dir.path().join(format!("watcher-{}.log", args[0]));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = common::command(common::bin());
        // `--socket` right after the subcommand: after `exec`'s `--` it would be the child's.
        command
            .arg(args[0])
            .arg("--socket")
            .arg(socket)
            .args(&args[1..])
            .env("CREDAGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        if let Some(uid) = uid {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, uid);
        }
        let child = command.spawn().unwrap();
        Watcher {
            group: Pid::from_raw(child.id() as i32),
            child: Some(child),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Sends `signal` and waits (at most 10 s) for the exit status.
    fn signal_and_wait(&mut self, signal: Signal) -> ExitStatus {
        nix::sys::signal::kill(self.pid(), signal).unwrap();
        self.wait(Duration::from_secs(10))
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit within {limit:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // The group outlives its leader when the leader exited first (an `exec` child).
        let _ = nix::sys::signal::killpg(self.group, Signal::SIGKILL);
        if let Some(mut child) = self.child.take() {
            common::kill_group(&mut child);
        }
        if !std::thread::panicking() {
            assert!(
                !self.log_text().contains(common::CANARY),
                "the canary leaked into the watcher's log"
            );
        }
    }
}

/// `render TEMPLATE -o OUT --watch EXTRA…` as `uid`, with `template` written to `base/t` and the
/// output at `base/out`; returns once the first write has `first` in it.
fn render_watch(
    agent: &Agent,
    dir: &TestDir,
    base: &Path,
    template: &str,
    extra: &[&str],
    uid: Option<u32>,
    first: &str,
) -> (Watcher, PathBuf) {
    let path = base.join("t");
    std::fs::write(&path, template).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = base.join("out");
    let _ = std::fs::remove_file(&out);
    let mut args = vec![
        "render",
        path.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--watch",
    ];
    args.extend_from_slice(extra);
    let watcher = Watcher::spawn(&agent.socket, dir, &args, uid);
    within(Duration::from_secs(10), &watcher, "first write", || {
        read(&out) == first
    });
    (watcher, out)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn lines(path: &Path) -> usize {
    read(path).lines().count()
}

/// Identity of a file's current content: inode and mtime.
fn stamp(path: &Path) -> (u64, i64, i64) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.ino(), meta.mtime(), meta.mtime_nsec())
}

fn flush(agent: &Agent) {
    let resp = agent.request("POST", "/v1/cache/flush", &[], b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
}

/// A marker file, and an `--on-change` command that appends a line to it per run.
fn run_counter(dir: &TestDir) -> (PathBuf, String) {
    let marker = dir.path().join("runs");
    let on_change = format!("echo run >> {}", marker.display());
    (marker, on_change)
}

/// Waits until `f`, failing with `what` and the watcher's log after `limit`.
fn within(limit: Duration, watcher: &Watcher, what: &str, f: impl FnMut() -> bool) {
    assert!(
        wait_until(limit, f),
        "{what} not within {limit:?}; watcher log:\n{}",
        watcher.log_text()
    );
}

#[test]
fn render_watch_rewrites_a_rotated_file_secret_with_mode_and_owner_and_runs_on_change_once_within_5s()
 {
    let dir = TestDir::new();
    dir.secret("db", b"one");
    // The canary: in the file, never in the watcher's (debug) log, checked on drop.
    dir.secret("api", common::CANARY.as_bytes());
    let agent = Agent::start(&dir, &file_config(""));
    let (marker, on_change) = run_counter(&dir);
    let (mut watcher, out) = render_watch(
        &agent,
        &dir,
        dir.path(),
        "db={{ secret files/db }}\napi={{ secret files/api }}\nagain={{ secret files/db }}\n",
        &[
            "--mode",
            "0640",
            "--owner",
            "65534",
            "--group",
            "65534",
            "--on-change",
            &on_change,
        ],
        None,
        &format!("db=one\napi={}\nagain=one\n", common::CANARY),
    );
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o640, NOBODY, NOBODY)
    );
    assert_eq!(lines(&marker), 0, "no --on-change for the first write");

    // A flush that changes nothing: the tags stay, no wait fires, nothing is rewritten.
    let before = stamp(&out);
    std::thread::sleep(Duration::from_millis(500));
    flush(&agent);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stamp(&out), before, "rewritten without a change");
    assert_eq!(lines(&marker), 0, "--on-change ran without a change");

    // Rotation: the file source reads the new bytes after the flush.
    dir.secret("db", b"two");
    let rotated = Instant::now();
    flush(&agent);
    within(Duration::from_secs(5), &watcher, "re-render", || {
        read(&out) == format!("db=two\napi={}\nagain=two\n", common::CANARY) && lines(&marker) == 1
    });
    assert!(rotated.elapsed() < Duration::from_secs(5));
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o640, NOBODY, NOBODY)
    );
    assert_ne!(stamp(&out).0, before.0, "replaced by rename (new inode)");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lines(&marker), 1, "exactly one --on-change run per change");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    assert!(watcher.running());
    let status = watcher.signal_and_wait(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "{}", watcher.log_text());
}

#[test]
fn render_watch_exits_0_on_sigterm_and_sigint_within_10s() {
    let dir = TestDir::new();
    dir.secret("db", b"one");
    let agent = Agent::start(&dir, &file_config(""));
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let (mut watcher, _) = render_watch(
            &agent,
            &dir,
            dir.path(),
            "{{ secret files/db }}",
            &[],
            None,
            "one",
        );
        let status = watcher.signal_and_wait(signal);
        assert_eq!(status.code(), Some(0), "{signal}: {}", watcher.log_text());
    }
}

#[test]
fn render_watch_rereads_its_template_on_sighup_keeps_the_old_one_when_the_edit_is_broken_and_keeps_running()
 {
    let dir = TestDir::new();
    dir.secret("db", b"one");
    dir.secret("api", b"key");
    let agent = Agent::start(&dir, &file_config(""));
    let (marker, on_change) = run_counter(&dir);
    let (mut watcher, out) = render_watch(
        &agent,
        &dir,
        dir.path(),
        "db={{ secret files/db }}\n",
        &["--on-change", &on_change],
        None,
        "db=one\n",
    );
    let template = dir.path().join("t");
    let hup = |watcher: &Watcher| nix::sys::signal::kill(watcher.pid(), Signal::SIGHUP).unwrap();

    // The operator edits the template (a new secret in it) and reloads: the file follows at
    // once, the on-change action runs once, and the new secret is watched from then on.
    std::fs::write(
        &template,
        "db={{ secret files/db }}\napi={{ secret files/api }}\n",
    )
    .unwrap();
    hup(&watcher);
    within(
        Duration::from_secs(5),
        &watcher,
        "re-render on SIGHUP",
        || read(&out) == "db=one\napi=key\n" && lines(&marker) == 1,
    );
    assert!(watcher.running(), "{}", watcher.log_text());
    dir.secret("api", b"key2");
    flush(&agent);
    within(
        Duration::from_secs(5),
        &watcher,
        "the new template's secret followed",
        || read(&out) == "db=one\napi=key2\n" && lines(&marker) == 2,
    );

    // A reload with nothing changed rewrites nothing and runs nothing.
    let before = stamp(&out);
    hup(&watcher);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(stamp(&out), before, "rewritten without a change");
    assert_eq!(lines(&marker), 2);

    // An edit that breaks the template: the old template and file stay, the error is logged,
    // and it keeps following the old template's secrets.
    std::fs::write(&template, "db={{ secret files/db ").unwrap();
    hup(&watcher);
    within(
        Duration::from_secs(5),
        &watcher,
        "the broken template reported",
        || watcher.log_text().contains("keeping the old template"),
    );
    assert!(watcher.running(), "{}", watcher.log_text());
    assert_eq!(read(&out), "db=one\napi=key2\n");
    dir.secret("db", b"two");
    flush(&agent);
    within(
        Duration::from_secs(5),
        &watcher,
        "the old template still followed",
        || read(&out) == "db=two\napi=key2\n" && lines(&marker) == 3,
    );

    let status = watcher.signal_and_wait(Signal::SIGTERM);
    assert_eq!(status.code(), Some(0), "{}", watcher.log_text());
}

/// A process that appends a line to `marker` on each SIGHUP; its pid.
fn hup_counter(dir: &TestDir, marker: &Path) -> common::ChildGuard {
    let ready = dir.path().join("hup-ready");
    let child = common::command("/bin/sh")
        .arg("-c")
        .arg(format!(
            "trap 'echo hup >> {}' HUP; touch {}; while :; do sleep 0.1; done",
            marker.display(),
            ready.display()
        ))
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || ready.exists()));
    common::ChildGuard(child)
}

#[test]
fn render_watch_follows_a_moto_put_secret_value_and_signals_the_pid_file_process_within_5s() {
    let dir = TestDir::new();
    let moto = Moto::start(&dir);
    let agent = Agent::start(
        &dir,
        &config_allowing_all("", &key_source(dir.path(), &moto, "aws", "reader", "")),
    );
    let pid_file = dir.path().join("app.pid");
    // A bad pid file at the first change: the error is logged, the file still written.
    std::fs::write(&pid_file, "not-a-pid\n").unwrap();
    let marker = dir.path().join("hups");
    let target = hup_counter(&dir, &marker);
    let (watcher, out) = render_watch(
        &agent,
        &dir,
        dir.path(),
        "password={{ secret awsSecret://rotating }}\n",
        &["--signal", "HUP", "--pid-file", pid_file.to_str().unwrap()],
        None,
        "password=rotating-v1\n",
    );

    moto.put_value("rotating", "rotating-v2");
    flush(&agent);
    within(Duration::from_secs(5), &watcher, "re-render", || {
        read(&out) == "password=rotating-v2\n"
    });
    within(Duration::from_secs(5), &watcher, "pid file error", || {
        watcher.log_text().contains("--pid-file")
    });
    assert_eq!(lines(&marker), 0);

    std::fs::write(&pid_file, format!("{}\n", target.0.id())).unwrap();
    moto.put_value("rotating", "rotating-v3");
    flush(&agent);
    within(Duration::from_secs(5), &watcher, "signal", || {
        read(&out) == "password=rotating-v3\n" && lines(&marker) == 1
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lines(&marker), 1, "one signal per change");
}

fn bao_config(bao: &Bao, dir: &TestDir) -> String {
    let token = dir.path().join("token");
    std::fs::write(&token, "root\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    config_allowing_all(
        "refresh_ahead_secs = 0",
        &format!(
            r#"[sources.vault]
type = "vault"
address = "{address}"
kv_mount = "secret"
ttl_secs = 1
auth = {{ method = "token", token_file = "{{dir}}/token" }}
"#,
            address = bao.address()
        ),
    )
}

#[test]
fn render_watch_follows_an_openbao_kv_put_without_a_flush_within_5s() {
    let bao = Bao::start();
    bao.kv_put("app/db", json!({ "password": "one", "user": "app" }));
    let dir = TestDir::new();
    let agent = Agent::start(&dir, &bao_config(&bao, &dir));
    let (marker, on_change) = run_counter(&dir);
    let (watcher, out) = render_watch(
        &agent,
        &dir,
        dir.path(),
        "{{ secret vault/app/db field=user }}:{{ secret vault/app/db field=password }}",
        &["--on-change", &on_change],
        None,
        "app:one",
    );
    // The 1 s TTL: the agent re-reads on its own; the user field's wait does not fire.
    bao.kv_put("app/db", json!({ "password": "two", "user": "app" }));
    within(Duration::from_secs(5), &watcher, "re-render", || {
        read(&out) == "app:two" && lines(&marker) == 1
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lines(&marker), 1, "one --on-change run per change");
}

#[test]
fn render_watch_keeps_the_old_file_while_the_agent_is_down_recovers_within_10s_of_its_return_and_follows_within_5s()
 {
    let dir = TestDir::new();
    dir.secret("db", b"one");
    let config = file_config("");
    let mut agent = Agent::start(&dir, &config);
    let (mut watcher, out) = render_watch(
        &agent,
        &dir,
        dir.path(),
        "{{ secret files/db }}",
        &[],
        None,
        "one",
    );
    let before = stamp(&out);
    assert!(agent.stop().success());
    within(Duration::from_secs(10), &watcher, "retry log", || {
        watcher.log_text().contains("retrying in")
    });
    assert_eq!(
        stamp(&out),
        before,
        "the old file stays while the agent is down"
    );
    assert_eq!(read(&out), "one");
    assert!(watcher.running(), "{}", watcher.log_text());

    // Back with the same value: new tags (a new process), same bytes, nothing rewritten.
    let agent = Agent::start(&dir, &config);
    let back = Instant::now();
    within(Duration::from_secs(10), &watcher, "recovery", || {
        watcher.log_text().contains("watching files/db again")
    });
    assert!(back.elapsed() < Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(stamp(&out), before, "rewritten with the same bytes");

    dir.secret("db", b"two");
    flush(&agent);
    within(Duration::from_secs(5), &watcher, "re-render", || {
        read(&out) == "two"
    });
}

#[test]
fn render_watch_over_the_per_uid_connection_cap_says_so_within_5s() {
    let dir = TestDir::new();
    for id in ["a", "b", "c"] {
        dir.secret(id, id.as_bytes());
    }
    let config = file_config(&format!(
        "[[allow]]\npeer = {{ uid = {NOBODY} }}\nsecrets = [\"files/*\"]\n"
    ))
    .replace(
        "socket_mode = \"0666\"",
        "socket_mode = \"0666\"\nmax_connections_per_uid = 2",
    );
    let agent = Agent::start(&dir, &config);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (mut watcher, _) = render_watch(
        &agent,
        &dir,
        &work,
        "{{ secret files/a }}{{ secret files/b }}{{ secret files/c }}",
        &[],
        Some(NOBODY),
        "abc",
    );
    within(Duration::from_secs(5), &watcher, "the limit named", || {
        let log = watcher.log_text();
        log.contains("too_many_connections") && log.contains("server.max_connections_per_uid")
    });
    assert!(watcher.running(), "{}", watcher.log_text());
}

/// `exec --watch` with `DB` from `files/db`; the child appends `$DB` to `starts` at each start.
fn exec_watcher(agent: &Agent, dir: &TestDir, on_change: &str, script: &str) -> Watcher {
    Watcher::spawn(
        &agent.socket,
        dir,
        &[
            "exec",
            "--watch",
            "--on-change",
            on_change,
            "--grace",
            "5",
            "--env",
            "DB=files/db",
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
        None,
    )
}

#[test]
fn exec_watch_restarts_the_child_exactly_once_with_the_new_value_within_5s_not_on_a_no_change_flush_or_agent_restart()
 {
    let dir = TestDir::new();
    dir.secret("db", b"one");
    let mut agent = Agent::start(&dir, &file_config(""));
    let starts = dir.path().join("starts");
    let script = format!("echo \"$DB\" >> {}; exec sleep 1000", starts.display());
    let watcher = exec_watcher(&agent, &dir, "restart", &script);
    within(Duration::from_secs(10), &watcher, "first start", || {
        read(&starts) == "one\n"
    });

    flush(&agent);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(read(&starts), "one\n", "restarted without a change");
    // The agent restarted: new tags over the same bytes, still no restart.
    assert!(agent.stop().success());
    let agent = Agent::start(&dir, &file_config(""));
    within(Duration::from_secs(10), &watcher, "rewatch", || {
        watcher.log_text().contains("watching files/db again")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        read(&starts),
        "one\n",
        "restarted for a new tag over the same bytes"
    );

    dir.secret("db", b"two");
    flush(&agent);
    within(Duration::from_secs(5), &watcher, "restart", || {
        read(&starts) == "one\ntwo\n"
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(read(&starts), "one\ntwo\n", "exactly one restart");
}

#[test]
fn exec_watch_signal_hup_reaches_the_child_within_5s_without_a_restart_and_sighup_is_passed_on() {
    let dir = TestDir::new();
    dir.secret("db", b"one");
    let agent = Agent::start(&dir, &file_config(""));
    let starts = dir.path().join("starts");
    let hups = dir.path().join("hups");
    let script = format!(
        "trap 'echo hup >> {}' HUP; echo \"$DB\" >> {}; while :; do sleep 0.1; done",
        hups.display(),
        starts.display()
    );
    let mut watcher = exec_watcher(&agent, &dir, "signal:HUP", &script);
    within(Duration::from_secs(10), &watcher, "first start", || {
        read(&starts) == "one\n"
    });
    dir.secret("db", b"two");
    flush(&agent);
    within(Duration::from_secs(5), &watcher, "SIGHUP", || {
        lines(&hups) == 1
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lines(&hups), 1);
    assert_eq!(read(&starts), "one\n", "signalled, not restarted");
    // SIGHUP to credagent is passed on; both keep running.
    nix::sys::signal::kill(watcher.pid(), Signal::SIGHUP).unwrap();
    within(Duration::from_secs(5), &watcher, "passed-on SIGHUP", || {
        lines(&hups) == 2
    });
    assert!(watcher.running(), "{}", watcher.log_text());
}

#[test]
fn exec_watch_exits_with_the_childs_status_and_passes_signals_on() {
    let dir = TestDir::new();
    dir.secret("db", b"one");
    let agent = Agent::start(&dir, &file_config(""));
    // The child exits on its own: its code, or 128+N for a signal death.
    for (script, code) in [("exit 7", 7), ("exit 0", 0), ("kill -KILL $$", 128 + 9)] {
        let mut watcher = exec_watcher(&agent, &dir, "restart", script);
        let status = watcher.wait(Duration::from_secs(10));
        assert_eq!(
            status.code(),
            Some(code),
            "{script}: {}",
            watcher.log_text()
        );
    }
    // SIGTERM to credagent reaches the child, whose status becomes credagent's.
    let ready = dir.path().join("ready");
    let script = format!(
        "trap 'exit 3' TERM; touch {}; while :; do sleep 0.1; done",
        ready.display()
    );
    let mut watcher = exec_watcher(&agent, &dir, "restart", &script);
    within(Duration::from_secs(10), &watcher, "child start", || {
        ready.exists()
    });
    let status = watcher.signal_and_wait(Signal::SIGTERM);
    assert_eq!(status.code(), Some(3), "{}", watcher.log_text());
}

#[test]
fn render_watch_kills_an_on_change_command_past_its_timeout_with_its_children_within_5s() {
    let dir = TestDir::new();
    dir.secret("db", b"one");
    let agent = Agent::start(&dir, &file_config(""));
    let marker = dir.path().join("runs");
    // `sleep` is a child of the shell: killed with it (its process group), "end" never written.
    let on_change = format!(
        "echo start >> {m}; sleep 31.25; echo end >> {m}",
        m = marker.display()
    );
    let (watcher, out) = render_watch(
        &agent,
        &dir,
        dir.path(),
        "{{ secret files/db }}",
        &["--on-change", &on_change, "--on-change-timeout", "1"],
        None,
        "one",
    );
    dir.secret("db", b"two");
    flush(&agent);
    within(Duration::from_secs(5), &watcher, "the kill", || {
        read(&out) == "two"
            && read(&marker) == "start\n"
            && watcher.log_text().contains("killed after 1s")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(read(&marker), "start\n");
    let sleepers = common::command("pgrep")
        .args(["-f", "^sleep 31.25$"])
        .output()
        .unwrap();
    assert!(
        sleepers.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&sleepers.stdout)
    );
}

#[test]
fn an_app_user_writing_a_root_pid_into_its_pid_file_cannot_make_root_render_signal_it() {
    let dir = TestDir::new();
    dir.secret("db", b"one");
    let agent = Agent::start(&dir, &file_config(""));
    let marker = dir.path().join("hups");
    // A root process that SIGHUP would reach (it counts them).
    let root_process = hup_counter(&dir, &marker);
    // The app's pid file, owned by the app's user, who writes root's pid into it.
    let pid_file = dir.path().join("app.pid");
    std::fs::write(&pid_file, "").unwrap();
    std::os::unix::fs::chown(&pid_file, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut writer = common::command("/bin/sh");
    writer.arg("-c").arg(format!(
        "echo {} > {}",
        root_process.0.id(),
        pid_file.display()
    ));
    std::os::unix::process::CommandExt::uid(&mut writer, NOBODY);
    std::os::unix::process::CommandExt::gid(&mut writer, NOBODY);
    assert!(writer.status().unwrap().success());
    let (watcher, out) = render_watch(
        &agent,
        &dir,
        dir.path(),
        "db={{ secret files/db }}\n",
        &["--signal", "HUP", "--pid-file", pid_file.to_str().unwrap()],
        None,
        "db=one\n",
    );
    dir.secret("db", b"two");
    flush(&agent);
    within(Duration::from_secs(5), &watcher, "re-render", || {
        read(&out) == "db=two\n"
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lines(&marker), 0, "root's process was signalled");
    within(Duration::from_secs(5), &watcher, "refusal logged", || {
        watcher.log_text().contains("is owned by uid 65534")
    });
}

#[test]
fn root_render_refuses_a_template_the_app_user_owns_or_reaches_by_symlink() {
    let dir = TestDir::new();
    dir.secret("db", b"root-only-value");
    let agent = Agent::start(&dir, &file_config(""));
    let template = dir.path().join("app.tmpl");
    std::fs::write(&template, "db={{ secret files/db }}\n").unwrap();
    std::os::unix::fs::chown(&template, Some(NOBODY), Some(NOBODY)).unwrap();
    let link = dir.path().join("link.tmpl");
    let root_template = dir.path().join("root.tmpl");
    std::fs::write(&root_template, "db={{ secret files/db }}\n").unwrap();
    std::os::unix::fs::symlink(&root_template, &link).unwrap();
    for (path, want) in [
        (&template, "is owned by uid 65534"),
        (&link, "symbolic link"),
    ] {
        let out = dir.path().join("out");
        let result = agent.cli_as(
            None,
            &[
                "render",
                path.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
        );
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{}: rendered", path.display());
        assert!(stderr.contains(want), "{stderr}");
        assert!(!out.exists(), "nothing written");
    }
    // Root's own template renders.
    let out = dir.path().join("out");
    let result = agent.cli_as(
        None,
        &[
            "render",
            root_template.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(read(&out), "db=root-only-value\n");
}

#[test]
fn exec_watch_keeps_the_running_child_when_a_rotated_value_holds_a_nul_byte() {
    let dir = TestDir::new();
    dir.secret("db", b"one");
    let agent = Agent::start(&dir, &file_config(""));
    let starts = dir.path().join("starts");
    let script = format!("echo \"$DB\" >> {}; exec sleep 1000", starts.display());
    let mut watcher = exec_watcher(&agent, &dir, "restart", &script);
    within(Duration::from_secs(10), &watcher, "first start", || {
        read(&starts) == "one\n"
    });

    dir.secret("db", b"two\0with-a-nul");
    flush(&agent);
    within(
        Duration::from_secs(5),
        &watcher,
        "the refusal logged",
        || watcher.log_text().contains("holds a NUL byte"),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        watcher.running(),
        "exec --watch stopped: {}",
        watcher.log_text()
    );
    assert_eq!(read(&starts), "one\n", "the old child was stopped");

    // A usable value later restarts it as usual.
    dir.secret("db", b"three");
    flush(&agent);
    within(Duration::from_secs(5), &watcher, "restart", || {
        read(&starts) == "one\nthree\n"
    });
    assert!(watcher.running());
}
