//! One slot of a `vault-lease` profile and the lease it holds: a shared profile is its own only
//! slot; a `per_caller` profile holds one slot per caller identity, created at the caller's
//! first read (at most [`MAX_LEASES_PER_UID`] per uid). What is done with a slot's lease
//! (issue, serve, renew, retire) is `lease`'s.
//!
//! SECURITY: one uid may cause at most [`MAX_LEASES_PER_UID`] leases per profile, so a caller
//! that starts many units (user units are free to create) cannot mint logins without bound.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use super::lease_config::ProfileConfig;
use super::renew::Times;
use crate::secure_mem::SecretBytes;
use crate::source::error::SourceError;
use crate::source::secret::CallerKey;

/// The most per-caller leases one uid causes per profile (one per unit it runs in).
pub const MAX_LEASES_PER_UID: usize = 16;

/// Lease counters of one profile.
#[derive(Debug, Default)]
pub struct Counts {
    /// Leases obtained.
    pub issued: AtomicU64,
    /// Successful renewals.
    pub renewed: AtomicU64,
    /// Successful revocations.
    pub revoked: AtomicU64,
}

/// One profile and its current lease.
#[derive(Debug)]
pub(super) struct Profile {
    pub(super) name: String,
    pub(super) config: ProfileConfig,
    pub(super) current: Mutex<Option<Arc<Lease>>>,
    /// Held while a lease is issued: the single flight.
    pub(super) issuing: tokio::sync::Mutex<()>,
    /// Whether the renewal task runs.
    pub(super) maintained: AtomicBool,
    /// A flush asked for a new lease: the next read issues one.
    pub(super) flushed: AtomicBool,
    /// Its lease issue/renew/revoke counters (shared with its leases).
    pub(super) counts: Arc<Counts>,
    /// Whom this slot's lease is for (a `per_caller` profile's slot; `None`: shared).
    pub(super) caller: Option<CallerKey>,
    /// A `per_caller` profile's slots, one per caller identity (empty otherwise).
    pub(super) callers: Mutex<BTreeMap<CallerKey, Arc<Profile>>>,
}

/// One lease (or certificate) from Vault.
pub(super) struct Lease {
    /// Empty for a certificate issued without a lease.
    pub(super) id: SecretBytes,
    /// For logs: the engine path and a hash of the id.
    pub(super) accessor: String,
    /// The engine's `data` object as JSON text.
    pub(super) data: SecretBytes,
    /// When it was issued, how long it lived then, and the renewals since.
    pub(super) times: Mutex<Times>,
    /// Its profile's counters.
    pub(super) counts: Arc<Counts>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("accessor", &self.accessor)
            .finish_non_exhaustive()
    }
}

impl Lease {
    pub(super) fn times(&self) -> Times {
        *self.times.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn has_id(&self) -> bool {
        !self.id.is_empty()
    }
}

impl Profile {
    pub(super) fn new(
        name: &str,
        config: ProfileConfig,
        counts: Arc<Counts>,
        caller: Option<CallerKey>,
    ) -> Self {
        Profile {
            name: name.to_owned(),
            config,
            current: Mutex::new(None),
            issuing: tokio::sync::Mutex::new(()),
            maintained: AtomicBool::new(false),
            flushed: AtomicBool::new(false),
            counts,
            caller,
            callers: Mutex::new(BTreeMap::new()),
        }
    }

    /// The slot a read by `caller` uses: the profile itself when shared; for `per_caller`, the
    /// caller's own slot, created at its first read (at most [`MAX_LEASES_PER_UID`] per uid).
    pub(super) fn slot(
        self: &Arc<Self>,
        caller: Option<&CallerKey>,
    ) -> Result<Arc<Profile>, SourceError> {
        if !self.config.per_caller {
            return Ok(self.clone());
        }
        // SECURITY: a per-caller profile never falls back to a shared lease.
        let caller = caller.ok_or_else(|| {
            SourceError::Invalid(format!(
                "profile {} has per_caller = true and is read only by a caller",
                self.name
            ))
        })?;
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = callers.get(caller) {
            return Ok(slot.clone());
        }
        let held = callers.keys().filter(|k| k.uid == caller.uid).count();
        if held >= MAX_LEASES_PER_UID {
            return Err(SourceError::LeaseUnavailable {
                detail: format!(
                    "uid {} already holds {MAX_LEASES_PER_UID} leases of profile {}",
                    caller.uid, self.name
                ),
            });
        }
        let slot = Arc::new(Profile::new(
            &self.name,
            self.config.clone(),
            self.counts.clone(),
            Some(caller.clone()),
        ));
        callers.insert(caller.clone(), slot.clone());
        Ok(slot)
    }

    /// Every slot that can hold a lease: the profile itself when shared, the callers' slots
    /// when `per_caller`.
    pub(super) fn slots(self: &Arc<Self>) -> Vec<Arc<Profile>> {
        if self.config.per_caller {
            let callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
            callers.values().cloned().collect()
        } else {
            vec![self.clone()]
        }
    }

    pub(super) fn current(&self) -> Option<Arc<Lease>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn take(&self) -> Option<Arc<Lease>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub(super) fn install(&self, lease: Arc<Lease>) -> Option<Arc<Lease>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;
    use std::time::Duration;

    fn per_caller_profile() -> Arc<Profile> {
        let config = ProfileConfig {
            path: "database/creds/app".to_owned(),
            method: Method::GET,
            params: serde_json::Map::new(),
            renew_at_percent: 67,
            min_remaining: Duration::from_secs(5),
            per_caller: true,
        };
        Arc::new(Profile::new("app", config, Arc::default(), None))
    }

    fn caller(uid: u32, unit: Option<&str>) -> CallerKey {
        CallerKey {
            uid,
            unit: unit.map(str::to_owned),
            user_unit: None,
        }
    }

    #[test]
    fn a_per_caller_profile_has_one_slot_per_identity_and_none_without_a_caller() {
        let profile = per_caller_profile();
        let root = profile.slot(Some(&caller(0, None))).unwrap();
        let nobody = profile.slot(Some(&caller(65534, None))).unwrap();
        let unit = profile.slot(Some(&caller(0, Some("app.service")))).unwrap();
        assert!(!Arc::ptr_eq(&root, &nobody));
        assert!(!Arc::ptr_eq(&root, &unit));
        assert!(Arc::ptr_eq(
            &root,
            &profile.slot(Some(&caller(0, None))).unwrap()
        ));
        assert!(Arc::ptr_eq(&root.counts, &profile.counts));
        assert_eq!(root.caller, Some(caller(0, None)));
        assert_eq!(profile.slots().len(), 3);
        // Never the shared lease.
        assert!(matches!(profile.slot(None), Err(SourceError::Invalid(_))));
    }

    #[test]
    fn one_uid_causes_at_most_the_cap_of_per_caller_leases() {
        let profile = per_caller_profile();
        let unit = |i: usize| format!("u{i}.service");
        for i in 0..MAX_LEASES_PER_UID {
            profile.slot(Some(&caller(1000, Some(&unit(i))))).unwrap();
        }
        let over = profile.slot(Some(&caller(1000, Some("one-more.service"))));
        assert!(matches!(over, Err(SourceError::LeaseUnavailable { .. })));
        // Its known identities still work, and another uid is not affected.
        profile.slot(Some(&caller(1000, Some(&unit(0))))).unwrap();
        profile.slot(Some(&caller(1001, None))).unwrap();
        assert_eq!(profile.slots().len(), MAX_LEASES_PER_UID + 1);
    }

    #[test]
    fn a_shared_profile_is_its_own_only_slot() {
        let config = ProfileConfig {
            per_caller: false,
            ..per_caller_profile().config.clone()
        };
        let profile = Arc::new(Profile::new("app", config, Arc::default(), None));
        let slot = profile.slot(Some(&caller(0, None))).unwrap();
        assert!(Arc::ptr_eq(&slot, &profile));
        assert!(Arc::ptr_eq(&profile.slot(None).unwrap(), &profile));
        assert_eq!(profile.slots().len(), 1);
    }
}
