//! Process plumbing: CPU pinning (server on one core, load generator on another), spawning a
//! pinned child that is killed on drop, and the figures read from `/proc` (CPU time, RSS,
//! locked memory). No measurement logic lives here.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

use crate::error::BenchError;

/// The core the servers run on, the one the load generator runs on, and every CPU the bench
/// was allowed at start (what "unpinned" restores).
#[derive(Debug, Clone, Copy)]
pub struct Split {
    /// Server core, if pinning is possible (≥ 2 cores).
    pub server: Option<usize>,
    /// Load-generator core.
    pub client: Option<usize>,
    /// The CPUs the bench was allowed when it started.
    pub all: CpuSet,
}

impl Split {
    /// The first allowed CPU for servers and the second for the load generator, when at least
    /// two are allowed. Call before any pinning: it reads this thread's affinity.
    pub fn detect() -> Split {
        let all = sched_getaffinity(Pid::from_raw(0)).unwrap_or_else(|_| {
            // Without the mask, every CPU the machine reports.
            let mut set = CpuSet::new();
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (0..cores).for_each(|core| {
                let _ = set.set(core);
            });
            set
        });
        let mut allowed = allowed(&all);
        match (allowed.next(), allowed.next()) {
            (Some(server), Some(client)) => Split {
                server: Some(server),
                client: Some(client),
                all,
            },
            _ => Split {
                server: None,
                client: None,
                all,
            },
        }
    }

    /// How many CPUs the bench was allowed at start.
    pub fn cores(&self) -> usize {
        allowed(&self.all).count()
    }

    /// A human description for the report.
    pub fn describe(&self) -> String {
        match (self.server, self.client) {
            (Some(s), Some(c)) => format!(
                "server pinned to CPU {s}, load generator pinned to CPU {c} (sched_setaffinity)"
            ),
            _ => "one CPU: server and load generator share it (not pinned)".to_owned(),
        }
    }
}

/// The CPUs in `set`, lowest first.
fn allowed(set: &CpuSet) -> impl Iterator<Item = usize> + '_ {
    (0..CpuSet::count()).filter(|&core| set.is_set(core).unwrap_or(false))
}

/// Pins the calling thread to `core` (no-op for `None`).
pub fn pin_current_thread(core: Option<usize>) -> Result<(), BenchError> {
    let Some(core) = core else { return Ok(()) };
    let mut set = CpuSet::new();
    set.set(core)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set))
        .map_err(|e| BenchError::Io {
            what: format!("pin to CPU {core}"),
            source: e.into(),
        })
}

/// Lets the calling thread run on every CPU it was allowed at start again (the unpinned,
/// as-deployed runs). Not `available_parallelism()`: that counts the CPUs of the calling
/// thread's current mask, which is one once it is pinned.
pub fn unpin_current_thread(split: &Split) -> Result<(), BenchError> {
    sched_setaffinity(Pid::from_raw(0), &split.all).map_err(|e| BenchError::Io {
        what: "unpin from CPUs".to_owned(),
        source: e.into(),
    })
}

/// A child process (a server under test), killed on drop.
#[derive(Debug)]
pub struct ChildGuard {
    /// The child.
    pub child: Child,
}

impl ChildGuard {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (with its status).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `command` with every thread of the child on `core`: the spawn happens on a helper
/// thread pinned to that core, and a forked child inherits its parent thread's affinity.
pub fn spawn_pinned(mut command: Command, core: Option<usize>) -> Result<ChildGuard, BenchError> {
    let what = format!("spawn {:?}", command.get_program());
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_current_thread(core)?;
                command
                    .spawn()
                    .map(|child| ChildGuard { child })
                    .map_err(BenchError::io(what.clone()))
            })
            .join()
            .unwrap_or_else(|_| Err(BenchError::Server(format!("{what}: spawner thread died"))))
    })
}

/// CPU time (user + system) a process has used so far, all threads included.
pub fn cpu_time(pid: u32) -> Result<Duration, BenchError> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(BenchError::io(format!("read {path}")))?;
    parse_stat_cpu(&text, clock_ticks())
        .ok_or_else(|| BenchError::Server(format!("{path}: unparseable")))
}

/// Kernel clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line; the command name may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu(stat: &str, ticks_per_sec: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")": field 3 (state) is index 0, so utime (14) is index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_micros(
        (utime + stime) * 1_000_000 / ticks_per_sec,
    ))
}

/// A `kB` field (`VmRSS`, `VmLck`…) of `/proc/PID/status`, in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(BenchError::io(format!("read {path}")))?;
    parse_status_kb(&text, field)
        .map(|kb| kb * 1024)
        .ok_or_else(|| BenchError::Server(format!("{path}: no {field}")))
}

fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Whether `path` exists and is executable by someone.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_skips_odd_command_names() {
        let line = "1234 (we ird) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu(line, 100), Some(Duration::from_millis(2000)));
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tx\nVmLck:\t   16 kB\nVmRSS:\t 5120 kB\n";
        assert_eq!(parse_status_kb(text, "VmRSS"), Some(5120));
        assert_eq!(parse_status_kb(text, "VmLck"), Some(16));
        assert_eq!(parse_status_kb(text, "VmSwap"), None);
    }

    #[test]
    fn own_process_readable() {
        let pid = std::process::id();
        assert!(cpu_time(pid).is_ok());
        assert!(status_bytes(pid, "VmRSS").is_ok_and(|b| b > 0));
    }

    #[test]
    fn unpinning_after_pinning_restores_every_cpu_the_bench_started_with() {
        // On a thread of its own, so the harness's threads keep their masks.
        let outcome = std::thread::spawn(|| {
            let split = Split::detect();
            let before = sched_getaffinity(Pid::from_raw(0)).ok();
            pin_current_thread(split.client.or(split.server)).ok();
            unpin_current_thread(&split).ok();
            let after = sched_getaffinity(Pid::from_raw(0)).ok();
            let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
            (
                before.is_some() && after == before,
                cores == split.cores(),
                split.client.is_some() == (split.cores() >= 2),
            )
        })
        .join();
        assert!(matches!(outcome, Ok((true, true, true))), "{outcome:?}");
    }
}
