//! Each uid's share of the locked memory held by in-flight responses: the buffers a `?field=`
//! or JSON read renders live until the response is sent (a slow reader holds them), and one uid
//! may hold at most `cache.max_locked_bytes_per_uid` of them at once. It counts and refuses;
//! rendering is in `reply.rs`, the budget itself in `secure_mem`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::error::BrokerError;
use crate::metrics::{Metrics, Rejection};
use crate::secure_mem::SecretBytes;

/// Bytes held by each uid's in-flight responses, and what one uid may hold.
#[derive(Debug)]
pub(crate) struct Shares {
    held: Mutex<BTreeMap<u32, usize>>,
    limit: AtomicUsize,
}

/// The agent's one account (the budget it shares is process-wide too).
pub(crate) static SHARES: Shares = Shares::new();

impl Shares {
    const fn new() -> Self {
        Shares {
            held: Mutex::new(BTreeMap::new()),
            limit: AtomicUsize::new(usize::MAX),
        }
    }

    /// Sets what one uid may hold (`cache.max_locked_bytes_per_uid`; at start and reload).
    pub(crate) fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// Charges `bytes` to `uid` for as long as the returned [`Held`] lives, or refuses (and
    /// counts the refusal) when that would pass `uid`'s share; the bytes are dropped (wiped)
    /// then.
    pub(super) fn hold(
        &'static self,
        uid: u32,
        bytes: SecretBytes,
        metrics: &Metrics,
    ) -> Result<Held, BrokerError> {
        let len = bytes.len();
        let limit = self.limit.load(Ordering::Relaxed);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let total = held.get(&uid).copied().unwrap_or(0).saturating_add(len);
        if total > limit {
            drop(held);
            metrics.reject(Rejection::MemoryBudgetUid);
            return Err(BrokerError::MemoryBudgetUid);
        }
        held.insert(uid, total);
        Ok(Held {
            bytes,
            uid,
            shares: self,
        })
    }

    /// Refuses (and counts) a render for `uid` when it already holds its whole share, before
    /// any buffer is taken for it.
    pub(super) fn check(&self, uid: u32, metrics: &Metrics) -> Result<(), BrokerError> {
        let limit = self.limit.load(Ordering::Relaxed);
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.get(&uid).is_some_and(|total| *total >= limit) {
            drop(held);
            metrics.reject(Rejection::MemoryBudgetUid);
            return Err(BrokerError::MemoryBudgetUid);
        }
        Ok(())
    }

    fn release(&self, uid: u32, len: usize) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(total) = held.get_mut(&uid) {
            *total = total.saturating_sub(len);
            if *total == 0 {
                held.remove(&uid);
            }
        }
    }

    #[cfg(test)]
    fn held_by(&self, uid: u32) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&uid).copied().unwrap_or(0)
    }
}

/// A rendered response's bytes, charged to a uid until dropped (the response is sent or its
/// connection goes).
pub(super) struct Held {
    bytes: SecretBytes,
    uid: u32,
    shares: &'static Shares,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        self.bytes.as_slice()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shares.release(self.uid, self.bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> SecretBytes {
        SecretBytes::zeroed(len).unwrap()
    }

    #[test]
    fn a_uid_holds_at_most_its_share_and_gets_it_back_when_a_response_goes() {
        static OWN: Shares = Shares::new();
        OWN.set_limit(100);
        let metrics = Metrics::default();
        let a = OWN.hold(1, bytes(60), &metrics).unwrap();
        assert!(matches!(
            OWN.hold(1, bytes(41), &metrics),
            Err(BrokerError::MemoryBudgetUid)
        ));
        // Another uid has a share of its own.
        let b = OWN.hold(2, bytes(100), &metrics).unwrap();
        assert!(OWN.check(1, &metrics).is_ok());
        let c = OWN.hold(1, bytes(40), &metrics).unwrap();
        assert_eq!((OWN.held_by(1), OWN.held_by(2)), (100, 100));
        // A uid holding its whole share is refused before any buffer is taken.
        assert!(matches!(
            OWN.check(2, &metrics),
            Err(BrokerError::MemoryBudgetUid)
        ));
        assert!(
            metrics
                .render(0, 0, 0)
                .contains("credagent_rejections_total{reason=\"memory_budget_uid\"} 2")
        );
        drop((a, c));
        assert_eq!(OWN.held_by(1), 0);
        assert_eq!(b.as_ref().len(), 100);
        drop(b);
        assert!(OWN.held.lock().unwrap().is_empty());
    }
}
