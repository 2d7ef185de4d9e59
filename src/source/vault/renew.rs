//! When a lease is renewed and when it is replaced, and the background task per profile that
//! does it.
//!
//! A lease is renewed at `renew_at_percent` of its current grant plus a jitter (up to 5 % of
//! the grant, at most 30 s), for its first TTL again. It is replaced — a new lease issued and
//! the old one retired — at its switch point: when it has `min_remaining_secs` left, but never
//! before `renew_at_percent` of its first TTL (so a lease shorter than `min_remaining_secs`
//! is not replaced in a loop). Replacement is due at the switch point when the lease is not
//! renewable (a certificate), when a renewal came back capped by `max_ttl`, or when the next
//! renewal would fall after it. Failed renewals and replacements are retried with backoff;
//! the old lease is served until it lapses (the source's `serve` stops it there).

// SECURITY: durations here come from Vault's replies; arithmetic on them must not overflow.
#![deny(clippy::arithmetic_side_effects)]

use std::time::Duration;

use tokio::time::Instant;

use super::lease_config::ProfileConfig;

/// Longest renewal jitter.
const MAX_JITTER: Duration = Duration::from_secs(30);

/// A lease's schedule: its first grant and its latest one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Times {
    /// When it was issued.
    pub(crate) issued_at: Instant,
    /// Its TTL then (also the increment each renewal asks for).
    pub(crate) issued_ttl: Duration,
    /// The latest grant (issue or renewal).
    granted_at: Instant,
    /// Its TTL.
    granted_ttl: Duration,
    /// Whether Vault lets it be renewed.
    pub(crate) renewable: bool,
    /// Whether a renewal came back shorter than asked (`max_ttl` is near).
    capped: bool,
}

/// What is due next for a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Renew it at this instant.
    Renew(Instant),
    /// Replace it at this instant.
    Replace(Instant),
}

/// `share` percent of `d`.
fn percent(d: Duration, share: u8) -> Duration {
    d.saturating_mul(u32::from(share))
        .checked_div(100)
        .unwrap_or_default()
}

pub(super) fn plus(at: Instant, d: Duration) -> Instant {
    // A lease "for ever" (u64::MAX seconds from Vault) is due in a century, not an overflow.
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(at)
}

impl Times {
    /// A lease issued at `now` for `ttl`.
    pub(crate) fn issued(now: Instant, ttl: Duration, renewable: bool) -> Self {
        Times {
            issued_at: now,
            issued_ttl: ttl,
            granted_at: now,
            granted_ttl: ttl,
            renewable,
            capped: false,
        }
    }

    /// A renewal at `now` granted `ttl`.
    pub(crate) fn renewed(&mut self, now: Instant, ttl: Duration, renewable: bool, capped: bool) {
        self.granted_at = now;
        self.granted_ttl = ttl;
        self.renewable = renewable;
        self.capped = self.capped || capped;
    }

    /// When it stops working.
    pub(crate) fn expires(&self) -> Instant {
        plus(self.granted_at, self.granted_ttl)
    }

    /// When it is replaced: `min_remaining` before its expiry, but not before
    /// `renew_at_percent` of its first TTL.
    pub(crate) fn switch_at(&self, profile: &ProfileConfig) -> Instant {
        let floor = plus(
            self.issued_at,
            percent(self.issued_ttl, profile.renew_at_percent),
        );
        let expires = self.expires();
        let early = expires
            .checked_sub(profile.min_remaining)
            .unwrap_or(self.issued_at);
        early.max(floor)
    }

    /// What is due next; `jitter` is a fraction in `[0, 1)` of the renewal jitter.
    pub(crate) fn next(&self, profile: &ProfileConfig, jitter: f64) -> Step {
        let switch = self.switch_at(profile);
        if !self.renewable || self.capped {
            return Step::Replace(switch);
        }
        let spread = percent(self.granted_ttl, 5).min(MAX_JITTER);
        let renew_at = plus(
            plus(
                self.granted_at,
                percent(self.granted_ttl, profile.renew_at_percent),
            ),
            spread.mul_f64(jitter.clamp(0.0, 1.0)),
        );
        if renew_at < switch {
            Step::Renew(renew_at)
        } else {
            Step::Replace(switch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    fn profile(percent: u8, min_remaining: u64) -> ProfileConfig {
        ProfileConfig {
            path: "database/creds/app".to_owned(),
            method: Method::GET,
            params: serde_json::Map::new(),
            renew_at_percent: percent,
            min_remaining: Duration::from_secs(min_remaining),
            per_caller: false,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_20s_lease_capped_at_60s_is_renewed_then_replaced_with_min_remaining_left() {
        let p = profile(67, 5);
        let t0 = Instant::now();
        let mut times = Times::issued(t0, secs(20), true);
        // First renewal at 67 % (13.4 s) without jitter, before the switch point (15 s).
        assert_eq!(
            times.next(&p, 0.0),
            Step::Renew(t0 + Duration::from_millis(13_400))
        );
        // Full jitter adds 5 % of 20 s.
        assert_eq!(
            times.next(&p, 0.999_999),
            Step::Renew(t0 + Duration::from_millis(14_400) - Duration::from_nanos(1_000))
        );
        tokio::time::advance(Duration::from_millis(13_400)).await;
        times.renewed(Instant::now(), secs(20), true, false);
        assert_eq!(times.expires(), t0 + Duration::from_millis(33_400));
        assert!(matches!(times.next(&p, 0.0), Step::Renew(_)));
        // Renewed at 53.4 s, Vault grants only 6.6 s (max_ttl 60 s): replace with 5 s left.
        tokio::time::advance(secs(40)).await;
        times.renewed(Instant::now(), Duration::from_millis(6_600), true, true);
        assert_eq!(times.next(&p, 0.0), Step::Replace(t0 + secs(55)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_certificate_is_replaced_with_min_remaining_left_and_a_short_one_not_in_a_loop() {
        let t0 = Instant::now();
        // 1 h certificate, 300 s before its end.
        let cert = Times::issued(t0, secs(3600), false);
        assert_eq!(
            cert.next(&profile(67, 300), 0.5),
            Step::Replace(t0 + secs(3300))
        );
        // 20 s lease with the default 300 s: at 67 % of it, not at once.
        let short = Times::issued(t0, secs(20), true);
        assert_eq!(
            short.next(&profile(67, 300), 0.5),
            Step::Replace(t0 + Duration::from_millis(13_400))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_for_ever_does_not_overflow() {
        let t0 = Instant::now();
        let forever = Times::issued(t0, Duration::from_secs(u64::MAX), true);
        assert!(forever.expires() > t0);
        let (Step::Renew(at) | Step::Replace(at)) = forever.next(&profile(67, 300), 0.5);
        assert!(at > t0 + secs(365 * 24 * 3600));
    }
}
