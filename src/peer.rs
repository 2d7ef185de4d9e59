//! Who is on the other end of a Unix socket connection, as the kernel tells it.
//!
//! Identity comes from `SO_PEERCRED` (uid, gid, pid at `connect()` time). Attributes derived from
//! the pid (executable, systemd unit, supplementary groups) are read from `/proc/PID` only while
//! the process is pinned: with `SO_PEERPIDFD` (Linux >= 6.5) the pidfd proves the pid still names
//! the connecting process before and after the reads; on older kernels the process start time is
//! compared before and after instead. If the peer is gone or the check fails, those attributes
//! are left unknown, so rules that need them do not match (the connection is never given another
//! process's identity). This module reads the kernel; it does not decide access (see `acl`).

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt};

/// The kernel's account of a connected peer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerIdentity {
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
    /// Supplementary groups (from /proc, only when the process could be pinned).
    pub groups: Vec<u32>,
    /// Pid in the agent's pid namespace; `None` when the peer is in another namespace.
    pub pid: Option<i32>,
    /// Resolved `/proc/PID/exe`, when readable and the process was pinned.
    pub exe: Option<PathBuf>,
    /// The systemd unit (`*.service` / `*.scope`) from `/proc/PID/cgroup`, when pinned.
    pub unit: Option<String>,
    /// How the process was pinned while its attributes were read.
    pub pinned: Pinning,
}

/// How pid-derived attributes were tied to the connecting process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pinning {
    /// `SO_PEERPIDFD`: a pidfd held across the reads.
    Pidfd,
    /// Start time compared before and after the reads (kernels without SO_PEERPIDFD).
    StartTime,
    /// Attributes unknown (peer exited, other pid namespace, or /proc unreadable).
    #[default]
    None,
}

/// Failure to read even the basic credentials.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// `getsockopt(SO_PEERCRED)` failed.
    #[error("cannot read peer credentials: {0}")]
    Credentials(nix::Error),
}

/// Reads the peer's identity from a connected Unix stream socket.
pub fn identify(stream: &impl AsFd) -> Result<PeerIdentity, PeerError> {
    let creds = getsockopt(stream, sockopt::PeerCredentials).map_err(PeerError::Credentials)?;
    let mut identity = PeerIdentity {
        uid: creds.uid(),
        gid: creds.gid(),
        pid: (creds.pid() > 0).then_some(creds.pid()),
        ..PeerIdentity::default()
    };
    let Some(pid) = identity.pid else {
        return Ok(identity);
    };
    let pidfd = getsockopt(stream, sockopt::PeerPidfd).ok();
    pin_and_read(pid, pidfd, &mut identity);
    Ok(identity)
}

/// Reads pid-derived attributes into `identity` only if the process stays pinned throughout:
/// by its pidfd when the kernel gave one, else by an unchanged start time.
fn pin_and_read(pid: i32, pidfd: Option<OwnedFd>, identity: &mut PeerIdentity) {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    match pidfd {
        Some(pidfd) => {
            if pidfd_pid(&pidfd) != Some(pid) {
                return;
            }
            let attrs = read_attributes(&proc_dir);
            // SECURITY: the pidfd pins the struct pid; while the process is alive its pid cannot
            // be reused, so if it is still alive now, everything read above was about it.
            if pidfd_pid(&pidfd) == Some(pid) {
                attrs.apply(identity, Pinning::Pidfd);
            }
        }
        None => {
            let before = start_time(&proc_dir);
            let attrs = read_attributes(&proc_dir);
            let after = start_time(&proc_dir);
            if before.is_some() && before == after {
                attrs.apply(identity, Pinning::StartTime);
            }
        }
    }
}

struct Attributes {
    exe: Option<PathBuf>,
    unit: Option<String>,
    groups: Vec<u32>,
}

impl Attributes {
    fn apply(self, identity: &mut PeerIdentity, pinning: Pinning) {
        identity.exe = self.exe;
        identity.unit = self.unit;
        identity.groups = self.groups;
        identity.pinned = pinning;
    }
}

fn read_attributes(proc_dir: &Path) -> Attributes {
    Attributes {
        // Needs CAP_SYS_PTRACE (or root) for another user's process; unknown otherwise.
        exe: fs::read_link(proc_dir.join("exe")).ok(),
        unit: fs::read_to_string(proc_dir.join("cgroup"))
            .ok()
            .and_then(|text| parse_unit(&text)),
        groups: fs::read_to_string(proc_dir.join("status"))
            .ok()
            .map(|text| parse_groups(&text))
            .unwrap_or_default(),
    }
}

/// The pid a pidfd refers to, from `/proc/self/fdinfo` (`-1` there once the process has exited).
fn pidfd_pid(pidfd: &OwnedFd) -> Option<i32> {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|&p| p > 0)
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
fn start_time(proc_dir: &Path) -> Option<u64> {
    let stat = fs::read_to_string(proc_dir.join("stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The deepest `*.service` or `*.scope` component of the unified (or name=systemd) cgroup path.
pub fn parse_unit(cgroup: &str) -> Option<String> {
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| {
            cgroup
                .lines()
                .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p))
        })?;
    path.split('/')
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_owned)
}

fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_from_cgroup_table() {
        let cases = [
            ("0::/system.slice/nginx.service\n", Some("nginx.service")),
            (
                "0::/user.slice/user-1000.slice/session-3.scope\n",
                Some("session-3.scope"),
            ),
            ("0::/system.slice/app.service/worker\n", Some("app.service")),
            ("0::/\n", None),
            ("0::/kubepods/besteffort/pod1/abc\n", None),
            (
                "1:name=systemd:/system.slice/cron.service\n",
                Some("cron.service"),
            ),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_unit(text).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn start_time_survives_odd_comm() {
        let stat = "1234 (a b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 999 20";
        assert_eq!(parse_start_time(stat), Some(999));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn groups_parse() {
        assert_eq!(
            parse_groups("Name:\tx\nGroups:\t4 27 100 \n"),
            vec![4, 27, 100]
        );
        assert_eq!(parse_groups("Groups:\n"), Vec::<u32>::new());
    }

    #[test]
    fn start_time_fallback_pins_a_live_process_and_not_a_dead_one() {
        let mut me = PeerIdentity::default();
        pin_and_read(std::process::id() as i32, None, &mut me);
        assert_eq!(me.pinned, Pinning::StartTime);
        assert_eq!(me.exe, std::env::current_exe().ok());

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let mut gone = PeerIdentity::default();
        pin_and_read(pid, None, &mut gone);
        assert_eq!(gone.pinned, Pinning::None);
        assert_eq!(gone.exe, None);
    }

    #[test]
    fn pidfd_of_a_peer_that_exited_yields_no_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut child = std::process::Command::new("python3")
            .args(["-c", "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(30)"])
            .arg(&path)
            .spawn()
            .unwrap();
        let (stream, _) = listener.accept().unwrap();
        let pid = getsockopt(&stream, sockopt::PeerCredentials).unwrap().pid();
        assert_eq!(pid, child.id() as i32);

        // Alive: pinned by its pidfd, attributes read.
        let mut alive = PeerIdentity::default();
        pin_and_read(
            pid,
            Some(getsockopt(&stream, sockopt::PeerPidfd).unwrap()),
            &mut alive,
        );
        assert_eq!(alive.pinned, Pinning::Pidfd);
        assert!(alive.exe.is_some());

        // A pidfd taken while it lived, used after it exited: nothing is read.
        let pidfd = getsockopt(&stream, sockopt::PeerPidfd).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let mut gone = PeerIdentity::default();
        pin_and_read(pid, Some(pidfd), &mut gone);
        assert_eq!(gone.pinned, Pinning::None);
        assert_eq!(gone.exe, None);
    }

    #[test]
    fn identifies_self_over_socketpair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let id = identify(&a).unwrap();
        assert_eq!(id.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(id.pid, Some(std::process::id() as i32));
        assert_eq!(id.exe, std::env::current_exe().ok());
        assert_ne!(id.pinned, Pinning::None);
    }
}
