//! The cached fetch: a look-up in the cache, fetching from the source on a miss (or at once for a
//! refresh) under the source's fetch timeout and the caller's share of its fetches, with one
//! metrics and logging policy; and the key an aws-credentials read is cached under (the caller's
//! own session). It decides nothing: the caller was admitted before.

use std::sync::Arc;
use std::time::Instant;

use super::error::BrokerError;
use crate::audit::RequestId;
use crate::cache::{Force, Refresh, Served};
use crate::rate_limited;
use crate::source::{Secret, SecretRequest, SourceEntry, SourceError};
use crate::state::AppState;

/// Which value a read looks up, for whom.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub(super) state: &'a AppState,
    pub(super) request_id: RequestId,
    /// Whose share of the source's fetches a miss takes.
    pub(super) uid: u32,
    pub(super) entry: &'a Arc<SourceEntry>,
    /// The config generation `entry` belongs to.
    pub(super) generation: u64,
    pub(super) request: &'a SecretRequest,
}

/// Looks `request` up in the cache, fetching it from its source on a miss, or now when `force`
/// (single-flight, bounded by the source's fetch timeout and `uid`'s share of its fetches,
/// counted, logged at one rate-limited site).
pub(super) async fn cached_fetch(
    target: &Target<'_>,
    force: bool,
) -> (Result<Arc<Secret>, BrokerError>, Served, Refresh) {
    let Target {
        state,
        request_id,
        uid,
        entry,
        generation,
        request,
    } = *target;
    let ttl = entry.ttl;
    // Made, and run, only on a miss or refresh: a hit does not touch these `Arc`s' counts.
    let fetch = || {
        let metrics = state.metrics.clone();
        let entry = entry.clone();
        move |fetch_request: SecretRequest, previous: Option<Arc<Secret>>| async move {
            let source_metrics = metrics.source(fetch_request.name.source());
            source_metrics
                .fetches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let started = Instant::now();
            let result = match tokio::time::timeout(
                entry.fetch_timeout,
                entry.fetch_limited(uid, &fetch_request, previous.as_deref(), &metrics),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(SourceError::Timeout(entry.fetch_timeout)),
            };
            source_metrics.observe(started.elapsed(), result.is_ok());
            match &result {
                // The detail never holds a value (SourceError's contract).
                Err(SourceError::NotFound) => {
                    tracing::debug!(secret = %fetch_request.name, "fetch: no such secret")
                }
                // A client can provoke these (many names while a backend is down): rate-limited at
                // a site of their own, so request floods cannot hide them.
                Err(err) => {
                    rate_limited!(warn, secret = %fetch_request.name, error = %err, "fetch failed")
                }
                Ok(_) => tracing::debug!(secret = %fetch_request.name, "fetched"),
            }
            result
        }
    };
    let (result, served, refresh) = if force {
        let force = Force {
            uid,
            minted: entry.source.mints(),
        };
        state
            .cache
            .refresh_with(request, ttl, generation, force, fetch)
            .await
    } else {
        let (result, served) = state.cache.get_with(request, ttl, generation, fetch).await;
        (result, served, Refresh::Done)
    };
    let result = result.map_err(|err| {
        rate_limited!(info, %request_id, secret = %request.name, error = %err, "request failed");
        BrokerError::from(&err)
    });
    (result, served, refresh)
}
