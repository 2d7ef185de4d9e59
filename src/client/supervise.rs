//! `credagent exec --watch --on-change restart|signal:SIG --env … -- CMD`: run CMD as a child
//! with the secrets in its environment, follow them through the agent's change waits
//! ([`super::watch`]), and when an injected value changes restart the child (SIGTERM, SIGKILL
//! after `--grace`) with the new environment or send it the signal. A change of tag over the
//! same bytes does nothing.
//!
//! SIGTERM, SIGINT and SIGHUP sent to credagent are passed on to the child. When the child exits
//! on its own (or after a passed-on signal), credagent exits with its status, a signal death as
//! 128+N like a shell. It does not restart a child that exited: that is the service manager's job.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

use super::ClientError;
use super::bindings::Bindings;
use super::watch::{self, Current, Signals};

/// What a change of an injected value does to the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// Stop it (SIGTERM, SIGKILL after the grace period) and start it again.
    Restart,
    /// Send it this signal.
    Signal(Signal),
}

/// What `exec --watch` was asked to do.
#[derive(Debug)]
pub struct ExecWatch<'a> {
    /// Agent socket.
    pub socket: &'a Path,
    /// `VAR=SOURCE/ID[#FIELD]` bindings.
    pub bindings: &'a [String],
    /// `--scheme` mappings in effect.
    pub schemes: &'a crate::template::Schemes,
    /// The command and its arguments.
    pub command: &'a [String],
    /// On a change.
    pub on_change: OnChange,
    /// Between SIGTERM and SIGKILL on a restart.
    pub grace: Duration,
}

/// The exit code a shell would report for `status`.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + (signal & 0x7f)).unwrap_or(1),
        (None, None) => 1,
    }
}

fn spawn(
    watch: &ExecWatch<'_>,
    bindings: &Bindings,
    current: &[Current],
) -> Result<Child, ClientError> {
    let (mut cmd, program) = child_command(watch.command, bindings, current)?;
    cmd.spawn()
        .map_err(|e| ClientError::Usage(format!("cannot run {program}: {e}")))
}

/// The child `command` as a supervising `exec` starts it (killed if credagent's handle is
/// dropped), the bindings' values in its environment; and the program's name.
pub(super) fn child_command<'c>(
    command: &'c [String],
    bindings: &Bindings,
    current: &[Current],
) -> Result<(Command, &'c str), ClientError> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| ClientError::Usage("no command given".to_owned()))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .kill_on_drop(true)
        .envs(bindings.env(current));
    // SECURITY: the child gets its standard streams and nothing else of ours.
    crate::secure_mem::close_other_fds_on_exec(cmd.as_std_mut());
    Ok((cmd, program))
}

fn pid_of(child: &Child) -> Option<nix::unistd::Pid> {
    child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(nix::unistd::Pid::from_raw)
}

fn send(child: &Child, signal: Signal) {
    if let Some(pid) = pid_of(child)
        && let Err(err) = nix::sys::signal::kill(pid, signal)
    {
        tracing::warn!("cannot send {signal} to the child {pid}: {err}");
    }
}

/// SIGTERM, then SIGKILL after `grace`; waits for the exit.
async fn stop(child: &mut Child, grace: Duration) {
    send(child, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => tracing::info!("the child stopped for a restart: {status:?}"),
        Err(_) => {
            tracing::warn!(
                "the child did not stop within {}s (--grace): SIGKILL",
                grace.as_secs()
            );
            let _ = child.kill().await;
        }
    }
}

/// Runs the child until it exits; returns its exit code for credagent to exit with.
pub async fn run(watch: ExecWatch<'_>) -> Result<u8, ClientError> {
    let mut signals = Signals::install(true)?;
    let bindings = Bindings::parse(watch.bindings, watch.schemes)?;
    let mut current = match watch::fetch_all(watch.socket, &bindings.watched, &mut signals).await? {
        Ok(current) => current,
        Err(signal) => return Ok(128 + signal as u8),
    };
    let mut child = spawn(&watch, &bindings, &current)?;
    let mut waiters = watch::spawn_waiters(watch.socket, &bindings.watched, &current);
    let mut stopping = false;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| ClientError::Usage(format!("waiting for the child: {e}")))?;
                tracing::info!("the child exited: {status}");
                return Ok(exit_code(status));
            }
            changed = waiters.next_change(&mut current), if !stopping => {
                if !changed {
                    continue;
                }
                match watch.on_change {
                    // A value the new child could not get (a NUL byte): stopping the running
                    // one for it would leave nothing running.
                    OnChange::Restart => if let Some(var) = bindings.unusable(&current) {
                        tracing::error!("a watched secret changed, but the new value of {var} holds a NUL byte and cannot be an environment variable: keeping the running child");
                    } else {
                        tracing::info!("a watched secret changed: restarting the child");
                        stop(&mut child, watch.grace).await;
                        child = spawn(&watch, &bindings, &current)?;
                    }
                    OnChange::Signal(signal) => {
                        tracing::info!("a watched secret changed: sending {signal} to the child");
                        send(&child, signal);
                    }
                }
            }
            signal = signals.recv() => {
                send(&child, signal);
                if signal != Signal::SIGHUP {
                    stopping = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(libc_sigterm())), 143);
    }

    fn libc_sigterm() -> i32 {
        Signal::SIGTERM as i32
    }
}
