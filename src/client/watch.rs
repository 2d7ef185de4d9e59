//! The change waiters behind `render --watch` and `exec --watch`: one long-poll per watched
//! secret (`GET /v1/secrets/…?wait=300` with `If-None-Match`), each on a connection of its own,
//! re-issued after every `304`; a `200` sends the new value and tag to the command's loop. Errors
//! (agent down, `5xx`, `429`) back off from [`BACKOFF_FIRST`] doubling to [`BACKOFF_MAX`], each
//! delay drawn at random between its half and itself so that many watchers do not retry in step.
//!
//! It owns the waiting and the values (in locked memory, [`SecretBytes`]); what a change does —
//! rewrite a file, restart a child — is the business of `rerender` and `supervise`.
//!
//! Each watched secret holds one connection to the agent for as long as the command runs; those
//! connections count against `server.max_connections_per_uid` of the watcher's uid (uid 0 and
//! admin peers are not counted). A refusal (`429 too_many_connections`) is logged with that
//! explanation and retried with backoff, never waited on silently.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::StatusCode;
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{ClientError, GetOptions, Tagged};
use crate::backoff::Backoff;
use crate::secure_mem::SecretBytes;

/// How long one waiting request asks the agent to hold (its maximum).
pub const WAIT_SECS: u16 = 300;
/// A waiting request with no answer this long after its wait is abandoned and retried.
const ANSWER_GRACE: Duration = Duration::from_secs(30);
/// First delay after an error.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest delay between retries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Changes arriving this close together are handled as one (one rewrite, one restart).
const SETTLE: Duration = Duration::from_millis(250);

/// One watched secret: a name and an optional JSON field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Watched {
    /// `SOURCE/ID`.
    pub name: String,
    /// `?field=`.
    pub field: Option<String>,
}

impl Watched {
    fn options(&self) -> GetOptions {
        GetOptions {
            field: self.field.clone(),
            ..GetOptions::default()
        }
    }

    fn label(&self) -> String {
        match &self.field {
            Some(field) => format!("{}#{field}", self.name),
            None => self.name.clone(),
        }
    }
}

/// The index of `item` in `list`, appending it if new (the distinct secrets of a template).
pub fn index_of(list: &mut Vec<Watched>, item: Watched) -> usize {
    match list.iter().position(|w| *w == item) {
        Some(index) => index,
        None => {
            list.push(item);
            list.len() - 1
        }
    }
}

/// A watched secret's current value and tag.
#[derive(Debug)]
pub struct Current {
    /// The tag the next wait holds.
    pub etag: String,
    /// The value.
    pub value: SecretBytes,
}

/// News from a waiter.
#[derive(Debug)]
struct Update {
    index: usize,
    etag: String,
    value: SecretBytes,
}

/// The client's backoff: [`BACKOFF_FIRST`] doubling to [`BACKOFF_MAX`].
pub fn backoff() -> Backoff {
    Backoff::new(BACKOFF_FIRST, BACKOFF_MAX)
}

/// Whether retrying may help: the agent unreachable, busy or failing upstream.
pub fn is_transient(err: &ClientError) -> bool {
    match err {
        ClientError::Connect { .. } => true,
        ClientError::Server { status, .. } => {
            status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
        }
        // Not the agent: waiting would not make it one.
        ClientError::Usage(_) | ClientError::Signal { .. } | ClientError::WrongServer { .. } => {
            false
        }
    }
}

/// An error as logged, with the connection limit explained on a `429`.
pub fn describe(err: &ClientError) -> String {
    match err {
        ClientError::Server { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => format!(
            "{err} (each watched secret holds one connection to the agent, and they count \
             against server.max_connections_per_uid: raise it or watch fewer secrets)"
        ),
        _ => err.to_string(),
    }
}

/// The signals that end (or, for `exec`, are passed on by) a watching command.
#[derive(Debug)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// SIGTERM and SIGINT, and SIGHUP too with `hup`. Install before any work, so a signal
    /// during start-up is handled rather than killing the process.
    pub fn install(hup: bool) -> Result<Self, ClientError> {
        let failed = |e: std::io::Error| ClientError::Usage(format!("cannot handle signals: {e}"));
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(failed)?,
            int: signal(SignalKind::interrupt()).map_err(failed)?,
            hup: if hup {
                Some(signal(SignalKind::hangup()).map_err(failed)?)
            } else {
                None
            },
        })
    }

    /// The next signal received.
    pub async fn recv(&mut self) -> Signal {
        let hup = async {
            match self.hup.as_mut() {
                Some(hup) => hup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.int.recv() => Signal::SIGINT,
            _ = hup => Signal::SIGHUP,
        }
    }
}

/// Fetches every watched secret with its tag, retrying transient errors with backoff; any
/// other error (denied, not found, bad name) is returned. `Err(signal)` inside: stopped by a
/// signal first.
pub async fn fetch_all(
    socket: &Path,
    watched: &[Watched],
    signals: &mut Signals,
) -> Result<Result<Vec<Current>, Signal>, ClientError> {
    let mut backoff = backoff();
    loop {
        let attempt = fetch_once(socket, watched);
        let err = tokio::select! {
            result = attempt => match result {
                Ok(all) => return Ok(Ok(all)),
                Err(err) if is_transient(&err) => err,
                Err(err) => return Err(err),
            },
            signal = signals.recv() => return Ok(Err(signal)),
        };
        let delay = backoff.delay();
        tracing::warn!(
            "cannot fetch the watched secrets: {}; retrying in {:.1}s",
            describe(&err),
            delay.as_secs_f64()
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            signal = signals.recv() => return Ok(Err(signal)),
        }
    }
}

/// Fetches every watched secret once, in order, failing at the first error.
pub async fn fetch_once(socket: &Path, watched: &[Watched]) -> Result<Vec<Current>, ClientError> {
    let mut out = Vec::with_capacity(watched.len());
    for item in watched {
        match super::get_tagged(socket, &item.name, &item.options(), None, None).await? {
            Tagged::Value { etag, value } => out.push(Current { etag, value }),
            // Not asked for (no tag was held); refused rather than rendered empty.
            Tagged::NotModified => {
                return Err(super::broken(socket, "304 to an unconditional read"));
            }
        }
    }
    Ok(out)
}

/// The running waiters; aborted on drop.
#[derive(Debug)]
pub struct Waiters {
    tasks: Vec<JoinHandle<()>>,
    updates: mpsc::Receiver<Update>,
    /// News taken in whose settle period has not ended (kept across a cancelled wait).
    unsettled: bool,
    /// Whether the news taken in so far changed a value.
    changed: bool,
}

impl Drop for Waiters {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts one waiter per watched secret, each holding the tag of `current`.
pub fn spawn_waiters(socket: &Path, watched: &[Watched], current: &[Current]) -> Waiters {
    let (tx, updates) = mpsc::channel(watched.len().max(1));
    let tasks = watched
        .iter()
        .zip(current)
        .enumerate()
        .map(|(index, (item, now))| {
            tokio::spawn(wait_loop(
                socket.to_path_buf(),
                index,
                item.clone(),
                now.etag.clone(),
                tx.clone(),
            ))
        })
        .collect();
    Waiters {
        tasks,
        updates,
        unsettled: false,
        changed: false,
    }
}

async fn wait_loop(
    socket: PathBuf,
    index: usize,
    item: Watched,
    mut etag: String,
    tx: mpsc::Sender<Update>,
) {
    let options = item.options();
    let mut backoff = backoff();
    let mut failing = false;
    loop {
        let request =
            super::get_tagged(&socket, &item.name, &options, Some(&etag), Some(WAIT_SECS));
        let limit = Duration::from_secs(WAIT_SECS.into()) + ANSWER_GRACE;
        let err = match tokio::time::timeout(limit, request).await {
            Ok(Ok(answer)) => {
                if failing {
                    tracing::info!("watching {} again", item.label());
                    failing = false;
                }
                backoff.reset();
                if let Tagged::Value { etag: tag, value } = answer {
                    etag.clone_from(&tag);
                    let update = Update {
                        index,
                        etag: tag,
                        value,
                    };
                    if tx.send(update).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Ok(Err(err)) => describe(&err),
            Err(_) => format!("no answer within {}s", limit.as_secs()),
        };
        failing = true;
        let delay = backoff.delay();
        tracing::warn!(
            "watching {}: {err}; retrying in {:.1}s",
            item.label(),
            delay.as_secs_f64()
        );
        tokio::time::sleep(delay).await;
    }
}

impl Waiters {
    /// Waits for news and applies it to `current`, taking in whatever else arrives within
    /// 250 ms. Returns whether any value's bytes changed: a new tag over the same bytes (an
    /// agent restarted with a new tag key) only replaces the tag. Cancel-safe: news taken in by a
    /// call that was dropped (another `select!` branch won) is reported by the next call.
    pub async fn next_change(&mut self, current: &mut [Current]) -> bool {
        if !self.unsettled {
            let Some(first) = self.updates.recv().await else {
                // The waiters never end while `self` lives; were they gone, wait forever
                // rather than spin.
                return std::future::pending().await;
            };
            self.changed |= apply(current, first);
            self.unsettled = true;
        }
        let settle = tokio::time::sleep(SETTLE);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                () = &mut settle => break,
                next = self.updates.recv() => match next {
                    Some(update) => self.changed |= apply(current, update),
                    None => break,
                },
            }
        }
        self.unsettled = false;
        std::mem::take(&mut self.changed)
    }
}

fn apply(current: &mut [Current], update: Update) -> bool {
    let Some(slot) = current.get_mut(update.index) else {
        return false;
    };
    slot.etag = update.etag;
    if slot.value.as_slice() == update.value.as_slice() {
        return false;
    }
    slot.value = update.value;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut backoff = backoff();
        let steps: Vec<u64> = (0..8).map(|_| backoff.delay().as_millis() as u64).collect();
        for (delay, step) in steps.iter().zip([1, 2, 4, 8, 16, 30, 30, 30]) {
            assert!(
                (step * 500..=step * 1000).contains(delay),
                "{delay} ms for a {step} s step"
            );
        }
        backoff.reset();
        assert!(backoff.delay() <= BACKOFF_FIRST);
    }

    #[test]
    fn transient_errors_are_the_retryable_ones() {
        let server = |status: StatusCode| ClientError::Server {
            status,
            code: String::new(),
            message: String::new(),
        };
        let connect = ClientError::Connect {
            socket: "s".into(),
            reason: "r".into(),
        };
        assert!(is_transient(&connect));
        assert!(is_transient(&server(StatusCode::BAD_GATEWAY)));
        assert!(is_transient(&server(StatusCode::TOO_MANY_REQUESTS)));
        assert!(!is_transient(&server(StatusCode::FORBIDDEN)));
        assert!(!is_transient(&server(StatusCode::NOT_FOUND)));
        assert!(!is_transient(&ClientError::Usage("x".into())));
        assert!(
            describe(&server(StatusCode::TOO_MANY_REQUESTS)).contains("max_connections_per_uid")
        );
    }

    #[test]
    fn an_update_with_the_same_bytes_only_replaces_the_tag() {
        crate::secure_mem::set_policy(crate::secure_mem::LockPolicy::BestEffort);
        let value = |b: &[u8]| SecretBytes::from_slice(b).unwrap();
        let mut current = vec![Current {
            etag: "\"a\"".into(),
            value: value(b"one"),
        }];
        let same = Update {
            index: 0,
            etag: "\"b\"".into(),
            value: value(b"one"),
        };
        assert!(!apply(&mut current, same));
        assert_eq!(current[0].etag, "\"b\"");
        let new = Update {
            index: 0,
            etag: "\"c\"".into(),
            value: value(b"two"),
        };
        assert!(apply(&mut current, new));
        assert_eq!(current[0].value.as_slice(), b"two");
    }

    #[tokio::test(start_paused = true)]
    async fn news_taken_in_by_a_cancelled_wait_is_reported_by_the_next() {
        crate::secure_mem::set_policy(crate::secure_mem::LockPolicy::BestEffort);
        let value = |b: &[u8]| SecretBytes::from_slice(b).unwrap();
        let mut current = vec![Current {
            etag: "\"a\"".into(),
            value: value(b"one"),
        }];
        let (tx, updates) = mpsc::channel(1);
        let mut waiters = Waiters {
            tasks: Vec::new(),
            updates,
            unsettled: false,
            changed: false,
        };
        tx.send(Update {
            index: 0,
            etag: "\"b\"".into(),
            value: value(b"two"),
        })
        .await
        .unwrap();
        // Cancelled inside the settle period, after the update was applied.
        let cut = tokio::time::timeout(SETTLE / 2, waiters.next_change(&mut current)).await;
        assert!(cut.is_err());
        assert_eq!(current[0].value.as_slice(), b"two");
        assert!(waiters.next_change(&mut current).await);
        // Reported once.
        let again = tokio::time::timeout(SETTLE * 4, waiters.next_change(&mut current)).await;
        assert!(again.is_err());
    }

    #[test]
    fn distinct_secrets_are_watched_once() {
        let mut list = Vec::new();
        let w = |n: &str, f: Option<&str>| Watched {
            name: n.into(),
            field: f.map(str::to_owned),
        };
        assert_eq!(index_of(&mut list, w("a/x", None)), 0);
        assert_eq!(index_of(&mut list, w("a/x", Some("k"))), 1);
        assert_eq!(index_of(&mut list, w("a/x", None)), 0);
        assert_eq!(list.len(), 2);
    }
}
