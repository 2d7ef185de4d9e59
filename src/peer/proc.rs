//! The text of `/proc/PID` files, parsed: the start time in `stat`, the effective ids and
//! groups in `status`, and the systemd units a `cgroup` line names. Pure parsers (and the one
//! `stat` read); pinning the process while they are read is `peer/mod.rs`'s job.

use std::fs;
use std::path::Path;

pub(super) struct Stat {
    pub(super) start_time: u64,
}

pub(super) fn read_stat(proc_dir: &Path) -> Option<Stat> {
    let stat = fs::read_to_string(proc_dir.join("stat")).ok()?;
    Some(Stat {
        start_time: parse_start_time(&stat)?,
    })
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
pub(super) fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The effective uid and gid from /proc/PID/status (`Uid:`/`Gid:` list real, effective, saved,
/// filesystem ids).
pub(super) fn parse_effective_ids(status: &str) -> Option<(u32, u32)> {
    let effective = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok())
    };
    Some((effective("Uid:")?, effective("Gid:")?))
}

/// The systemd units a process belongs to, from its cgroup path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Units {
    /// The system unit.
    pub unit: Option<String>,
    /// The unit inside a user manager, when `unit` is `user@UID.service`.
    pub user_unit: Option<String>,
}

/// The units of `/proc/PID/cgroup` text, as `sd_pid_get_unit`/`sd_pid_get_user_unit` see them:
/// the first component below the root that is not a slice is the system unit (if it is a
/// `.service` or `.scope`); below `user@UID.service`, the first non-slice component is the user
/// unit. Deeper components are the unit's own sub-cgroups and never name a unit.
pub fn parse_units(cgroup: &str) -> Units {
    let Some(path) = systemd_cgroup_path(cgroup) else {
        return Units::default();
    };
    let mut components = path
        .split('/')
        .filter(|c| !c.is_empty())
        .skip_while(|c| c.ends_with(".slice"));
    let Some(unit) = components.next().filter(|c| is_process_unit(c)) else {
        return Units::default();
    };
    let user_unit = if is_user_manager(unit) {
        components
            .find(|c| !c.ends_with(".slice"))
            .filter(|c| is_process_unit(c))
            .map(str::to_owned)
    } else {
        None
    };
    Units {
        unit: Some(unit.to_owned()),
        user_unit,
    }
}

/// The cgroup path systemd tracks processes in: the unified hierarchy (`0::`), or the
/// `name=systemd` hierarchy on a legacy system, where the unified line, if any, is `0::/`.
pub(super) fn systemd_cgroup_path(cgroup: &str) -> Option<&str> {
    let unified = cgroup.lines().find_map(|l| l.strip_prefix("0::"));
    let named = cgroup
        .lines()
        .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p));
    match (unified, named) {
        (Some("/"), Some(named)) => Some(named),
        (Some(unified), _) => Some(unified),
        (None, named) => named,
    }
}

pub(super) fn is_process_unit(name: &str) -> bool {
    let stem = name
        .strip_suffix(".service")
        .or_else(|| name.strip_suffix(".scope"));
    stem.is_some_and(|s| !s.is_empty())
}

/// `user@UID.service`: a user's service manager.
pub(super) fn is_user_manager(unit: &str) -> bool {
    unit.strip_prefix("user@")
        .and_then(|rest| rest.strip_suffix(".service"))
        .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
}

pub(super) fn parse_groups(status: &str) -> Vec<u32> {
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
