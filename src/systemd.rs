//! systemd integration: `sd_notify` (READY, RELOADING, STOPPING, WATCHDOG) and socket
//! activation (`LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`: the agent socket is named `agent`, the
//! `LoadCredential=` socket `creds`, see [`split_listeners`]). Everything is a no-op when the agent
//! is not started by systemd, so the same binary runs in a container or by hand.
#![deny(clippy::arithmetic_side_effects)]

use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::time::Duration;

use crate::secure_mem::adopt_inherited_fd;

/// First inherited descriptor (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: i32 = 3;

/// Sends a state string to the service manager, if there is one.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(err) = sent {
        tracing::warn!(error = %err, "sd_notify failed");
    }
}

/// `RELOADING=1` with the monotonic timestamp systemd >= 253 expects.
pub fn notify_reloading() {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            (t.tv_sec() as u64)
                .saturating_mul(1_000_000)
                .saturating_add(t.tv_nsec() as u64 / 1000)
        })
        .unwrap_or(0);
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
}

/// Sockets passed by systemd, by name (`FileDescriptorName=`, default "unknown"). Consumes the
/// environment variables so children do not see them.
pub fn take_listeners() -> Vec<(String, UnixListener)> {
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    // Do not pass these on to anything the agent might spawn.
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        remove_env(var);
    }
    if !pid_matches || count <= 0 {
        return Vec::new();
    }
    let mut names = names.split(':');
    let mut listeners = Vec::new();
    // LISTEN_FDS comes from the environment: no overflow on a huge count.
    for fd in LISTEN_FDS_START..LISTEN_FDS_START.saturating_add(count) {
        let name = names.next().unwrap_or("unknown").to_owned();
        let Some(owned): Option<OwnedFd> = adopt_inherited_fd(fd) else {
            continue;
        };
        // SECURITY: systemd passes these with FD_CLOEXEC cleared; set it (as sd_listen_fds(3)
        // does), so no child the agent starts holds the agent's sockets.
        if let Err(errno) = nix::fcntl::fcntl(
            &owned,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        ) {
            tracing::error!(fd, %errno, "cannot set FD_CLOEXEC on a socket passed by systemd; not using it");
            continue;
        }
        listeners.push((name, UnixListener::from(owned)));
    }
    listeners
}

/// `FileDescriptorName=` of the credentials socket unit (`credagent-creds.socket`).
pub const CREDS_FD_NAME: &str = "creds";
/// `FileDescriptorName=` of the agent socket unit (`credagent.socket`).
pub const AGENT_FD_NAME: &str = "agent";

/// Splits inherited sockets into (agent socket, credentials socket) by `LISTEN_FDNAMES`: the
/// agent socket is the one named `agent`, else the first one not named `creds` (a manager that
/// names nothing passes "unknown"); the credentials socket is the one named `creds`.
pub fn split_listeners<L>(listeners: Vec<(String, L)>) -> (Option<L>, Option<L>) {
    let mut agent = None;
    let mut fallback = None;
    let mut creds = None;
    for (name, listener) in listeners {
        match name.as_str() {
            CREDS_FD_NAME if creds.is_none() => creds = Some(listener),
            AGENT_FD_NAME if agent.is_none() => agent = Some(listener),
            CREDS_FD_NAME | AGENT_FD_NAME => {
                tracing::warn!(name, "ignoring a second inherited socket with this name")
            }
            _ if fallback.is_none() => fallback = Some(listener),
            _ => tracing::warn!(name, "ignoring an extra inherited socket"),
        }
    }
    (agent.or(fallback), creds)
}

fn remove_env(var: &str) {
    crate::secure_mem::remove_env_var(var);
}

/// Starts `WATCHDOG=1` pings at half the interval systemd asked for (`WatchdogSec=`).
pub fn spawn_watchdog() {
    let pid_ok = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_none_or(|p| p == std::process::id());
    let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|u| u.parse::<u64>().ok())
    else {
        return;
    };
    if !pid_ok || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            notify("WATCHDOG=1");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_by_name_table() {
        let cases: &[(&[&str], Option<usize>, Option<usize>)] = &[
            (&[], None, None),
            (&["agent"], Some(0), None),
            (&["unknown"], Some(0), None),
            (&["creds"], None, Some(0)),
            (&["creds", "agent"], Some(1), Some(0)),
            (&["agent", "creds"], Some(0), Some(1)),
            (&["unknown", "creds"], Some(0), Some(1)),
            (&["other", "agent"], Some(1), None),
            (&["creds", "creds"], None, Some(0)),
        ];
        for (names, agent, creds) in cases {
            let input = names
                .iter()
                .enumerate()
                .map(|(i, n)| ((*n).to_owned(), i))
                .collect();
            assert_eq!(split_listeners(input), (*agent, *creds), "{names:?}");
        }
    }
}
