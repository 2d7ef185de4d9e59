//! Rate limiting for log lines a client can trigger (bad requests, denials), so a misbehaving
//! or hostile local process cannot flood the journal. Modelled on a fixed one-second window:
//! at most `per_second` lines pass; the next line after the window says how many were dropped.

use std::sync::Mutex;
use std::time::Instant;

/// A fixed-window limiter.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u32,
    state: Mutex<(Instant, u32, u64)>,
}

impl LogLimiter {
    /// At most `per_second` lines per second.
    pub fn new(per_second: u32) -> Self {
        LogLimiter {
            per_second,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(suppressed_since_last)` when a line may be written now, else `None`.
    pub fn check(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (window, count, suppressed) = &mut *state;
        if window.elapsed().as_secs() >= 1 {
            *window = Instant::now();
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
}
