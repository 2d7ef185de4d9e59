//! `credagent render TEMPLATE -o FILE --watch`: render once (as `render` does), then follow
//! every secret of the template through the agent's change waits ([`super::watch`]), re-render
//! on news, rewrite FILE (atomically, with its mode and owner; see `output`) only when the
//! rendered bytes differ, and then run the `--on-change` command or send the `--signal`.
//!
//! On any error the old file stays as it is: a failed write is retried with backoff, a watch
//! that fails retries on its own. SIGTERM or SIGINT ends it with success. The template is read
//! at start and again on SIGHUP (parsed by [`super::template_file`]). Values and rendered bytes
//! live in locked memory ([`SecretBuf`](crate::secure_mem::SecretBuf)).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::ClientError;
use super::template_file::Template;
use super::watch::{self, Current, Signals};
use crate::output::FileAttrs;
use crate::secure_mem::SecretBytes;

/// What to do after FILE was rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// `/bin/sh -c CMD`, killed after `timeout`.
    Command {
        /// The shell command.
        command: String,
        /// Kill it (its whole process group) after this long.
        timeout: Duration,
    },
    /// Send `signal` to the pid read from `pid_file` (read anew each time).
    Signal {
        /// The signal.
        signal: Signal,
        /// File holding the pid.
        pid_file: PathBuf,
    },
}

/// What `render --watch` was asked to do.
#[derive(Debug)]
pub struct RenderWatch<'a> {
    /// Agent socket.
    pub socket: &'a Path,
    /// The template file.
    pub template: &'a Path,
    /// `--scheme` mappings in effect.
    pub schemes: &'a crate::template::Schemes,
    /// The rendered file.
    pub output: &'a Path,
    /// Its mode and owner.
    pub attrs: FileAttrs,
    /// After a rewrite.
    pub action: Action,
}

fn write(watch: &RenderWatch<'_>, bytes: &SecretBytes) -> Result<(), ClientError> {
    crate::output::write_private(watch.output, bytes.as_slice(), &watch.attrs).map_err(|e| {
        ClientError::Usage(format!(
            "cannot write the rendered file {}: {e}",
            watch.output.display()
        ))
    })
}

/// Reads and parses the template file.
fn load(watch: &RenderWatch<'_>) -> Result<Template, ClientError> {
    Template::read(watch.template, watch.schemes, watch.attrs.owner)
}

/// What a SIGHUP led to.
enum Reload {
    /// The new template, with every secret it names.
    New(Template, Vec<Current>),
    /// The template file could not be used (unreadable, broken, a secret refused): the old one
    /// stays.
    Kept(ClientError),
    /// SIGTERM or SIGINT came while the new template's secrets were fetched.
    Stop,
}

/// Re-reads the template file and fetches every secret it names (waiting, with backoff, for an
/// agent that cannot be reached; a further SIGHUP starts over).
async fn reload(watch: &RenderWatch<'_>, signals: &mut Signals) -> Result<Reload, ClientError> {
    loop {
        let template = match load(watch) {
            Ok(template) => template,
            Err(err) => return Ok(Reload::Kept(err)),
        };
        return match watch::fetch_all(watch.socket, &template.watched, signals).await {
            Ok(Ok(current)) => Ok(Reload::New(template, current)),
            Ok(Err(Signal::SIGHUP)) => continue,
            Ok(Err(_)) => Ok(Reload::Stop),
            Err(err) => Ok(Reload::Kept(err)),
        };
    }
}

/// Runs until SIGTERM/SIGINT (`Ok`), or fails at start: an unreadable template, a secret the
/// agent refuses (denied, not found), or a first write that fails. An agent that cannot be
/// reached at start is waited for, with backoff. SIGHUP re-reads the template file: the file is
/// rendered from the new template at once (rewritten if its bytes differ, with the action), and
/// the new template's secrets are followed from then on; a template that cannot be used is
/// logged and the old one kept.
pub async fn run(watch: RenderWatch<'_>) -> Result<(), ClientError> {
    let mut signals = Signals::install(true)?;
    let mut template = load(&watch)?;
    let mut current = loop {
        match watch::fetch_all(watch.socket, &template.watched, &mut signals).await? {
            Ok(current) => break current,
            // Before the first write: read the template again, as the operator asked.
            Err(Signal::SIGHUP) => template = load(&watch)?,
            Err(_) => return Ok(()),
        }
    };
    let mut written = template.render(&current)?;
    write(&watch, &written)?;
    tracing::info!(
        "wrote {}; watching {} secret(s) for changes",
        watch.output.display(),
        template.watched.len()
    );
    let mut waiters = watch::spawn_waiters(watch.socket, &template.watched, &current);
    // Whether FILE may lag behind `current`: set by a change, cleared by a write (or a render
    // equal to what was written), kept by a failed write until the retry.
    let mut dirty = false;
    let mut reload_pending = false;
    let mut write_backoff = watch::backoff();
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        if std::mem::take(&mut reload_pending) {
            match reload(&watch, &mut signals).await? {
                Reload::New(new, values) => {
                    tracing::info!(
                        "re-read {}: watching {} secret(s)",
                        watch.template.display(),
                        new.watched.len()
                    );
                    waiters = watch::spawn_waiters(watch.socket, &new.watched, &values);
                    template = new;
                    current = values;
                    dirty = true;
                    // Written now, whatever a failed write's backoff said.
                    retry_at = None;
                }
                Reload::Kept(err) => tracing::error!("{err}; keeping the old template"),
                Reload::Stop => return Ok(()),
            }
        } else {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = waiters.next_change(&mut current) => {
                    if !changed {
                        tracing::debug!("a watched tag changed over the same bytes");
                    }
                    dirty |= changed;
                }
                () = retry => retry_at = None,
                signal = signals.recv() => match signal {
                    Signal::SIGHUP => reload_pending = true,
                    _ => return Ok(()),
                },
            }
        }
        if !dirty || retry_at.is_some() || reload_pending {
            continue;
        }
        // Always from the values held now, so news taken in meanwhile is never lost.
        let rendered = match template.render(&current) {
            Ok(rendered) => rendered,
            Err(err) => {
                tracing::error!("cannot re-render (the old file stays): {err}");
                retry_at = Some(tokio::time::Instant::now() + write_backoff.delay());
                continue;
            }
        };
        if rendered.as_slice() == written.as_slice() {
            tracing::info!("re-rendered: {} unchanged", watch.output.display());
            dirty = false;
            continue;
        }
        match write(&watch, &rendered) {
            Ok(()) => {
                written = rendered;
                dirty = false;
                write_backoff.reset();
                tracing::info!("rewrote {}", watch.output.display());
                // A SIGHUP during the action is taken after it; SIGTERM/SIGINT end it.
                let action = act(&watch.action, watch.attrs.owner);
                tokio::pin!(action);
                loop {
                    tokio::select! {
                        () = &mut action => break,
                        signal = signals.recv() => match signal {
                            Signal::SIGHUP => reload_pending = true,
                            _ => return Ok(()),
                        },
                    }
                }
            }
            Err(err) => {
                let delay = write_backoff.delay();
                tracing::error!(
                    "{err}; the old file stays, retrying in {:.1}s",
                    delay.as_secs_f64()
                );
                retry_at = Some(tokio::time::Instant::now() + delay);
            }
        }
    }
}

/// Runs the `--on-change` command or sends the `--signal`; failures are logged.
async fn act(action: &Action, owner: Option<u32>) {
    match action {
        Action::None => {}
        Action::Command { command, timeout } => run_command(command, *timeout).await,
        Action::Signal { signal, pid_file } => match read_pid(pid_file, owner) {
            Ok((pid, uid)) => match send(pid, uid, owner, *signal) {
                Ok(()) => tracing::info!("sent {signal} to process {pid}"),
                Err(err) => tracing::error!("cannot send {signal} to process {pid}: {err}"),
            },
            Err(err) => tracing::error!("--pid-file {}: {err}", pid_file.display()),
        },
    }
}

/// SECURITY: run privileged, the signal goes only to a process of the uid the rendered file is
/// for (`--owner`), else of the pid file's owner, through a pidfd ([`super::trust`]).
fn send(pid: i32, file_uid: u32, owner: Option<u32>, signal: Signal) -> Result<(), String> {
    if super::trust::privileged(owner) {
        return super::trust::signal_as_uid(pid, owner.unwrap_or(file_uid), signal);
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(|e| e.to_string())
}

/// The pid in `path` (one positive number, surrounding whitespace allowed) and the file's owner;
/// run privileged, only from a file `trust::read_trusted` accepts.
pub fn read_pid(path: &Path, owner: Option<u32>) -> Result<(i32, u32), String> {
    let (text, file_uid) = super::trust::read_trusted(path, owner)?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| format!("{:?} is not a process id", text.trim()))?;
    Ok((pid, file_uid))
}

async fn run_command(command: &str, timeout: Duration) {
    let mut sh = tokio::process::Command::new("/bin/sh");
    sh.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    // SECURITY: the command gets its standard streams and nothing else of ours.
    crate::secure_mem::close_other_fds_on_exec(sh.as_std_mut());
    let mut child = match sh.spawn() {
        Ok(child) => child,
        Err(err) => {
            tracing::error!("cannot run the --on-change command: {err}");
            return;
        }
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => tracing::info!("--on-change command: {status}"),
        Ok(Ok(status)) => tracing::warn!("--on-change command failed: {status}"),
        Ok(Err(err)) => tracing::error!("--on-change command: {err}"),
        Err(_) => {
            // Its whole group: `sh -c` may have started children of its own.
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait().await;
            tracing::error!(
                "--on-change command killed after {}s (--on-change-timeout)",
                timeout.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_holds_one_positive_number() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        for (text, want) in [
            ("42\n", Ok(42)),
            (" 7 ", Ok(7)),
            ("0", Err(())),
            ("-1", Err(())),
            ("abc", Err(())),
            ("", Err(())),
        ] {
            std::fs::write(&file, text).unwrap();
            assert_eq!(
                read_pid(&file, None).map(|(p, _)| p).map_err(|_| ()),
                want,
                "{text:?}"
            );
        }
        assert!(read_pid(&dir.path().join("missing"), None).is_err());
    }
}
