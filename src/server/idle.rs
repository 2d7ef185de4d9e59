//! The idle check and the stop signal of the agent socket's connections, on a thread of their
//! own. A connection on which no request starts or finishes for [`IDLE_LIMIT`] (none in flight)
//! is told to close; at shutdown every connection is told to finish its request in flight and
//! close.
//!
//! Why a thread and not a timer per connection: a tokio timer that is pending makes every park
//! of a worker read the clock and walk the timer wheel (and arm a kernel timer for its
//! `epoll_wait`), and a connection's idle timer is pending all its life — measured as a few
//! hundred instructions per request. One thread that looks at every connection once per
//! [`TICK`] costs nothing per request: a request only bumps its connection's counters.
//!
//! The same thread gives memory back after a burst: once at least [`BURST`] connections were
//! open and no more than a quarter of that peak are left, it asks the allocator to return its
//! free pages to the kernel (`secure_mem::release_free_heap`). Without it the buffers and
//! tasks of thousands of `?wait=` connections stay resident after they close (figures in
//! docs/performance.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

/// A connection on which no request starts or ends for this long (none in flight) is closed:
/// one that sends part of a request head and stalls, or none at all, is gone after
/// `IDLE_LIMIT` to `IDLE_LIMIT + TICK`.
pub const IDLE_LIMIT: Duration = Duration::from_secs(10);
/// How often the thread looks at the connections.
pub const TICK: Duration = Duration::from_secs(1);
/// A peak of at least this many open connections is a burst whose memory is given back once
/// it is over (a few MiB of buffers and tasks).
pub const BURST: usize = 256;

/// Requests started and finished on one connection.
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Activity {
    /// A request has started.
    pub fn start(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// A request has finished.
    pub fn finish(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> (u64, u64) {
        (
            self.started.load(Ordering::Relaxed),
            self.finished.load(Ordering::Relaxed),
        )
    }
}

/// Why a connection is told to stop.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// No request started or finished for [`IDLE_LIMIT`] with none in flight.
    Idle,
    /// The agent is stopping.
    Shutdown,
}

/// The connections being watched, and the thread that watches them.
#[derive(Debug)]
pub struct IdleWatch {
    registry: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    next_key: u64,
    watched: HashMap<u64, Watched>,
    stopping: bool,
    peak: Peak,
}

/// The most connections open since memory was last given back.
#[derive(Debug, Default)]
struct Peak {
    high: usize,
}

impl Peak {
    /// Records that `open` connections are open; whether a burst just ended (at least
    /// [`BURST`] at its peak, at most a quarter of that left), which starts the count again.
    fn over(&mut self, open: usize) -> bool {
        self.high = self.high.max(open);
        if self.high >= BURST && open <= self.high / 4 {
            self.high = open;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Watched {
    activity: Arc<Activity>,
    seen: (u64, u64),
    since: Instant,
    /// `None` once the verdict is sent.
    stop: Option<oneshot::Sender<Stop>>,
}

/// One watched connection; dropping it stops the watch.
#[derive(Debug)]
pub struct Registration {
    key: u64,
    registry: Weak<Mutex<Registry>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            lock(&registry).watched.remove(&self.key);
        }
    }
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(|p| p.into_inner())
}

impl IdleWatch {
    /// Starts the watching thread; it ends within a [`TICK`] of the watch being dropped.
    pub fn start() -> std::io::Result<Self> {
        Self::start_with(IDLE_LIMIT, TICK)
    }

    fn start_with(limit: Duration, tick: Duration) -> std::io::Result<Self> {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let weak = Arc::downgrade(&registry);
        std::thread::Builder::new()
            .name("credagent-idle".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(tick);
                    let Some(registry) = weak.upgrade() else {
                        return;
                    };
                    let release = {
                        let mut registry = lock(&registry);
                        sweep(&mut registry, Instant::now(), limit);
                        let open = registry.watched.len();
                        let release = registry.peak.over(open);
                        if release {
                            registry.watched.shrink_to_fit();
                        }
                        release
                    };
                    drop(registry);
                    // Outside the registry's lock: the trim walks the whole heap.
                    if release && crate::secure_mem::release_free_heap() {
                        tracing::debug!(
                            "returned free heap memory to the kernel after a burst of connections"
                        );
                    }
                }
            })?;
        Ok(IdleWatch { registry })
    }

    /// Watches a connection whose requests `activity` counts; the receiver gets the verdict
    /// once. After [`IdleWatch::shutdown`] the verdict is [`Stop::Shutdown`] at once.
    pub fn register(&self, activity: Arc<Activity>) -> (Registration, oneshot::Receiver<Stop>) {
        let (stop, stopped) = oneshot::channel();
        let mut registry = lock(&self.registry);
        let key = registry.next_key;
        registry.next_key = key.wrapping_add(1);
        if registry.stopping {
            let _ = stop.send(Stop::Shutdown);
        } else {
            let seen = activity.snapshot();
            registry.watched.insert(
                key,
                Watched {
                    activity,
                    seen,
                    since: Instant::now(),
                    stop: Some(stop),
                },
            );
        }
        (
            Registration {
                key,
                registry: Arc::downgrade(&self.registry),
            },
            stopped,
        )
    }

    /// Tells every watched connection, and every one registered from now on, to stop.
    pub fn shutdown(&self) {
        let mut registry = lock(&self.registry);
        registry.stopping = true;
        for (_, watched) in registry.watched.drain() {
            if let Some(stop) = watched.stop {
                let _ = stop.send(Stop::Shutdown);
            }
        }
    }
}

/// Tells each connection idle for `limit` at `now` to stop and forgets it.
fn sweep(registry: &mut Registry, now: Instant, limit: Duration) {
    registry.watched.retain(|_, watched| {
        let current = watched.activity.snapshot();
        if current != watched.seen {
            watched.seen = current;
            watched.since = now;
            return true;
        }
        // SECURITY: a client that holds a connection without completing a request (slowloris,
        // or an idle keep-alive) loses it; a request in flight (a `?wait=`) keeps it.
        let in_flight = current.0 != current.1;
        if in_flight || now.saturating_duration_since(watched.since) < limit {
            return true;
        }
        if let Some(stop) = watched.stop.take() {
            let _ = stop.send(Stop::Idle);
        }
        false
    });
}

/// Resolves when `rx` says `true` (or its sender is gone).
pub(super) async fn signalled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_with(
        activity: &Arc<Activity>,
        since: Instant,
    ) -> (Registry, oneshot::Receiver<Stop>) {
        let (stop, stopped) = oneshot::channel();
        let mut registry = Registry::default();
        registry.watched.insert(
            0,
            Watched {
                activity: activity.clone(),
                seen: activity.snapshot(),
                since,
                stop: Some(stop),
            },
        );
        (registry, stopped)
    }

    #[test]
    fn a_connection_is_idle_only_after_the_whole_limit_without_a_request() {
        let limit = Duration::from_secs(10);
        let activity = Arc::new(Activity::default());
        let t0 = Instant::now();
        let (mut registry, mut stopped) = registry_with(&activity, t0);
        sweep(&mut registry, t0 + Duration::from_secs(9), limit);
        assert!(stopped.try_recv().is_err(), "closed before the limit");
        // A request started and finished: the clock starts again.
        activity.start();
        activity.finish();
        sweep(&mut registry, t0 + Duration::from_secs(12), limit);
        assert!(
            stopped.try_recv().is_err(),
            "closed although a request just ended"
        );
        sweep(&mut registry, t0 + Duration::from_secs(21), limit);
        assert!(
            stopped.try_recv().is_err(),
            "closed 9 s after the last request"
        );
        sweep(&mut registry, t0 + Duration::from_secs(22), limit);
        assert_eq!(stopped.try_recv().unwrap(), Stop::Idle);
        assert!(registry.watched.is_empty());
    }

    #[test]
    fn a_request_in_flight_keeps_its_connection() {
        let limit = Duration::from_secs(10);
        let activity = Arc::new(Activity::default());
        let t0 = Instant::now();
        let (mut registry, mut stopped) = registry_with(&activity, t0);
        activity.start();
        sweep(&mut registry, t0 + Duration::from_secs(1), limit);
        sweep(&mut registry, t0 + Duration::from_secs(100), limit);
        assert!(
            stopped.try_recv().is_err(),
            "a waiting request lost its connection"
        );
        activity.finish();
        sweep(&mut registry, t0 + Duration::from_secs(101), limit);
        sweep(&mut registry, t0 + Duration::from_secs(111), limit);
        assert_eq!(stopped.try_recv().unwrap(), Stop::Idle);
    }

    #[test]
    fn memory_is_given_back_once_a_burst_is_over_and_only_then() {
        let mut peak = Peak::default();
        // Below BURST at its peak: never.
        assert!(!peak.over(BURST - 1));
        assert!(!peak.over(0));
        // A burst: not while a third of it is still open, once a quarter is left.
        assert!(!peak.over(4 * BURST));
        assert!(!peak.over(2 * BURST));
        assert!(!peak.over(BURST + 1));
        assert!(peak.over(BURST));
        // The count starts again from what was left: BURST more closing is a burst again.
        assert!(!peak.over(BURST / 2));
        assert!(peak.over(0));
        assert!(!peak.over(0));
        // The next burst is measured from there.
        assert!(!peak.over(BURST * 2));
        assert!(peak.over(3));
    }

    #[test]
    fn shutdown_stops_every_connection_and_each_one_registered_later() {
        let watch = IdleWatch::start().unwrap();
        let (_first, mut first) = watch.register(Arc::new(Activity::default()));
        watch.shutdown();
        assert_eq!(first.try_recv().unwrap(), Stop::Shutdown);
        let (_late, mut late) = watch.register(Arc::new(Activity::default()));
        assert_eq!(late.try_recv().unwrap(), Stop::Shutdown);
    }

    #[test]
    fn the_thread_closes_an_idle_connection_and_a_dropped_registration_is_forgotten() {
        let watch =
            IdleWatch::start_with(Duration::from_millis(50), Duration::from_millis(10)).unwrap();
        let (_kept, stopped) = watch.register(Arc::new(Activity::default()));
        let (dropped, _) = watch.register(Arc::new(Activity::default()));
        drop(dropped);
        assert_eq!(lock(&watch.registry).watched.len(), 1);
        assert_eq!(stopped.blocking_recv().unwrap(), Stop::Idle);
        assert!(lock(&watch.registry).watched.is_empty());
    }
}
