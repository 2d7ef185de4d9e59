//! The `vault-lease` source: named profiles, each an engine endpoint that returns a lease
//! (`database/creds/app`) or a certificate (`pki/issue/web`), served as the engine's `data`
//! object (JSON, so `?field=username` works) through the Vault source's own session.
//!
//! One lease per profile, shared by every caller the rules admit: a read takes the current
//! lease, and only a read that finds none (or one past its switch point) asks Vault, under the
//! profile's lock, so concurrent first reads cause one lease (single-flight). The renewal and
//! replacement schedule lives in `renew`; this file owns the leases themselves: issue, serve,
//! retire (revoke after `revoke_grace_secs`), and revoke everything at shutdown; the wire
//! format (replies, call bodies, accessors) lives in `lease_reply`.
//!
//! A `per_caller` profile holds one such slot per caller identity (`lease_slot`), each with
//! its own lease, single flight and renewal task, created at the caller's first read.
//!
//! SECURITY: a lease id lets its holder renew or revoke the credential; it lives in
//! [`SecretBytes`], is never served, and is logged only as its accessor (the engine path and a
//! short hash of the id). The credential itself is only in secure memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::Method;
use tokio::time::Instant;

use super::auth::VaultSession;
use super::lease_config::LeaseConfig;
use super::lease_reply::{RenewReply, lease_body, parse_lease, query};
use super::lease_slot::{Counts, Lease, Profile};
use super::renew::{Step, plus};
use crate::backoff::{Backoff, random_fraction};
use crate::peer::PeerIdentity;
use crate::secure_mem::SecretBytes;
use crate::source::error::SourceError;
use crate::source::secret::{CallerKey, CallerScope, Lifetime, Secret};

/// Bound on one renew or revoke call.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the profiles of one `vault-lease` source.
#[derive(Debug)]
pub struct LeaseSource {
    inner: Arc<Inner>,
}

/// What the source and its background tasks share; the tasks hold it weakly, so they end
/// once the source is dropped (a reload).
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) name: String,
    session: Arc<VaultSession>,
    profiles: BTreeMap<String, Arc<Profile>>,
    revoke_on_shutdown: bool,
    revoke_grace: Duration,
    /// Set at shutdown: no lease is issued after it.
    closed: AtomicBool,
    /// Replaced leases waiting for their revoke.
    retiring: Mutex<Vec<Arc<Lease>>>,
}

impl LeaseSource {
    /// A source over `session` (the Vault source named by `config.vault`).
    pub fn new(name: &str, session: Arc<VaultSession>, config: &LeaseConfig) -> Self {
        let profiles = config
            .profiles
            .iter()
            .map(|(profile, cfg)| {
                let state = Profile::new(profile, cfg.clone(), Arc::default(), None);
                (profile.clone(), Arc::new(state))
            })
            .collect();
        LeaseSource {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                session,
                profiles,
                revoke_on_shutdown: config.revoke_on_shutdown,
                revoke_grace: config.revoke_grace,
                closed: AtomicBool::new(false),
                retiring: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The current credential of profile `id`: the lease in use, or a new one when there is
    /// none or the one in use is past its switch point. A lease past its switch point that
    /// cannot be replaced is still served until it lapses, never after.
    /// A `per_caller` profile serves `caller`'s own lease.
    pub async fn fetch(&self, id: &str, caller: Option<&CallerKey>) -> Result<Secret, SourceError> {
        let profile = self.inner.profiles.get(id).ok_or(SourceError::NotFound)?;
        let slot = profile.slot(caller)?;
        let profile = &slot;
        if let Some(secret) = serve_if_fresh(profile)? {
            return Ok(secret);
        }
        self.inner.replace(profile).await?;
        let lease = profile.current().ok_or_else(lapsed)?;
        serve(profile, &lease)
    }

    /// Whom a read of profile `id` by `peer` is for: the caller's identity when the profile has
    /// `per_caller = true` (one lease per identity), else `None` (one lease for every caller).
    pub fn caller_scope(&self, id: &str, peer: &PeerIdentity) -> Option<CallerScope> {
        let per_caller = self
            .inner
            .profiles
            .get(id)
            .is_some_and(|p| p.config.per_caller);
        per_caller.then(|| CallerScope::Identity(CallerKey::of(peer)))
    }

    /// Each profile's counters and the seconds left of its lease (`None` without one).
    pub fn profile_metrics(&self) -> Vec<(&str, &Counts, Option<u64>)> {
        let now = Instant::now();
        self.inner
            .profiles
            .values()
            .map(|p| {
                // A per-caller profile: the lease that expires first.
                let left = p
                    .slots()
                    .iter()
                    .filter_map(|slot| slot.current())
                    .map(|l| l.times().expires().saturating_duration_since(now).as_secs())
                    .min();
                (p.name.as_str(), &*p.counts, left)
            })
            .collect()
    }

    /// A flush of the profiles `matches` names: each that holds a lease gets a new one at its
    /// next read, and the old one is revoked `revoke_grace_secs` later.
    pub fn flush(&self, matches: impl Fn(&str) -> bool) {
        for profile in self.inner.profiles.values() {
            if !matches(&profile.name) {
                continue;
            }
            for slot in profile.slots() {
                if slot.current().is_some() {
                    slot.flushed.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    /// After a reload replaced this source: no new lease from now on, and every lease it holds
    /// is revoked after `revoke_grace_secs` (the new source issues its own on first use).
    pub fn retire_all(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        for slot in self.inner.slots() {
            if let Some(lease) = slot.take() {
                self.inner.retire(lease);
            }
        }
    }

    /// At SIGTERM: no new lease from now on, and (with `revoke_on_shutdown`) every lease the
    /// source holds is revoked, each failure logged. The caller bounds the time.
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        if !self.inner.revoke_on_shutdown {
            return;
        }
        let mut leases: Vec<Arc<Lease>> = std::mem::take(
            &mut *self
                .inner
                .retiring
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for slot in self.inner.slots() {
            if let Some(lease) = slot.take() {
                leases.push(lease);
            }
        }
        // Concurrently: one slow revoke does not use up the others' time.
        let mut set = tokio::task::JoinSet::new();
        for lease in leases {
            let inner = self.inner.clone();
            set.spawn(async move { inner.revoke(&lease).await });
        }
        while set.join_next().await.is_some() {}
    }
}

/// The current lease as a [`Secret`] when it is before its switch point.
fn serve_if_fresh(profile: &Profile) -> Result<Option<Secret>, SourceError> {
    if profile.flushed.load(Ordering::SeqCst) {
        return Ok(None);
    }
    match profile.current() {
        Some(lease) if Instant::now() < lease.times().switch_at(&profile.config) => {
            serve(profile, &lease).map(Some)
        }
        _ => Ok(None),
    }
}

/// A copy of the lease's data with its lifetime: the cache holds it until the switch point
/// (so a waiting reader re-reads then and sees the new credential) and never serves it past
/// its expiry.
fn serve(profile: &Profile, lease: &Lease) -> Result<Secret, SourceError> {
    let times = lease.times();
    let now = Instant::now();
    let valid_for = times.expires().saturating_duration_since(now);
    if valid_for.is_zero() {
        return Err(lapsed());
    }
    let serve_for = times
        .switch_at(&profile.config)
        .saturating_duration_since(now)
        .max(Duration::from_secs(1))
        .min(valid_for);
    let mut secret = Secret::new(SecretBytes::from_slice(lease.data.as_slice())?, None);
    secret.lifetime = Some(Lifetime {
        expires_at: SystemTime::now()
            .checked_add(valid_for)
            .unwrap_or_else(SystemTime::now),
        serve_for,
        valid_for,
        refresh_after: None,
    });
    Ok(secret)
}

fn lapsed() -> SourceError {
    SourceError::LeaseUnavailable {
        detail: "no valid lease: the last one lapsed and no new one could be obtained".to_owned(),
    }
}

impl Inner {
    /// Every slot of every profile.
    fn slots(&self) -> Vec<Arc<Profile>> {
        self.profiles.values().flat_map(|p| p.slots()).collect()
    }

    /// Replaces the profile's lease unless another task just did (single-flight): issues a new
    /// one, installs it, and retires the old one. Without a usable lease, an issue failure is
    /// the answer; with one, it is logged and the old lease stays until it lapses.
    pub(super) async fn replace(
        self: &Arc<Self>,
        profile: &Arc<Profile>,
    ) -> Result<(), SourceError> {
        let _flight = profile.issuing.lock().await;
        let old = profile.current();
        let flushed = profile.flushed.swap(false, Ordering::SeqCst);
        if let Some(lease) = &old
            && !flushed
            && Instant::now() < lease.times().switch_at(&profile.config)
        {
            return Ok(());
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(SourceError::Unavailable {
                detail: "the agent is shutting down".to_owned(),
            });
        }
        let lease = match self.issue(profile).await {
            Ok(lease) => Arc::new(lease),
            Err(err) => {
                let serving = old
                    .as_ref()
                    .is_some_and(|l| Instant::now() < l.times().expires());
                tracing::warn!(
                    source = %self.name,
                    profile = %profile.name,
                    error = %err,
                    serving_old = serving,
                    "cannot obtain a lease"
                );
                return match err {
                    _ if serving => Ok(()),
                    e if e.is_transient() => Err(SourceError::LeaseUnavailable {
                        detail: e.to_string(),
                    }),
                    e => Err(e),
                };
            }
        };
        profile.counts.issued.fetch_add(1, Ordering::Relaxed);
        // An issue that was in flight when the shutdown (or a reload) began: not kept.
        if self.closed.load(Ordering::SeqCst) {
            self.revoke(&lease).await;
            return Err(SourceError::Unavailable {
                detail: "the source was closed while a lease was issued".to_owned(),
            });
        }
        let times = lease.times();
        tracing::info!(
            source = %self.name,
            profile = %profile.name,
            caller = profile.caller.as_ref().map(tracing::field::display),
            lease = %lease.accessor,
            ttl_secs = times.issued_ttl.as_secs(),
            renewable = times.renewable,
            "lease obtained"
        );
        if let Some(old) = profile.install(lease) {
            self.retire(old);
        }
        if !profile.maintained.swap(true, Ordering::SeqCst) {
            tokio::spawn(maintain(Arc::downgrade(self), Arc::downgrade(profile)));
        }
        Ok(())
    }

    /// Calls the profile's endpoint and reads the lease from the reply.
    async fn issue(&self, state: &Profile) -> Result<Lease, SourceError> {
        let profile = &state.config;
        let (path, body) = if profile.method == Method::POST {
            let body = serde_json::to_vec(&profile.params)
                .map_err(|e| SourceError::Invalid(format!("params: {e}")))?;
            (profile.path.clone(), Some(Bytes::from(body)))
        } else if profile.params.is_empty() {
            (profile.path.clone(), None)
        } else {
            (format!("{}?{}", profile.path, query(&profile.params)), None)
        };
        // Bounded: the profile's lock is held meanwhile, and readers wait on it.
        let reply = tokio::time::timeout(
            CALL_TIMEOUT,
            self.session.call(profile.method.clone(), &path, body),
        )
        .await
        .map_err(|_| SourceError::Timeout(CALL_TIMEOUT))??;
        parse_lease(
            &profile.path,
            reply.body.as_slice(),
            Instant::now(),
            state.counts.clone(),
        )
    }

    /// Renews `lease` for its first TTL again; updates its times. Returns whether the
    /// renewal came back short (capped by `max_ttl`).
    pub(super) async fn renew(&self, lease: &Lease) -> Result<bool, SourceError> {
        let times = lease.times();
        let body = lease_body(&lease.id, Some(times.issued_ttl))?;
        let reply = tokio::time::timeout(
            CALL_TIMEOUT,
            self.session
                .call(Method::PUT, "sys/leases/renew", Some(body)),
        )
        .await
        .map_err(|_| SourceError::Timeout(CALL_TIMEOUT))??;
        let renewed: RenewReply =
            serde_json::from_slice(reply.body.as_slice()).map_err(|_| SourceError::BadReply {
                detail: "sys/leases/renew answered without lease_duration".to_owned(),
            })?;
        let ttl = Duration::from_secs(renewed.lease_duration);
        let capped = ttl < times.issued_ttl;
        {
            let mut guard = lease.times.lock().unwrap_or_else(|p| p.into_inner());
            guard.renewed(Instant::now(), ttl, renewed.renewable, capped);
        }
        lease.counts.renewed.fetch_add(1, Ordering::Relaxed);
        Ok(capped)
    }

    /// Revokes `lease` after `revoke_grace_secs` (sooner is pointless past its expiry); the
    /// applications told of its successor switch meanwhile.
    fn retire(self: &Arc<Self>, lease: Arc<Lease>) {
        if !lease.has_id() {
            return;
        }
        self.retiring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(lease.clone());
        let grace = self.revoke_grace.min(
            lease
                .times()
                .expires()
                .saturating_duration_since(Instant::now()),
        );
        // Strong: a source dropped by a reload still revokes what it retired.
        let inner = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let still_retiring = {
                let mut list = inner.retiring.lock().unwrap_or_else(|p| p.into_inner());
                let before = list.len();
                list.retain(|l| !Arc::ptr_eq(l, &lease));
                list.len() != before
            };
            // Gone from the list: the shutdown revoked it already.
            if still_retiring {
                inner.revoke(&lease).await;
            }
        });
    }

    /// Revokes `lease` (best effort: a failure is logged, the lease then lapses on its own).
    async fn revoke(&self, lease: &Lease) {
        if !lease.has_id() {
            return;
        }
        let outcome = match lease_body(&lease.id, None) {
            Ok(body) => tokio::time::timeout(
                CALL_TIMEOUT,
                self.session
                    .call(Method::PUT, "sys/leases/revoke", Some(body)),
            )
            .await
            .unwrap_or(Err(SourceError::Timeout(CALL_TIMEOUT))),
            Err(err) => Err(err),
        };
        match outcome {
            Ok(_) => {
                lease.counts.revoked.fetch_add(1, Ordering::Relaxed);
                tracing::info!(source = %self.name, lease = %lease.accessor, "lease revoked");
            }
            Err(err) => tracing::warn!(
                source = %self.name,
                lease = %lease.accessor,
                error = %err,
                "cannot revoke a lease; it lapses at its expiry"
            ),
        }
    }
}

/// The renewal task of one profile: renews and replaces its lease as [`Times::next`] says,
/// until the source is dropped or the profile has no lease (shutdown).
///
/// Boxed with `Send` stated: `replace` spawns this task and this task calls `replace`, and
/// the compiler needs the `Send` written down to break the cycle.
pub(super) fn maintain(
    inner: Weak<Inner>,
    profile: Weak<Profile>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(maintain_loop(inner, profile))
}

async fn maintain_loop(inner: Weak<Inner>, profile: Weak<Profile>) {
    let mut renew_retry: Option<Instant> = None;
    let mut replace_retry: Option<Instant> = None;
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let (Some(strong), Some(prof)) = (inner.upgrade(), profile.upgrade()) else {
            return;
        };
        let Some(lease) = prof.current() else {
            prof.maintained.store(false, Ordering::SeqCst);
            return;
        };
        let times = lease.times();
        let switch = times.switch_at(&prof.config);
        let (at, renew) = match times.next(&prof.config, random_fraction()) {
            Step::Renew(at) => {
                let at = renew_retry.map_or(at, |r| r.max(at));
                if at < switch {
                    (at, true)
                } else {
                    (switch, false)
                }
            }
            Step::Replace(at) => (replace_retry.map_or(at, |r| r.max(at)), false),
        };
        drop((strong, prof));
        tokio::time::sleep_until(at).await;
        let (Some(strong), Some(prof)) = (inner.upgrade(), profile.upgrade()) else {
            return;
        };
        if renew {
            match strong.renew(&lease).await {
                Ok(capped) => {
                    renew_retry = None;
                    backoff.reset();
                    let left = lease
                        .times()
                        .expires()
                        .saturating_duration_since(Instant::now());
                    tracing::info!(
                        source = %strong.name,
                        profile = %prof.name,
                        lease = %lease.accessor,
                        ttl_secs = left.as_secs(),
                        capped,
                        "lease renewed"
                    );
                }
                Err(err) => {
                    tracing::warn!(
                        source = %strong.name,
                        profile = %prof.name,
                        lease = %lease.accessor,
                        error = %err,
                        "lease renewal failed; will retry, and replace it at its switch point"
                    );
                    renew_retry = Some(plus(Instant::now(), backoff.delay()));
                }
            }
            continue;
        }
        // A failure is logged by `replace`; the old lease stays while it lives.
        let _ = strong.replace(&prof).await;
        let replaced = prof.current().is_none_or(|now| !Arc::ptr_eq(&now, &lease));
        if replaced {
            renew_retry = None;
            replace_retry = None;
            backoff.reset();
        } else {
            replace_retry = Some(plus(Instant::now(), backoff.delay()));
        }
    }
}
