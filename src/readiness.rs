//! Start-up progress as `GET /v1/ready` reports it: the ready latch, the prefetches still
//! pending, and the signal that the runtime changed. A leaf: it imports nothing of the crate,
//! so the runtime (`state`), the start-up loops (`startup`) and the broker can all use it.
//!
//! Readiness is a latch: once every prefetched secret has been fetched and every source has
//! passed its check, the agent stays ready until it stops. A prefetched value that later
//! expires from the cache, a backend that goes away, or a reload does not make it unready: a
//! probe that flapped with a TTL would restart or unroute a healthy pod, and after the first
//! success the cache's refresh-ahead and stale-if-error serve the application as they would
//! any read.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::name::SecretName;

/// What a report is computed from: the current config generation, as the runtime knows it.
pub trait Progress {
    /// Which config generation this is.
    fn generation(&self) -> u64;
    /// How many secrets its `[prefetch]` names.
    fn prefetch_total(&self) -> usize;
    /// How many configured sources are still retrying their start-up check.
    fn sources_starting(&self) -> usize;
}

/// The runtime is shared as an `Arc`: report from it as from what it points at.
impl<T: Progress> Progress for std::sync::Arc<T> {
    fn generation(&self) -> u64 {
        T::generation(self)
    }

    fn prefetch_total(&self) -> usize {
        T::prefetch_total(self)
    }

    fn sources_starting(&self) -> usize {
        T::sources_starting(self)
    }
}

/// What `GET /v1/ready` answers: counts only, never a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Every prefetched secret was fetched and every source passed its check (now or before).
    pub ready: bool,
    /// Prefetched secrets not fetched yet.
    pub prefetch_pending: usize,
    /// Configured sources still retrying their start-up check.
    pub sources_starting: usize,
}

/// Prefetches still pending, for one config generation.
#[derive(Debug, Default)]
struct Pending {
    generation: u64,
    left: BTreeSet<SecretName>,
}

/// Start-up progress: the ready latch, the prefetches left, and a signal that the runtime
/// changed (a source came up, a reload) for loops waiting on a source.
#[derive(Debug)]
pub struct Readiness {
    ready: AtomicBool,
    pending: Mutex<Pending>,
    changed: watch::Sender<u64>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            ready: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
            changed: watch::channel(0).0,
        }
    }
}

impl Readiness {
    /// The report for `runtime` (the current one); latches readiness once reached.
    pub fn report(&self, runtime: &impl Progress) -> Report {
        if self.ready.load(Ordering::SeqCst) {
            return Report {
                ready: true,
                prefetch_pending: 0,
                sources_starting: 0,
            };
        }
        let prefetch_pending = {
            let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.generation == runtime.generation() {
                pending.left.len()
            } else {
                // Installed, its prefetch not begun yet.
                runtime.prefetch_total()
            }
        };
        let sources_starting = runtime.sources_starting();
        let ready = prefetch_pending == 0 && sources_starting == 0;
        if ready && !self.ready.swap(true, Ordering::SeqCst) {
            tracing::info!("ready: every prefetched secret is cached and every source is up");
        }
        Report {
            ready,
            prefetch_pending,
            sources_starting,
        }
    }

    /// A receiver that sees every [`Readiness::runtime_changed`].
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Tells loops waiting on a source that the runtime changed.
    pub fn runtime_changed(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn begin_prefetch(&self, generation: u64, secrets: &[SecretName]) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Pending {
            generation,
            left: secrets.iter().cloned().collect(),
        };
    }

    pub(crate) fn prefetched(&self, generation: u64, name: &SecretName) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.generation == generation {
            pending.left.remove(name);
        }
    }
}
