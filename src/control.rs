//! The control file: an operator (config management, a Kubernetes ConfigMap) writes it to tell
//! the agent that secrets rotated, and the agent flushes what it says.
//!
//! The file's directory is watched with inotify (`notify`), so plain writes, atomic renames,
//! delete-and-recreate, creation after start and the ConfigMap `..data` symlink swap are all
//! seen. Each change is read after a short debounce and applied when the event names the file
//! or its content changed. Lines: `flush PATTERN` (glob over `{source}/{id}`), `#` comments; a
//! file with no flush line flushes everything; a bad line is logged and skipped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::cache::Cache;
use crate::name::Glob;

/// Coalesces the several inotify events one write produces.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A control file larger than this is not parsed; everything is flushed instead.
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
                    line: index + 1,
                    reason: "invalid pattern",
                }),
            },
            (Some("flush"), Some(_), Some(_)) => bad.push(BadLine {
                line: index + 1,
                reason: "flush takes one pattern",
            }),
            _ => bad.push(BadLine {
                line: index + 1,
                reason: "unknown command (expected `flush PATTERN`)",
            }),
        }
    }
    if commands.is_empty() {
        commands.push(ControlCommand::Flush(None));
    }
    (commands, bad)
}

/// Applies commands to the cache; returns how many entries were flushed.
pub fn apply(commands: &[ControlCommand], cache: &Cache) -> usize {
    commands
        .iter()
        .map(|ControlCommand::Flush(pattern)| cache.flush(pattern.as_ref()))
        .sum()
}

/// Watches `path` and flushes `cache` on each change, until the process ends.
pub fn spawn_watcher(path: PathBuf, cache: Arc<Cache>) {
    tokio::spawn(async move {
        if let Err(err) = watch(&path, cache).await {
            tracing::error!(path = %path.display(), error = %err, "control file watcher stopped; flush through the API or SIGHUP instead");
        }
    });
}

async fn watch(path: &Path, cache: Arc<Cache>) -> Result<(), notify::Error> {
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
    let mut last = read_control(path).await;
    while let Some(first) = rx.recv().await {
        let mut names_file = first;
        tokio::time::sleep(DEBOUNCE).await;
        while let Ok(more) = rx.try_recv() {
            names_file |= more;
        }
        let current = read_control(path).await;
        let Some(text) = current.clone() else {
            // Deleted (or unreadable): nothing to apply until it comes back.
            tracing::debug!(path = %path.display(), "control file missing; nothing to apply until it is back");
            last = None;
            continue;
        };
        if !names_file && last.as_ref() == Some(&text) {
            continue;
        }
        last = current;
        let (commands, bad) = parse_control(&text);
        for line in &bad {
            tracing::warn!(path = %path.display(), line = line.line, reason = line.reason, "skipping bad control line");
        }
        let flushed = apply(&commands, &cache);
        tracing::info!(path = %path.display(), commands = commands.len(), flushed, "control file applied");
    }
    drop(watcher);
    Ok(())
}

/// The file's text; `None` when missing or unreadable. An oversized file reads as "" (flush all).
async fn read_control(path: &Path) -> Option<String> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    if meta.len() > MAX_CONTROL_LEN {
        tracing::error!(path = %path.display(), "control file larger than 1 MiB; flushing everything");
        return Some(String::new());
    }
    let bytes = tokio::fs::read(path).await.ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
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
    fn hostile_control_files_never_panic() {
        let seeds = [
            "flush files/a\n# c\n",
            "flush\nflush *\n",
            "\u{feff}flush x/y\r\n",
        ];
        let tokens = ["flush ", "\n", "#", "*", " ", "\t", "\0", "flush a b"];
        for input in crate::testutil::hostile_inputs(&seeds, &tokens, 3000) {
            let (commands, _bad) = parse_control(&String::from_utf8_lossy(&input));
            assert!(!commands.is_empty());
        }
    }
}
