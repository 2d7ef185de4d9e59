//! The fill path of a look-up: under the lock, decide what to serve or wait for (`lookup`);
//! start a miss or refresh as its own task (`start_miss`, `spawn_fetch`); store what it fetched,
//! under the generation in force (`complete`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Cache;
use super::forced::Refresh;
use super::forced::{Force, Forced, leave_fresh};
use super::lru::evict_lru;
use super::slot::*;
use crate::source::{Fetched, Secret, SecretRequest, SourceError};

impl Cache {
    /// The synchronous part of `get`, under the lock: decide what to serve or wait for.
    pub(super) fn lookup<M, F, Fut>(
        self: &Arc<Self>,
        request: &SecretRequest,
        ttl: Duration,
        generation: u64,
        force: Option<Force>,
        make: M,
    ) -> (Step, Refresh)
    where
        M: FnOnce() -> F,
        F: FnOnce(SecretRequest, Option<Arc<Secret>>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched, SourceError>> + Send + 'static,
    {
        let now = Instant::now();
        let mut guard = self.lock();
        let inner: &mut Inner = &mut guard;
        let settings = inner.settings;
        // A u64 counter of lookups and ids does not wrap within the life of a process.
        inner.clock = inner.clock.saturating_add(1);
        let clock = inner.clock;
        let next_id = inner.next_id.saturating_add(1);
        if generation != inner.generation {
            // SECURITY: a request decided under another config generation (a reload happened
            // while it was on its way) fetches through the source it was given, but its result
            // is neither shared with this generation's readers nor stored (the broker decides
            // such a request again under the new config).
            inner.next_id = next_id;
            let rx = self.spawn_fetch(request.clone(), next_id, generation, ttl, None, make());
            return (Step::WaitMiss(rx), Refresh::Done);
        }
        let step = match inner.map.get_mut(request) {
            Some(Slot::Ready(entry)) => {
                entry.last_used = clock;
                if leave_fresh(force, now, entry.refresh_at.min(entry.expires)) {
                    self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return (
                        Step::Done(entry.secret.clone(), Served::Hit),
                        Refresh::Fresh,
                    );
                }
                // A reader's forced re-fetch goes the way of an expired value: join the fetch in
                // flight or start one, and wait for it.
                let (forced, refresh) =
                    entry
                        .forced
                        .decide(force, now, settings.min_refresh_interval);
                let backing_off = entry.retry_after.is_some_and(|t| now < t);
                if !forced && now < entry.expires {
                    let refresh_due = now >= entry.refresh_at;
                    if refresh_due && entry.refresh.is_none() && !backing_off {
                        inner.next_id = next_id;
                        let prev = entry.secret.clone();
                        let rx = self.spawn_fetch(
                            request.clone(),
                            next_id,
                            generation,
                            ttl,
                            Some(prev),
                            make(),
                        );
                        entry.refresh = Some((next_id, rx));
                        self.metrics
                            .cache_refresh_ahead
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return (Step::Done(entry.secret.clone(), Served::Hit), refresh);
                }
                // Expired (or forced).
                let stale_until = entry.stale_until(settings.stale_if_error);
                let prev = entry.secret.clone();
                if !forced && backing_off && now < stale_until {
                    self.metrics.cache_stale.fetch_add(1, Ordering::Relaxed);
                    return (Step::Done(prev, Served::Stale), refresh);
                }
                let rx = match &entry.refresh {
                    Some((_, rx)) => rx.clone(),
                    None => {
                        inner.next_id = next_id;
                        let rx = self.spawn_fetch(
                            request.clone(),
                            next_id,
                            generation,
                            ttl,
                            Some(prev.clone()),
                            make(),
                        );
                        entry.refresh = Some((next_id, rx.clone()));
                        rx
                    }
                };
                return (
                    Step::WaitRefresh {
                        rx,
                        prev,
                        stale_until,
                    },
                    refresh,
                );
            }
            Some(Slot::Loading { rx, forced, .. }) => {
                if let Some(force) = force {
                    forced.note(force.uid);
                }
                Step::WaitMiss(rx.clone())
            }
            Some(Slot::Absent(absent)) => {
                absent.last_used = clock;
                // ?refresh=true may look again, as for a value: once per interval.
                let (forced, refresh) =
                    absent
                        .forced
                        .decide(force, now, settings.min_refresh_interval);
                if !forced && now < absent.expires {
                    self.metrics
                        .cache_negative_hits
                        .fetch_add(1, Ordering::Relaxed);
                    return (Step::Absent, refresh);
                }
                // Expired (or forced): a miss in the slot the absence held.
                let forced = force.filter(|_| forced);
                let rx = self.start_miss(inner, request, next_id, ttl, forced, make());
                return (Step::WaitMiss(rx), refresh);
            }
            None => {
                if inner.map.len() >= settings.max_entries.get() && evict_lru(inner) {
                    self.metrics.cache_evictions.fetch_add(1, Ordering::Relaxed);
                }
                Step::WaitMiss(self.start_miss(inner, request, next_id, ttl, force, make()))
            }
        };
        (step, Refresh::Done)
    }

    /// Starts fetch `id` of `request` in a loading slot; returns its waiter.
    fn start_miss<F, Fut>(
        self: &Arc<Self>,
        inner: &mut Inner,
        request: &SecretRequest,
        id: u64,
        ttl: Duration,
        force: Option<Force>,
        fetch: F,
    ) -> Waiter
    where
        F: FnOnce(SecretRequest, Option<Arc<Secret>>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched, SourceError>> + Send + 'static,
    {
        inner.next_id = id;
        let generation = inner.generation;
        let rx = self.spawn_fetch(request.clone(), id, generation, ttl, None, fetch);
        let mut forced = Forced::default();
        if let Some(force) = force {
            forced.note(force.uid);
        }
        let slot = Slot::Loading {
            id,
            rx: rx.clone(),
            forced,
        };
        inner.map.insert(request.clone(), slot);
        rx
    }

    fn spawn_fetch<F, Fut>(
        self: &Arc<Self>,
        request: SecretRequest,
        id: u64,
        generation: u64,
        ttl: Duration,
        prev: Option<Arc<Secret>>,
        fetch: F,
    ) -> Waiter
    where
        F: FnOnce(SecretRequest, Option<Arc<Secret>>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched, SourceError>> + Send + 'static,
    {
        let (tx, rx) = watch::channel(None);
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let outcome: Shared = match fetch(request.clone(), prev.clone()).await {
                Ok(Fetched::New(secret)) => Ok(Arc::new(secret)),
                Ok(Fetched::Unchanged) => prev.ok_or_else(|| SourceError::BadReply {
                    detail: "source reported 'unchanged' for a value it never gave".to_owned(),
                }),
                Err(err) => Err(err),
            };
            cache.complete(&request, id, generation, ttl, &outcome);
            // Nobody waiting is fine (refresh-ahead, or every client went away).
            let _ = tx.send(Some(outcome));
        });
        rx
    }

    /// Files the outcome of fetch `id` unless the slot was flushed or replaced meanwhile, or the
    /// fetch was started under another config generation than the one in force now.
    fn complete(
        &self,
        request: &SecretRequest,
        id: u64,
        generation: u64,
        ttl: Duration,
        outcome: &Shared,
    ) {
        let now = Instant::now();
        // A value with a lifetime of its own is held no longer than the source says, and its
        // refresh-ahead starts no earlier than half-way (else a lifetime shorter than the
        // window would start a refresh on every read).
        let lifetime = outcome.as_ref().ok().and_then(|s| s.lifetime);
        let (ttl, max_window) = match lifetime {
            Some(l) => {
                let ttl = ttl.min(l.serve_for);
                (ttl, Some(ttl.checked_div(2).unwrap_or(ttl)))
            }
            None => (ttl, None),
        };
        let valid_until = lifetime.map(|l| later(now, l.valid_for));
        let mut guard = self.lock();
        let inner: &mut Inner = &mut guard;
        let settings = inner.settings;
        let (expires, refresh_at) = jittered(now, ttl, max_window, &settings);
        // SECURITY: a fetch through a source of an older config never stores its result, even
        // if a slot of the same id survived (it cannot: `advance` empties the map).
        if generation != inner.generation {
            return;
        }
        // A source that says when to renew (aws-credentials' refresh_at_percent) is renewed then.
        let refresh_at = match lifetime.and_then(|l| l.refresh_after) {
            Some(after) => later(now, after).min(expires),
            None => refresh_at,
        };
        let Some(slot) = inner.map.get_mut(request) else {
            return;
        };
        let mut stored = false;
        let remove = match slot {
            Slot::Loading {
                id: slot_id,
                forced,
                ..
            } if *slot_id == id => match outcome {
                Ok(secret) => {
                    let forced = std::mem::take(forced).stamp(now);
                    *slot = Slot::Ready(Entry {
                        secret: secret.clone(),
                        expires,
                        refresh_at,
                        forced,
                        ttl,
                        last_used: inner.clock,
                        refresh: None,
                        retry_after: None,
                        valid_until,
                        generation,
                    });
                    stored = true;
                    false
                }
                Err(SourceError::NotFound) if !settings.negative_ttl.is_zero() => {
                    let forced = std::mem::take(forced).stamp(now);
                    *slot = Slot::Absent(Absent {
                        expires: later(now, settings.negative_ttl),
                        forced,
                        last_used: inner.clock,
                    });
                    false
                }
                Err(_) => true,
            },
            Slot::Ready(entry)
                if entry.generation == generation
                    && entry.refresh.as_ref().is_some_and(|(r, _)| *r == id) =>
            {
                entry.refresh = None;
                match outcome {
                    Ok(secret) => {
                        stored = !Arc::ptr_eq(&entry.secret, secret);
                        entry.secret = secret.clone();
                        entry.ttl = ttl;
                        entry.expires = expires;
                        entry.refresh_at = refresh_at;
                        entry.retry_after = None;
                        entry.valid_until = valid_until;
                        false
                    }
                    Err(err)
                        if err.is_transient()
                            && now < entry.stale_until(settings.stale_if_error) =>
                    {
                        entry.retry_after = Some(later(now, RETRY_BACKOFF));
                        false
                    }
                    // Gone, denied, or past the stale bound: stop serving the old value.
                    Err(_) => true,
                }
            }
            _ => false,
        };
        if remove {
            inner.map.remove(request);
        }
        drop(guard);
        // A removed value is news too: a waiter's next read fetches afresh and tells.
        if stored || remove {
            self.notify(|key| key == request);
        }
    }
}
