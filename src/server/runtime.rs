//! The runtime `serve` runs on: multi-threaded, one worker per CPU the process may use, and
//! workers that spin for a moment before they sleep.
//!
//! A worker that runs out of tasks parks: it sleeps in `epoll_wait`, and the next request must
//! wake it (the kernel's wake-up, a context switch, on a VM often an exit to the host) before
//! it is served. Under load the next request is usually only a few microseconds away, so a
//! worker that waits [`PARK_SPIN`] on the CPU it holds before it parks finds it already there:
//! its `epoll_wait` returns at once and neither side pays for a sleep and a wake-up. Nothing
//! is polled during the spin: a request that arrives meanwhile is taken by the `epoll_wait`
//! that follows, and the worker's next look for work comes at most [`PARK_SPIN`] later than it
//! would have. An idle agent parks once and sleeps, so the spin costs nothing at rest.
//!
//! Measured with oha at 16 connections (docs/performance.md, eighth round): the agent's CPU per
//! request fell by about a seventh and its req/s rose by about 30 %; 0.5 and 1 µs were too
//! short to matter, 8 and 20 µs took more CPU than they saved.
//!
//! With one CPU (affinity or a CPU quota) there is no spin: the client that would send the next
//! request may need that very CPU.

use std::time::{Duration, Instant};

/// How long a worker spins before it parks.
pub const PARK_SPIN: Duration = Duration::from_micros(3);

/// The runtime for `serve`.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // The count tokio's worker threads default to (affinity and CPU quota included); the rule is
    // about CPUs, so `TOKIO_WORKER_THREADS` does not change it.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if spins(cpus) {
        builder.on_thread_park(|| spin(PARK_SPIN));
    }
    builder.build()
}

/// Whether workers spin before they park, for a runtime with `cpus` CPUs.
fn spins(cpus: usize) -> bool {
    cpus > 1
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
