//! Who is on the other end of a Unix socket connection, as the kernel tells it.
//!
//! Identity comes from `SO_PEERCRED` (uid, gid, pid at `connect()` time). Attributes derived from
//! the pid (executable, systemd units, supplementary groups) are read from `/proc/PID` only while
//! the process is pinned:
//! - with `SO_PEERPIDFD` (Linux >= 6.5) a pidfd proves the pid still names the connecting process
//!   before and after the reads (a pidfd of a peer that already exited shows pid -1). Any error
//!   other than `ENOPROTOOPT` means the peer is already gone (`EINVAL`, `ESRCH`): its attributes
//!   stay unknown.
//! - on older kernels (`ENOPROTOOPT`) the process must have started before the connection was
//!   accepted, keep its start time across the reads, and show the same effective uid and gid in
//!   `/proc/PID/status` as `SO_PEERCRED`; otherwise its attributes stay unknown.
//!
//! The attributes mean what the kernel and systemd mean, never what a caller can arrange:
//! - `exe` is a file, not a string: the caller's executable (device and inode, through
//!   `/proc/PID/exe`) is compared with what each configured `exe` path names in the agent's own
//!   mount namespace *now*. A program bind-mounted over that path in another mount namespace, or a
//!   replaced (deleted) binary still running, is a different file. The path recorded for the audit
//!   trail is the one `/proc/PID/exe` shows only when it names that same file here.
//! - `unit` is the first unit below the cgroup root, slices skipped (`sd_pid_get_unit`); inside a
//!   user manager (`user@UID.service/…`) it is `user@UID.service`, and the unit the user manager
//!   runs is `user_unit`. A user can name units in their own manager; only root places processes
//!   in system units.
//!
//! Pid-derived attributes are read only for a peer in the agent's own pid namespace
//! (`/proc/PID/ns/pid` names the same namespace as `/proc/self/ns/pid`; where that link cannot
//! be read, the peer's `NSpid:` shows as many levels as the agent's). A process with privilege
//! over its own pid namespace (any `unshare -Urpf`, no privilege needed) may send
//! `SCM_CREDENTIALS` naming another pid of that namespace, which the kernel translates: the
//! connection's pid then says nothing about who writes. Both pinning paths also check that
//! `/proc/PID/status` shows `SO_PEERCRED`'s effective uid and gid. [`PeerIdentity::unknown`]
//! says why the attributes are unknown, for the audit trail.
//!
//! If the peer is gone or a check fails, those attributes are left unknown, so rules that need
//! them do not match (the connection is never given another process's identity). This module
//! reads the kernel; it does not decide access (see `acl`), and it does not check who wrote each
//! request on the connection (see `server::sender`).

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt};

mod proc;

pub use proc::{Units, parse_units};
use proc::{parse_effective_ids, parse_groups, read_stat};

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
    /// The executable's path, only when that path names, in the agent's mount namespace, the very
    /// file the process runs (for the audit trail; rules match on [`PeerIdentity::exe_matches`]).
    pub exe: Option<PathBuf>,
    /// The configured `exe` rule paths that named the caller's executable file when the
    /// connection was identified.
    pub exe_matches: Vec<PathBuf>,
    /// The system unit (`*.service` / `*.scope`): the first unit below the cgroup root.
    pub unit: Option<String>,
    /// The unit inside a user manager, when `unit` is `user@UID.service`.
    pub user_unit: Option<String>,
    /// How the process was pinned while its attributes were read.
    pub pinned: Pinning,
    /// Why the pid-derived attributes are unknown when a check refused them (audit trail):
    /// `other_pid_namespace`, `ids_differ`.
    pub unknown: Option<&'static str>,
}

/// How pid-derived attributes were tied to the connecting process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pinning {
    /// `SO_PEERPIDFD`: a pidfd held across the reads.
    Pidfd,
    /// Kernels without SO_PEERPIDFD: started before the accept, same start time before and after
    /// the reads, same uid/gid as the socket's credentials.
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

/// The moment a connection was accepted, in the clock `/proc/PID/stat` start times use
/// (clock ticks since boot). Taken right after `accept()`; only the fallback for kernels without
/// `SO_PEERPIDFD` uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptTime(Option<u64>);

impl AcceptTime {
    /// Now.
    pub fn now() -> Self {
        let ticks = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .ok()
            .zip(clock_ticks_per_sec())
            .and_then(|(now, hz)| {
                let secs = u64::try_from(now.tv_sec()).ok()?;
                let nanos = u64::try_from(now.tv_nsec()).ok()?;
                secs.checked_mul(hz)?
                    .checked_add(nanos.checked_mul(hz)? / 1_000_000_000)
            });
        AcceptTime(ticks)
    }
}

fn clock_ticks_per_sec() -> Option<u64> {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|hz| u64::try_from(hz).ok())
        .filter(|&hz| hz > 0)
}

/// Reads the peer's identity from a connected Unix stream socket accepted at `accepted`.
/// `exe_rules` are the `exe` paths the rules name; the ones naming the caller's executable file
/// end up in [`PeerIdentity::exe_matches`].
pub fn identify(
    stream: &impl AsFd,
    accepted: AcceptTime,
    exe_rules: &[PathBuf],
) -> Result<PeerIdentity, PeerError> {
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
    let pin = Pin::from_peer_pidfd(getsockopt(stream, sockopt::PeerPidfd));
    pin_and_read(pid, pin, accepted, exe_rules, &mut identity);
    Ok(identity)
}

/// How the connecting process can be pinned, from what `SO_PEERPIDFD` answered.
#[derive(Debug)]
enum Pin {
    /// The kernel gave a pidfd.
    Pidfd(OwnedFd),
    /// `ENOPROTOOPT`: a kernel before 6.5; fall back to start times.
    OldKernel,
    /// Any other error: on a kernel that has the option, the peer is already gone (`EINVAL`,
    /// `ESRCH`) or something else is wrong. Nothing pid-derived may be trusted.
    Unavailable(Errno),
}

impl Pin {
    fn from_peer_pidfd(result: Result<OwnedFd, Errno>) -> Self {
        match result {
            Ok(pidfd) => Pin::Pidfd(pidfd),
            Err(Errno::ENOPROTOOPT) => Pin::OldKernel,
            Err(errno) => Pin::Unavailable(errno),
        }
    }
}

/// Reads pid-derived attributes into `identity` only if the process stays pinned throughout.
fn pin_and_read(
    pid: i32,
    pin: Pin,
    accepted: AcceptTime,
    exe_rules: &[PathBuf],
    identity: &mut PeerIdentity,
) {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    match pin {
        Pin::Pidfd(pidfd) => {
            if pidfd_pid(&pidfd) != Some(pid) {
                return;
            }
            if let Err(why) = same_namespace_and_ids(&proc_dir, identity) {
                identity.unknown = Some(why);
                return;
            }
            let attrs = read_attributes(&proc_dir, exe_rules);
            // SECURITY: the pidfd pins the struct pid; while the process is alive its pid cannot
            // be reused, so if it is still alive now, everything read above was about it.
            if pidfd_pid(&pidfd) == Some(pid) {
                attrs.apply(identity, Pinning::Pidfd);
            }
        }
        Pin::OldKernel => {
            let Some(before) = read_stat(&proc_dir) else {
                return;
            };
            // SECURITY: a process that started after the accept cannot be the one that
            // connected: its pid was recycled.
            if accepted
                .0
                .is_none_or(|accepted| before.start_time > accepted)
            {
                return;
            }
            if let Err(why) = same_namespace_and_ids(&proc_dir, identity) {
                identity.unknown = Some(why);
                return;
            }
            let attrs = read_attributes(&proc_dir, exe_rules);
            if read_stat(&proc_dir).is_some_and(|after| after.start_time == before.start_time) {
                attrs.apply(identity, Pinning::StartTime);
            }
        }
        Pin::Unavailable(errno) => {
            tracing::debug!(pid, %errno, "SO_PEERPIDFD failed: peer attributes left unknown");
        }
    }
}

/// SECURITY: the checks both pinning paths make before reading anything pid-derived: the peer
/// is in the agent's pid namespace (else its connection's pid may have been named by a
/// `SCM_CREDENTIALS` of another process of its namespace), and `/proc/PID/status` shows the
/// effective uid and gid `SO_PEERCRED` gave.
fn same_namespace_and_ids(proc_dir: &Path, identity: &PeerIdentity) -> Result<(), &'static str> {
    let status = fs::read_to_string(proc_dir.join("status")).unwrap_or_default();
    if !in_own_pid_namespace(proc_dir, &status) {
        return Err("other_pid_namespace");
    }
    if parse_effective_ids(&status) != Some((identity.uid, identity.gid)) {
        return Err("ids_differ");
    }
    Ok(())
}

/// Whether the process of `proc_dir` (with `status` its `/proc/PID/status`) is in the agent's
/// pid namespace: the namespace files name the same inode, or — where the peer's link cannot be
/// read (an agent without root reading another user's process) — its `NSpid:` has as many
/// levels as the agent's own (a process visible in our `/proc` is in our namespace or below).
fn in_own_pid_namespace(proc_dir: &Path, status: &str) -> bool {
    let own = FileId::of(Path::new("/proc/self/ns/pid"));
    match (FileId::of(&proc_dir.join("ns/pid")), own) {
        (Some(theirs), Some(own)) => theirs == own,
        _ => {
            let own = fs::read_to_string("/proc/self/status").unwrap_or_default();
            let depth = |text: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .map(|v| v.split_whitespace().count())
            };
            depth(status).is_some_and(|d| Some(d) == depth(&own))
        }
    }
}

struct Attributes {
    exe: Option<PathBuf>,
    exe_matches: Vec<PathBuf>,
    units: Units,
    groups: Vec<u32>,
}

impl Attributes {
    fn apply(self, identity: &mut PeerIdentity, pinning: Pinning) {
        identity.exe = self.exe;
        identity.exe_matches = self.exe_matches;
        identity.unit = self.units.unit;
        identity.user_unit = self.units.user_unit;
        identity.groups = self.groups;
        identity.pinned = pinning;
    }
}

/// A file's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// What `path` names in the agent's mount namespace (symlinks followed).
    fn of(path: &Path) -> Option<FileId> {
        fs::metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

fn read_attributes(proc_dir: &Path, exe_rules: &[PathBuf]) -> Attributes {
    // `stat` of the magic link follows the process's own executable, whatever mount namespace
    // it lives in. Needs CAP_SYS_PTRACE (or root) for another user's process; unknown otherwise.
    let exe_file = FileId::of(&proc_dir.join("exe"));
    let (exe, exe_matches) = match exe_file {
        None => (None, Vec::new()),
        Some(file) => {
            // SECURITY: the path /proc shows is only a name, resolved in the caller's mount
            // namespace; keep it for the audit trail only if it names the same file here.
            let shown = fs::read_link(proc_dir.join("exe"))
                .ok()
                .filter(|path| FileId::of(path) == Some(file));
            let matches = exe_rules
                .iter()
                .filter(|rule| FileId::of(rule) == Some(file))
                .cloned()
                .collect();
            (shown, matches)
        }
    };
    Attributes {
        exe,
        exe_matches,
        units: fs::read_to_string(proc_dir.join("cgroup"))
            .map(|text| parse_units(&text))
            .unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::proc::parse_start_time;
    use super::*;

    fn units(unit: Option<&str>, user_unit: Option<&str>) -> Units {
        Units {
            unit: unit.map(str::to_owned),
            user_unit: user_unit.map(str::to_owned),
        }
    }

    #[test]
    fn units_from_cgroup_table() {
        let cases = [
            (
                "0::/system.slice/nginx.service\n",
                units(Some("nginx.service"), None),
            ),
            (
                "0::/user.slice/user-1000.slice/session-3.scope\n",
                units(Some("session-3.scope"), None),
            ),
            (
                "0::/system.slice/app.service/worker\n",
                units(Some("app.service"), None),
            ),
            // A unit's own sub-cgroup named like another unit is not that unit.
            (
                "0::/system.slice/app.service/web.service\n",
                units(Some("app.service"), None),
            ),
            // The user manager's delegated subtree: the system unit is the user manager.
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/web.service\n",
                units(Some("user@1000.service"), Some("web.service")),
            ),
            (
                "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n",
                units(Some("user@1000.service"), Some("init.scope")),
            ),
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice\n",
                units(Some("user@1000.service"), None),
            ),
            // Only user@UID.service is a user manager.
            (
                "0::/system.slice/user@x.service/web.service\n",
                units(Some("user@x.service"), None),
            ),
            ("0::/init.scope\n", units(Some("init.scope"), None)),
            ("0::/\n", units(None, None)),
            ("0::/system.slice\n", units(None, None)),
            ("0::/kubepods/besteffort/pod1/abc\n", units(None, None)),
            // The first non-slice component decides: a directory that is no unit means none.
            ("0::/docker/abc/web.service\n", units(None, None)),
            ("0::/system.slice/.service\n", units(None, None)),
            (
                "1:name=systemd:/system.slice/cron.service\n",
                units(Some("cron.service"), None),
            ),
            // Legacy hierarchy: the unified line exists but systemd does not use it.
            (
                "1:name=systemd:/system.slice/cron.service\n0::/\n",
                units(Some("cron.service"), None),
            ),
            // Hybrid: systemd tracks processes in the unified hierarchy.
            (
                "1:name=systemd:/system.slice/cron.service\n0::/system.slice/web.service\n",
                units(Some("web.service"), None),
            ),
            ("", units(None, None)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_units(text), want, "{text:?}");
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
    fn effective_ids_parse() {
        let status = "Name:\tx\nUid:\t1000\t33\t33\t33\nGid:\t1000\t44\t44\t44\n";
        assert_eq!(parse_effective_ids(status), Some((33, 44)));
        assert_eq!(parse_effective_ids("Uid:\t1\n"), None);
    }

    /// Each answer `SO_PEERPIDFD` can give: only ENOPROTOOPT (an old kernel) allows the
    /// start-time fallback; any other error leaves the peer's attributes unknown.
    #[test]
    fn peer_pidfd_errno_table() {
        let me = std::process::id() as i32;
        let cases = [
            (Errno::ENOPROTOOPT, Pinning::StartTime),
            (Errno::EINVAL, Pinning::None),
            (Errno::ESRCH, Pinning::None),
            (Errno::ENOTCONN, Pinning::None),
            (Errno::EBADF, Pinning::None),
        ];
        for (errno, want) in cases {
            let pin = Pin::from_peer_pidfd(Err(errno));
            let mut id = PeerIdentity {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
                ..PeerIdentity::default()
            };
            pin_and_read(me, pin, AcceptTime::now(), &[], &mut id);
            assert_eq!(id.pinned, want, "{errno}");
            assert_eq!(id.exe.is_some(), want != Pinning::None, "{errno}");
        }
    }

    #[test]
    fn fallback_pins_a_live_process_and_not_a_dead_one() {
        let me = std::process::id() as i32;
        let mut id = PeerIdentity {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            ..PeerIdentity::default()
        };
        pin_and_read(me, Pin::OldKernel, AcceptTime::now(), &[], &mut id);
        assert_eq!(id.pinned, Pinning::StartTime);
        assert_eq!(id.exe, std::env::current_exe().ok());

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let mut gone = PeerIdentity::default();
        pin_and_read(pid, Pin::OldKernel, AcceptTime::now(), &[], &mut gone);
        assert_eq!(gone.pinned, Pinning::None);
        assert_eq!(gone.exe, None);
    }

    #[test]
    fn fallback_refuses_a_process_started_after_the_accept() {
        // The accept happened "before boot": every process started after it, as a process with a
        // recycled pid would have.
        let me = std::process::id() as i32;
        let mut id = PeerIdentity {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            ..PeerIdentity::default()
        };
        pin_and_read(me, Pin::OldKernel, AcceptTime(Some(0)), &[], &mut id);
        assert_eq!(id.pinned, Pinning::None);
        assert_eq!(id.exe, None);
        // No usable clock: nothing is trusted either.
        pin_and_read(me, Pin::OldKernel, AcceptTime(None), &[], &mut id);
        assert_eq!(id.pinned, Pinning::None);
    }

    /// The pidfd path too refuses a process whose /proc ids are not the socket's, and says so.
    #[test]
    fn pidfd_path_refuses_a_process_whose_ids_differ_from_the_socket_credentials() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let Ok(pidfd) = getsockopt(&a, sockopt::PeerPidfd) else {
            return; // a kernel before 6.5: the fallback's test below covers it
        };
        let me = std::process::id() as i32;
        let mut id = PeerIdentity {
            uid: nix::unistd::geteuid().as_raw().wrapping_add(1),
            gid: nix::unistd::getegid().as_raw(),
            ..PeerIdentity::default()
        };
        pin_and_read(me, Pin::Pidfd(pidfd), AcceptTime::now(), &[], &mut id);
        assert_eq!((id.pinned, id.unknown), (Pinning::None, Some("ids_differ")));
        assert_eq!(id.exe, None);
    }

    /// Our own process is in our namespace by either test; a status naming a nested pid
    /// (`NSpid` with one more level) is not, when the namespace link cannot be read.
    #[test]
    fn pid_namespace_by_inode_or_by_nspid_depth() {
        let own = fs::read_to_string("/proc/self/status").unwrap();
        assert!(in_own_pid_namespace(Path::new("/proc/self"), &own));
        assert!(in_own_pid_namespace(Path::new("/nonexistent"), &own));
        let depth = own
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .unwrap()
            .split_whitespace()
            .count();
        let nested = format!("NSpid:\t{}\n", vec!["7"; depth + 1].join("\t"));
        assert!(!in_own_pid_namespace(Path::new("/nonexistent"), &nested));
        assert!(!in_own_pid_namespace(
            Path::new("/nonexistent"),
            "Name:\tx\n"
        ));
    }

    #[test]
    fn fallback_refuses_a_process_whose_ids_differ_from_the_socket_credentials() {
        let me = std::process::id() as i32;
        let mut id = PeerIdentity {
            uid: nix::unistd::geteuid().as_raw().wrapping_add(1),
            gid: nix::unistd::getegid().as_raw(),
            ..PeerIdentity::default()
        };
        pin_and_read(me, Pin::OldKernel, AcceptTime::now(), &[], &mut id);
        assert_eq!(id.pinned, Pinning::None);
        assert_eq!(id.unit, None);
    }

    #[test]
    fn pidfd_of_a_peer_that_exited_yields_no_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args(["-c", "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(30)"])
            .arg(&path)
            .spawn()
            .unwrap();
        let (stream, _) = listener.accept().unwrap();
        let pid = getsockopt(&stream, sockopt::PeerCredentials).unwrap().pid();
        assert_eq!(pid, child.id() as i32);

        // Alive: pinned by its pidfd, attributes read.
        let mut alive = PeerIdentity::default();
        let pin = Pin::from_peer_pidfd(getsockopt(&stream, sockopt::PeerPidfd));
        pin_and_read(pid, pin, AcceptTime::now(), &[], &mut alive);
        assert_eq!(alive.pinned, Pinning::Pidfd);
        assert!(alive.exe.is_some());

        // A pidfd taken while it lived, used after it exited: nothing is read.
        let pidfd = getsockopt(&stream, sockopt::PeerPidfd).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let mut gone = PeerIdentity::default();
        pin_and_read(pid, Pin::Pidfd(pidfd), AcceptTime::now(), &[], &mut gone);
        assert_eq!(gone.pinned, Pinning::None);
        assert_eq!(gone.exe, None);

        // Asked after it exited, the kernel either refuses a pidfd (EINVAL/ESRCH) or, since
        // pidfs hands out pidfds of reaped peers, gives one whose pid is -1: nothing is read.
        let late = Pin::from_peer_pidfd(getsockopt(&stream, sockopt::PeerPidfd));
        assert!(!matches!(late, Pin::OldKernel), "{late:?}");
        let mut late_id = PeerIdentity::default();
        pin_and_read(pid, late, AcceptTime::now(), &[], &mut late_id);
        assert_eq!(late_id.pinned, Pinning::None);
        assert_eq!(late_id.exe, None);
    }

    #[test]
    fn exe_matches_by_file_not_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::env::current_exe().unwrap();
        let link = dir.path().join("link-to-me");
        std::os::unix::fs::symlink(&me, &link).unwrap();
        let copy = dir.path().join("copy-of-me");
        std::fs::copy(&me, &copy).unwrap();
        let rules = vec![link.clone(), copy, PathBuf::from("/nonexistent/x")];
        let attrs = read_attributes(Path::new("/proc/self"), &rules);
        assert_eq!(attrs.exe, Some(me));
        // A symlink names the same file; a byte-identical copy is another file.
        assert_eq!(attrs.exe_matches, vec![link]);
    }

    #[test]
    fn identifies_self_over_socketpair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let me = std::env::current_exe().unwrap();
        let id = identify(&a, AcceptTime::now(), std::slice::from_ref(&me)).unwrap();
        assert_eq!(id.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(id.pid, Some(std::process::id() as i32));
        assert_eq!(id.exe, Some(me.clone()));
        assert_eq!(id.exe_matches, vec![me]);
        assert_ne!(id.pinned, Pinning::None);
    }
}
