//! The control file: an operator (config management, a Kubernetes ConfigMap) writes it to tell
//! the agent that secrets rotated, and the agent flushes what it says.
//!
//! The file's directory is watched with inotify (`notify`), so plain writes, atomic renames,
//! delete-and-recreate, creation after start and the ConfigMap `..data` symlink swap are all
//! seen. Each change is read after a short debounce and applied when the event names the file
//! or its content changed. Lines: `flush PATTERN` (glob over `{source}/{id}`), `#` comments; a
//! file with no flush line flushes everything; a bad line is logged and skipped. A flush here
//! is the flush API's: matching `vault-lease` profiles get a new lease, then the cache drops
//! its copies.
//!
//! Only a regular file is read, opened `O_NONBLOCK|O_NOFOLLOW` and read with a hard byte bound:
//! a FIFO, a device, a symlink as the final component, or a file over 1 MiB is one log line and
//! no flush. The one symlink followed is the kubelet's ConfigMap link `NAME -> ..data/NAME`.
#![deny(clippy::arithmetic_side_effects)]

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::name::Glob;
use crate::state::AppState;

/// Coalesces the several inotify events one write produces.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A control file larger than this is refused (nothing is flushed).
const MAX_CONTROL_LEN: u64 = 1024 * 1024;

/// One instruction from the control file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlCommand {
    /// Flush matching entries (`None`: all).
    Flush(Option<Glob>),
}

/// A line that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub reason: &'static str,
}

/// Parses control file text. With no `flush` line at all, the result is one flush-everything.
pub fn parse_control(text: &str) -> (Vec<ControlCommand>, Vec<BadLine>) {
    let mut commands = Vec::new();
    let mut bad = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("flush"), None, _) | (Some("flush"), Some("*"), None) => {
                commands.push(ControlCommand::Flush(None));
            }
            (Some("flush"), Some(pattern), None) => match Glob::parse(pattern) {
                Ok(glob) => commands.push(ControlCommand::Flush(Some(glob))),
                Err(_) => bad.push(BadLine {
                    line: index.saturating_add(1),
                    reason: "invalid pattern",
                }),
            },
            (Some("flush"), Some(_), Some(_)) => bad.push(BadLine {
                line: index.saturating_add(1),
                reason: "flush takes one pattern",
            }),
            _ => bad.push(BadLine {
                line: index.saturating_add(1),
                reason: "unknown command (expected `flush PATTERN`)",
            }),
        }
    }
    if commands.is_empty() {
        commands.push(ControlCommand::Flush(None));
    }
    (commands, bad)
}

/// Applies commands as a flush through the API does: the matching `vault-lease` profiles get
/// a new lease at their next read, then the cache drops its copies. Returns how many cache
/// entries were flushed.
pub fn apply(commands: &[ControlCommand], state: &AppState) -> usize {
    commands
        .iter()
        .map(|ControlCommand::Flush(pattern)| {
            // Marked before the cache flush wakes the waiters, so their re-read gets it.
            crate::source::flush_leases(&state.runtime().sources, pattern.as_ref());
            state.cache.flush(pattern.as_ref())
        })
        .sum()
}

/// Watches `path` and flushes on each change, until the process ends.
pub fn spawn_watcher(path: PathBuf, state: Arc<AppState>) {
    tokio::spawn(async move {
        if let Err(err) = watch(&path, state).await {
            tracing::error!(path = %path.display(), error = %err, "control file watcher stopped; flush through the API or SIGHUP instead");
        }
    });
}

async fn watch(path: &Path, state: Arc<AppState>) -> Result<(), notify::Error> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let Some(file_name) = path.file_name().map(|n| n.to_os_string()) else {
        return Ok(());
    };
    // The directory may appear after start (e.g. a volume mounted late): wait for it.
    let mut waited = false;
    while !dir.is_dir() {
        if !waited {
            tracing::warn!(dir = %dir.display(), "control file directory does not exist yet; waiting for it");
            waited = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<bool>();
    let watched_name = file_name.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let names_file = event.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| n == watched_name.as_os_str() || n == "..data")
        });
        let _ = tx.send(names_file);
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tracing::info!(path = %path.display(), "watching control file");
    let mut last = match read_control(path).await {
        ControlRead::Text(text) => Some(text),
        ControlRead::Missing | ControlRead::Refused(_) => None,
    };
    while let Some(first) = rx.recv().await {
        let mut names_file = first;
        tokio::time::sleep(DEBOUNCE).await;
        while let Ok(more) = rx.try_recv() {
            names_file |= more;
        }
        let text = match read_control(path).await {
            ControlRead::Text(text) => text,
            ControlRead::Missing => {
                // Deleted: nothing to apply until it comes back.
                tracing::debug!(path = %path.display(), "control file missing; nothing to apply until it is back");
                last = None;
                continue;
            }
            ControlRead::Refused(reason) => {
                tracing::warn!(path = %path.display(), %reason, "control file refused; nothing flushed");
                last = None;
                continue;
            }
        };
        let current = Some(text.clone());
        if !names_file && last.as_ref() == Some(&text) {
            continue;
        }
        last = current;
        let (commands, bad) = parse_control(&text);
        for line in &bad {
            tracing::warn!(path = %path.display(), line = line.line, reason = line.reason, "skipping bad control line");
        }
        let flushed = apply(&commands, &state);
        tracing::info!(path = %path.display(), commands = commands.len(), flushed, "control file applied");
    }
    drop(watcher);
    Ok(())
}

/// What reading the control file gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlRead {
    /// The file's text (invalid UTF-8 replaced).
    Text(String),
    /// No such file.
    Missing,
    /// Not read, and why (not a regular file, a symlink, too large, unreadable).
    Refused(String),
}

async fn read_control(path: &Path) -> ControlRead {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || load_control(&path))
        .await
        .unwrap_or_else(|_| ControlRead::Refused("the reading task failed".to_owned()))
}

/// Reads the control file at `path`. Never blocks on a FIFO or device, never follows a symlink
/// other than the ConfigMap link, never reads more than `MAX_CONTROL_LEN` + 1 bytes.
pub fn load_control(path: &Path) -> ControlRead {
    use nix::errno::Errno;
    use nix::fcntl::OFlag;
    let target = configmap_target(path).unwrap_or_else(|| path.to_path_buf());
    // SECURITY: O_NOFOLLOW so a symlink planted as the file cannot make the agent read (or block
    // on) something else; O_NONBLOCK so opening a FIFO with no writer returns at once.
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::open(&target, flags, nix::sys::stat::Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return ControlRead::Missing,
        Err(Errno::ELOOP) => {
            return ControlRead::Refused(
                "it is a symlink (only the ConfigMap link NAME -> ..data/NAME is followed)"
                    .to_owned(),
            );
        }
        Err(err) => return ControlRead::Refused(format!("cannot open it: {err}")),
    };
    let file = std::fs::File::from(fd);
    let file_type = match file.metadata() {
        Ok(meta) => meta.file_type(),
        Err(err) => return ControlRead::Refused(format!("cannot stat it: {err}")),
    };
    if !file_type.is_file() {
        let what = if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_dir() {
            "a directory"
        } else if file_type.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return ControlRead::Refused(format!("it is {what}, not a regular file"));
    }
    let mut bytes = Vec::new();
    // The bound is on the read itself, not on a size checked before it (the file can grow).
    if let Err(err) = file.take(MAX_CONTROL_LEN + 1).read_to_end(&mut bytes) {
        return ControlRead::Refused(format!("cannot read it: {err}"));
    }
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_CONTROL_LEN {
        return ControlRead::Refused("it is larger than 1 MiB".to_owned());
    }
    ControlRead::Text(String::from_utf8_lossy(&bytes).into_owned())
}

/// The kubelet writes a ConfigMap key as `dir/NAME -> ..data/NAME` with `..data` a symlink to a
/// timestamped directory it swaps atomically. For exactly that link, the path to open
/// (`dir/..data/NAME`, whose last component is again opened without following).
fn configmap_target(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let link = std::fs::read_link(path).ok()?;
    if link != Path::new("..data").join(name) {
        return None;
    }
    Some(path.with_file_name("..data").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flush(p: &str) -> ControlCommand {
        ControlCommand::Flush(Some(Glob::parse(p).unwrap()))
    }

    #[test]
    fn parse_table() {
        let (cmds, bad) = parse_control("# rotated\nflush aws/prod/*\n\n  flush files/x  \n");
        assert_eq!(cmds, vec![flush("aws/prod/*"), flush("files/x")]);
        assert!(bad.is_empty());

        let (cmds, bad) = parse_control("# only a comment, generation 7\n");
        assert_eq!(cmds, vec![ControlCommand::Flush(None)]);
        assert!(bad.is_empty());

        let (cmds, _) = parse_control("");
        assert_eq!(cmds, vec![ControlCommand::Flush(None)]);

        let (cmds, bad) =
            parse_control("flush a b\nrotate x\nflush bad pattern!\nflush files/ok\nflush %%\n");
        assert_eq!(cmds, vec![flush("files/ok")]);
        assert_eq!(
            bad.iter().map(|b| b.line).collect::<Vec<_>>(),
            vec![1, 2, 3, 5]
        );

        let (cmds, _) = parse_control("flush\nflush *\n");
        assert_eq!(
            cmds,
            vec![ControlCommand::Flush(None), ControlCommand::Flush(None)]
        );
    }
    #[test]
    fn only_a_bounded_regular_file_or_the_configmap_link_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n);
        std::fs::write(path("plain"), "flush files/a\n").unwrap();
        assert_eq!(
            load_control(&path("plain")),
            ControlRead::Text("flush files/a\n".to_owned())
        );
        assert_eq!(load_control(&path("missing")), ControlRead::Missing);

        // A FIFO with no writer: refused at once, never a blocked read.
        nix::unistd::mkfifo(
            &path("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let started = std::time::Instant::now();
        assert!(
            matches!(load_control(&path("fifo")), ControlRead::Refused(r) if r.contains("FIFO"))
        );
        assert!(started.elapsed() < Duration::from_secs(1));

        // A symlink as the final component, to anything but `..data/NAME`.
        std::os::unix::fs::symlink(path("plain"), path("link")).unwrap();
        assert!(
            matches!(load_control(&path("link")), ControlRead::Refused(r) if r.contains("symlink"))
        );
        std::os::unix::fs::symlink("/dev/zero", path("zero")).unwrap();
        assert!(matches!(
            load_control(&path("zero")),
            ControlRead::Refused(_)
        ));

        // The ConfigMap layout is followed; its final file must still be regular.
        std::fs::create_dir(path("..2026_01")).unwrap();
        std::fs::write(path("..2026_01/control"), "flush x/y\n").unwrap();
        std::os::unix::fs::symlink("..2026_01", path("..data")).unwrap();
        std::os::unix::fs::symlink("..data/control", path("control")).unwrap();
        assert_eq!(
            load_control(&path("control")),
            ControlRead::Text("flush x/y\n".to_owned())
        );
        std::fs::remove_file(path("..2026_01/control")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", path("..2026_01/control")).unwrap();
        assert!(matches!(
            load_control(&path("control")),
            ControlRead::Refused(_)
        ));

        // Over the bound: refused, not parsed and not "flush everything".
        let max = usize::try_from(MAX_CONTROL_LEN).unwrap();
        std::fs::write(path("big"), vec![b'#'; max + 1]).unwrap();
        assert!(
            matches!(load_control(&path("big")), ControlRead::Refused(r) if r.contains("1 MiB"))
        );
        std::fs::write(path("at-bound"), vec![b'#'; max]).unwrap();
        assert!(matches!(load_control(&path("at-bound")), ControlRead::Text(t) if t.len() == max));

        std::fs::create_dir(path("dir")).unwrap();
        assert!(matches!(
            load_control(&path("dir")),
            ControlRead::Refused(_)
        ));
    }
}
