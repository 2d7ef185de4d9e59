//! What the cache holds per key: a value (`Entry`), a fetch in flight (`Loading`) or a
//! remembered absence (`Absent`); what a look-up decides (`Step`); and the time arithmetic of
//! expiry, refresh-ahead jitter and forced refreshes. No locking and no fetching here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::forced::Forced;
use crate::config::CacheConfig;
use crate::source::{Secret, SecretRequest, SourceError};

/// After a transient refresh failure, wait this long before asking the source again while stale
/// values are served (so a down backend is not hammered by every request).
pub(super) const RETRY_BACKOFF: Duration = Duration::from_secs(1);

/// How a request was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// From the cache, fresh.
    Hit,
    /// After waiting for a fetch (its own or a coalesced one).
    Miss,
    /// A stale value, because the source failed transiently within the stale-if-error bound.
    Stale,
    /// The source's recent "no such secret", remembered (`cache.negative_ttl_secs`).
    Negative,
}

impl Served {
    /// Name used in audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Hit => "hit",
            Served::Miss => "miss",
            Served::Stale => "stale",
            Served::Negative => "negative",
        }
    }
}

pub(super) type Shared = Result<Arc<Secret>, SourceError>;
pub(super) type Waiter = watch::Receiver<Option<Shared>>;

pub(super) enum Slot {
    Loading {
        id: u64,
        rx: Waiter,
        /// The uids whose forced re-fetch this is: it counts as their last one on the key.
        forced: Forced,
    },
    Ready(Entry),
    /// The source answered "no such secret"; answered so again until `expires`.
    Absent(Absent),
}

pub(super) struct Absent {
    pub(super) expires: Instant,
    /// The last reader-forced re-fetches, per uid.
    pub(super) forced: Forced,
    pub(super) last_used: u64,
}

pub(super) struct Entry {
    pub(super) secret: Arc<Secret>,
    pub(super) expires: Instant,
    /// When refresh-ahead may start (expiry minus the jittered window).
    pub(super) refresh_at: Instant,
    /// The last reader-forced re-fetches, per uid.
    pub(super) forced: Forced,
    pub(super) ttl: Duration,
    pub(super) last_used: u64,
    pub(super) refresh: Option<(u64, Waiter)>,
    pub(super) retry_after: Option<Instant>,
    /// The end of a value's own lifetime (`Secret::lifetime`): never served past it, not even
    /// stale.
    pub(super) valid_until: Option<Instant>,
    /// The config generation whose source fetched it.
    pub(super) generation: u64,
}

impl Entry {
    /// Until when a transient refresh failure may serve this value.
    pub(super) fn stale_until(&self, stale_if_error: Duration) -> Instant {
        let bound = later(self.expires, stale_if_error);
        self.valid_until.map_or(bound, |v| bound.min(v))
    }
}

/// What `get` does after the lookup under the lock.
pub(super) enum Step {
    Done(Arc<Secret>, Served),
    /// A remembered "no such secret".
    Absent,
    WaitMiss(Waiter),
    WaitRefresh {
        rx: Waiter,
        prev: Arc<Secret>,
        stale_until: Instant,
    },
}

pub(super) struct Inner {
    pub(super) map: HashMap<SecretRequest, Slot>,
    /// Under the map's lock: a read takes one lock, not two.
    pub(super) settings: CacheConfig,
    pub(super) clock: u64,
    pub(super) next_id: u64,
    /// The config generation in force (`Cache::advance`): only its fetches are stored, only
    /// its readers share slots.
    pub(super) generation: u64,
}

/// Expiry and refresh-ahead start for a value stored `now`: the TTL shortened, and the
/// refresh-ahead window widened, each by a random share of up to `jitter_percent` (never
/// longer than configured, so a value is never served past its TTL); the window is at most
/// `max_window` when given.
pub(super) fn jittered(
    now: Instant,
    ttl: Duration,
    max_window: Option<Duration>,
    settings: &CacheConfig,
) -> (Instant, Instant) {
    let spread = |d: Duration| {
        if settings.jitter_percent == 0 {
            return Duration::ZERO;
        }
        // No randomness: no spread, which is today's behaviour.
        let r = getrandom::u64().unwrap_or(0);
        let fraction = (r >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(fraction * f64::from(settings.jitter_percent) / 100.0)
    };
    let ttl = ttl.saturating_sub(spread(ttl));
    let expires = later(now, ttl);
    let window = settings
        .refresh_ahead
        .saturating_add(spread(settings.refresh_ahead));
    let window = max_window.map_or(window, |max| window.min(max));
    let refresh_at = expires.checked_sub(window).unwrap_or(now).max(now);
    (expires, refresh_at)
}

/// `t + d`, or as late as the clock can say: durations come from configuration and backends, and
/// an overflow must not panic.
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(FAR_FUTURE))
        .unwrap_or(t)
}

/// Later than any expiry the configuration allows (about 30 years).
pub(super) const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

pub(super) fn lost_entry() -> SourceError {
    SourceError::Unavailable {
        detail: "cache entry vanished".to_owned(),
    }
}

pub(super) async fn wait(mut rx: Waiter) -> Shared {
    match rx.wait_for(Option::is_some).await {
        Ok(value) => value.clone().unwrap_or_else(|| Err(lost_entry())),
        Err(_) => Err(SourceError::Unavailable {
            detail: "fetch task ended without a result".to_owned(),
        }),
    }
}
