//! Least-recently-used eviction: which slot goes to make room (a remembered absence before any
//! value) and which value goes when secure memory asks for bytes back.

use std::sync::Arc;

use super::slot::{Inner, Slot};
use crate::source::Secret;

/// Makes room for one slot: evicts the least recently used remembered absence, or else the least
/// recently used value; returns whether one was evicted.
///
/// SECURITY: absences go first, so a flood of made-up names evicts at most one value.
pub(super) fn evict_lru(inner: &mut Inner) -> bool {
    let absent = inner
        .map
        .iter()
        .filter_map(|(k, s)| match s {
            Slot::Absent(a) => Some((a.last_used, k)),
            Slot::Ready(_) | Slot::Loading { .. } => None,
        })
        .min_by_key(|(used, _)| *used)
        .map(|(_, k)| k.clone());
    match absent {
        Some(key) => inner.map.remove(&key).is_some(),
        None => take_lru(inner).is_some(),
    }
}

/// Removes the least recently used cached value and returns it.
pub(super) fn take_lru(inner: &mut Inner) -> Option<Arc<Secret>> {
    let victim = inner
        .map
        .iter()
        .filter_map(|(k, s)| match s {
            Slot::Ready(e) => Some((e.last_used, k)),
            Slot::Loading { .. } | Slot::Absent(_) => None,
        })
        .min_by_key(|(used, _)| *used)
        .map(|(_, k)| k.clone());
    match inner.map.remove(&victim?)? {
        Slot::Ready(entry) => Some(entry.secret),
        Slot::Loading { .. } | Slot::Absent(_) => None,
    }
}
