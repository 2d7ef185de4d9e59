//! The accounting behind `cache.max_locked_bytes`: how much secret memory is mapped and locked,
//! the budget on it, the part of it kept for response renders, and the reclaimer (the cache's
//! LRU eviction) asked for room at the budget. Safe code only; `secure_mem` makes the mappings
//! and reserves each one here first.
//!
//! It does not map, lock or wipe anything, and does not decide what is evicted (the cache does).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

static LOCKED_BYTES: AtomicUsize = AtomicUsize::new(0);
static MAPPED_BYTES: AtomicUsize = AtomicUsize::new(0);
static BUDGET: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Of the budget, what only a response render may map ([`without_reclaim`]).
static RENDER_RESERVE: AtomicUsize = AtomicUsize::new(0);
/// Frees room when the budget is reached: asked for `len` bytes, returns how many values it
/// dropped (0: nothing left to drop).
type Reclaimer = Box<dyn Fn(usize) -> usize + Send + Sync>;
static RECLAIMER: Mutex<Option<Reclaimer>> = Mutex::new(None);

thread_local! {
    /// Set while a response is rendered on this thread ([`without_reclaim`]).
    static NO_RECLAIM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Sets the budget on secret memory mapped in all (`cache.max_locked_bytes`).
pub fn set_budget(bytes: usize) {
    BUDGET.store(bytes, Ordering::SeqCst);
}

/// Keeps `bytes` of the budget for response renders (`cache.max_locked_bytes_per_uid`, one
/// uid's share): every other allocation (a fetched value, the cache's copies) maps at most the
/// budget less this, and at that point asks the reclaimer. So a full cache still leaves one
/// uid's renders room, and renders, which never reclaim, do not fail for want of an eviction.
pub fn set_render_reserve(bytes: usize) {
    RENDER_RESERVE.store(bytes, Ordering::SeqCst);
}

/// Registers what frees room when the budget is reached (the cache's LRU eviction). It is
/// called with no lock of this module held.
pub fn set_reclaimer(reclaim: impl Fn(usize) -> usize + Send + Sync + 'static) {
    *RECLAIMER.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(reclaim));
}

/// Runs `f` (synchronous) with reclaiming off on this thread: an allocation at the budget fails
/// with `MemError::Budget` instead of asking the reclaimer for room.
///
/// SECURITY: a response render runs so: one caller's in-flight responses never evict the
/// values other callers read from the cache.
pub fn without_reclaim<T>(f: impl FnOnce() -> T) -> T {
    /// Restores the flag even if `f` unwinds.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_RECLAIM.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(NO_RECLAIM.with(|c| c.replace(true)));
    f()
}

/// Asks the reclaimer for room for `len` bytes (never inside [`without_reclaim`]): how many
/// values it dropped.
pub(crate) fn reclaim(len: usize) -> usize {
    if NO_RECLAIM.with(std::cell::Cell::get) {
        return 0;
    }
    match RECLAIMER.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        Some(reclaim) => reclaim(len),
        None => 0,
    }
}

/// Counts `len` bytes about to be mapped, or refuses with the limit they would pass: the whole
/// budget for a render, the budget less the render reserve for anything else.
///
/// SECURITY: reserved before mapping, so concurrent requests cannot all pass the check and
/// together exceed it.
pub(crate) fn reserve(len: usize) -> Result<(), usize> {
    let budget = BUDGET.load(Ordering::SeqCst);
    let limit = if NO_RECLAIM.with(std::cell::Cell::get) {
        budget
    } else {
        budget.saturating_sub(RENDER_RESERVE.load(Ordering::SeqCst))
    };
    MAPPED_BYTES
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |mapped| {
            mapped.checked_add(len).filter(|total| *total <= limit)
        })
        .map(|_| ())
        .map_err(|_| limit)
}

/// Gives back a reservation whose mapping failed or was unmapped before use.
pub(crate) fn unreserve(len: usize) {
    MAPPED_BYTES.fetch_sub(len, Ordering::SeqCst);
}

/// Counts `len` mapped bytes as locked.
pub(crate) fn locked(len: usize) {
    LOCKED_BYTES.fetch_add(len, Ordering::Relaxed);
}

/// A mapping of `len` bytes is gone (and with it its lock, if it had one).
pub(crate) fn unmapped(len: usize) {
    MAPPED_BYTES.fetch_sub(len, Ordering::Relaxed);
    let _ = LOCKED_BYTES.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        Some(n.saturating_sub(len))
    });
}

/// Bytes of secret memory currently locked.
pub fn locked_bytes() -> usize {
    LOCKED_BYTES.load(Ordering::Relaxed)
}

/// Bytes of secret memory currently mapped (locked or not).
pub fn mapped_bytes() -> usize {
    MAPPED_BYTES.load(Ordering::Relaxed)
}
