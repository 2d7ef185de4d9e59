//! The secret cache: TTL, least-recently-used eviction, single-flight misses, refresh-ahead,
//! rotation checks and stale-if-error.
//!
//! Values are `Arc<Secret>`, whose bytes live in secure memory and are wiped when the last
//! reference (cache entry or in-flight response) goes. Every fetch runs in its own task, so a
//! client that disconnects never cancels a fetch others wait on; waiters share its result through
//! a `watch` channel. Errors are not cached (except "not found", when negative caching is on:
//! see below). Time is `tokio::time::Instant`, so tests drive TTLs with a paused clock. The cache
//! does not know sources or peers: callers pass a fetch closure.
//!
//! It also tells who waits for a key ([`Cache::subscribe`]) when that key may have changed: a
//! fetch stored a value, or a flush dropped it. Waiters re-read and compare what they serve; the
//! cache never compares values. A reader may force one re-fetch per key per uid per
//! `min_refresh_interval` ([`Cache::refresh_with`]); a minted value (each fetch a new one) is
//! left alone while it is fresh. Each stored value's expiry and refresh-ahead
//! start are spread by up to `jitter_percent`, so agents started together do not refresh
//! together.
//!
//! With `negative_ttl` set, a source's "no such secret" is remembered for that long (negative
//! caching), so one allowed glob cannot turn a stream of made-up names into a stream of backend
//! calls. Such an absence holds no secret bytes but takes a slot under `max_entries` like a
//! value, is evicted before any value, and goes with every flush; it never outlives
//! `negative_ttl`, so a secret created later is served at the latest that long after.

#![deny(clippy::arithmetic_side_effects)]

mod fill;
mod forced;
mod lru;
mod slot;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::CacheConfig;
use crate::metrics::Metrics;
use crate::name::Glob;
use crate::source::{Fetched, Secret, SecretRequest, SourceError};
pub use forced::{Force, Refresh};
use lru::take_lru;
pub use slot::Served;
pub(crate) use slot::later;
use slot::{Inner, Slot, Step, wait};

/// The cache.
pub struct Cache {
    inner: Mutex<Inner>,
    /// Change notification per key, for as long as someone waits on it.
    changes: Mutex<HashMap<SecretRequest, watch::Sender<u64>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("entries", &self.len())
            .finish()
    }
}

impl Cache {
    /// An empty cache.
    pub fn new(settings: CacheConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Cache {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                settings,
                clock: 0,
                next_id: 0,
                generation: 0,
            }),
            changes: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Replaces the settings (config reload); entries keep their current expiry.
    pub fn set_settings(&self, settings: CacheConfig) {
        self.lock().settings = settings;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of cached values (in-flight fetches not counted).
    pub fn len(&self) -> usize {
        self.lock()
            .map
            .values()
            .filter(|s| matches!(s, Slot::Ready(_)))
            .count()
    }

    /// Whether no value is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the secret for `request`, fetching it on a miss or expiry with the fetch that
    /// `make` builds. The fetch is made only when one is started: a hit builds nothing (the
    /// broker's fetch holds `Arc`s whose counts every read would otherwise touch).
    ///
    /// The fetch receives the request (the cache's own copy, so a hit clones nothing) and the
    /// previous value when refreshing (for a rotation check); it runs in a task of its own, and
    /// at most one fetch per key is in flight.
    pub async fn get_with<M, F, Fut>(
        self: &Arc<Self>,
        request: &SecretRequest,
        ttl: Duration,
        generation: u64,
        make: M,
    ) -> (Result<Arc<Secret>, SourceError>, Served)
    where
        M: FnOnce() -> F,
        F: FnOnce(SecretRequest, Option<Arc<Secret>>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched, SourceError>> + Send + 'static,
    {
        let (step, _) = self.lookup(request, ttl, generation, None, make);
        self.serve(step).await
    }

    /// As [`Cache::get_with`], but a reader asks for a re-fetch now (after a login failed with
    /// the cached value, say): one single-flighted fetch, at most once per key per uid per
    /// `min_refresh_interval`; within it, a plain read answered [`Refresh::Throttled`]. A
    /// minted value ([`Force::minted`]) before its refresh point is served as it is, answered
    /// [`Refresh::Fresh`]. A transient failure of the re-fetch serves the cached value within
    /// the stale-if-error bound.
    pub async fn refresh_with<M, F, Fut>(
        self: &Arc<Self>,
        request: &SecretRequest,
        ttl: Duration,
        generation: u64,
        force: Force,
        make: M,
    ) -> (Result<Arc<Secret>, SourceError>, Served, Refresh)
    where
        M: FnOnce() -> F,
        F: FnOnce(SecretRequest, Option<Arc<Secret>>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched, SourceError>> + Send + 'static,
    {
        let (step, refresh) = self.lookup(request, ttl, generation, Some(force), make);
        let (result, served) = self.serve(step).await;
        (result, served, refresh)
    }

    /// What `step` serves: at once for a hit, else after the fetch it waits for. The waiting
    /// is boxed, so a hit's future (every cached read's) stays a few words.
    async fn serve(&self, step: Step) -> (Result<Arc<Secret>, SourceError>, Served) {
        match step {
            Step::Done(secret, served) => (Ok(secret), served),
            Step::Absent => (Err(SourceError::NotFound), Served::Negative),
            waiting => Box::pin(self.finish(waiting)).await,
        }
    }

    async fn finish(&self, step: Step) -> (Result<Arc<Secret>, SourceError>, Served) {
        match step {
            Step::Done(secret, served) => (Ok(secret), served),
            Step::Absent => (Err(SourceError::NotFound), Served::Negative),
            Step::WaitMiss(rx) => {
                self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
                (wait(rx).await, Served::Miss)
            }
            Step::WaitRefresh {
                rx,
                prev,
                stale_until,
            } => {
                self.metrics
                    .cache_refresh_waits
                    .fetch_add(1, Ordering::Relaxed);
                match wait(rx).await {
                    Ok(secret) => {
                        self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
                        (Ok(secret), Served::Miss)
                    }
                    Err(err) if err.is_transient() && Instant::now() < stale_until => {
                        self.metrics.cache_stale.fetch_add(1, Ordering::Relaxed);
                        (Ok(prev), Served::Stale)
                    }
                    Err(err) => (Err(err), Served::Miss),
                }
            }
        }
    }

    /// A receiver that changes whenever `request`'s cached value may have changed (stored,
    /// replaced, dropped or flushed). Subscribe before reading, so no change is missed.
    pub fn subscribe(&self, request: &SecretRequest) -> watch::Receiver<u64> {
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        changes.retain(|_, tx| tx.receiver_count() > 0);
        changes
            .entry(request.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the waiters of every key `matches` accepts.
    fn notify(&self, matches: impl Fn(&SecretRequest) -> bool) {
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        changes.retain(|_, tx| tx.receiver_count() > 0);
        for (key, tx) in changes.iter() {
            if matches(key) {
                tx.send_modify(|generation| *generation = generation.wrapping_add(1));
            }
        }
    }

    /// How long until `request`'s value is due for a re-fetch (refresh-ahead or expiry): a
    /// waiter re-reads then, so a value nobody else reads still follows its TTL.
    pub fn next_refresh(&self, request: &SecretRequest) -> Option<Duration> {
        match self.lock().map.get(request) {
            Some(Slot::Ready(entry)) => Some(
                entry
                    .refresh_at
                    .min(entry.expires)
                    .saturating_duration_since(Instant::now()),
            ),
            _ => None,
        }
    }

    /// Drops cached values whose `source/id` matches `pattern` (all when `None`); returns how
    /// many values were dropped. In-flight fetches for matching keys are detached: their result
    /// still reaches the requests already waiting, but is not cached.
    pub fn flush(&self, pattern: Option<&Glob>) -> usize {
        let matches = |key: &SecretRequest| {
            pattern.is_none_or(|g| g.matches_parts(key.name.source(), key.name.id()))
        };
        let mut inner = self.lock();
        let mut flushed = 0usize;
        inner.map.retain(|key, slot| {
            let hit = matches(key);
            if hit && matches!(slot, Slot::Ready(_)) {
                // At most the number of entries.
                flushed = flushed.saturating_add(1);
            }
            !hit
        });
        drop(inner);
        // Waiters re-read at once: one single-flighted fetch, and an answer only if it differs.
        self.notify(matches);
        flushed
    }

    /// Makes `generation` the config generation in force and drops every cached value and
    /// in-flight slot of the older one (their fetches still reach the requests waiting on them,
    /// which the broker decides again); returns how many values were dropped. Called after the
    /// new runtime is installed, so a reader that takes the new runtime never finds an old
    /// value, and one that still holds the old runtime never stores one.
    pub fn advance(&self, generation: u64) -> usize {
        let mut inner = self.lock();
        inner.generation = generation;
        let flushed = inner
            .map
            .values()
            .filter(|s| matches!(s, Slot::Ready(_)))
            .count();
        inner.map.clear();
        drop(inner);
        self.notify(|_| true);
        flushed
    }

    /// Evicts least recently used values until at least `len` bytes of values are dropped (or
    /// none is left); returns how many were evicted. Memory a value still lends to an in-flight
    /// response is freed when that response is done.
    pub fn reclaim(&self, len: usize) -> usize {
        let mut victims = Vec::new();
        let mut freed = 0usize;
        {
            let mut inner = self.lock();
            while freed < len {
                let Some(secret) = take_lru(&mut inner) else {
                    break;
                };
                freed = freed.saturating_add(secret.value.len());
                victims.push(secret);
            }
        }
        let evicted = victims.len();
        self.metrics.cache_evictions.fetch_add(
            u64::try_from(evicted).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        // Dropped here, outside the cache lock.
        drop(victims);
        evicted
    }

    /// Makes this cache the one secure memory asks for room when `cache.max_locked_bytes` is
    /// reached (the agent has one cache).
    pub fn reclaim_for_budget(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        crate::secure_mem::set_reclaimer(move |len| weak.upgrade().map_or(0, |c| c.reclaim(len)));
    }

    /// Remaining lifetime of a cached value (for tests and diagnostics).
    pub fn ttl_left(&self, request: &SecretRequest) -> Option<Duration> {
        match self.lock().map.get(request) {
            Some(Slot::Ready(entry)) => {
                Some(entry.expires.saturating_duration_since(Instant::now()))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::slot::jittered;
    use super::*;
    use crate::name::SecretName;
    use crate::secure_mem::SecretBytes;
    use crate::source::Selector;
    use std::num::NonZeroUsize;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A forced refresh by uid 0 of a value that is not minted.
    const BY_ROOT: Force = Force {
        uid: 0,
        minted: false,
    };

    type FakeFetch = std::pin::Pin<Box<dyn Future<Output = Result<Fetched, SourceError>> + Send>>;

    /// A fake source: counts fetches, answers after `delay` with `value` (or the scripted error).
    #[derive(Clone)]
    struct Fake {
        fetches: Arc<AtomicUsize>,
        value: Arc<Mutex<Result<&'static str, SourceError>>>,
        delay: Duration,
        unchanged_when_same: bool,
    }

    impl Fake {
        fn new(value: &'static str, delay: Duration) -> Self {
            Fake {
                fetches: Arc::new(AtomicUsize::new(0)),
                value: Arc::new(Mutex::new(Ok(value))),
                delay,
                unchanged_when_same: false,
            }
        }
        fn set(&self, v: Result<&'static str, SourceError>) {
            *self.value.lock().unwrap() = v;
        }
        fn count(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
        fn fetcher(
            &self,
        ) -> impl FnOnce(SecretRequest, Option<Arc<Secret>>) -> FakeFetch + Send + 'static {
            let me = self.clone();
            move |_request, prev| {
                Box::pin(async move {
                    me.fetches.fetch_add(1, Ordering::SeqCst);
                    // The backend's answer is decided when the call starts, as with a real one.
                    let v = me.value.lock().unwrap().clone();
                    tokio::time::sleep(me.delay).await;
                    let v = v?;
                    if me.unchanged_when_same
                        && prev
                            .as_ref()
                            .is_some_and(|p| p.value.as_slice() == v.as_bytes())
                    {
                        return Ok(Fetched::Unchanged);
                    }
                    Ok(Fetched::New(Secret::new(
                        SecretBytes::from_slice(v.as_bytes()).unwrap(),
                        None,
                    )))
                })
            }
        }
    }

    fn req(id: &str) -> SecretRequest {
        SecretRequest {
            name: SecretName::new("fake", id).unwrap(),
            selector: Selector::default(),
        }
    }

    fn settings(refresh_ahead: u64, stale: u64, max: usize) -> CacheConfig {
        CacheConfig {
            ttl: Duration::from_secs(100),
            max_entries: NonZeroUsize::new(max).unwrap(),
            refresh_ahead: Duration::from_secs(refresh_ahead),
            stale_if_error: Duration::from_secs(stale),
            lock_memory: crate::secure_mem::LockPolicy::BestEffort,
            max_locked_bytes: 64 << 20,
            max_locked_bytes_per_uid: 16 << 20,
            min_refresh_interval: Duration::from_secs(10),
            jitter_percent: 0,
            negative_ttl: Duration::ZERO,
        }
    }

    const TTL: Duration = Duration::from_secs(100);

    async fn read(
        cache: &Arc<Cache>,
        fake: &Fake,
        id: &str,
    ) -> (Result<String, SourceError>, Served) {
        let (r, s) = cache.get_with(&req(id), TTL, 0, || fake.fetcher()).await;
        (
            r.map(|s| String::from_utf8(s.value.as_slice().to_vec()).unwrap()),
            s,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_fetch_once() {
        let cache = Cache::new(settings(0, 0, 100), Arc::default());
        let fake = Fake::new("v1", Duration::from_millis(50));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (cache, fake) = (cache.clone(), fake.clone());
            tasks.push(tokio::spawn(async move { read(&cache, &fake, "a").await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().0.unwrap(), "v1");
        }
        assert_eq!(fake.count(), 1);
        assert_eq!(read(&cache, &fake, "a").await.1, Served::Hit);
        assert_eq!(fake.count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_shared_but_not_cached() {
        let cache = Cache::new(settings(0, 0, 100), Arc::default());
        let fake = Fake::new("v1", Duration::from_millis(10));
        fake.set(Err(SourceError::NotFound));
        let (a, b) = tokio::join!(read(&cache, &fake, "a"), read(&cache, &fake, "a"));
        assert_eq!(a.0, Err(SourceError::NotFound));
        assert_eq!(b.0, Err(SourceError::NotFound));
        assert_eq!(fake.count(), 1);
        fake.set(Ok("now-exists"));
        assert_eq!(read(&cache, &fake, "a").await.0.unwrap(), "now-exists");
        assert_eq!(fake.count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_refetches_after_ttl() {
        let cache = Cache::new(settings(0, 0, 100), Arc::default());
        let fake = Fake::new("v1", Duration::ZERO);
        assert_eq!(read(&cache, &fake, "a").await.0.unwrap(), "v1");
        fake.set(Ok("v2"));
        tokio::time::sleep(Duration::from_secs(99)).await;
        assert_eq!(
            read(&cache, &fake, "a").await,
            (Ok("v1".to_owned()), Served::Hit)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            read(&cache, &fake, "a").await,
            (Ok("v2".to_owned()), Served::Miss)
        );
        assert_eq!(fake.count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_ahead_means_no_request_waits() {
        let metrics = Arc::new(Metrics::default());
        let cache = Cache::new(settings(10, 0, 100), metrics.clone());
        let fake = Fake::new("v1", Duration::from_millis(100));
        read(&cache, &fake, "a").await.0.unwrap();
        fake.set(Ok("v2"));
        // Inside the refresh-ahead window: served at once from cache, refresh starts behind.
        tokio::time::sleep(Duration::from_secs(95)).await;
        assert_eq!(
            read(&cache, &fake, "a").await,
            (Ok("v1".to_owned()), Served::Hit)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            read(&cache, &fake, "a").await,
            (Ok("v2".to_owned()), Served::Hit)
        );
        // Past the original expiry: still a hit, because the refresh extended it.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(read(&cache, &fake, "a").await.1, Served::Hit);
        assert_eq!(metrics.cache_refresh_waits.load(Ordering::Relaxed), 0);
        assert_eq!(fake.count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn unchanged_rotation_check_extends_entry() {
        let cache = Cache::new(settings(0, 0, 100), Arc::default());
        let mut fake = Fake::new("v1", Duration::ZERO);
        fake.unchanged_when_same = true;
        read(&cache, &fake, "a").await.0.unwrap();
        tokio::time::sleep(Duration::from_secs(101)).await;
        assert_eq!(read(&cache, &fake, "a").await.0.unwrap(), "v1");
        assert_eq!(fake.count(), 2);
        assert!(cache.ttl_left(&req("a")).unwrap() > Duration::from_secs(99));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_if_error_serves_old_value_then_stops() {
        let cache = Cache::new(settings(0, 30, 100), Arc::default());
        let fake = Fake::new("v1", Duration::ZERO);
        read(&cache, &fake, "a").await.0.unwrap();
        fake.set(Err(SourceError::Unavailable {
            detail: "down".into(),
        }));
        tokio::time::sleep(Duration::from_secs(101)).await;
        assert_eq!(
            read(&cache, &fake, "a").await,
            (Ok("v1".to_owned()), Served::Stale)
        );
        // Within the back-off, no new fetch.
        assert_eq!(
            read(&cache, &fake, "a").await,
            (Ok("v1".to_owned()), Served::Stale)
        );
        assert_eq!(fake.count(), 2);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(
            read(&cache, &fake, "a").await,
            (Ok("v1".to_owned()), Served::Stale)
        );
        assert_eq!(fake.count(), 3);
        // Past expiry + 30 s: the error comes through.
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert!(matches!(
            read(&cache, &fake, "a").await.0,
            Err(SourceError::Unavailable { .. })
        ));
        // Recovery.
        fake.set(Ok("v2"));
        assert_eq!(read(&cache, &fake, "a").await.0.unwrap(), "v2");
    }

    #[tokio::test(start_paused = true)]
    async fn non_transient_refresh_error_stops_serving() {
        let cache = Cache::new(settings(0, 300, 100), Arc::default());
        let fake = Fake::new("v1", Duration::ZERO);
        read(&cache, &fake, "a").await.0.unwrap();
        fake.set(Err(SourceError::NotFound));
        tokio::time::sleep(Duration::from_secs(101)).await;
        assert_eq!(read(&cache, &fake, "a").await.0, Err(SourceError::NotFound));
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn lru_eviction_and_flush() {
        let cache = Cache::new(settings(0, 0, 2), Arc::default());
        let fake = Fake::new("v", Duration::ZERO);
        read(&cache, &fake, "a").await.0.unwrap();
        read(&cache, &fake, "b").await.0.unwrap();
        read(&cache, &fake, "a").await.0.unwrap(); // a is now more recent than b
        read(&cache, &fake, "c").await.0.unwrap(); // evicts b
        assert_eq!(cache.len(), 2);
        assert!(cache.ttl_left(&req("b")).is_none());
        assert!(cache.ttl_left(&req("a")).is_some());
        assert_eq!(cache.flush(Some(&Glob::parse("fake/a").unwrap())), 1);
        assert_eq!(cache.flush(Some(&Glob::parse("other/*").unwrap())), 0);
        assert_eq!(cache.flush(None), 1);
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn reclaim_evicts_least_recently_used_until_enough_is_freed() {
        let cache = Cache::new(settings(0, 0, 100), Arc::default());
        let fake = Fake::new("0123456789", Duration::ZERO);
        for id in ["a", "b", "c", "d"] {
            read(&cache, &fake, id).await.0.unwrap();
        }
        read(&cache, &fake, "a").await.0.unwrap(); // b is now the least recently used
        assert_eq!(cache.reclaim(15), 2); // b and c, 20 bytes
        assert!(cache.ttl_left(&req("b")).is_none());
        assert!(cache.ttl_left(&req("c")).is_none());
        assert!(cache.ttl_left(&req("a")).is_some());
        assert_eq!(cache.reclaim(usize::MAX), 2);
        assert_eq!(cache.reclaim(1), 0);
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn flush_during_fetch_does_not_cache_old_value() {
        let cache = Cache::new(settings(0, 0, 100), Arc::default());
        let fake = Fake::new("old", Duration::from_millis(100));
        let pending = {
            let (cache, fake) = (cache.clone(), fake.clone());
            tokio::spawn(async move { read(&cache, &fake, "a").await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        cache.flush(None);
        fake.set(Ok("new"));
        assert_eq!(pending.await.unwrap().0.unwrap(), "old");
        assert_eq!(read(&cache, &fake, "a").await.0.unwrap(), "new");
    }

    /// A reader still holding the old config generation fetches through its old source, but
    /// neither stores that value nor lends its fetch to a reader of the new generation; a fetch
    /// in flight when the generation advances stores nothing either.
    #[tokio::test(start_paused = true)]
    async fn a_fetch_under_an_old_generation_is_never_stored_nor_shared() {
        let cache = Cache::new(settings(0, 0, 100), Arc::default());
        let (old, new) = (
            Fake::new("old-source", Duration::from_millis(100)),
            Fake::new("new-source", Duration::from_millis(100)),
        );
        cache.advance(1);
        let in_flight = {
            let (cache, old) = (cache.clone(), old.clone());
            tokio::spawn(async move { cache.get_with(&req("a"), TTL, 1, || old.fetcher()).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        cache.advance(2);
        // Started after the advance, still under generation 1: its own fetch, not shared.
        let late = {
            let (cache, old) = (cache.clone(), old.clone());
            tokio::spawn(async move { cache.get_with(&req("a"), TTL, 1, || old.fetcher()).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (current, served) = cache.get_with(&req("a"), TTL, 2, || new.fetcher()).await;
        assert_eq!(
            (current.unwrap().value.as_slice(), served),
            (&b"new-source"[..], Served::Miss)
        );
        assert_eq!(
            in_flight.await.unwrap().0.unwrap().value.as_slice(),
            b"old-source"
        );
        assert_eq!(
            late.await.unwrap().0.unwrap().value.as_slice(),
            b"old-source"
        );
        assert_eq!((old.count(), new.count()), (2, 1));
        // What is cached is the new source's value.
        let (cached, served) = cache.get_with(&req("a"), TTL, 2, || new.fetcher()).await;
        assert_eq!(
            (cached.unwrap().value.as_slice(), served),
            (&b"new-source"[..], Served::Hit)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn versioned_keys_are_distinct() {
        let cache = Cache::new(settings(0, 0, 100), Arc::default());
        let fake = Fake::new("current", Duration::ZERO);
        let plain = req("a");
        let mut versioned = req("a");
        versioned.selector.version_stage = Some("AWSPREVIOUS".into());
        cache
            .get_with(&plain, TTL, 0, || fake.fetcher())
            .await
            .0
            .unwrap();
        fake.set(Ok("previous"));
        let v = cache
            .get_with(&versioned, TTL, 0, || fake.fetcher())
            .await
            .0
            .unwrap();
        assert_eq!(v.value.as_slice(), b"previous");
        let p = cache
            .get_with(&plain, TTL, 0, || fake.fetcher())
            .await
            .0
            .unwrap();
        assert_eq!(p.value.as_slice(), b"current");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_hear_of_stored_values_and_flushes_only_for_their_key() {
        let cache = Cache::new(settings(10, 0, 100), Arc::default());
        let fake = Fake::new("v1", Duration::ZERO);
        read(&cache, &fake, "a").await.0.unwrap();
        let mut a = cache.subscribe(&req("a"));
        let b = cache.subscribe(&req("b"));
        // Refresh-ahead stores a new value: a's waiter hears, b's does not.
        fake.set(Ok("v2"));
        tokio::time::sleep(Duration::from_secs(95)).await;
        assert_eq!(cache.next_refresh(&req("a")), Some(Duration::ZERO));
        read(&cache, &fake, "a").await.0.unwrap();
        a.changed().await.unwrap();
        assert!(!b.has_changed().unwrap());
        cache.flush(Some(&Glob::parse("fake/b").unwrap()));
        assert!(b.has_changed().unwrap());
        assert!(!a.has_changed().unwrap());
        // A gone waiter leaves nothing behind.
        drop(b);
        cache.flush(None);
        assert!(a.has_changed().unwrap());
        assert_eq!(cache.changes.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn forced_refresh_fetches_once_per_interval() {
        let cache = Cache::new(settings(0, 0, 100), Arc::default());
        let fake = Fake::new("v1", Duration::from_millis(10));
        // On a miss the fetch itself counts as the refresh.
        let (v, _, r) = cache
            .refresh_with(&req("a"), TTL, 0, BY_ROOT, || fake.fetcher())
            .await;
        assert_eq!(
            (v.unwrap().value.as_slice(), r),
            (&b"v1"[..], Refresh::Done)
        );
        fake.set(Ok("v2"));
        let (v, served, r) = cache
            .refresh_with(&req("a"), TTL, 0, BY_ROOT, || fake.fetcher())
            .await;
        assert_eq!(v.unwrap().value.as_slice(), b"v1");
        assert_eq!((served, r), (Served::Hit, Refresh::Throttled));
        assert_eq!(fake.count(), 1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Concurrent forced refreshes share one fetch.
        let key = req("a");
        let (x, y) = tokio::join!(
            cache.refresh_with(&key, TTL, 0, BY_ROOT, || fake.fetcher()),
            cache.refresh_with(&key, TTL, 0, BY_ROOT, || fake.fetcher())
        );
        assert_eq!(x.0.unwrap().value.as_slice(), b"v2");
        assert_eq!(x.2, Refresh::Done);
        assert_eq!(y.2, Refresh::Throttled);
        assert_eq!(fake.count(), 2);
        assert_eq!(read(&cache, &fake, "a").await.0.unwrap(), "v2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_minted_value_is_left_alone_and_the_throttle_is_per_uid() {
        // TTL 100 s, refresh-ahead from 90 s.
        let cache = Cache::new(settings(10, 0, 100), Arc::default());
        let fake = Fake::new("t1", Duration::from_millis(10));
        let by = |uid, minted| Force { uid, minted };
        let key = req("a");
        read(&cache, &fake, "a").await.0.unwrap();
        fake.set(Ok("t2"));
        for uid in [0, 65534, 65534] {
            let (v, served, r) = cache
                .refresh_with(&key, TTL, 0, by(uid, true), || fake.fetcher())
                .await;
            assert_eq!(v.unwrap().value.as_slice(), b"t1");
            assert_eq!((served, r), (Served::Hit, Refresh::Fresh));
        }
        assert_eq!(fake.count(), 1, "a fresh minted value is not fetched again");
        // Not minted: refreshed, once per interval per uid; another uid's is its own.
        let (v, _, r) = cache
            .refresh_with(&key, TTL, 0, by(65534, false), || fake.fetcher())
            .await;
        assert_eq!(
            (v.unwrap().value.as_slice(), r),
            (&b"t2"[..], Refresh::Done)
        );
        let (_, _, r) = cache
            .refresh_with(&key, TTL, 0, by(65534, false), || fake.fetcher())
            .await;
        assert_eq!(r, Refresh::Throttled);
        fake.set(Ok("t3"));
        let (v, _, r) = cache
            .refresh_with(&key, TTL, 0, by(0, false), || fake.fetcher())
            .await;
        assert_eq!(
            (v.unwrap().value.as_slice(), r),
            (&b"t3"[..], Refresh::Done)
        );
        assert_eq!(fake.count(), 3);
        // Past its refresh point a minted value is refreshed on demand.
        fake.set(Ok("t4"));
        tokio::time::sleep(Duration::from_secs(95)).await;
        let (v, _, r) = cache
            .refresh_with(&key, TTL, 0, by(65534, true), || fake.fetcher())
            .await;
        assert_eq!(
            (v.unwrap().value.as_slice(), r),
            (&b"t4"[..], Refresh::Done)
        );
    }

    /// A fetch that answers `value` with a lifetime (serve 20 s, valid 30 s), or fails
    /// transiently once `down` is set.
    fn expiring(
        value: &'static str,
        down: Arc<std::sync::atomic::AtomicBool>,
        fetches: Arc<AtomicUsize>,
    ) -> impl FnOnce(SecretRequest, Option<Arc<Secret>>) -> FakeFetch + Send + 'static {
        move |_request, _prev| {
            Box::pin(async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                if down.load(Ordering::SeqCst) {
                    return Err(SourceError::Unavailable {
                        detail: "down".into(),
                    });
                }
                let mut secret =
                    Secret::new(SecretBytes::from_slice(value.as_bytes()).unwrap(), None);
                secret.lifetime = Some(crate::source::Lifetime {
                    expires_at: std::time::SystemTime::now()
                        .checked_add(Duration::from_secs(30))
                        .unwrap(),
                    serve_for: Duration::from_secs(20),
                    valid_for: Duration::from_secs(30),
                    refresh_after: None,
                });
                Ok(Fetched::New(secret))
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_with_a_lifetime_is_held_for_it_and_never_served_stale_past_it() {
        // TTL 100 s, refresh-ahead 60 s, stale-if-error 300 s: the lifetime wins over all three.
        let cache = Cache::new(settings(60, 300, 100), Arc::default());
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fetches = Arc::new(AtomicUsize::new(0));
        let key = req("t");
        let get = |v| {
            let fetch = expiring(v, down.clone(), fetches.clone());
            cache.get_with(&key, TTL, 0, move || fetch)
        };
        assert_eq!(get("t1").await.0.unwrap().value.as_slice(), b"t1");
        assert_eq!(cache.ttl_left(&key), Some(Duration::from_secs(20)));
        // Refresh-ahead starts half-way, not 60 s before a 20 s expiry (every read).
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(get("t2").await.1, Served::Hit);
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // Past the serve time with the backend down: stale only until the lifetime ends.
        down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(12)).await;
        let (value, served) = get("t2").await;
        assert_eq!(
            (value.unwrap().value.as_slice(), served),
            (&b"t1"[..], Served::Stale)
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(matches!(
            get("t2").await.0,
            Err(SourceError::Unavailable { .. })
        ));
    }

    fn negative(secs: u64, max: usize) -> CacheConfig {
        CacheConfig {
            negative_ttl: Duration::from_secs(secs),
            ..settings(0, 0, max)
        }
    }

    fn absences(cache: &Cache) -> usize {
        cache
            .lock()
            .map
            .values()
            .filter(|s| matches!(s, Slot::Absent(_)))
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_is_remembered_for_negative_ttl_then_the_new_secret_is_served() {
        let metrics = Arc::new(Metrics::default());
        let cache = Cache::new(negative(30, 100), metrics.clone());
        let fake = Fake::new("created", Duration::from_millis(10));
        fake.set(Err(SourceError::NotFound));
        assert_eq!(
            read(&cache, &fake, "a").await,
            (Err(SourceError::NotFound), Served::Miss)
        );
        for _ in 0..50 {
            assert_eq!(
                read(&cache, &fake, "a").await,
                (Err(SourceError::NotFound), Served::Negative)
            );
        }
        assert_eq!(fake.count(), 1);
        assert_eq!(metrics.cache_negative_hits.load(Ordering::Relaxed), 50);
        assert_eq!(cache.len(), 0, "an absence is not a cached value");
        // The secret is created: still hidden within the negative TTL, served right after it.
        fake.set(Ok("created"));
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(read(&cache, &fake, "a").await.1, Served::Negative);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            read(&cache, &fake, "a").await,
            (Ok("created".to_owned()), Served::Miss)
        );
        assert_eq!(fake.count(), 2);
        assert_eq!(absences(&cache), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_are_never_remembered() {
        let cache = Cache::new(negative(30, 100), Arc::default());
        let fake = Fake::new("v", Duration::ZERO);
        for err in [
            SourceError::Denied {
                detail: "no".into(),
            },
            SourceError::Busy,
            SourceError::Unavailable {
                detail: "down".into(),
            },
        ] {
            fake.set(Err(err.clone()));
            assert_eq!(read(&cache, &fake, "a").await.0, Err(err.clone()));
            assert_eq!(read(&cache, &fake, "a").await.0, Err(err));
        }
        assert_eq!(fake.count(), 6);
        assert_eq!(absences(&cache), 0);
    }

    /// A cache remembering absences for 300 s, after a read of `id` that its source (which says
    /// "created" once told to) did not have.
    async fn absent(id: &str) -> (Arc<Cache>, Fake) {
        let cache = Cache::new(negative(300, 100), Arc::default());
        let fake = Fake::new("created", Duration::ZERO);
        fake.set(Err(SourceError::NotFound));
        read(&cache, &fake, id).await.0.unwrap_err();
        (cache, fake)
    }

    #[tokio::test(start_paused = true)]
    async fn flush_drops_absences() {
        let (cache, fake) = absent("a").await;
        read(&cache, &fake, "b").await.0.unwrap_err();
        assert_eq!(absences(&cache), 2);
        fake.set(Ok("created"));
        // A flush that does not match keeps them; one that matches drops them.
        cache.flush(Some(&Glob::parse("other/*").unwrap()));
        assert_eq!(read(&cache, &fake, "a").await.1, Served::Negative);
        cache.flush(Some(&Glob::parse("fake/a").unwrap()));
        assert_eq!(read(&cache, &fake, "a").await.0.unwrap(), "created");
        assert_eq!(read(&cache, &fake, "b").await.1, Served::Negative);
        cache.flush(None);
        assert_eq!(read(&cache, &fake, "b").await.0.unwrap(), "created");
        assert_eq!(fake.count(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_missing_names_stays_under_max_entries_and_evicts_at_most_one_value() {
        let metrics = Arc::new(Metrics::default());
        let cache = Cache::new(negative(300, 4), metrics.clone());
        let fake = Fake::new("v", Duration::ZERO);
        for id in ["a", "b", "c", "d"] {
            read(&cache, &fake, id).await.0.unwrap();
        }
        fake.set(Err(SourceError::NotFound));
        for n in 0..1000 {
            read(&cache, &fake, &format!("missing-{n}"))
                .await
                .0
                .unwrap_err();
            assert!(cache.lock().map.len() <= 4);
        }
        assert_eq!(cache.len(), 3, "only the least recently used value went");
        assert!(cache.ttl_left(&req("a")).is_none());
        assert_eq!(absences(&cache), 1);
        assert_eq!(metrics.cache_evictions.load(Ordering::Relaxed), 1000);
        // Memory reclaim takes values only: absences hold no secret bytes.
        assert_eq!(cache.reclaim(usize::MAX), 3);
        assert_eq!(absences(&cache), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn forced_refresh_of_an_absence_looks_again_once_per_interval() {
        let (cache, fake) = absent("a").await;
        let (v, served, r) = cache
            .refresh_with(&req("a"), TTL, 0, BY_ROOT, || fake.fetcher())
            .await;
        assert_eq!(
            (v.unwrap_err(), served, r),
            (SourceError::NotFound, Served::Miss, Refresh::Done)
        );
        let (_, served, r) = cache
            .refresh_with(&req("a"), TTL, 0, BY_ROOT, || fake.fetcher())
            .await;
        assert_eq!((served, r), (Served::Negative, Refresh::Throttled));
        assert_eq!(fake.count(), 2);
        fake.set(Ok("created"));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (v, _, r) = cache
            .refresh_with(&req("a"), TTL, 0, BY_ROOT, || fake.fetcher())
            .await;
        assert_eq!(
            (v.unwrap().value.as_slice(), r),
            (&b"created"[..], Refresh::Done)
        );
    }

    #[test]
    fn expiry_arithmetic_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(later(now, Duration::MAX) > now);
        let mut s = settings(0, 0, 100);
        s.refresh_ahead = Duration::MAX;
        s.jitter_percent = 50;
        let (expires, refresh_at) = jittered(now, Duration::MAX, None, &s);
        assert!(expires > now && refresh_at >= now);
    }

    #[test]
    fn jitter_shortens_the_ttl_and_widens_refresh_ahead_within_bounds() {
        let mut s = settings(10, 0, 100);
        s.jitter_percent = 10;
        let now = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let (expires, refresh_at) = jittered(now, TTL, None, &s);
            let ttl = expires - now;
            assert!(ttl <= TTL && ttl >= TTL.mul_f64(0.9), "{ttl:?}");
            let window = expires - refresh_at;
            assert!(window >= Duration::from_secs(10) && window <= Duration::from_secs(11));
            seen.insert(ttl);
        }
        assert!(seen.len() > 100, "the spread is random");
        s.jitter_percent = 0;
        assert_eq!(
            jittered(now, TTL, None, &s),
            (now + TTL, now + TTL - Duration::from_secs(10))
        );
    }
}
