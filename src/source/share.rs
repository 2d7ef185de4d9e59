//! Per-uid shares of a source's fetches (`sources.NAME.max_fetches_per_uid`).
//!
//! Owns only the count of fetches each uid has running or waiting at one source; the source-wide
//! bound (`max_concurrent_fetches` and its queue) stays in `FetchLimit`. Nothing here waits.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// The uid the agent's own fetches (`[prefetch]`) name: `(uid_t)-1` is no caller's uid. They
/// take no share (they are bounded by the source-wide limit, and retried with backoff).
pub(crate) const AGENT_UID: u32 = u32::MAX;

/// SECURITY: the source-wide slots and queue are shared by every caller; one uid allowed a glob
/// could fill them with distinct misses of its own names and every other uid's misses would be
/// `503 source_busy`. Each uid may have at most `per_uid` fetches running or queued at a source
/// (the default is half the slots, so the other half always stays for everyone else).
#[derive(Debug)]
pub(crate) struct UidShares {
    per_uid: NonZeroUsize,
    /// Fetches running or queued, by uid; a uid leaves the map when its last one ends.
    held: Arc<Mutex<HashMap<u32, usize>>>,
}

/// One fetch's place in its uid's share; freed when dropped.
#[derive(Debug)]
pub(crate) struct ShareGuard {
    uid: u32,
    held: Arc<Mutex<HashMap<u32, usize>>>,
}

impl UidShares {
    /// At most `per_uid` fetches per uid.
    pub(crate) fn new(per_uid: NonZeroUsize) -> Self {
        UidShares {
            per_uid,
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A place for one more fetch of `uid`, or `None` when it holds its whole share.
    pub(crate) fn take(&self, uid: u32) -> Option<ShareGuard> {
        if uid == AGENT_UID {
            return Some(ShareGuard {
                uid,
                held: self.held.clone(),
            });
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(uid).or_insert(0);
        if *count >= self.per_uid.get() {
            return None;
        }
        *count = count.saturating_add(1);
        Some(ShareGuard {
            uid,
            held: self.held.clone(),
        })
    }
}

impl Drop for ShareGuard {
    fn drop(&mut self) {
        if self.uid == AGENT_UID {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.uid);
            }
        }
    }
}

/// The default share: half of `max_concurrent_fetches`, at least 1.
pub(crate) fn default_per_uid(max_concurrent_fetches: NonZeroUsize) -> NonZeroUsize {
    NonZeroUsize::new(max_concurrent_fetches.get() / 2).unwrap_or(NonZeroUsize::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: usize) -> NonZeroUsize {
        NonZeroUsize::new(v).unwrap()
    }

    #[test]
    fn a_uid_past_its_share_is_refused_while_another_uid_is_not() {
        let shares = UidShares::new(n(2));
        let a1 = shares.take(1).unwrap();
        let _a2 = shares.take(1).unwrap();
        assert!(shares.take(1).is_none());
        assert!(shares.take(2).is_some());
        drop(a1);
        assert!(shares.take(1).is_some());
    }

    #[test]
    fn the_agents_own_fetches_take_no_share() {
        let shares = UidShares::new(n(1));
        let _a = shares.take(AGENT_UID).unwrap();
        let _b = shares.take(AGENT_UID).unwrap();
        assert!(shares.held.lock().unwrap().is_empty());
    }

    #[test]
    fn a_uid_whose_fetches_all_ended_leaves_the_map() {
        let shares = UidShares::new(n(1));
        drop(shares.take(7).unwrap());
        assert!(shares.held.lock().unwrap().is_empty());
    }

    #[test]
    fn the_default_share_is_half_the_slots_and_at_least_one() {
        assert_eq!(default_per_uid(n(1)), n(1));
        assert_eq!(default_per_uid(n(3)), n(1));
        assert_eq!(default_per_uid(n(8)), n(4));
    }
}
