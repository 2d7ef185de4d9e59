//! Test cgroups: what systemd does when it starts a unit, done by the test (root) by hand.
//!
//! [`TestCgroup::new`] makes `<cgroup2 root>/credagent-test-<unique>.slice/<path>`; a slice is
//! skipped when a unit is read from a cgroup path, so a process placed in `…/web.service` is in
//! the system unit `web.service`, as if systemd had started it. [`TestCgroup::delegate`] chowns
//! the cgroup to a uid, as systemd delegates `user@UID.service` to a user manager. Processes
//! are placed by root before they run anything ([`TestCgroup::spawn`]); the whole subtree is
//! emptied and removed on drop.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A cgroup subtree of one test.
pub struct TestCgroup {
    slice: PathBuf,
    leaf: PathBuf,
}

/// Where the cgroup2 (unified) hierarchy is mounted.
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
        })
        .expect("no cgroup2 hierarchy mounted: the identity tests need one (root may create cgroups in it)")
}

impl TestCgroup {
    /// `<root>/credagent-test-<pid>-<n>.slice/<path>` (`path` may have several components).
    pub fn new(path: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let slice = cgroup2_root().join(format!(
            "credagent-test-{}-{}.slice",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let leaf = slice.join(path);
        std::fs::create_dir_all(&leaf)
            .unwrap_or_else(|e| panic!("cannot create test cgroup {}: {e}", leaf.display()));
        TestCgroup { slice, leaf }
    }

    /// The leaf cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.leaf
    }

    /// The leaf's path as `/proc/PID/cgroup` shows it (relative to the hierarchy's root).
    pub fn path(&self) -> String {
        format!(
            "/{}",
            self.leaf.strip_prefix(cgroup2_root()).unwrap().display()
        )
    }

    /// Hands the leaf to `uid` the way systemd delegates a subtree: the directory and the files
    /// a delegatee writes become theirs, so they can make sub-cgroups and move their processes.
    pub fn delegate(&self, uid: u32) {
        for file in [
            "",
            "cgroup.procs",
            "cgroup.threads",
            "cgroup.subtree_control",
        ] {
            let path = self.leaf.join(file);
            nix::unistd::chown(
                &path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(uid)),
            )
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }

    /// Runs `argv` as `uid` (None: as this process) inside the leaf: the child waits until root
    /// has moved it in, then execs the program. Stdout and stderr are piped.
    pub fn spawn(&self, uid: Option<u32>, argv: &[&OsStr]) -> Child {
        let mut command = super::command("/bin/sh");
        command
            .arg("-c")
            .arg("read -r go && exec \"$@\"")
            .arg("sh")
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(uid) = uid {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, uid);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn in {}: {e}", self.leaf.display()));
        std::fs::write(self.leaf.join("cgroup.procs"), child.id().to_string())
            .unwrap_or_else(|e| panic!("cannot move {} into {}: {e}", child.id(), self.path()));
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        child
    }

    /// [`TestCgroup::spawn`], waited for: (exit success, stdout, stderr).
    pub fn run(&self, uid: Option<u32>, argv: &[&OsStr]) -> (bool, Vec<u8>, String) {
        let out = self.spawn(uid, argv).wait_with_output().unwrap();
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Kill whatever is left anywhere in the subtree, then remove it bottom-up.
        let mut dirs = Vec::new();
        collect_dirs(&self.slice, &mut dirs);
        for dir in &dirs {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        for dir in dirs.iter().rev() {
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `dir` and every cgroup below it, parents first.
fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}
