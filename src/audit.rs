//! The audit trail: one JSON line per access decision, never a value.
//!
//! Lines go through a bounded queue to a writer thread, so a request never waits for its line to
//! be written: when the queue is full the line is dropped and counted
//! (`credagent_audit_dropped_total`), and so is every line of a batch whose write fails (disk
//! full, I/O error): requests keep being answered either way. The sink is stderr (`file = "-"`, journald under systemd)
//! or a file opened append-only with mode 0640. The writer gathers lines for [`BATCH_WINDOW`] after
//! the first of a batch and writes them with one write; at a stop, [`Audit::flush`] writes what is
//! queued before the agent exits. Both sinks are written with plain blocking writes from the
//! writer thread: a file costs a page-cache copy, and stderr, which may be a pipe that fills,
//! blocks only that thread (a tokio file would hand each batch to a blocking thread, which the
//! bench measured as the agent's largest per-request cost).

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::oneshot;

use crate::audit_limit::{AuditLimiter, push_dropped_line};
use crate::config::AuditSink;
use crate::journald::{self, Entry, Journal, Priority};
use crate::metrics::Metrics;
use crate::peer::PeerIdentity;
use crate::timefmt::rfc3339;

const QUEUE: usize = 8192;
/// How long the writer gathers lines after the first of a batch before writing them. At one
/// connection every request was its own `write(2)` — the agent's largest cost above the bench's
/// floor; gathering for this long makes it one write per window, and a line is on its way to the
/// sink within this bound. A stop (SIGTERM) writes what is gathered before the agent exits.
pub const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(2);

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
    /// The writer thread could not be started.
    #[error("cannot start the audit writer thread: {0}")]
    Thread(std::io::Error),
}

/// A request's id: a counter, shown in hex in audit and log lines alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// One access decision. It shares the connection's identity instead of copying it, so building
/// one on the request path costs no allocation beyond the secret's name; the writer thread
/// renders it.
#[derive(Debug)]
pub struct AuditEvent {
    /// When the answer was sent (when the request arrived, until it is recorded); the writer
    /// renders it as RFC 3339 (once per millisecond of lines).
    pub time: SystemTime,
    /// How long before `time` the request arrived, in milliseconds, for an answer sent a second
    /// or more after it (a waiting read); `0` otherwise. Rendered as `"arrived"`, a time.
    pub waited_ms: u32,
    /// Request id (also in log lines about the same request).
    pub request_id: RequestId,
    /// What was asked: `read`, `flush`, `metrics`, `credential`.
    pub action: &'static str,
    /// Who asked.
    pub peer: Arc<PeerIdentity>,
    /// `source/id` (or the flush pattern), never a value.
    pub secret: Option<Arc<str>>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Why a request was denied before any rule was asked (`peer_changed`), if it was.
    pub reason: Option<&'static str>,
    /// `hit`, `miss`, `stale`, or `negative` (a remembered "no such secret") when a value was
    /// looked up.
    pub cache: Option<&'static str>,
    /// What a `?refresh=true` did (`refreshed`, `throttled`, or `fresh`: a minted value left
    /// alone); the key `refresh` is left out for other requests.
    pub refresh: Option<crate::cache::Refresh>,
    /// HTTP status returned.
    pub status: u16,
    /// aws-credentials (issue 29): the STS session the caller was given; never a key.
    pub aws: Option<Box<AwsSession>>,
    /// When the served value expires, for a value with a lifetime of its own (a lease, an
    /// OAuth2 token), in seconds after `time` (4 bytes: every queued line carries the field,
    /// and it fits in the padding); the key `expires_at` is left out otherwise.
    pub expires_in: Option<std::num::NonZeroU32>,
    /// Container-credentials listener (issue 29): the uid owning the TCP socket that presented
    /// the token of `peer`, when it is another uid's.
    pub presented_by_uid: Option<u32>,
}

/// The role session of an aws-credentials read (the profile is the secret's id).
#[derive(Debug, Clone)]
pub struct AwsSession {
    /// The STS session name.
    pub name: Box<str>,
    /// When the served session expires.
    pub expires_at: Option<SystemTime>,
}

/// The fields of a line that come from the connection's identity, in line order.
struct PeerFields<'a>(&'a PeerIdentity);

impl Serialize for PeerFields<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let peer = self.0;
        let mut fields = serializer.serialize_struct("PeerFields", 7)?;
        fields.serialize_field("uid", &peer.uid)?;
        fields.serialize_field("gid", &peer.gid)?;
        fields.serialize_field("pid", &peer.pid)?;
        fields.serialize_field("exe", &peer.exe.as_ref().map(|p| p.to_string_lossy()))?;
        fields.serialize_field("unit", &peer.unit)?;
        fields.serialize_field("user_unit", &peer.user_unit)?;
        // SECURITY: why exe, units and groups are absent when a check refused them.
        if let Some(why) = peer.unknown {
            fields.serialize_field("unknown", why)?;
        }
        fields.end()
    }
}

/// The peer fields of recent connections, rendered once: every request of a keep-alive
/// connection shares them, and rendering them (the exe path's lossy UTF-8 and escaping among
/// them) was most of a line's cost. Each entry holds its `Arc`, so the allocation a pointer
/// names cannot be freed and reused by another connection's identity while it is here.
///
/// Likewise the time: many lines share a millisecond, and the writer formats each millisecond
/// once (a request only reads the clock; an `Arc` of shared text cost it two writes to a count
/// the writer thread shares).
#[derive(Default)]
struct Rendered {
    entries: Vec<(Arc<PeerIdentity>, Vec<u8>)>,
    /// The millisecond since the epoch that `time_text` shows.
    time_millis: Option<u128>,
    time_text: String,
}

/// Connections whose peer fields are kept; past that the cache starts over.
const PEER_FIELD_CACHE: usize = 64;

impl Rendered {
    /// `at` in RFC 3339 (milliseconds), formatted only when the millisecond changes.
    fn time(&mut self, at: SystemTime) -> &str {
        let millis = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if self.time_millis != Some(millis) {
            self.time_text = rfc3339(at);
            self.time_millis = Some(millis);
        }
        &self.time_text
    }

    /// `"uid":…,"user_unit":…` for `peer` (without braces).
    fn fields(&mut self, peer: &Arc<PeerIdentity>) -> &[u8] {
        let found = self.entries.iter().position(|(p, _)| Arc::ptr_eq(p, peer));
        let index = match found {
            Some(index) => index,
            None => {
                if self.entries.len() >= PEER_FIELD_CACHE {
                    self.entries.clear();
                }
                let mut rendered = Vec::with_capacity(128);
                if serde_json::to_writer(&mut rendered, &PeerFields(peer)).is_err() {
                    rendered.clear();
                }
                // `{…}` → `…`
                let inner = rendered
                    .get(1..rendered.len().saturating_sub(1))
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
                self.entries.push((Arc::clone(peer), inner));
                self.entries.len().saturating_sub(1)
            }
        };
        self.entries.get(index).map_or(&[], |(_, f)| f.as_slice())
    }
}

impl AuditEvent {
    /// Appends this event as one JSON object (no newline). Written by hand: formatting
    /// machinery (`write!`, serde's escaping) was most of a line's cost, and every field but the
    /// secret's name and the peer's (rendered once per connection) is a fixed word, a number or
    /// the agent's own time text.
    fn write_json(&self, out: &mut Vec<u8>, peers: &mut Rendered) -> serde_json::Result<()> {
        out.extend_from_slice(b"{\"time\":");
        push_word(out, peers.time(self.time));
        if let Some(arrived) = (self.waited_ms > 0)
            .then(|| {
                self.time
                    .checked_sub(std::time::Duration::from_millis(self.waited_ms.into()))
            })
            .flatten()
        {
            out.extend_from_slice(b",\"arrived\":");
            push_word(out, &rfc3339(arrived));
        }
        out.extend_from_slice(b",\"request_id\":\"");
        push_hex(out, self.request_id.0);
        out.extend_from_slice(b"\",\"action\":");
        push_word(out, self.action);
        out.push(b',');
        out.extend_from_slice(peers.fields(&self.peer));
        out.extend_from_slice(b",\"secret\":");
        match self.secret.as_deref() {
            Some(secret) => push_json_str(out, secret)?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"decision\":");
        push_word(out, self.decision);
        out.extend_from_slice(b",\"reason\":");
        push_opt_word(out, self.reason);
        out.extend_from_slice(b",\"cache\":");
        push_opt_word(out, self.cache);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        if let Some(refresh) = self.refresh {
            out.extend_from_slice(b",\"refresh\":");
            push_word(out, refresh.as_str());
        }
        if let Some(session) = self.aws.as_deref() {
            let profile = self
                .secret
                .as_deref()
                .and_then(|s| s.split_once('/'))
                .map_or("", |(_, id)| id);
            out.extend_from_slice(b",\"profile\":");
            push_json_str(out, profile)?;
            out.extend_from_slice(b",\"session_name\":");
            push_json_str(out, &session.name)?;
            out.extend_from_slice(b",\"expiration\":");
            match session.expires_at {
                Some(at) => push_json_str(out, &crate::timefmt::rfc3339(at))?,
                None => out.extend_from_slice(b"null"),
            }
        }
        if let Some(secs) = self.expires_in {
            out.extend_from_slice(b",\"expires_at\":");
            let at = self
                .time
                .checked_add(std::time::Duration::from_secs(u64::from(secs.get())))
                .unwrap_or(self.time);
            push_word(out, &crate::timefmt::rfc3339(at));
        }
        if let Some(uid) = self.presented_by_uid {
            out.extend_from_slice(b",\"presented_by_uid\":");
            out.extend_from_slice(itoa::Buffer::new().format(uid).as_bytes());
        }
        out.push(b'}');
        Ok(())
    }
}

/// Whether `text` can stand in a JSON string as it is.
fn needs_no_escape(text: &str) -> bool {
    text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// A word the agent chose (an action, decision, reason, cache outcome, or its own time text) as
/// a JSON string: none needs escaping.
fn push_word(out: &mut Vec<u8>, word: &str) {
    debug_assert!(needs_no_escape(word), "{word:?} needs escaping");
    out.push(b'"');
    out.extend_from_slice(word.as_bytes());
    out.push(b'"');
}

/// [`push_word`], or `null`.
fn push_opt_word(out: &mut Vec<u8>, word: Option<&str>) {
    match word {
        Some(word) => push_word(out, word),
        None => out.extend_from_slice(b"null"),
    }
}

/// `n` in lowercase hex, as `RequestId`'s `Display` writes it.
fn push_hex(out: &mut Vec<u8>, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut start = buf.len();
    let mut rest = n;
    loop {
        start = start.saturating_sub(1);
        if let (Some(slot), Some(&digit)) = (buf.get_mut(start), DIGITS.get((rest & 0xf) as usize))
        {
            *slot = digit;
        }
        rest >>= 4;
        if rest == 0 || start == 0 {
            break;
        }
    }
    out.extend_from_slice(buf.get(start..).unwrap_or_default());
}

/// `text` as a JSON string: copied as it is when it needs no escape (a secret's name never
/// does), else escaped by serde_json.
fn push_json_str(out: &mut Vec<u8>, text: &str) -> serde_json::Result<()> {
    if needs_no_escape(text) {
        push_word(out, text);
        Ok(())
    } else {
        serde_json::to_writer(out, text)
    }
}

impl AuditEvent {
    /// An event for `peer` with the fields every line has.
    pub fn new(request_id: RequestId, action: &'static str, peer: &Arc<PeerIdentity>) -> Self {
        AuditEvent {
            time: SystemTime::now(),
            waited_ms: 0,
            request_id,
            action,
            peer: Arc::clone(peer),
            secret: None,
            decision: "deny",
            reason: None,
            cache: None,
            refresh: None,
            status: 0,
            aws: None,
            expires_in: None,
            presented_by_uid: None,
        }
    }
}

/// What the writer thread receives: a line, or a request to write what is queued and say so.
#[derive(Debug)]
enum Queued {
    Line(AuditEvent),
    Flush(oneshot::Sender<()>),
}

/// The lines on their way to the writer thread: a vector under a lock, which the writer takes
/// whole once per batch. A request's line costs one uncontended lock and a push; the writer is
/// woken (a futex call) only when it sleeps on an empty queue. (A tokio channel cost a
/// semaphore permit each way, its block list, and a lock for every permit given back.)
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<QueueState>,
    /// Lines refused because the queue was full, not yet counted by a drop marker.
    dropped: std::sync::atomic::AtomicU64,
    /// The writer sleeps on this while the queue is empty.
    ready: Condvar,
}

#[derive(Debug, Default)]
struct QueueState {
    items: Vec<Queued>,
    /// Lines in `items` (a flush request is not counted against [`QUEUE`]).
    lines: usize,
    /// A flush request is queued: the writer writes at once instead of gathering.
    flush: bool,
    /// The writer sleeps on `ready` and must be woken.
    waiting: bool,
    /// Every [`Audit`] handle is gone: the writer writes what is left and ends.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item`; a line is refused (false) when [`QUEUE`] lines wait already.
    fn push(&self, item: Queued) -> bool {
        let mut state = self.lock();
        match &item {
            Queued::Line(_) if state.lines >= QUEUE => return false,
            Queued::Line(_) => state.lines = state.lines.saturating_add(1),
            Queued::Flush(_) => state.flush = true,
        }
        state.items.push(item);
        let wake = std::mem::take(&mut state.waiting);
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        true
    }

    /// Waits until something is queued (or `timeout` passes, when given), and says whether a
    /// flush is asked for; `None` once the queue is closed and empty.
    fn wait(&self, timeout: Option<std::time::Duration>) -> Option<bool> {
        let mut state = self.lock();
        while state.items.is_empty() && !state.closed {
            state.waiting = true;
            match timeout {
                None => state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(timeout) => {
                    let (next, timed_out) = self
                        .ready
                        .wait_timeout(state, timeout)
                        .unwrap_or_else(|p| p.into_inner());
                    state = next;
                    if timed_out.timed_out() {
                        state.waiting = false;
                        return Some(false);
                    }
                }
            }
        }
        state.waiting = false;
        (!state.items.is_empty()).then_some(state.flush)
    }

    /// Moves everything queued into `into` (empty), leaving `into`'s allocation in its place.
    fn take(&self, into: &mut Vec<Queued>) {
        let mut state = self.lock();
        std::mem::swap(&mut state.items, into);
        state.lines = 0;
        state.flush = false;
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let wake = std::mem::take(&mut state.waiting);
        drop(state);
        if wake {
            self.ready.notify_one();
        }
    }
}

/// The sending side, shared by every clone of an [`Audit`]: when the last is dropped, the queue
/// closes and the writer thread ends after writing what is left.
#[derive(Debug)]
struct Sender(Arc<Queue>);

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Handle to the audit writer.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: Arc<Sender>,
    limiter: Arc<AuditLimiter>,
    /// Whether a writer thread reads the queue (not for a test's capture).
    written: bool,
    metrics: Arc<Metrics>,
}

impl Audit {
    /// Opens the sink and starts the writer thread. A thread, not a task: its batch window is a
    /// plain sleep, so no tokio timer is pending while requests come in (a pending timer makes
    /// every park of a worker read the clock and walk the timer wheel).
    pub async fn spawn(sink: &AuditSink, metrics: Arc<Metrics>) -> Result<Self, AuditError> {
        let writer = match sink {
            // Under systemd, when logs go to journald natively, so does each audit line: an
            // entry of its own with fields to select it by (`CREDAGENT_AUDIT=1`).
            AuditSink::Stderr if journald::active() => match Journal::connect() {
                Ok(journal) => Writer::Journal(journal),
                Err(_) => Writer::Stream(std::io::stderr()),
            },
            AuditSink::Stderr => Writer::Stream(std::io::stderr()),
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
        let queue = Arc::new(Queue::default());
        let limiter = Arc::new(AuditLimiter::default());
        let thread_queue = queue.clone();
        let thread_metrics = metrics.clone();
        let thread_limiter = limiter.clone();
        std::thread::Builder::new()
            .name("credagent-audit".into())
            .spawn(move || write_lines(&thread_queue, writer, &thread_metrics, &thread_limiter))
            .map_err(AuditError::Thread)?;
        Ok(Audit {
            tx: Arc::new(Sender(queue)),
            limiter,
            written: true,
            metrics,
        })
    }

    /// An audit handle whose events a test reads from the returned capture.
    #[cfg(test)]
    pub fn capture(metrics: Arc<Metrics>) -> (Self, Captured) {
        let queue = Arc::new(Queue::default());
        (
            Audit {
                tx: Arc::new(Sender(queue.clone())),
                limiter: Arc::new(AuditLimiter::default()),
                written: false,
                metrics,
            },
            Captured(queue),
        )
    }

    /// Writes every line queued so far (at a stop), waiting at most `within`.
    pub async fn flush(&self, within: std::time::Duration) {
        if !self.written {
            return;
        }
        let (done, written) = oneshot::channel();
        if self.tx.0.push(Queued::Flush(done)) {
            let _ = tokio::time::timeout(within, written).await;
        }
    }

    /// Queues one line; never waits. A denied or error line past its uid's share is counted
    /// for a summary line instead (`audit_limit`); allowed reads and admin actions always go.
    pub fn record(&self, event: AuditEvent) {
        if is_limited(&event)
            && !self
                .limiter
                .admit(event.peer.uid, std::time::Instant::now())
        {
            return;
        }
        if !self.tx.0.push(Queued::Line(event)) {
            self.metrics.audit_dropped.fetch_add(1, Ordering::Relaxed);
            self.tx.0.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether `event` is a denied or error line (limited per uid), not an allowed read or an
/// admin action (always written).
fn is_limited(event: &AuditEvent) -> bool {
    let admin_action = matches!(event.action, "flush" | "metrics");
    event.status >= 400 && !(admin_action && event.decision == "allow")
}

/// The lines a test's [`Audit::capture`] handle recorded.
#[cfg(test)]
#[derive(Debug)]
pub struct Captured(Arc<Queue>);

#[cfg(test)]
impl Captured {
    /// The next recorded line, if there is one.
    pub fn try_recv(&mut self) -> Option<AuditEvent> {
        let mut state = self.0.lock();
        while !state.items.is_empty() {
            if let Queued::Line(event) = state.items.remove(0) {
                state.lines = state.lines.saturating_sub(1);
                return Some(event);
            }
        }
        None
    }
}

/// Where the lines go; both are written with plain blocking writes from the writer thread. A
/// regular file costs a page-cache copy; stderr may be a pipe that fills, which blocks only the
/// writer thread (requests go on; lines beyond the queue are dropped and counted).
enum Writer {
    File(std::fs::File),
    Stream(std::io::Stderr),
    /// journald's native socket: one entry per line ([`send_entry`]), never batched.
    Journal(Journal),
}

impl Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::File(file) => {
                // A failed write (disk full) may have appended part of the batch: cut it off, so
                // the file never holds a torn line that the next batch would be glued to. The
                // length is only asked for after a failure (an fstat per batch was measurable).
                let mut written = 0usize;
                while let Some(rest) = bytes.get(written..).filter(|rest| !rest.is_empty()) {
                    match std::io::Write::write(file, rest) {
                        Ok(0) => {
                            cut_torn_batch(file, written);
                            return Err(std::io::ErrorKind::WriteZero.into());
                        }
                        Ok(n) => written = written.saturating_add(n),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            cut_torn_batch(file, written);
                            return Err(e);
                        }
                    }
                }
                Ok(())
            }
            Writer::Stream(stream) => write_stderr(stream, bytes),
            // Decisions reach journald one by one in `write_lines`; a batch here holds the
            // summary and drop-marker lines (audit entries too), and any line journald did not
            // take, which then reaches the journal through stderr.
            Writer::Journal(journal) => {
                for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let mut entry = Entry::new(Priority::Notice);
                    entry.field("MESSAGE", line);
                    entry.field("CREDAGENT_AUDIT", b"1");
                    if journal.send(&entry).is_err() {
                        write_stderr(&std::io::stderr(), &[line, b"\n"].concat())?;
                    }
                }
                Ok(())
            }
        }
    }
}

fn write_stderr(stream: &std::io::Stderr, bytes: &[u8]) -> std::io::Result<()> {
    let mut stream = stream.lock();
    std::io::Write::write_all(&mut stream, bytes)?;
    std::io::Write::flush(&mut stream)
}

/// Sends `event`, rendered into `line`, as one journal entry: `MESSAGE` is the JSON line, and
/// `CREDAGENT_AUDIT=1`, `ACTION`, `DECISION`, `SECRET`, `UID`, `STATUS` and `REQUEST_ID` are
/// fields to select by (`journalctl -u credagent CREDAGENT_AUDIT=1 DECISION=deny`). A denied
/// request is `notice`, the rest `info`. Never a value: the fields are the line's own.
fn send_entry(journal: &Journal, event: &AuditEvent, line: &[u8]) -> std::io::Result<()> {
    let priority = if event.decision == "deny" {
        Priority::Notice
    } else {
        Priority::Info
    };
    let mut entry = Entry::new(priority);
    entry.field("MESSAGE", line);
    entry.field("CREDAGENT_AUDIT", b"1");
    entry.field("ACTION", event.action.as_bytes());
    entry.field("DECISION", event.decision.as_bytes());
    if let Some(secret) = &event.secret {
        entry.field("SECRET", secret.as_bytes());
    }
    if let Some(reason) = event.reason {
        entry.field("REASON", reason.as_bytes());
    }
    let mut number = itoa::Buffer::new();
    entry.field("UID", number.format(event.peer.uid).as_bytes());
    entry.field("STATUS", number.format(event.status).as_bytes());
    entry.field("REQUEST_ID", event.request_id.to_string().as_bytes());
    journal.send(&entry)
}

/// Removes the `written` bytes a failed batch left at the end of `file`.
fn cut_torn_batch(file: &std::fs::File, written: usize) {
    if written == 0 {
        return;
    }
    if let Ok(meta) = file.metadata() {
        let _ = file.set_len(meta.len().saturating_sub(written as u64));
    }
}

/// The writer thread: waits for the first line of a batch, gathers what comes in
/// [`BATCH_WINDOW`] (a flush cuts the window short), writes the batch with one write, and ends
/// when every [`Audit`] handle is gone and the queue is written. Summaries of suppressed lines
/// go out once their uid's window ends (the thread wakes for them), and a batch after lines
/// were lost starts with one marker line that counts them.
fn write_lines(queue: &Queue, writer: Writer, metrics: &Metrics, limiter: &AuditLimiter) {
    let mut batch = Vec::with_capacity(4096);
    let mut peers = Rendered::default();
    let mut taken = Vec::new();
    let mut acks = Vec::new();
    let mut sink = Sink {
        writer,
        lost: Lost::default(),
        queue,
        limiter,
        metrics,
    };
    loop {
        let Some(flush) = queue.wait(limiter.next_due(std::time::Instant::now())) else {
            // Closed: the last summaries, then end.
            sink.write(&mut batch, true);
            return;
        };
        if !flush {
            std::thread::sleep(BATCH_WINDOW);
        }
        queue.take(&mut taken);
        for queued in taken.drain(..) {
            match queued {
                Queued::Line(event) => {
                    let start = batch.len();
                    push_line(&mut batch, &event, &mut peers);
                    if batch.len() > start
                        && let Writer::Journal(journal) = &sink.writer
                        && let Some(line) = batch.get(start..batch.len().saturating_sub(1))
                        && send_entry(journal, &event, line).is_ok()
                    {
                        // Sent: only lines journald refused stay in the batch, for stderr.
                        batch.truncate(start);
                    }
                }
                Queued::Flush(ack) => acks.push(ack),
            }
        }
        // A flush is a stop: every pending summary goes out with it.
        sink.write(&mut batch, !acks.is_empty());
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// Lines lost (queue full, failed writes) that no marker line has counted yet.
#[derive(Default)]
struct Lost {
    count: u64,
    since: Option<SystemTime>,
}

/// The writer thread's side of the sink: the writer and what it has to account for.
struct Sink<'a> {
    writer: Writer,
    lost: Lost,
    queue: &'a Queue,
    limiter: &'a AuditLimiter,
    metrics: &'a Metrics,
}

impl Sink<'_> {
    /// Writes `batch` (cleared after), preceded by a drop marker when lines were lost and
    /// followed by the summaries that are due (all of them when `all`).
    fn write(&mut self, batch: &mut Vec<u8>, all: bool) {
        let refused = self.queue.dropped.swap(0, Ordering::Relaxed);
        if refused > 0 {
            self.lost.count = self.lost.count.saturating_add(refused);
            self.lost.since.get_or_insert_with(SystemTime::now);
        }
        for summary in self.limiter.due(std::time::Instant::now(), all) {
            summary.push_line(batch);
        }
        if batch.is_empty() {
            return;
        }
        let mut marker = Vec::new();
        if let (true, Some(since)) = (self.lost.count > 0, self.lost.since) {
            push_dropped_line(&mut marker, self.lost.count, since);
            marker.extend_from_slice(batch);
            std::mem::swap(&mut marker, batch);
        }
        match self.writer.write(batch) {
            Ok(()) => self.lost = Lost::default(),
            Err(e) => {
                // The whole batch counts as dropped, even if part of it reached the file.
                // (Counted here only: a scan of every batch was a visible cost at one
                // connection.) A marker it carried is written again with the next batch.
                let lines = batch_lines(batch).saturating_sub(u64::from(!marker.is_empty()));
                self.metrics
                    .audit_dropped
                    .fetch_add(lines, Ordering::Relaxed);
                self.lost.count = self.lost.count.saturating_add(lines);
                self.lost.since.get_or_insert_with(SystemTime::now);
                crate::rate_limited!(error, error = %e, lines, "cannot write audit lines; dropped");
            }
        }
        batch.clear();
    }
}

/// Appends `event` as one JSON line.
fn push_line(batch: &mut Vec<u8>, event: &AuditEvent, peers: &mut Rendered) {
    let len = batch.len();
    if event.write_json(batch, peers).is_ok() {
        batch.push(b'\n');
    } else {
        batch.truncate(len);
    }
}

/// How many lines `batch` holds.
fn batch_lines(batch: &[u8]) -> u64 {
    batch.iter().filter(|&&b| b == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> AuditEvent {
        let peer = Arc::new(PeerIdentity::default());
        let mut event = AuditEvent::new(RequestId(n), "read", &peer);
        event.secret = Some(format!("files/s{n}").into());
        event
    }

    /// A line is one JSON object with every field, in a fixed order; a path that is not UTF-8 or
    /// holds quotes is escaped, and two connections never share each other's peer fields.
    /// The hand-written hex is `RequestId`'s `Display`, whatever the number.
    #[test]
    fn a_request_id_is_written_as_display_writes_it() {
        for n in [
            0,
            1,
            9,
            10,
            15,
            16,
            255,
            0xdead_beef,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_hex(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), RequestId(n).to_string());
        }
    }

    #[test]
    fn a_line_has_every_field_escaped_and_its_own_peer() {
        use std::os::unix::ffi::OsStrExt;
        let odd = Arc::new(PeerIdentity {
            uid: 1000,
            gid: 100,
            pid: Some(42),
            exe: Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(
                b"/opt/\"q\"\xff/app",
            ))),
            unit: Some("web.service".to_owned()),
            user_unit: Some("a\\b.service".to_owned()),
            ..PeerIdentity::default()
        });
        let plain = Arc::new(PeerIdentity {
            uid: 7,
            ..PeerIdentity::default()
        });
        let mut peers = Rendered::default();
        let mut out = Vec::new();
        let mut first = AuditEvent::new(RequestId(0x2a), "read", &odd);
        first.secret = Some("files/\"x\"".into());
        first.decision = "allow";
        first.cache = Some("hit");
        first.status = 200;
        push_line(&mut out, &first, &mut peers);
        let mut second = AuditEvent::new(RequestId(0x2b), "flush", &plain);
        second.reason = Some("peer_changed");
        second.status = 403;
        push_line(&mut out, &second, &mut peers);
        push_line(&mut out, &first, &mut peers);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // Every field, in this order.
        let first_line = text.lines().next().unwrap();
        let at: Vec<usize> = [
            "time",
            "request_id",
            "action",
            "uid",
            "gid",
            "pid",
            "exe",
            "unit",
            "user_unit",
            "secret",
            "decision",
            "reason",
            "cache",
            "status",
        ]
        .iter()
        .map(|k| first_line.find(&format!("\"{k}\":")).unwrap())
        .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{first_line}");
        assert_eq!(lines[0].as_object().unwrap().len(), 14);
        assert_eq!(lines[0]["request_id"], "2a");
        assert_eq!(lines[0]["uid"], 1000);
        assert_eq!(lines[0]["pid"], 42);
        assert_eq!(lines[0]["exe"], "/opt/\"q\"\u{fffd}/app");
        assert_eq!(lines[0]["unit"], "web.service");
        assert_eq!(lines[0]["user_unit"], "a\\b.service");
        assert_eq!(lines[0]["secret"], "files/\"x\"");
        assert_eq!(lines[0]["decision"], "allow");
        assert_eq!(lines[0]["cache"], "hit");
        assert_eq!(lines[0]["reason"], serde_json::Value::Null);
        assert_eq!(lines[0]["status"], 200);
        assert_eq!(lines[1]["uid"], 7);
        assert_eq!(lines[1]["pid"], serde_json::Value::Null);
        assert_eq!(lines[1]["exe"], serde_json::Value::Null);
        assert_eq!(lines[1]["action"], "flush");
        assert_eq!(lines[1]["reason"], "peer_changed");
        assert_eq!(lines[1]["decision"], "deny");
        assert_eq!(lines[2], lines[0]);
    }

    /// Lines gathered in a window reach the file in order, all of them; a flush (the stop) writes
    /// what is queued at once; a line recorded without a flush arrives within the window.
    #[tokio::test]
    async fn every_recorded_line_reaches_the_file_and_a_flush_writes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let metrics = Arc::new(Metrics::default());
        let audit = Audit::spawn(&AuditSink::File(path.clone()), metrics.clone())
            .await
            .unwrap();
        for n in 0..1000 {
            audit.record(event(n));
        }
        audit.flush(std::time::Duration::from_secs(5)).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].to_string()
            })
            .collect();
        let want: Vec<String> = (0..1000u64).map(|n| format!("\"{n:x}\"")).collect();
        assert_eq!(ids, want);
        assert_eq!(metrics.audit_dropped.load(Ordering::Relaxed), 0);

        audit.record(event(5000));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !std::fs::read_to_string(&path)
            .unwrap()
            .contains("files/s5000")
        {
            assert!(std::time::Instant::now() < deadline, "line never written");
            tokio::time::sleep(BATCH_WINDOW).await;
        }
    }

    /// Past [`QUEUE`] waiting lines a line is dropped and counted, never waited for; a flush
    /// request is not a line and is queued all the same.
    #[test]
    fn a_line_past_the_queue_bound_is_dropped_and_counted() {
        let metrics = Arc::new(Metrics::default());
        let (audit, mut captured) = Audit::capture(metrics.clone());
        for n in 0..QUEUE as u64 + 3 {
            audit.record(event(n));
        }
        assert_eq!(metrics.audit_dropped.load(Ordering::Relaxed), 3);
        let (ack, _) = oneshot::channel();
        assert!(audit.tx.0.push(Queued::Flush(ack)));
        let first = captured.try_recv().unwrap();
        assert_eq!(first.request_id, RequestId(0));
        // One taken off: room for one more.
        audit.record(event(9999));
        assert_eq!(metrics.audit_dropped.load(Ordering::Relaxed), 3);
        audit.record(event(10_000));
        assert_eq!(metrics.audit_dropped.load(Ordering::Relaxed), 4);
    }

    /// When the last handle goes, the writer writes what is queued and its thread ends.
    #[tokio::test]
    async fn the_writer_writes_what_is_left_when_the_last_handle_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let metrics = Arc::new(Metrics::default());
        let audit = Audit::spawn(&AuditSink::File(path.clone()), metrics)
            .await
            .unwrap();
        let queue = Arc::downgrade(&audit.tx.0);
        let clone = audit.clone();
        audit.record(event(1));
        drop(audit);
        clone.record(event(2));
        drop(clone);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // The writer thread holds the queue until it ends.
        while queue.strong_count() > 0 {
            assert!(std::time::Instant::now() < deadline, "writer never ended");
            tokio::time::sleep(BATCH_WINDOW).await;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("files/s1") && text.contains("files/s2"));
    }

    #[test]
    fn a_time_is_formatted_once_per_millisecond_and_never_stale() {
        let mut rendered = Rendered::default();
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_547_200_123);
        assert_eq!(rendered.time(at), "2025-12-01T00:00:00.123Z");
        // Within the same millisecond: the kept text.
        let same = at + std::time::Duration::from_micros(500);
        assert_eq!(rendered.time(same), "2025-12-01T00:00:00.123Z");
        let next = at + std::time::Duration::from_millis(1);
        assert_eq!(rendered.time(next), "2025-12-01T00:00:00.124Z");
        // Back in time (the wall clock was set back): formatted again, not the kept text.
        assert_eq!(rendered.time(at), "2025-12-01T00:00:00.123Z");
    }
}
