//! Start-up work that goes on beside the server: sources with `startup_check = "retry"` that
//! keep retrying their check, `[prefetch]` secrets fetched into the cache, and the
//! progress `crate::readiness::Readiness` reports from both for `GET /v1/ready`.
//!
//! It owns the retry loops and their backoff; it does not fetch on its own (a prefetch is
//! `broker::prefetch`, the cache's single-flight path) and does not build sources itself
//! (`source::build_one`). Every loop ends when the agent drains or a reload replaces the config
//! generation it belongs to.

use std::sync::Arc;
use std::time::Duration;

use crate::backoff::{Backoff, random_fraction};
use crate::broker::{self, BrokerError};
use crate::config::PrefetchConfig;
use crate::name::SecretName;
use crate::source::SharedSources;
use crate::source::build::BuildError;
use crate::state::AppState;

/// The first wait of a retry loop.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait of a retry loop.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The start-up retry loops' backoff: [`FIRST_BACKOFF`] doubling to [`MAX_BACKOFF`].
fn backoff() -> Backoff {
    Backoff::new(FIRST_BACKOFF, MAX_BACKOFF)
}

/// Keeps retrying each source in `starting` (a failed `startup_check = "retry"`) with
/// [`Backoff`] until its check passes, then adds it to the runtime of `generation`. Logs each
/// state change once: starting (warn; error when the backend refused the agent for good, which
/// is still retried: credentials may be fixed without a restart), up (info).
pub fn spawn_source_retries(
    state: &Arc<AppState>,
    generation: u64,
    starting: std::collections::BTreeMap<String, BuildError>,
    others: &SharedSources,
) {
    let runtime = state.runtime();
    for (name, first) in starting {
        let Some(cfg) = runtime.config.sources.get(&name).cloned() else {
            continue;
        };
        let (state, others) = (state.clone(), others.clone());
        tokio::spawn(async move {
            log_starting(&name, &first);
            let mut refused_for_good = !first.retry_may_help();
            let mut backoff = backoff();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(backoff.delay()) => {}
                    () = state.shutdown_signal() => return,
                }
                if state.runtime().generation != generation {
                    return;
                }
                match crate::source::build::build_one(&name, &cfg, &others).await {
                    Ok(entries) => {
                        let installed = state.update_runtime(|current| {
                            (current.generation == generation)
                                .then(|| current.with_source_up(&name, entries))
                        });
                        if installed {
                            tracing::info!(source = %name, "source {name} up");
                            state.readiness.report(&state.runtime());
                        }
                        return;
                    }
                    Err(err) if refused_for_good == err.retry_may_help() => {
                        refused_for_good = !err.retry_may_help();
                        log_starting(&name, &err);
                    }
                    Err(_) => {}
                }
            }
        });
    }
}

fn log_starting(name: &str, err: &BuildError) {
    let cause = err.cause();
    if err.retry_may_help() {
        tracing::warn!(source = %name, "source {name} starting: {cause}; retrying with backoff");
    } else {
        tracing::error!(
            source = %name,
            "source {name} starting: {cause}; the backend refused the agent, still retrying \
             (fix the credentials or the policy)"
        );
    }
}

/// Fetches each `[prefetch]` secret of `generation` into the cache, each at a random moment
/// within `prefetch.jitter`, retrying with [`Backoff`] until it succeeds. A secret whose source
/// is still starting waits for it instead (tried again when the runtime changes). Logs the
/// first failure and the recovery of each, once.
///
/// The secrets of a source that batches (Secrets Manager, Parameter Store) go in groups of its
/// batch size, each group at one random moment as one batch call (`broker::prefetch_batch`);
/// a secret its batch did not fetch goes on alone, as above.
pub fn spawn_prefetch(state: &Arc<AppState>, generation: u64, prefetch: &PrefetchConfig) {
    state
        .readiness
        .begin_prefetch(generation, &prefetch.secrets);
    let runtime = state.runtime();
    let mut groups: std::collections::BTreeMap<&str, (usize, Vec<SecretName>)> =
        std::collections::BTreeMap::new();
    for name in &prefetch.secrets {
        let batch_size = runtime
            .sources
            .get(name.source())
            .and_then(|entry| entry.source.batch_size());
        match batch_size {
            Some(size) => groups
                .entry(name.source())
                .or_insert_with(|| (size, Vec::new()))
                .1
                .push(name.clone()),
            None => spawn_one_prefetch(
                state,
                generation,
                name.clone(),
                prefetch.jitter.mul_f64(random_fraction()),
            ),
        }
    }
    for (size, names) in groups.into_values() {
        for chunk in names.chunks(size) {
            let delay = prefetch.jitter.mul_f64(random_fraction());
            let (state, chunk) = (state.clone(), chunk.to_vec());
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = state.shutdown_signal() => return,
                }
                if state.runtime().generation != generation || state.shutting_down() {
                    return;
                }
                let rest = broker::prefetch_batch(&state, &chunk).await;
                for name in chunk.iter().filter(|n| !rest.contains(n)) {
                    tracing::debug!(secret = %name, "prefetched");
                    state.readiness.prefetched(generation, name);
                }
                state.readiness.report(&state.runtime());
                for name in rest {
                    spawn_one_prefetch(&state, generation, name, Duration::ZERO);
                }
            });
        }
    }
}

/// Prefetches `name` after `delay`, retrying with backoff (see [`spawn_prefetch`]).
fn spawn_one_prefetch(state: &Arc<AppState>, generation: u64, name: SecretName, delay: Duration) {
    {
        let state = state.clone();
        tokio::spawn(async move {
            let mut changes = state.readiness.subscribe();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = state.shutdown_signal() => return,
            }
            let mut backoff = backoff();
            // What was last logged: nothing, waiting for the source, or failing.
            let mut logged: Option<bool> = None;
            loop {
                if state.runtime().generation != generation || state.shutting_down() {
                    return;
                }
                changes.borrow_and_update();
                match broker::prefetch(&state, &name).await {
                    Ok(()) => {
                        if logged.is_some() {
                            tracing::info!(secret = %name, "prefetch of {name} succeeded");
                        } else {
                            tracing::debug!(secret = %name, "prefetched");
                        }
                        state.readiness.prefetched(generation, &name);
                        state.readiness.report(&state.runtime());
                        return;
                    }
                    Err(err) => {
                        // Waiting for its source is not failing: no backoff spent, and the
                        // source coming up (a runtime change) wakes it at once.
                        let starting = err == BrokerError::SourceStarting;
                        if logged != Some(starting) {
                            if starting {
                                tracing::info!(secret = %name, "prefetch of {name} waits for its source to start");
                            } else {
                                tracing::warn!(secret = %name, error = %err, "prefetch of {name} failed; retrying with backoff");
                            }
                            logged = Some(starting);
                        }
                        let wait = if starting {
                            MAX_BACKOFF
                        } else {
                            backoff.delay()
                        };
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            _ = changes.changed() => {}
                            () = state.shutdown_signal() => return,
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_a_minute_with_jitter_of_up_to_half() {
        let mut backoff = backoff();
        let bases = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        for base in bases {
            let base = Duration::from_secs(base);
            let delay = backoff.delay();
            assert!(delay <= base && delay >= base / 2, "{delay:?} for {base:?}");
        }
    }
}
