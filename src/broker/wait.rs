//! The change wait of a `?wait=` read: read, and while the served bytes still match the caller's
//! tag, sleep until news of the key, its next refresh, the deadline or shutdown, then read again
//! (at most once per [`MIN_RECHECK`]). Each read is the caller's: it admits the read again under
//! the runtime in force (`broker/mod.rs`); this file only decides when to read. A wait also ends
//! when the front end says its client hung up ([`Hangup`]): nobody is left to answer, and the
//! client's connection slot is freed at once.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::error::BrokerError;

use crate::cache::later;
use crate::source::SecretRequest;
use crate::state::AppState;

/// The least time between two reads of one waiting request, so a backend that keeps failing
/// or changing is not asked in a loop.
const MIN_RECHECK: Duration = Duration::from_secs(1);

/// How a front end tells a waiting read that its client is gone (for HTTP: the peer closed the
/// connection). Protocol-neutral: the broker only awaits it.
pub trait Hangup: Sync {
    /// Resolves once the client is gone; never, when the front end cannot tell.
    fn hung_up(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// A front end that cannot tell when its client goes: the wait runs to its deadline.
pub(super) struct NeverHangsUp;

impl Hangup for NeverHangsUp {
    fn hung_up(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::pending())
    }
}

/// The clock and subscription of one waiting read. The caller's loop reads (forced the first
/// time when `refresh`) and, while the reply is `not_modified`, calls [`Waiter::sleep`].
pub(super) struct Waiter<'a> {
    state: &'a AppState,
    secret: &'a SecretRequest,
    changes: tokio::sync::watch::Receiver<u64>,
    deadline: tokio::time::Instant,
    force: bool,
    read_at: tokio::time::Instant,
    hangup: &'a dyn Hangup,
}

impl<'a> Waiter<'a> {
    /// Subscribed before the first read, so a change between it and the wait is not lost (a
    /// reload empties the cache, which wakes every waiter).
    pub(super) fn new(
        state: &'a AppState,
        secret: &'a SecretRequest,
        wait: Duration,
        refresh: bool,
        hangup: &'a dyn Hangup,
    ) -> Self {
        let changes = state.cache.subscribe(secret);
        let now = tokio::time::Instant::now();
        Waiter {
            state,
            secret,
            changes,
            deadline: later(now, wait),
            force: refresh,
            read_at: now,
            hangup,
        }
    }

    /// A read starts now; whether it re-fetches first.
    pub(super) fn start_read(&mut self) -> bool {
        self.read_at = tokio::time::Instant::now();
        self.force
    }

    /// After a read that still matched the caller's tag: sleeps until news of the key, its next
    /// refresh, the deadline or shutdown; `false` when the wait is over (answer `not_modified`),
    /// [`BrokerError::ClientGone`] when the client hung up meanwhile.
    pub(super) async fn sleep(&mut self) -> Result<bool, BrokerError> {
        self.force = false;
        let deadline = self.deadline;
        // Wake on news of the key, when its value is due for refresh (so a value nobody else
        // reads still follows its TTL), at the deadline, or at shutdown.
        let recheck = self
            .state
            .cache
            .next_refresh(self.secret)
            .map_or(deadline, |d| {
                later(tokio::time::Instant::now(), d.max(MIN_RECHECK))
            });
        let wake = recheck.min(deadline);
        // SECURITY: a client that hung up holds no connection slot of its uid while it waits.
        let mut gone = self.hangup.hung_up();
        tokio::select! {
            changed = self.changes.changed() => {
                if changed.is_err() {
                    tokio::select! {
                        () = tokio::time::sleep_until(wake) => {}
                        () = &mut gone => return Err(BrokerError::ClientGone),
                    }
                }
            }
            () = tokio::time::sleep_until(wake) => {}
            () = self.state.shutdown_signal() => return Ok(false),
            () = &mut gone => return Err(BrokerError::ClientGone),
        }
        // At most one re-read per MIN_RECHECK: news that keeps coming (a TTL shorter than the
        // refresh-ahead window, a flush loop) cannot make waiters hammer the backend.
        tokio::select! {
            () = tokio::time::sleep_until(later(self.read_at, MIN_RECHECK).min(deadline)) => {}
            () = &mut gone => return Err(BrokerError::ClientGone),
        }
        Ok(tokio::time::Instant::now() < deadline)
    }
}
