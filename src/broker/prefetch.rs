//! `[prefetch]`: the agent's own fetches into the cache at start, one by one or, for a source
//! that batches, in one batch call per group. The same validation and single-flight cached fetch
//! as a read; no access decision and no audit line (no value leaves the agent; the first read of
//! it is audited as a cache hit).

use std::sync::Arc;

use super::error::BrokerError;
use super::fetch::{Target, cached_fetch};
use super::lookup::validate;
use crate::name::SecretName;
use crate::source::{SecretRequest, Selector, SourceEntry};
use crate::state::AppState;

/// Fetches `name` into the cache for `[prefetch]`: the same validation and single-flight
/// cached fetch as a read. It is the agent's own request, so there is no access decision and no
/// audit line (no value leaves the agent; the first read of it is audited as a cache hit).
pub async fn prefetch(state: &AppState, name: &SecretName) -> Result<(), BrokerError> {
    if state.shutting_down() {
        return Err(BrokerError::ShuttingDown);
    }
    let runtime = state.current_runtime();
    let request = SecretRequest {
        name: name.clone(),
        selector: Selector::default(),
    };
    let entry = validate(&runtime, &request.name, &request.selector)?;
    let target = Target {
        state,
        request_id: state.next_request_id(),
        uid: crate::source::share::AGENT_UID,
        entry,
        generation: runtime.generation,
        request: &request,
    };
    let (secret, _, _) = cached_fetch(&target, false).await;
    secret.map(|_| ())
}

/// Fetches several `[prefetch]` secrets of one source that batches into the cache with one batch
/// call (`SourceEntry::prefetch_batch`), each stored through the cache's single-flight path as
/// [`prefetch`] would (no decision, no audit line). Returns the names it did not fetch (its
/// source is not up or does not batch, or the batch answered no value for them): the caller
/// prefetches those one by one.
pub async fn prefetch_batch(state: &AppState, names: &[SecretName]) -> Vec<SecretName> {
    if state.shutting_down() {
        return names.to_vec();
    }
    let runtime = state.current_runtime();
    let (mut batched, mut rest) = (Vec::new(), Vec::new());
    let mut entry: Option<&Arc<SourceEntry>> = None;
    for name in names {
        match validate(&runtime, name, &Selector::default()) {
            Ok(e) if entry.is_none_or(|first| Arc::ptr_eq(first, e)) => {
                entry = Some(e);
                batched.push(name);
            }
            _ => rest.push(name.clone()),
        }
    }
    let Some(entry) = entry else {
        return rest;
    };
    let ids: Vec<String> = batched.iter().map(|n| n.id().to_owned()).collect();
    let Some(answers) = entry.prefetch_batch(&ids, &state.metrics).await else {
        rest.extend(batched.into_iter().cloned());
        return rest;
    };
    if let Some(first) = batched.first() {
        let fetches = u64::try_from(ids.len()).unwrap_or(u64::MAX);
        state
            .metrics
            .source(first.source())
            .fetches
            .fetch_add(fetches, std::sync::atomic::Ordering::Relaxed);
    }
    for (name, answer) in batched.into_iter().zip(answers) {
        let Some(secret) = answer else {
            rest.push(name.clone());
            continue;
        };
        let request = SecretRequest {
            name: name.clone(),
            selector: Selector::default(),
        };
        // A value cached or being fetched meanwhile wins; this one is then dropped (wiped).
        let fill = move || move |_, _| async move { Ok(crate::source::Fetched::New(secret)) };
        let (stored, _) = state
            .cache
            .get_with(&request, entry.ttl, runtime.generation, fill)
            .await;
        if stored.is_err() {
            rest.push(name.clone());
        }
    }
    rest
}
