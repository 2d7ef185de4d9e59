//! `per_caller = true` on a `vault-lease` profile: who a lease is for, and the request key
//! that keeps one caller's credential apart from another's in the cache.
//!
//! A caller identity is the kernel's: the uid, and the system unit and user unit when the
//! peer's cgroup names them. The broker adds it to a read of a per-caller profile (after the
//! access decision) through [`keyed_request`]; the lease source keeps one lease per identity.
//! It does not decide who may read (the rules do) and does not hold leases (`lease` does).
//!
//! SECURITY: one uid may cause at most [`MAX_LEASES_PER_UID`] leases per profile, so a caller
//! that starts many units (user units are free to create) cannot mint logins without bound.

use crate::peer::PeerIdentity;
use crate::source::{SecretRequest, Selector};
use crate::source::{Source, SourceEntry};

/// The most per-caller leases one uid causes per profile (one per unit it runs in).
pub const MAX_LEASES_PER_UID: usize = 16;

/// One caller identity of a per-caller profile.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallerKey {
    /// The caller's effective uid.
    pub uid: u32,
    /// Its system unit (`app.service`), when known.
    pub unit: Option<String>,
    /// Its unit inside a user manager, when known.
    pub user_unit: Option<String>,
}

impl CallerKey {
    /// The identity of `peer`.
    pub fn of(peer: &PeerIdentity) -> Self {
        CallerKey {
            uid: peer.uid,
            unit: peer.unit.clone(),
            user_unit: peer.user_unit.clone(),
        }
    }
}

impl std::fmt::Display for CallerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid {}", self.uid)?;
        if let Some(unit) = &self.unit {
            write!(f, " unit {unit}")?;
        }
        if let Some(unit) = &self.user_unit {
            write!(f, " user unit {unit}")?;
        }
        Ok(())
    }
}

/// The request a read by `peer` looks up: `request` with the caller's identity in its selector
/// when it names a per-caller profile (so the cache keeps one entry per caller), else `None`
/// (the request as it is).
pub fn keyed_request(
    entry: &SourceEntry,
    request: &SecretRequest,
    peer: &PeerIdentity,
) -> Option<SecretRequest> {
    let Source::VaultLease(lease) = &entry.source else {
        return None;
    };
    if !lease.is_per_caller(request.name.id()) {
        return None;
    }
    Some(SecretRequest {
        name: request.name.clone(),
        selector: Selector {
            caller: Some(std::sync::Arc::new(CallerKey::of(peer))),
            ..request.selector.clone()
        },
    })
}
