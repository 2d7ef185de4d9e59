//! Rate limiting for log lines a client can trigger (bad requests, denials, fetch failures), so a
//! misbehaving or hostile local process cannot flood the journal. One limiter per call site
//! ([`rate_limited!`](crate::rate_limited)), as firecracker does, so a flood of one kind of line
//! cannot hide another kind: bad requests cannot silence backend warnings, nor the other way
//! round. Each limiter is a fixed one-second window: at most `per_second` lines pass; the next
//! line after the window says how many were dropped (`suppressed`).

use std::sync::Mutex;
use std::time::Instant;

/// Lines per second each call site of [`rate_limited!`](crate::rate_limited) may write.
pub const LINES_PER_SECOND: u32 = 20;

/// A fixed-window limiter.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u32,
    /// (window start, lines in this window, lines suppressed since the last one written).
    state: Mutex<(Option<Instant>, u32, u64)>,
}

impl LogLimiter {
    /// At most `per_second` lines per second.
    pub const fn new(per_second: u32) -> Self {
        LogLimiter {
            per_second,
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// `Some(suppressed_since_last)` when a line may be written now, else `None`.
    pub fn check(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (window, count, suppressed) = &mut *state;
        if window.is_none_or(|start| start.elapsed().as_secs() >= 1) {
            *window = Some(Instant::now());
            *count = 0;
        }
        if *count < self.per_second {
            *count += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

/// `rate_limited!(warn, field = value, …, "message")`: a `tracing` event at that level, limited
/// by a limiter of this call site's own to [`LINES_PER_SECOND`]; a `suppressed` field counts the
/// lines this site dropped since its last one.
#[macro_export]
macro_rules! rate_limited {
    ($level:ident, $($rest:tt)+) => {{
        static LIMIT: $crate::ratelimit::LogLimiter =
            $crate::ratelimit::LogLimiter::new($crate::ratelimit::LINES_PER_SECOND);
        if let Some(suppressed) = LIMIT.check() {
            tracing::$level!(suppressed, $($rest)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_within_a_window() {
        let limiter = LogLimiter::new(3);
        assert_eq!(limiter.check(), Some(0));
        assert_eq!(limiter.check(), Some(0));
        assert_eq!(limiter.check(), Some(0));
        assert_eq!(limiter.check(), None);
        assert_eq!(limiter.check(), None);
    }

    fn site_a() -> Option<u64> {
        static LIMIT: LogLimiter = LogLimiter::new(2);
        LIMIT.check()
    }

    fn site_b() -> Option<u64> {
        static LIMIT: LogLimiter = LogLimiter::new(2);
        LIMIT.check()
    }

    #[test]
    fn a_flood_at_one_site_leaves_another_site_its_lines() {
        for _ in 0..100 {
            let _ = site_a();
        }
        assert_eq!(site_a(), None);
        assert_eq!(site_b(), Some(0));
        assert_eq!(site_b(), Some(0));
        assert_eq!(site_b(), None);
    }
}
