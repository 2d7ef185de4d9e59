//! Which processes the client may signal: `reload --pid` signals only a credagent process.
//!
//! Owns the check of a target process, nothing else; the signal itself is sent by its caller.

use std::os::unix::fs::MetadataExt;

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
