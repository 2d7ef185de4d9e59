//! The audit trail: one JSON line per access decision, never a value.
//!
//! Lines go through a bounded channel to a writer task, so a slow disk or a full pipe never
//! blocks a request: when the channel is full the line is dropped and counted
//! (`credagent_audit_dropped_total`). The sink is stderr (`file = "-"`, journald under systemd)
//! or a file opened append-only with mode 0640.

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

/// One access decision.
#[derive(Debug, Serialize)]
pub struct AuditEvent {
    /// RFC 3339 time.
    pub time: String,
    /// Request id (also in log lines about the same request).
    pub request_id: String,
    /// What was asked: `read`, `flush`, `metrics`, `credential`.
    pub action: &'static str,
    /// Peer uid.
    pub uid: u32,
    /// Peer gid.
    pub gid: u32,
    /// Peer pid (agent's namespace).
    pub pid: Option<i32>,
    /// Peer executable.
    pub exe: Option<String>,
    /// Peer systemd unit.
    pub unit: Option<String>,
    /// `source/id` (or the flush pattern), never a value.
    pub secret: Option<String>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// `hit`, `miss`, `stale` when a value was looked up.
    pub cache: Option<&'static str>,
    /// HTTP status returned.
    pub status: u16,
}

impl AuditEvent {
    /// An event for `peer` with the fields every line has.
    pub fn new(request_id: &str, action: &'static str, peer: &PeerIdentity) -> Self {
        AuditEvent {
            time: rfc3339(SystemTime::now()),
            request_id: request_id.to_owned(),
            action,
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid,
            exe: peer.exe.as_ref().map(|p| p.display().to_string()),
            unit: peer.unit.clone(),
            secret: None,
            decision: "deny",
            cache: None,
            status: 0,
        }
    }
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
        let writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match sink {
            AuditSink::Stderr => Box::new(tokio::io::stderr()),
            AuditSink::File(path) => {
                let file = tokio::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .open(path)
                    .await
                    .map_err(|source| AuditError::Open {
                        path: path.clone(),
                        source,
                    })?;
                Box::new(file)
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(rx, writer));
        Ok(Audit { tx, metrics })
    }

    /// Queues one line; never waits.
    pub fn record(&self, event: AuditEvent) {
        if self.tx.try_send(event).is_err() {
            self.metrics.audit_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn write_lines(
    mut rx: mpsc::Receiver<AuditEvent>,
    mut writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
) {
    let mut line = Vec::with_capacity(512);
    while let Some(event) = rx.recv().await {
        line.clear();
        if serde_json::to_writer(&mut line, &event).is_err() {
            continue;
        }
        line.push(b'\n');
        // Batch whatever else is already queued into the same write.
        while let Ok(more) = rx.try_recv() {
            if serde_json::to_writer(&mut line, &more).is_ok() {
                line.push(b'\n');
            }
        }
        if let Err(e) = writer.write_all(&line).await {
            tracing::error!(error = %e, "cannot write audit line");
        }
        let _ = writer.flush().await;
    }
}
