//! What the client trusts when it runs privileged: `reload --pid` signals only a credagent
//! process; `render` run as root (or with an `--owner` other than itself) reads only templates
//! and pid files that root or its own uid owns and no one else may write, and signals a pid only
//! through a pidfd, after checking the process runs as the uid expected.
//!
//! Owns those checks and the pidfd signal; what to render or when to signal is the caller's.

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// SECURITY: `reload --pid N` runs privileged (a unit's `ExecReload=`, an operator's shell); a
/// wrong or stale N would make it SIGHUP any process, which most programs die of. The target's
/// executable must be this program's file (by device and inode) or a file named `credagent`
/// (another install, or one replaced by an upgrade). The agent is not dumpable, so a caller that
/// is not root cannot read its `/proc/PID/exe`: then the process must run as the caller's uid
/// and call itself `credagent`.
pub(crate) fn check_is_credagent(pid: i32) -> Result<(), String> {
    let proc_dir = format!("/proc/{pid}");
    match std::fs::read_link(format!("{proc_dir}/exe")) {
        Ok(link) => {
            let same_file = match (
                std::fs::metadata(format!("{proc_dir}/exe")),
                std::fs::metadata("/proc/self/exe"),
            ) {
                (Ok(target), Ok(me)) => (target.dev(), target.ino()) == (me.dev(), me.ino()),
                _ => false,
            };
            let name = link
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if same_file || name == "credagent" || name == "credagent (deleted)" {
                return Ok(());
            }
            Err(format!(
                "process {pid} runs {}, not credagent; nothing was signalled",
                link.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let comm = std::fs::read_to_string(format!("{proc_dir}/comm")).unwrap_or_default();
            let status = std::fs::read_to_string(format!("{proc_dir}/status")).unwrap_or_default();
            let me = nix::unistd::getuid().as_raw();
            let same_uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next())
                .and_then(|uid| uid.parse::<u32>().ok())
                == Some(me);
            if comm.trim_end() == "credagent" && same_uid {
                return Ok(());
            }
            Err(format!(
                "process {pid} is not a credagent process of this user; nothing was signalled"
            ))
        }
        Err(e) => Err(format!("process {pid}: {e}; nothing was signalled")),
    }
}

/// Whether the client acts with more privilege than the files it is pointed at may carry: it
/// runs as root, or writes a file for another uid (`--owner`).
pub(crate) fn privileged(owner: Option<u32>) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    me == 0 || owner.is_some_and(|o| o != me)
}

/// Reads `path` as text, with the owner of the file read; when [`privileged`], only a regular
/// file (no symlink followed) owned by root or this uid and writable by no one else.
///
/// SECURITY: a root `render --watch` pointed at a file its app's user can write would otherwise
/// take orders (a template naming root's secrets, a pid to signal) from that user.
pub(crate) fn read_trusted(path: &Path, owner: Option<u32>) -> Result<(String, u32), String> {
    let privileged = privileged(owner);
    let flags = if privileged {
        nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK
    } else {
        0
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                "is a symbolic link (refused when running privileged)".to_owned()
            } else {
                e.to_string()
            }
        })?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if privileged {
        check_trusted_meta(&meta)?;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok((text, meta.uid()))
}

fn check_trusted_meta(meta: &std::fs::Metadata) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_file() {
        return Err("is not a regular file".to_owned());
    }
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "is owned by uid {}, not root or uid {me}: refused when running privileged (root, or \
             --owner another user); have root write it, or use --on-change 'systemctl reload app'",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "is writable by group or others (mode {:o}): refused when running privileged",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Sends `signal` to `pid` through a pidfd, after checking that the process runs as `uid` (real
/// and effective): the pidfd pins the process, so a pid reused between the check and the signal
/// cannot be hit.
pub(crate) fn signal_as_uid(
    pid: i32,
    uid: u32,
    signal: nix::sys::signal::Signal,
) -> Result<(), String> {
    let target = rustix::process::Pid::from_raw(pid).ok_or("is not a process id")?;
    let pidfd = rustix::process::pidfd_open(target, rustix::process::PidfdFlags::empty())
        .map_err(|e| format!("process {pid}: {e}"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("process {pid}: {e}"))?;
    let ids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|ids| {
            ids.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if ids.len() < 2 || ids[..2] != [uid, uid] {
        return Err(format!(
            "process {pid} does not run as uid {uid} (its uids: {ids:?}); nothing was signalled"
        ));
    }
    // The status read was of the pinned process only if it is still alive under that pid.
    let info = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        std::os::fd::AsRawFd::as_raw_fd(&pidfd)
    ))
    .unwrap_or_default();
    if info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .map(str::trim)
        != Some(pid.to_string().as_str())
    {
        return Err(format!("process {pid} exited; nothing was signalled"));
    }
    let signal = rustix::process::Signal::from_named_raw(signal as i32)
        .ok_or_else(|| format!("{signal} cannot be sent"))?;
    rustix::process::pidfd_send_signal(&pidfd, signal).map_err(|e| format!("process {pid}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_process_running_this_programs_file_is_taken_for_credagent() {
        // The running binary is the same file as itself.
        assert!(check_is_credagent(std::process::id() as i32).is_ok());
        let mut sleep = std::process::Command::new("/bin/sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let refused = check_is_credagent(sleep.id() as i32);
        let _ = sleep.kill();
        let _ = sleep.wait();
        assert!(refused.unwrap_err().contains("not credagent"));
        assert!(check_is_credagent(i32::MAX).is_err(), "no such process");
    }
}
