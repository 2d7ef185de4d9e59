//! The `?refresh=true` throttle of one key: who forced a re-fetch and when, per uid, so one
//! uid's forced refreshes neither use up nor reset another's; and what a forced read of a
//! minted value (each fetch a new one: OAuth2, `minted = true` commands) gets while it is fresh.
//! No locking and no fetching here.

use std::time::Duration;

use tokio::time::Instant;

/// A reader's forced re-fetch: whose, and whether the source mints a new value per fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Force {
    /// The reader's uid: the throttle is per key and per uid.
    pub uid: u32,
    /// Every fetch of the source mints a new value: a fresh one is left alone.
    pub minted: bool,
}

/// The uids that forced a re-fetch of one key, each with the time of its last one. Holds only
/// those within the interval (older ones are dropped at each decision), so at most one element
/// per uid that forced within `min_refresh_interval`.
#[derive(Debug, Default)]
pub(super) struct Forced(Vec<(u32, Instant)>);

impl Forced {
    /// Whether `force` gets a re-fetch now (its uid's last one on this key is at least
    /// `interval` ago), recording it when so; and what the reader is told. `None` asks nothing.
    pub(super) fn decide(
        &mut self,
        force: Option<Force>,
        now: Instant,
        interval: Duration,
    ) -> (bool, Refresh) {
        let Some(Force { uid, .. }) = force else {
            return (false, Refresh::Done);
        };
        // A time past the clock's end is never reached: the entry stays.
        self.0
            .retain(|(_, at)| at.checked_add(interval).is_none_or(|until| now < until));
        if self.0.iter().any(|(who, _)| *who == uid) {
            return (false, Refresh::Throttled);
        }
        self.0.push((uid, now));
        (true, Refresh::Done)
    }

    /// Records `uid`'s forced fetch (one that joined a miss) without deciding.
    pub(super) fn note(&mut self, uid: u32) {
        if !self.0.iter().any(|(who, _)| *who == uid) {
            // Stamped when the fetch completes (`stamp`).
            self.0.push((uid, Instant::now()));
        }
    }

    /// Every recorded uid's last forced fetch set to `now` (the fetch they forced completed).
    pub(super) fn stamp(mut self, now: Instant) -> Self {
        for (_, at) in &mut self.0 {
            *at = now;
        }
        self
    }
}

/// SECURITY: a forced read of a minted value that is still fresh (before its refresh point) is
/// answered from the cache: a new fetch would mint a new value, and every watcher of the key
/// would re-render or restart for it; any uid allowed the key could churn it on demand.
pub(super) fn leave_fresh(force: Option<Force>, now: Instant, refresh_at: Instant) -> bool {
    force.is_some_and(|f| f.minted) && now < refresh_at
}

/// Whether a reader's forced re-fetch ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// The value was fetched (or a fetch already in flight was joined).
    Done,
    /// Within `min_refresh_interval` of the caller's last one: served as a plain read.
    Throttled,
    /// A minted value still before its refresh point: served from the cache, nothing fetched.
    Fresh,
}

impl Refresh {
    /// Name used in the `X-Credagent-Refresh` header and audit lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Refresh::Done => "refreshed",
            Refresh::Throttled => "throttled",
            Refresh::Fresh => "fresh",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: Duration = Duration::from_secs(10);

    fn by(uid: u32) -> Option<Force> {
        Some(Force { uid, minted: false })
    }

    #[tokio::test(start_paused = true)]
    async fn one_uids_forced_refresh_neither_uses_up_nor_resets_anothers() {
        let mut forced = Forced::default();
        let start = Instant::now();
        assert_eq!(forced.decide(by(1), start, TEN), (true, Refresh::Done));
        assert_eq!(
            forced.decide(by(1), start, TEN),
            (false, Refresh::Throttled)
        );
        // Another uid has its own throttle.
        let later_on = start + Duration::from_secs(5);
        assert_eq!(forced.decide(by(2), later_on, TEN), (true, Refresh::Done));
        assert_eq!(
            forced.decide(by(2), later_on, TEN),
            (false, Refresh::Throttled)
        );
        // uid 1's interval runs from its own refresh, not uid 2's.
        let after = start + TEN;
        assert_eq!(forced.decide(by(1), after, TEN), (true, Refresh::Done));
        assert_eq!(
            forced.decide(by(2), after, TEN),
            (false, Refresh::Throttled)
        );
        assert_eq!(forced.decide(None, after, TEN), (false, Refresh::Done));
        // Only those within the interval are kept.
        assert_eq!(
            forced.decide(by(3), start + TEN * 3, TEN),
            (true, Refresh::Done)
        );
        assert_eq!(forced.0.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_minted_value_is_left_alone_until_its_refresh_point() {
        let now = Instant::now();
        let due = now + TEN;
        let minted = Some(Force {
            uid: 1,
            minted: true,
        });
        assert!(leave_fresh(minted, now, due));
        assert!(!leave_fresh(minted, due, due));
        assert!(!leave_fresh(by(1), now, due));
        assert!(!leave_fresh(None, now, due));
    }
}
