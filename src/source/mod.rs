//! Secret sources behind one interface: the [`Source`] enum, one variant per kind, and its
//! dispatch (`kind`, `check_selector`, `check_id`, `fetch`); the [`SourceEntry`] the cache and
//! the broker fetch through; one folder or file per backend below.
//!
//! A source turns a validated [`SecretRequest`] into a [`Secret`] held in secure memory, or a
//! [`SourceError`] that says what kind of failure it was (so the server can pick a status and the
//! cache can decide whether stale-if-error applies). Sources never cache and never check access:
//! the cache and the ACL do. The vocabulary every kind shares is in `secret` and `error`, the
//! common config keys in `section`, a kind's config in its own folder, and building the
//! configured sources in `build`.
#![deny(clippy::arithmetic_side_effects)]

pub mod aws;
pub mod build;
pub mod command;
pub mod config;
pub mod credfile;
pub mod env;
pub mod error;
pub mod file;
pub mod http;
pub mod limit;
pub mod oauth2;
pub mod secret;
pub mod section;
pub(crate) mod share;
pub mod vault;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::name::SecretName;
use crate::peer::PeerIdentity;
use crate::secure_mem::SecretBytes;

pub use error::SourceError;
/// The cache's tests name it from here.
#[cfg(test)]
pub use secret::Lifetime;
pub use secret::{CallerScope, Fetched, Secret, SecretRequest, Selector};

use config::{SourceConfig, SourceKind};
pub use limit::FetchLimit;
use secret::{OtherRead, ReadOther};

/// One configured source of any kind.
#[derive(Debug)]
pub enum Source {
    /// Files under a directory.
    File(file::FileSource),
    /// Environment variables of the agent.
    Env(env::EnvSource),
    /// Vault KV v2.
    Vault(vault::VaultSource),
    /// Vault transit decryption of ciphertexts held elsewhere (`{vault source}-transit`).
    VaultTransit(vault::transit::TransitSource),
    /// AWS Secrets Manager.
    Aws(aws::secretsmanager::AwsSource),
    /// AWS SSM Parameter Store.
    AwsSsm(aws::ssm::SsmSource),
    /// AWS S3, one object per secret.
    AwsS3(aws::s3::S3Source),
    /// aws-credentials: role sessions for local callers.
    AwsCredentials(aws::credentials::CredentialsSource),
    /// A command's output (`pass`, `gopass`, …).
    Command(command::CommandSource),
    /// OAuth2 access tokens.
    OAuth2(Box<oauth2::OAuth2Source>),
    /// vault-lease: leased secrets through a Vault source's session.
    VaultLease(vault::lease::LeaseSource),
    /// A scripted source for unit tests of the layers above.
    #[cfg(test)]
    Fake(crate::testutil::FakeSource),
}

impl Source {
    /// The kind name, as in the config's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::File(_) => "file",
            Source::Env(_) => "env",
            Source::Vault(_) => "vault",
            Source::VaultTransit(_) => "vault-transit",
            Source::Aws(_) => "aws-secretsmanager",
            Source::AwsSsm(_) => "aws-ssm",
            Source::Command(_) => "command",
            Source::AwsS3(_) => "aws-s3",
            Source::AwsCredentials(_) => "aws-credentials",
            Source::OAuth2(_) => "oauth2",
            Source::VaultLease(_) => "vault-lease",
            #[cfg(test)]
            Source::Fake(_) => "fake",
        }
    }

    /// Whether every fetch mints a new value (an OAuth2 token, a `minted = true` command), so a
    /// forced refresh of a fresh one is answered from the cache.
    pub fn mints(&self) -> bool {
        match self {
            Source::OAuth2(_) => true,
            Source::Command(command) => command.minted(),
            _ => false,
        }
    }

    /// Rejects selectors this source does not understand, before any fetch.
    pub fn check_selector(&self, selector: &Selector) -> Result<(), &'static str> {
        match self {
            Source::Vault(_) => {
                if selector.version_id.is_some()
                    || selector.version_stage.is_some()
                    || selector.label.is_some()
                {
                    Err("Vault KV takes ?version=N, not version_id or version_stage")
                } else {
                    Ok(())
                }
            }
            Source::File(_)
            | Source::Env(_)
            | Source::VaultTransit(_)
            | Source::Command(_)
            | Source::VaultLease(_) => {
                if selector.is_empty() {
                    Ok(())
                } else {
                    Err("this source has no versions")
                }
            }
            Source::Aws(_) => aws::secretsmanager::check_selector(selector),
            Source::AwsSsm(_) => aws::ssm::check_selector(selector),
            Source::AwsS3(_) => aws::s3::check_selector(selector),
            Source::AwsCredentials(_) => aws::credentials::check_selector(selector),
            Source::OAuth2(_) => oauth2::check_selector(selector),
            #[cfg(test)]
            Source::Fake(_) => {
                if selector.version.is_some() {
                    Err("the fake source has no numbered versions")
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Rejects ids this source could never serve, before the cache is asked (so a malformed id
    /// creates no cache slot, no fetch and no source error).
    pub fn check_id(&self, id: &str) -> Result<(), &'static str> {
        // aws-credentials (issue 29): only configured profiles.
        if let Source::AwsCredentials(creds) = self {
            return creds.check_id(id);
        }
        let rule = match self {
            Source::File(_) | Source::Vault(_) | Source::AwsS3(_) | Source::VaultLease(_) => {
                IdRule::Any
            }
            Source::Env(_) => IdRule::Env,
            Source::VaultTransit(_) => IdRule::Transit,
            Source::Aws(_) => IdRule::Aws,
            Source::AwsSsm(_) => IdRule::Ssm,
            Source::Command(_) => IdRule::Command,
            Source::OAuth2(_) => IdRule::OAuth2,
            Source::AwsCredentials(_) => IdRule::AwsCredentials,
            #[cfg(test)]
            Source::Fake(_) => IdRule::Fake,
        };
        rule.check(id)
    }
}

/// Which ids a kind of source could ever serve: one rule per kind, shared by
/// [`Source::check_id`] (at every request) and the config (`[prefetch]`, before any source is
/// built).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdRule {
    /// Any id the name syntax admits (file, vault, aws-s3).
    Any,
    /// An environment variable suffix.
    Env,
    /// `{source}/{id}` of a ciphertext, or a named ciphertext.
    Transit,
    /// A Secrets Manager name or ARN.
    Aws,
    /// An SSM parameter name.
    Ssm,
    /// A command source's id.
    Command,
    /// An OAuth2 source's token profile name.
    OAuth2,
    /// An aws-credentials source's role profile name.
    AwsCredentials,
    /// The unit tests' fake source.
    #[cfg(test)]
    Fake,
}

impl IdRule {
    /// Rejects `id` when a source of this kind could never serve it.
    pub fn check(self, id: &str) -> Result<(), &'static str> {
        match self {
            IdRule::Any => Ok(()),
            IdRule::Env => env::check_id(id),
            IdRule::Transit => vault::transit::split_id(id).map(|_| ()),
            IdRule::Aws => aws::secretsmanager::check_secret_id(id),
            IdRule::Ssm => aws::ssm::check_id(id),
            IdRule::Command => command::check_id(id),
            IdRule::OAuth2 => oauth2::check_id(id),
            IdRule::AwsCredentials => aws::credentials_config::check_profile_name(id),
            #[cfg(test)]
            IdRule::Fake => crate::testutil::FakeSource::check_id(id),
        }
    }

    /// The rule of the source `name` as configured (a Vault source with `transit_mount` also
    /// configures `{name}-transit`); `None` when no such source is configured.
    pub fn configured(sources: &BTreeMap<String, SourceConfig>, name: &str) -> Option<IdRule> {
        if let Some(cfg) = sources.get(name) {
            return Some(match &cfg.kind {
                SourceKind::File { .. }
                | SourceKind::Vault(_)
                | SourceKind::AwsS3(_)
                | SourceKind::VaultLease(_) => IdRule::Any,
                SourceKind::Env { .. } => IdRule::Env,
                SourceKind::Aws(_) => IdRule::Aws,
                SourceKind::AwsSsm(_) => IdRule::Ssm,
                SourceKind::Command(_) => IdRule::Command,
                SourceKind::OAuth2(_) => IdRule::OAuth2,
                SourceKind::AwsCredentials(_) => IdRule::AwsCredentials,
            });
        }
        sources
            .iter()
            .any(|(vault, cfg)| {
                matches!(&cfg.kind, SourceKind::Vault(v) if v.transit_mount.is_some())
                    && vault::transit_name(vault) == name
            })
            .then_some(IdRule::Transit)
    }
}

impl Source {
    /// Fetches `request`; `previous` is the cached value being refreshed, if any.
    pub async fn fetch(
        &self,
        request: &SecretRequest,
        previous: Option<&Secret>,
    ) -> Result<Fetched, SourceError> {
        // The network sources' futures are boxed: inline, the largest (an HTTP client's, several
        // KiB) set the size of every fetch task, and a task per cached file value left that much
        // fragmented heap behind it (RSS with 10,000 cached secrets: 19 -> 45 MiB).
        match self {
            Source::File(s) => s.fetch(request.name.id()).await.map(Fetched::New),
            Source::Env(s) => s.fetch(request.name.id()).map(Fetched::New),
            Source::Vault(s) => {
                Box::pin(s.fetch(request.name.id(), request.selector.version, previous)).await
            }
            Source::VaultTransit(s) => Box::pin(s.fetch(request.name.id())).await.map(Fetched::New),
            Source::Aws(s) => Box::pin(s.fetch(request, previous)).await,
            Source::AwsSsm(s) => Box::pin(s.fetch(request)).await,
            Source::Command(s) => Box::pin(s.fetch(request)).await,
            Source::AwsS3(s) => Box::pin(s.fetch(request)).await,
            Source::OAuth2(s) => Box::pin(s.fetch(request)).await,
            Source::VaultLease(s) => {
                let caller = match request.selector.caller.as_deref() {
                    Some(CallerScope::Identity(caller)) => Some(caller),
                    _ => None,
                };
                Box::pin(s.fetch(request.name.id(), caller))
                    .await
                    .map(Fetched::New)
            }
            Source::AwsCredentials(s) => Box::pin(s.fetch(request)).await,
            #[cfg(test)]
            Source::Fake(s) => s.fetch(request.name.id()).map(Fetched::New),
        }
    }
}

impl Source {
    /// How many ids one batch call of this source takes; `None` for a source that does not
    /// batch (docs/aws.md, "Batched reads").
    pub fn batch_size(&self) -> Option<usize> {
        match self {
            Source::Aws(s) => s.batch_size(),
            Source::AwsSsm(s) => s.batch_size(),
            _ => None,
        }
    }
}

/// A source with the settings the cache and server apply to it.
#[derive(Debug)]
pub struct SourceEntry {
    /// The source.
    pub source: Source,
    /// Cache TTL for its secrets.
    pub ttl: Duration,
    /// Upper bound on one fetch.
    pub fetch_timeout: Duration,
    /// Bounds the fetches in flight (`max_concurrent_fetches`).
    pub limit: FetchLimit,
    /// Bounds each uid's part of them (`max_fetches_per_uid`).
    pub(crate) shares: share::UidShares,
}

impl SourceEntry {
    /// Fetches for `uid` through its share and [`FetchLimit`]: at most `max_fetches_per_uid`
    /// running or queued for one uid, at most `max_concurrent_fetches` at once, further ones
    /// wait in a bounded queue, the rest fail with [`SourceError::Busy`] (counted by reason).
    pub async fn fetch_limited(
        &self,
        uid: u32,
        request: &SecretRequest,
        previous: Option<&Secret>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Fetched, SourceError> {
        let Some(_share) = self.shares.take(uid) else {
            metrics.reject(crate::metrics::Rejection::SourceBusyUid);
            return Err(SourceError::Busy);
        };
        let queue_wait = self.fetch_timeout.checked_div(2).unwrap_or_default();
        let _permit = self
            .limit
            .acquire(queue_wait)
            .await
            .inspect_err(|_| metrics.reject(crate::metrics::Rejection::SourceBusy))?;
        self.source.fetch(request, previous).await
    }
}

impl SourceEntry {
    /// `[prefetch]` of `ids` (at most [`Source::batch_size`]) in one batch call, under one fetch
    /// slot and the fetch timeout (the agent's own fetches take no uid's share): each id's value,
    /// or `None` to prefetch it alone (its own error, no answer, a denied or failed call).
    /// `None` when the source does not batch.
    pub(crate) async fn prefetch_batch(
        &self,
        ids: &[String],
        metrics: &crate::metrics::Metrics,
    ) -> Option<Vec<Option<Secret>>> {
        let batch: std::pin::Pin<Box<dyn Future<Output = Vec<aws::batch::Batched>> + Send + '_>> =
            match &self.source {
                Source::Aws(s) => Box::pin(s.fetch_batch(ids)),
                Source::AwsSsm(s) => Box::pin(s.fetch_batch(ids)),
                _ => return None,
            };
        let queue_wait = self.fetch_timeout.checked_div(2).unwrap_or_default();
        let answers = match self.limit.acquire(queue_wait).await {
            Ok(_permit) => tokio::time::timeout(self.fetch_timeout, batch)
                .await
                .unwrap_or_default(),
            Err(_) => {
                metrics.reject(crate::metrics::Rejection::SourceBusy);
                Vec::new()
            }
        };
        let mut answers = answers.into_iter();
        Some(
            ids.iter()
                .map(|_| match answers.next() {
                    Some(aws::batch::Batched::Done(Ok(secret))) => Some(secret),
                    _ => None,
                })
                .collect(),
        )
    }
}

/// All configured sources by name.
pub type Sources = BTreeMap<String, Arc<SourceEntry>>;

/// Every source except the transit ones, shared with the transit sources (which read
/// ciphertexts through them); a source whose start-up check passes late is added then.
pub type SharedSources = Arc<RwLock<Sources>>;

/// The transit and OAuth2 sources read what they need (ciphertexts, client credentials)
/// straight from the sources built beside them: no cache, no caller's ACL. A source that is
/// not there is `NotFound`.
impl Source {
    /// The backend calls it counts by operation (the AWS secret sources).
    pub(crate) fn call_counts(&self) -> Option<&aws::calls::CallCounts> {
        match self {
            Source::Aws(s) => Some(s.calls()),
            Source::AwsSsm(s) => Some(s.calls()),
            _ => None,
        }
    }

    /// `request` as `peer` reads it, for the kinds that keep one value per caller: with whom it
    /// is for ([`CallerScope`]) in its selector, so the cache keeps callers apart and its single
    /// flight is per caller scope. `None` (the request as it is) for every other kind. Called by
    /// the broker after the access decision, under the runtime's source (a reload may have
    /// changed a profile).
    pub fn scoped(&self, request: &SecretRequest, peer: &PeerIdentity) -> Option<SecretRequest> {
        let scope = match self {
            Source::AwsCredentials(creds) => {
                CallerScope::AwsSession(creds.session_key(request.name.id(), peer)?)
            }
            Source::VaultLease(lease) => lease.caller_scope(request.name.id(), peer)?,
            _ => return None,
        };
        let mut scoped = request.clone();
        scoped.selector.caller = Some(Arc::new(scope));
        Some(scoped)
    }
}

/// vault-lease after a flush through the API: the matching profiles get a new lease at their
/// next read.
pub fn flush_leases(sources: &Sources, pattern: Option<&crate::name::Glob>) {
    for (name, entry) in sources {
        if let Source::VaultLease(lease) = &entry.source {
            lease.flush(|profile| pattern.is_none_or(|g| g.matches_parts(name, profile)));
        }
    }
}

/// vault-lease after a reload: the replaced sources' leases are revoked after their grace.
pub fn retire_leases(replaced: &Sources) {
    for entry in replaced.values() {
        if let Source::VaultLease(lease) = &entry.source {
            lease.retire_all();
        }
    }
}

/// vault-lease at SIGTERM: every lease source stops issuing and revokes its leases (those with
/// `revoke_on_shutdown`), all at once, within `bound`; what is left lapses on its own.
pub async fn shutdown_leases(sources: &Sources, bound: Duration) {
    let mut set = tokio::task::JoinSet::new();
    for entry in sources.values() {
        if matches!(entry.source, Source::VaultLease(_)) {
            let entry = entry.clone();
            set.spawn(async move {
                if let Source::VaultLease(lease) = &entry.source {
                    lease.shutdown().await;
                }
            });
        }
    }
    let all = async { while set.join_next().await.is_some() {} };
    if tokio::time::timeout(bound, all).await.is_err() {
        tracing::warn!(
            "lease revocation did not finish within shutdown_timeout_secs; the rest lapse on \
             their own"
        );
    }
}

impl ReadOther for RwLock<Sources> {
    fn read_other(&self, name: SecretName) -> OtherRead<'_> {
        Box::pin(async move {
            let entry = self
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(name.source())
                .cloned()
                .ok_or(SourceError::NotFound)?;
            let request = SecretRequest {
                name,
                selector: Selector::default(),
            };
            let fetched =
                tokio::time::timeout(entry.fetch_timeout, entry.source.fetch(&request, None))
                    .await
                    .map_err(|_| SourceError::Timeout(entry.fetch_timeout))??;
            match fetched {
                // A copy: the fetched value is wiped when `secret` drops.
                Fetched::New(secret) => Ok(SecretBytes::from_slice(secret.value.as_slice())?),
                Fetched::Unchanged => Err(SourceError::BadReply {
                    detail: format!("{} returned no value", request.name),
                }),
            }
        })
    }
}

#[cfg(test)]
mod future_size_tests {
    use super::*;

    /// Every fetch task holds a `Source::fetch` future, as large as its largest arm: with the
    /// network sources boxed, a file read's task stays small (see `Source::fetch`).
    #[test]
    fn a_fetch_future_is_small_whatever_the_source() {
        let source = Source::File(file::FileSource::new(std::env::temp_dir()));
        let request = SecretRequest {
            name: SecretName::new("f", "x").unwrap(),
            selector: Selector::default(),
        };
        let size = std::mem::size_of_val(&source.fetch(&request, None));
        assert!(size <= 1024, "a fetch future takes {size} bytes");
    }
}
