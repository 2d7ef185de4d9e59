//! Cache behaviour end to end: values are cached, and a rotation is picked up after the TTL, a
//! control-file change (plain write, atomic rename, ConfigMap symlink swap, delete and recreate,
//! creation after start), the flush API, or a SIGHUP reload.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Agent, TestDir, file_config, wait_until};

const WAIT: Duration = Duration::from_secs(10);

fn value(agent: &Agent, name: &str) -> Vec<u8> {
    let resp = agent.secret(name);
    assert_eq!(resp.status, 200, "{name}: {}", resp.text());
    resp.body
}

fn becomes(agent: &Agent, name: &str, want: &[u8]) -> bool {
    wait_until(WAIT, || value(agent, name) == want)
}

#[test]
fn values_are_cached_until_the_ttl_runs_out() {
    let dir = TestDir::new();
    dir.secret("a", b"v1");
    let agent = Agent::start(
        &dir,
        &file_config("").replace(
            "[cache]",
            "[cache]\nttl_secs = 1\nrefresh_ahead_secs = 0\njitter_percent = 0",
        ),
    );
    let fetched = std::time::Instant::now();
    assert_eq!(value(&agent, "files/a"), b"v1");
    dir.secret("a", b"v2");
    // The cached value until the TTL has run out (a stalled machine may take longer than that to
    // get here: then either value is right).
    let again = value(&agent, "files/a");
    assert!(
        again == b"v1" || fetched.elapsed() >= Duration::from_secs(1),
        "rotated value served {:?} after the first read, within the 1 s TTL",
        fetched.elapsed()
    );
    assert!(
        becomes(&agent, "files/a", b"v2"),
        "rotation not picked up after the TTL"
    );
}

#[test]
fn concurrent_misses_reach_the_source_once() {
    let dir = TestDir::new();
    dir.secret("hot", b"hot-value");
    let agent = Agent::start(&dir, &file_config(""));
    let socket = agent.socket.clone();
    let threads: Vec<_> = (0..200)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                common::try_request(&socket, "GET", "/v1/secrets/files/hot", &[], b"").unwrap()
            })
        })
        .collect();
    for t in threads {
        let resp = t.join().unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"hot-value");
    }
    assert_eq!(
        agent.metric("credagent_source_fetches_total{source=\"files\"}"),
        1.0
    );
}

fn control_agent(dir: &TestDir, control: &Path) -> Agent {
    dir.secret("a", b"a1");
    dir.secret("b", b"b1");
    let agent = Agent::start(
        dir,
        &file_config(&format!("[control]\nfile = \"{}\"\n", control.display())),
    );
    assert_eq!(value(&agent, "files/a"), b"a1");
    assert_eq!(value(&agent, "files/b"), b"b1");
    // The watcher starts after the agent answers: changes before this line could go unseen.
    assert!(wait_until(WAIT, || agent
        .log_text()
        .contains("watching control file")));
    agent
}

#[test]
fn control_file_write_rename_and_recreate_flush_what_they_say() {
    let dir = TestDir::new();
    let control = dir.path().join("control");
    std::fs::write(&control, "# initial\n").unwrap();
    let agent = control_agent(&dir, &control);

    // Rotated on the source, still cached.
    dir.secret("a", b"a2");
    dir.secret("b", b"b2");
    assert_eq!(value(&agent, "files/a"), b"a1");

    // 1. A plain write naming one secret flushes only that one.
    std::fs::write(&control, "flush files/a\n").unwrap();
    assert!(
        becomes(&agent, "files/a", b"a2"),
        "plain write did not flush files/a"
    );
    assert_eq!(value(&agent, "files/b"), b"b1");

    // 2. An atomic rename over the file.
    let tmp = dir.path().join(".control.tmp");
    std::fs::write(&tmp, "# rotated b\nflush files/b\n").unwrap();
    std::fs::rename(&tmp, &control).unwrap();
    assert!(
        becomes(&agent, "files/b", b"b2"),
        "atomic rename did not flush files/b"
    );

    // 3. Delete and recreate; no flush line at all means flush everything. Bad lines are skipped.
    dir.secret("a", b"a3");
    dir.secret("b", b"b3");
    std::fs::remove_file(&control).unwrap();
    assert!(
        wait_until(WAIT, || agent.log_text().contains("control file missing")),
        "the watcher did not see the deletion"
    );
    assert_eq!(
        value(&agent, "files/a"),
        b"a2",
        "deleting the control file must not flush"
    );
    std::fs::write(&control, "# generation 3\nthis line is nonsense\n").unwrap();
    assert!(becomes(&agent, "files/a", b"a3"));
    assert_eq!(value(&agent, "files/b"), b"b3");
    assert!(agent.log_text().contains("skipping bad control line"));
}

#[test]
fn control_file_configmap_symlink_swap() {
    let dir = TestDir::new();
    // The layout the kubelet writes for a ConfigMap volume.
    let volume = dir.path().join("cm");
    std::fs::create_dir_all(volume.join("..2026_01")).unwrap();
    std::fs::write(volume.join("..2026_01/control"), "# v1\n").unwrap();
    std::os::unix::fs::symlink("..2026_01", volume.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/control", volume.join("control")).unwrap();
    let agent = control_agent(&dir, &volume.join("control"));
    dir.secret("a", b"a2");
    dir.secret("b", b"b2");

    std::fs::create_dir_all(volume.join("..2026_02")).unwrap();
    std::fs::write(volume.join("..2026_02/control"), "flush files/b\n").unwrap();
    std::os::unix::fs::symlink("..2026_02", volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    std::fs::remove_dir_all(volume.join("..2026_01")).unwrap();

    assert!(
        becomes(&agent, "files/b", b"b2"),
        "ConfigMap swap did not flush files/b"
    );
    assert_eq!(value(&agent, "files/a"), b"a1");
}

#[test]
fn an_attacker_plants_a_fifo_or_a_symlink_as_the_control_file_and_nothing_is_flushed() {
    let dir = TestDir::new();
    let control = dir.path().join("control");
    std::fs::write(&control, "# initial\n").unwrap();
    let agent = control_agent(&dir, &control);
    dir.secret("a", b"a2");
    let refusals = |agent: &Agent| agent.log_text().matches("control file refused").count();

    // A FIFO with no writer: a blocking read would hang the watcher for good.
    std::fs::remove_file(&control).unwrap();
    nix::unistd::mkfifo(&control, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    assert!(
        wait_until(WAIT, || refusals(&agent) >= 1),
        "FIFO not refused; log:\n{}",
        agent.log_text()
    );
    assert_eq!(value(&agent, "files/a"), b"a1", "a FIFO must not flush");

    // A symlink as the final component, to a file that says "flush".
    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, "flush files/a\n").unwrap();
    let tmp = dir.path().join(".control.tmp");
    std::os::unix::fs::symlink(&elsewhere, &tmp).unwrap();
    std::fs::rename(&tmp, &control).unwrap();
    let before = refusals(&agent);
    assert!(wait_until(WAIT, || refusals(&agent) > before));
    assert_eq!(value(&agent, "files/a"), b"a1", "a symlink must not flush");

    // Oversized: refused, where it used to flush everything.
    std::fs::remove_file(&control).unwrap();
    std::fs::write(&control, vec![b'#'; 1024 * 1024 + 1]).unwrap();
    let before = refusals(&agent);
    assert!(wait_until(WAIT, || refusals(&agent) > before));
    assert_eq!(
        value(&agent, "files/a"),
        b"a1",
        "an oversized file must not flush"
    );

    // The watcher is still alive: a regular file is applied.
    std::fs::write(&tmp, "flush files/a\n").unwrap();
    std::fs::rename(&tmp, &control).unwrap();
    assert!(
        becomes(&agent, "files/a", b"a2"),
        "watcher stopped after the refusals"
    );
}

#[test]
fn control_file_created_after_start() {
    let dir = TestDir::new();
    let control = dir.path().join("later");
    let agent = control_agent(&dir, &control);
    dir.secret("a", b"a2");
    std::fs::write(&control, "flush files/*\n").unwrap();
    assert!(becomes(&agent, "files/a", b"a2"));
}

#[test]
fn flush_api_flushes_by_pattern_for_admins() {
    let dir = TestDir::new();
    dir.secret("x/1", b"one");
    dir.secret("y/1", b"one");
    let agent = Agent::start(&dir, &file_config(""));
    value(&agent, "files/x/1");
    value(&agent, "files/y/1");
    dir.secret("x/1", b"two");
    dir.secret("y/1", b"two");

    let resp = agent.request(
        "POST",
        "/v1/cache/flush",
        &[],
        br#"{"pattern":"files/x/*"}"#,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["flushed"], 1);
    assert_eq!(value(&agent, "files/x/1"), b"two");
    assert_eq!(value(&agent, "files/y/1"), b"one");

    let out = agent.cli_as(None, &["flush"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "flushed 2");
    assert_eq!(value(&agent, "files/y/1"), b"two");

    let bad = agent.request("POST", "/v1/cache/flush", &[], b"{not json");
    assert_eq!(bad.status, 400);
    let flush_as_nobody = agent.cli_as(Some(65534), &["flush", "files/*"]);
    assert!(String::from_utf8_lossy(&flush_as_nobody.stderr).contains("forbidden"));
}

#[test]
fn sighup_reloads_config_and_keeps_the_old_one_when_the_new_is_bad() {
    let dir = TestDir::new();
    dir.secret("for-nobody", b"hello");
    dir.secret("rotated", b"old");
    let mut agent = Agent::start(&dir, &file_config(""));
    let denied = agent.cli_as(Some(65534), &["get", "files/for-nobody"]);
    assert!(!denied.status.success());

    let hup = |agent: &Agent| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    };
    let reloads = |agent: &Agent| agent.log_text().matches("configuration reloaded").count();

    // A reload flushes the cache, even with the config unchanged: a rotated value is served
    // once the reload is done (the TTL is an hour).
    assert_eq!(value(&agent, "files/rotated"), b"old");
    dir.secret("rotated", b"new");
    assert_eq!(value(&agent, "files/rotated"), b"old");
    hup(&agent);
    assert!(wait_until(WAIT, || reloads(&agent) == 1));
    assert_eq!(value(&agent, "files/rotated"), b"new");
    dir.write_config(&file_config(
        "[[allow]]\npeer = { uid = 65534 }\nsecrets = [\"files/for-nobody\"]\n",
    ));
    hup(&agent);
    assert!(wait_until(WAIT, || agent
        .cli_as(Some(65534), &["get", "files/for-nobody"])
        .status
        .success()));

    dir.write_config("[server]\nsocket = \"{socket}\"\nbogus_key = 1\n");
    hup(&agent);
    assert!(wait_until(WAIT, || agent
        .log_text()
        .contains("reload refused")));
    let still = agent.cli_as(Some(65534), &["get", "files/for-nobody"]);
    assert_eq!(still.stdout, b"hello");
    assert_eq!(agent.stop().code(), Some(0));
}

/// Bytes the process `pid` has read so far (`rchar` in /proc/PID/io: every read, any fd).
fn bytes_read(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

/// The bound is on the read itself: a control file of 64 MiB (sparse, so it costs no disk) is
/// refused after at most 1 MiB + 1 bytes of it are read, not after reading it all and then
/// checking the size (a file that never ends would never be refused that way).
#[test]
fn an_attacker_makes_the_control_file_huge_and_the_agent_reads_at_most_1_mib_of_it() {
    let dir = TestDir::new();
    let control = dir.path().join("control");
    std::fs::write(&control, "# initial\n").unwrap();
    let agent = control_agent(&dir, &control);
    dir.secret("a", b"a2");
    let refusals = |agent: &Agent| agent.log_text().matches("control file refused").count();
    let before = bytes_read(agent.pid());
    let tmp = dir.path().join(".control.tmp");
    std::fs::File::create(&tmp)
        .unwrap()
        .set_len(64 * 1024 * 1024)
        .unwrap();
    std::fs::rename(&tmp, &control).unwrap();
    assert!(
        wait_until(WAIT, || refusals(&agent) >= 1),
        "not refused; log:\n{}",
        agent.log_text()
    );
    let read = bytes_read(agent.pid()) - before;
    // A few reads of at most 1 MiB + 1 (one per change event), far below the file's 64 MiB.
    assert!(read < 16 * 1024 * 1024, "the agent read {read} bytes");
    assert_eq!(
        value(&agent, "files/a"),
        b"a1",
        "a huge file must not flush"
    );
}
