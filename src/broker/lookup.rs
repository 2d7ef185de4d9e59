//! Where a request's name leads under one runtime: the source entry that could serve it
//! ([`validate`]: the source exists, takes the selector, could ever serve the id), the check of
//! the location a transit read takes its ciphertext from, and whether a reload has happened
//! since. Used by every entry point of the broker before the cache is asked.

use std::sync::Arc;

use super::error::BrokerError;
use crate::acl;
use crate::name::SecretName;
use crate::source::{Selector, Source, SourceEntry};
use crate::state::{AppState, Runtime};

/// The source entry for `name`, if it exists and could ever serve `name`'s id with `selector`.
pub(super) fn validate<'r>(
    runtime: &'r Runtime,
    name: &SecretName,
    selector: &Selector,
) -> Result<&'r Arc<SourceEntry>, BrokerError> {
    let Some(entry) = runtime.sources.get(name.source()) else {
        return Err(if runtime.starting.contains_key(name.source()) {
            BrokerError::SourceStarting
        } else {
            BrokerError::NotFound
        });
    };
    entry
        .source
        .check_selector(selector)
        .map_err(BrokerError::BadSelector)?;
    entry
        .source
        .check_id(name.id())
        .map_err(BrokerError::InvalidId)?;
    Ok(entry)
}

/// SECURITY: a transit read takes its ciphertext from another source's secret; the caller must
/// be allowed that location too, else a transit rule would read any source's secret through the
/// back door. A denial is `Forbidden`, never a 404/502 that tells whether it exists.
pub(super) fn check_ciphertext_location(
    entry: &SourceEntry,
    name: &SecretName,
    decide: impl Fn(&SecretName) -> acl::Decision,
) -> Result<(), BrokerError> {
    let Source::VaultTransit(transit) = &entry.source else {
        return Ok(());
    };
    match transit.ciphertext_location(name.id()) {
        Some(location) if !decide(&location).allowed() => Err(BrokerError::Forbidden),
        _ => Ok(()),
    }
}

/// Whether the runtime in force is no longer `runtime`'s generation (a reload happened).
pub(super) fn reloaded_since(state: &AppState, runtime: &Runtime) -> bool {
    state.current_runtime().generation != runtime.generation
}
