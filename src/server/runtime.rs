//! The runtime `serve` runs on: multi-threaded, one worker per CPU the process may use, and
//! workers that, under load, spin for a moment before they sleep.
//!
//! A worker that runs out of tasks parks: it sleeps in `epoll_wait`, and the next request must
//! wake it (the kernel's wake-up, a context switch, on a VM often an exit to the host) before
//! it is served. Under load the next request is usually only a few microseconds away, so a
//! worker that waits [`PARK_SPIN`] on the CPU it holds before it parks finds it already there:
//! its `epoll_wait` returns at once and neither side pays for a sleep and a wake-up. Nothing
//! is polled during the spin: a request that arrives meanwhile is taken by the `epoll_wait`
//! that follows, and the worker's next look for work comes at most [`PARK_SPIN`] later than it
//! would have.
//!
//! A worker spins only when its previous park was shorter than [`SHORT_PARK`]: work arrived
//! soon after it last ran out, so it likely will again. At a low request rate parks are long,
//! and a spin would only burn the CPU before every sleep; an idle agent parks without one.
//!
//! Measured with oha at 16 connections (docs/performance.md, "Kept"): the
//! spin cut the agent's CPU per request by about a seventh and raised its req/s by about 30 %;
//! 0.5 and 1 µs were too short to matter, 8 and 20 µs took more CPU than they saved. Spinning
//! only after short parks kept that, and of what spinning before every park cost at a steady
//! rate (about 2 µs per request at 10,000 req/s, 1.6 µs at 20,000) gave back about half and a
//! third.
//!
//! With one CPU (affinity or a CPU quota) there is no spin: the client that would send the next
//! request may need that very CPU.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How long a worker spins before it parks.
pub const PARK_SPIN: Duration = Duration::from_micros(3);

/// A park shorter than this tells a worker that work comes often: its next park spins first.
pub const SHORT_PARK: Duration = Duration::from_micros(20);

thread_local! {
    /// This worker's parks, for the spin decision.
    static PARKS: Cell<Parks> = const { Cell::new(Parks::new()) };
}

/// The runtime for `serve`.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // The count tokio's worker threads default to (affinity and CPU quota included); the rule is
    // about CPUs, so `TOKIO_WORKER_THREADS` does not change it.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if spins(cpus) {
        builder
            .on_thread_park(|| {
                let mut parks = PARKS.get();
                if parks.spin_first() {
                    spin(PARK_SPIN);
                }
                parks.parking(Instant::now());
                PARKS.set(parks);
            })
            .on_thread_unpark(|| {
                let mut parks = PARKS.get();
                parks.unparked(Instant::now());
                PARKS.set(parks);
            });
    }
    builder.build()
}

/// Whether workers spin before they park, for a runtime with `cpus` CPUs.
fn spins(cpus: usize) -> bool {
    cpus > 1
}

/// One worker's parks: when the current one began, and whether the last one was short.
#[derive(Debug, Clone, Copy)]
struct Parks {
    since: Option<Instant>,
    last_short: bool,
}

impl Parks {
    /// A worker that has not parked yet: its first park does not spin.
    const fn new() -> Self {
        Parks {
            since: None,
            last_short: false,
        }
    }

    /// Whether to spin before this park: the last one was short.
    fn spin_first(&self) -> bool {
        self.last_short
    }

    /// The park (after any spin) begins at `now`.
    fn parking(&mut self, now: Instant) {
        self.since = Some(now);
    }

    /// The park ended at `now`.
    fn unparked(&mut self, now: Instant) {
        if let Some(since) = self.since.take() {
            self.last_short = now.saturating_duration_since(since) < SHORT_PARK;
        }
    }
}

/// Holds the CPU for `period`.
fn spin(period: Duration) {
    let start = Instant::now();
    while start.elapsed() < period {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_spin_only_when_the_client_can_run_on_another_cpu() {
        assert!(!spins(1));
        assert!(spins(2));
        assert!(spins(64));
    }

    #[test]
    fn a_worker_spins_only_after_a_park_shorter_than_short_park() {
        let start = Instant::now();
        let mut parks = Parks::new();
        assert!(!parks.spin_first(), "a worker's first park does not spin");
        // A short park: the next one spins.
        parks.parking(start);
        parks.unparked(start + SHORT_PARK / 4);
        assert!(parks.spin_first());
        // A long one (a quiet spell): the next one does not.
        parks.parking(start + SHORT_PARK);
        parks.unparked(start + SHORT_PARK + Duration::from_millis(5));
        assert!(!parks.spin_first());
        // Exactly SHORT_PARK is not short.
        parks.parking(start);
        parks.unparked(start + SHORT_PARK);
        assert!(!parks.spin_first());
        // An unpark without a recorded park changes nothing.
        parks.parking(start);
        parks.unparked(start + Duration::from_micros(1));
        parks.unparked(start + Duration::from_secs(1));
        assert!(parks.spin_first());
    }

    #[test]
    fn a_spin_holds_the_cpu_for_at_least_its_period() {
        let start = Instant::now();
        spin(Duration::from_micros(200));
        assert!(start.elapsed() >= Duration::from_micros(200));
    }

    #[test]
    fn the_runtime_runs_tasks_on_its_workers_across_parks() {
        let runtime = build().unwrap();
        let total = runtime.block_on(async {
            let mut sum = 0u32;
            for i in 0..8u32 {
                // Each task sleeps, so the workers park and are woken between them.
                let task = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    i
                });
                sum = sum.saturating_add(task.await.unwrap());
            }
            sum
        });
        assert_eq!(total, 28);
    }
}
