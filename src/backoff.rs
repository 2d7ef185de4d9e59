//! Exponential backoff with jitter, for the retry loops of the agent (a source's start-up check,
//! prefetch) and of the watching client (`render --watch`, `exec --watch`): each wait is a random
//! share between half of the current step and the step, and the step doubles up to a cap, so
//! processes that failed together do not retry together.

use std::time::Duration;

/// One retry loop's backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Steps of `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The next wait, in `[step / 2, step]`; then doubles the step.
    pub fn delay(&mut self) -> Duration {
        let step = self.next;
        self.next = step.saturating_mul(2).min(self.max);
        step.mul_f64(1.0 - random_fraction() / 2.0)
    }

    /// Back to the first step (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A uniform fraction in `[0, 1)`; 0 when the OS has no randomness to give (no jitter then).
pub fn random_fraction() -> f64 {
    let r = getrandom::u64().unwrap_or(0);
    (r >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_to_the_cap_with_at_most_half_taken_off_and_reset_starts_over() {
        let first = Duration::from_secs(1);
        let max = Duration::from_secs(30);
        let mut backoff = Backoff::new(first, max);
        let mut step = first;
        for _ in 0..10 {
            let delay = backoff.delay();
            assert!(
                delay <= step && delay >= step / 2,
                "{delay:?} for step {step:?}"
            );
            step = (step * 2).min(max);
        }
        backoff.reset();
        assert!(backoff.delay() <= first);
    }
}
