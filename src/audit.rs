//! The audit trail: one JSON line per access decision, never a value.
//!
//! Lines go through a bounded channel to a writer task, so a request never waits for its line to
//! be written: when the channel is full the line is dropped and counted
//! (`credagent_audit_dropped_total`), and so is every line of a batch whose write fails (disk
//! full, I/O error): requests keep being answered either way. The sink is stderr (`file = "-"`, journald under systemd)
//! or a file opened append-only with mode 0640. The writer batches every queued line into one
//! write. A file is written with plain write(2) from the writer task (a page-cache copy; a
//! tokio file would hand each batch to a blocking thread, which the bench measured as the
//! agent's largest per-request cost); stderr, which may be a pipe that fills, stays
//! asynchronous.

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::config::AuditSink;
use crate::metrics::Metrics;
use crate::peer::PeerIdentity;
use crate::timefmt::rfc3339;

const QUEUE: usize = 8192;

/// Failure to open the audit file.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file could not be opened for appending.
    #[error("cannot open audit file {path}: {source}")]
    Open {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// A request's id: a counter, shown in hex in audit and log lines alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One access decision. It shares the connection's identity instead of copying it, so building
/// one on the request path costs no allocation beyond the secret's name; the writer task
/// renders it.
#[derive(Debug)]
pub struct AuditEvent {
    /// RFC 3339 time.
    pub time: Arc<str>,
    /// Request id (also in log lines about the same request).
    pub request_id: RequestId,
    /// What was asked: `read`, `flush`, `metrics`, `credential`.
    pub action: &'static str,
    /// Who asked.
    pub peer: Arc<PeerIdentity>,
    /// `source/id` (or the flush pattern), never a value.
    pub secret: Option<String>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Why a request was denied before any rule was asked (`peer_changed`), if it was.
    pub reason: Option<&'static str>,
    /// `hit`, `miss`, `stale`, or `negative` (a remembered "no such secret") when a value was
    /// looked up.
    pub cache: Option<&'static str>,
    /// HTTP status returned.
    pub status: u16,
}

impl Serialize for AuditEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut line = serializer.serialize_struct("AuditEvent", 14)?;
        line.serialize_field("time", &*self.time)?;
        line.serialize_field("request_id", &self.request_id)?;
        line.serialize_field("action", self.action)?;
        line.serialize_field("uid", &self.peer.uid)?;
        line.serialize_field("gid", &self.peer.gid)?;
        line.serialize_field("pid", &self.peer.pid)?;
        line.serialize_field("exe", &self.peer.exe.as_ref().map(|p| p.to_string_lossy()))?;
        line.serialize_field("unit", &self.peer.unit)?;
        line.serialize_field("user_unit", &self.peer.user_unit)?;
        line.serialize_field("secret", &self.secret)?;
        line.serialize_field("decision", self.decision)?;
        line.serialize_field("reason", &self.reason)?;
        line.serialize_field("cache", &self.cache)?;
        line.serialize_field("status", &self.status)?;
        line.end()
    }
}

impl AuditEvent {
    /// An event for `peer` with the fields every line has.
    pub fn new(request_id: RequestId, action: &'static str, peer: &Arc<PeerIdentity>) -> Self {
        AuditEvent {
            time: now_rfc3339(),
            request_id,
            action,
            peer: Arc::clone(peer),
            secret: None,
            decision: "deny",
            reason: None,
            cache: None,
            status: 0,
        }
    }
}

/// The current time in RFC 3339, formatted at most once per millisecond per thread: under load
/// many lines share a millisecond, and formatting was a visible share of a cached read's cost.
fn now_rfc3339() -> Arc<str> {
    thread_local! {
        static LAST: std::cell::RefCell<(u128, Option<Arc<str>>)> =
            const { std::cell::RefCell::new((0, None)) };
    }
    let now = SystemTime::now();
    let millis = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    LAST.with_borrow_mut(|(last, text)| match text {
        Some(text) if *last == millis => Arc::clone(text),
        _ => {
            let fresh: Arc<str> = Arc::from(rfc3339(now));
            *text = Some(Arc::clone(&fresh));
            *last = millis;
            fresh
        }
    })
}

/// Handle to the audit writer.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: mpsc::Sender<AuditEvent>,
    metrics: Arc<Metrics>,
}

impl Audit {
    /// Opens the sink and starts the writer task.
    pub async fn spawn(sink: &AuditSink, metrics: Arc<Metrics>) -> Result<Self, AuditError> {
        let writer = match sink {
            AuditSink::Stderr => Writer::Stream(Box::new(tokio::io::stderr())),
            AuditSink::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .open(path)
                    .map_err(|source| AuditError::Open {
                        path: path.clone(),
                        source,
                    })?;
                Writer::File(file)
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(rx, writer, metrics.clone()));
        Ok(Audit { tx, metrics })
    }

    /// An audit handle whose events a test reads from the returned receiver.
    #[cfg(test)]
    pub fn capture(metrics: Arc<Metrics>) -> (Self, mpsc::Receiver<AuditEvent>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Audit { tx, metrics }, rx)
    }

    /// Queues one line; never waits.
    pub fn record(&self, event: AuditEvent) {
        if self.tx.try_send(event).is_err() {
            self.metrics.audit_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where the lines go.
enum Writer {
    /// A regular file: written synchronously (page cache), no hand-off to a blocking thread.
    File(std::fs::File),
    /// stderr: may be a pipe that fills, so written asynchronously.
    Stream(Box<dyn tokio::io::AsyncWrite + Send + Unpin>),
}

impl Writer {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::File(file) => {
                // A failed write (disk full) may have appended part of the batch: cut it off, so
                // the file never holds a torn line that the next batch would be glued to.
                let len = file.metadata()?.len();
                std::io::Write::write_all(file, bytes).inspect_err(|_| {
                    let _ = file.set_len(len);
                })
            }
            Writer::Stream(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
        }
    }
}

async fn write_lines(
    mut rx: mpsc::Receiver<AuditEvent>,
    mut writer: Writer,
    metrics: Arc<Metrics>,
) {
    let mut line = Vec::with_capacity(512);
    while let Some(event) = rx.recv().await {
        line.clear();
        if serde_json::to_writer(&mut line, &event).is_err() {
            continue;
        }
        line.push(b'\n');
        let mut lines = 1u64;
        // Let the requests already runnable finish first, so their lines share this write.
        tokio::task::yield_now().await;
        // Batch whatever else is already queued into the same write.
        while let Ok(more) = rx.try_recv() {
            if serde_json::to_writer(&mut line, &more).is_ok() {
                line.push(b'\n');
                lines = lines.saturating_add(1);
            }
        }
        if let Err(e) = writer.write(&line).await {
            // The whole batch counts as dropped, even if part of it reached the file.
            metrics.audit_dropped.fetch_add(lines, Ordering::Relaxed);
            crate::rate_limited!(error, error = %e, lines, "cannot write audit lines; dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_time_is_the_current_millisecond() {
        for _ in 0..1000 {
            let before = rfc3339(SystemTime::now());
            let cached = now_rfc3339().to_string();
            let after = rfc3339(SystemTime::now());
            // Fixed-width RFC 3339 strings order like the times they name.
            assert!(
                before <= cached && cached <= after,
                "{before} {cached} {after}"
            );
            assert_eq!(cached.len(), "2026-01-01T00:00:00.000Z".len());
        }
    }
}
