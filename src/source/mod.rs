//! Secret sources behind one interface.
//!
//! A source turns a validated [`SecretRequest`] into a [`Secret`] held in secure memory, or a
//! [`SourceError`] that says what kind of failure it was (so the server can pick a status and the
//! cache can decide whether stale-if-error applies). Sources never cache and never check access:
//! the cache and the ACL do. Dispatch is a plain enum, one variant per kind, one file per kind.
#![deny(clippy::arithmetic_side_effects)]

pub mod aws;
pub mod aws_s3;
pub mod aws_ssm;
pub mod command;
pub mod env;
pub mod file;
pub mod oauth2;
pub mod vault;
pub mod vault_auth;
pub mod vault_config;
pub mod vault_http;
pub mod vault_transit;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::name::SecretName;
use crate::secure_mem::{MemError, SecretBytes};

/// Version selectors a request may carry. Which ones a source accepts is its own business.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    /// AWS `VersionId`.
    pub version_id: Option<String>,
    /// AWS `VersionStage` (`AWSCURRENT`, `AWSPREVIOUS`, custom).
    pub version_stage: Option<String>,
    /// Vault KV v2 version number; SSM parameter version.
    pub version: Option<u64>,
    /// SSM parameter label.
    pub label: Option<String>,
    /// The caller a `per_caller` lease profile's value is for; set by the broker, never by a
    /// client (not a version selector: `is_empty` ignores it).
    pub caller: Option<std::sync::Arc<vault::lease_caller::CallerKey>>,
}

impl Selector {
    /// Whether no selector is set.
    pub fn is_empty(&self) -> bool {
        self.version_id.is_none()
            && self.version_stage.is_none()
            && self.version.is_none()
            && self.label.is_none()
    }
}

/// What to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRequest {
    /// `source/id`.
    pub name: SecretName,
    /// Version selectors.
    pub selector: Selector,
}

/// The cache hashes a request on every read: a request without selectors (nearly all) feeds
/// the hasher its name and one byte, not a write per selector field.
impl std::hash::Hash for SecretRequest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.selector.caller.hash(state);
        if self.selector.is_empty() {
            state.write_u8(0);
        } else {
            state.write_u8(1);
            self.selector.hash(state);
        }
    }
}

/// A fetched secret.
#[derive(Debug)]
pub struct Secret {
    /// The value, in locked memory.
    pub value: SharedValue,
    /// The backend's version label, when it has one.
    pub version: Option<String>,
    /// When it was fetched from the backend.
    pub fetched_at: SystemTime,
    /// A lifetime the backend gave the value itself (an OAuth2 access token); `None` for
    /// values that stay valid until they are rotated.
    pub lifetime: Option<Lifetime>,
    /// The value's change tag, computed on first use and kept while the value is cached (every
    /// read of the whole value answers with it).
    tag: std::sync::OnceLock<bytes::Bytes>,
    /// Whether the value is UTF-8 (its content type), checked once per fetch, not per read.
    text: bool,
}

impl Secret {
    /// A value fetched now.
    pub fn new(value: SecretBytes, version: Option<String>) -> Self {
        let text = std::str::from_utf8(value.as_slice()).is_ok();
        Secret {
            text,
            value: SharedValue(bytes::Bytes::from_owner(value)),
            version,
            fetched_at: SystemTime::now(),
            lifetime: None,
            tag: std::sync::OnceLock::new(),
        }
    }

    /// Whether the value is UTF-8.
    pub fn is_text(&self) -> bool {
        self.text
    }

    /// The value's change tag: `compute(value)` the first time, the same bytes after (a
    /// reference count, not a copy).
    pub fn tag(&self, compute: impl FnOnce(&[u8]) -> bytes::Bytes) -> bytes::Bytes {
        self.tag
            .get_or_init(|| compute(self.value.as_slice()))
            .clone()
    }
}

/// A value in locked memory that responses share without a copy or an allocation: each holds a
/// reference, and the memory is wiped when the cache and the last response have let go (as
/// [`SecretBytes`] on its own). Debug output never shows the bytes.
#[derive(Clone)]
pub struct SharedValue(bytes::Bytes);

impl SharedValue {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Another reference to the same bytes, for a response body.
    pub fn shared(&self) -> bytes::Bytes {
        self.0.clone()
    }
}

impl std::fmt::Debug for SharedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedValue({} bytes)", self.0.len())
    }
}

/// How long a value with a lifetime of its own may be served, counted from when it was fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// When the backend says it stops working (`expires_at` in JSON replies).
    pub expires_at: SystemTime,
    /// How long the cache serves it (its lifetime minus a skew, so callers get time to use it).
    pub serve_for: Duration,
    /// How long it works: never served past this, not even stale.
    pub valid_for: Duration,
}

/// The outcome of a fetch that may reuse a previously fetched value.
#[derive(Debug)]
pub enum Fetched {
    /// A new value.
    New(Secret),
    /// The backend confirmed the previous value is still current (rotation check).
    Unchanged,
}

/// Why a fetch failed. Details are for logs; they never contain secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The backend has no such secret (or version).
    #[error("no such secret")]
    NotFound,
    /// The backend refused the agent's own identity.
    #[error("the backend denied access: {detail}")]
    Denied {
        /// Backend's reason, without values.
        detail: String,
    },
    /// The backend could not be reached, throttled, or failed (transient).
    #[error("the backend is unavailable: {detail}")]
    Unavailable {
        /// What failed.
        detail: String,
    },
    /// The backend did not answer in time (transient).
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend answered with something the agent cannot use.
    #[error("the backend's reply is unusable: {detail}")]
    BadReply {
        /// What was wrong.
        detail: String,
    },
    /// The request is not valid for this source (checked before any call).
    #[error("invalid request for this source: {0}")]
    Invalid(String),
    /// Secure memory could not hold the value.
    #[error("secure memory: {0}")]
    Memory(String),
    /// Holding the value would pass `cache.max_locked_bytes` (transient: room comes back).
    #[error("secure memory: {0}")]
    MemoryBudget(String),
    /// `max_concurrent_fetches` were in flight and the queue was full or the wait ran out
    /// (transient).
    #[error("too many fetches in flight")]
    Busy,
    /// An OAuth2 token endpoint refused the request, with this error code (never its body).
    #[error("the token endpoint refused the request: {0}")]
    TokenRefused(oauth2::OAuthError),
    /// A `vault-lease` profile has no valid lease and none could be obtained (transient).
    #[error("no valid lease: {detail}")]
    LeaseUnavailable {
        /// What failed.
        detail: String,
    },
}

impl SourceError {
    /// Transient failures: stale-if-error may serve the previous value.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Unavailable { .. }
                | SourceError::Timeout(_)
                | SourceError::MemoryBudget(_)
                | SourceError::Busy
                | SourceError::LeaseUnavailable { .. }
        )
    }
}

impl From<MemError> for SourceError {
    fn from(err: MemError) -> Self {
        match err {
            MemError::Budget { .. } => SourceError::MemoryBudget(err.to_string()),
            _ => SourceError::Memory(err.to_string()),
        }
    }
}

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
    VaultTransit(vault_transit::TransitSource),
    /// AWS Secrets Manager.
    Aws(aws::AwsSource),
    /// AWS SSM Parameter Store.
    AwsSsm(aws_ssm::SsmSource),
    /// AWS S3, one object per secret.
    AwsS3(aws_s3::S3Source),
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
            Source::OAuth2(_) => "oauth2",
            Source::VaultLease(_) => "vault-lease",
            #[cfg(test)]
            Source::Fake(_) => "fake",
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
            Source::Aws(_) => aws::check_selector(selector),
            Source::AwsSsm(_) => aws_ssm::check_selector(selector),
            Source::AwsS3(_) => aws_s3::check_selector(selector),
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
            IdRule::Transit => vault_transit::split_id(id).map(|_| ()),
            IdRule::Aws => aws::check_secret_id(id),
            IdRule::Ssm => aws_ssm::check_id(id),
            IdRule::Command => command::check_id(id),
            IdRule::OAuth2 => oauth2::check_id(id),
            #[cfg(test)]
            IdRule::Fake => crate::testutil::FakeSource::check_id(id),
        }
    }

    /// The rule of the source `name` as configured (a Vault source with `transit_mount` also
    /// configures `{name}-transit`); `None` when no such source is configured.
    pub fn configured(
        sources: &BTreeMap<String, crate::config::SourceConfig>,
        name: &str,
    ) -> Option<IdRule> {
        use crate::config::SourceKind;
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
            });
        }
        sources
            .iter()
            .any(|(vault, cfg)| {
                matches!(&cfg.kind, crate::config::SourceKind::Vault(v) if v.transit_mount.is_some())
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
                let caller = request.selector.caller.as_deref();
                Box::pin(s.fetch(request.name.id(), caller))
                    .await
                    .map(Fetched::New)
            }
            #[cfg(test)]
            Source::Fake(s) => s.fetch(request.name.id()).map(Fetched::New),
        }
    }
}

/// After a reload: each new source that is the same OAuth2 refresh-token client as a source of
/// the same name in `previous` keeps using the refresh token that source was rotated to (a
/// reload does not go back to the configured, already spent, one).
pub fn carry_over(previous: &Sources, new: &Sources) {
    for (name, entry) in new {
        let (Source::OAuth2(new), Some(Source::OAuth2(old))) =
            (&entry.source, previous.get(name).map(|e| &e.source))
        else {
            continue;
        };
        new.adopt_rotation(old);
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

/// Reads `name` straight from its source among `others` (the sources built beside the caller):
/// no cache, no caller's ACL — for a source that reads what it needs from another (transit's
/// ciphertexts, OAuth2 client credentials). A source that is not there is `NotFound`.
///
/// Returns a boxed `Send` future: `Source::fetch` contains this future and this future calls
/// `Source::fetch`, and the compiler needs the `Send` stated to break the cycle.
pub fn fetch_from_other<'a>(
    others: &'a SharedSources,
    name: SecretName,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<SecretBytes, SourceError>> + Send + 'a>,
> {
    Box::pin(async move {
        let entry = others
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name.source())
            .cloned()
            .ok_or(SourceError::NotFound)?;
        let request = SecretRequest {
            name,
            selector: Selector::default(),
        };
        let fetched = tokio::time::timeout(entry.fetch_timeout, entry.source.fetch(&request, None))
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

/// `value` without trailing whitespace (a secret file's final newline); `None` if nothing is
/// left.
pub fn trim_trailing_whitespace(value: SecretBytes) -> Result<Option<SecretBytes>, MemError> {
    let len = value
        .as_slice()
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i.saturating_add(1));
    if len == 0 {
        return Ok(None);
    }
    value.truncated(len).map(Some)
}

/// Refuses a plain `http://` URL to anything but loopback unless the source sets
/// `allow_plain_http = true`: tokens, secret_ids, STS credentials and values would cross the
/// network in clear text. `url` is already known to parse.
pub fn check_plain_http(url: &str, allow_plain_http: bool) -> Result<(), String> {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return Ok(());
    };
    if uri.scheme_str() != Some("http") || allow_plain_http {
        return Ok(());
    }
    let host = uri.host().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return Ok(());
    }
    // SECURITY: the agent's credentials and every value would be readable on the network.
    Err(format!(
        "{url:?} is plain http to a host other than loopback (tokens and secret values would \
         cross the network in clear text); use https://, or set allow_plain_http = true (for \
         tests only)"
    ))
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
}

impl SourceEntry {
    /// Fetches through [`FetchLimit`]: at most `max_concurrent_fetches` at once, further ones
    /// wait in a bounded queue, the rest fail with [`SourceError::Busy`].
    pub async fn fetch_limited(
        &self,
        request: &SecretRequest,
        previous: Option<&Secret>,
    ) -> Result<Fetched, SourceError> {
        let queue_wait = self.fetch_timeout.checked_div(2).unwrap_or_default();
        let _permit = self.limit.acquire(queue_wait).await?;
        self.source.fetch(request, previous).await
    }
}

/// How many fetches may wait per allowed fetch in flight (`max_concurrent_fetches`).
const QUEUE_PER_FETCH: usize = 4;

/// SECURITY: one allowed glob (`aws/prod/*`) lets a caller ask for any number of distinct
/// secrets; without a bound every miss is a backend call, and account-wide throttling hits
/// every host. At most `max` fetches run, at most `max * 4` wait (each at most a given time),
/// and the rest are refused at once.
#[derive(Debug)]
pub struct FetchLimit {
    running: Arc<tokio::sync::Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// A running fetch's place in its [`FetchLimit`].
#[derive(Debug)]
pub struct FetchPermit(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl FetchLimit {
    /// `max` fetches at once.
    pub fn new(max: std::num::NonZeroUsize) -> Self {
        FetchLimit {
            running: Arc::new(tokio::sync::Semaphore::new(max.get())),
            waiting: AtomicUsize::new(0),
            max_waiting: max.get().saturating_mul(QUEUE_PER_FETCH),
        }
    }

    /// A place to fetch, waiting at most `wait` in the queue.
    pub async fn acquire(&self, wait: Duration) -> Result<FetchPermit, SourceError> {
        if let Ok(permit) = self.running.clone().try_acquire_owned() {
            return Ok(FetchPermit(permit));
        }
        let queued = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_waiting).then(|| n.saturating_add(1))
            });
        if queued.is_err() {
            return Err(SourceError::Busy);
        }
        let permit = tokio::time::timeout(wait, self.running.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match permit {
            Ok(Ok(permit)) => Ok(FetchPermit(permit)),
            _ => Err(SourceError::Busy),
        }
    }
}

/// All configured sources by name.
pub type Sources = BTreeMap<String, Arc<SourceEntry>>;

/// Failure to construct a source at start or reload.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Vault login (or its client set-up) failed.
    #[error("source {name:?}: {cause}")]
    Vault {
        /// Source name.
        name: String,
        /// What failed.
        cause: vault_auth::ConnectError,
    },
    /// The AWS credentials (or their identity check) failed.
    #[error("source {name:?}: {cause}")]
    Aws {
        /// Source name.
        name: String,
        /// What failed.
        cause: crate::aws_auth::AuthError,
    },
    /// A command source's program is not there.
    #[error("source {name:?}: {cause}")]
    Command {
        /// Source name.
        name: String,
        /// What is missing.
        cause: command::ProgramNotFound,
    },
    /// An OAuth2 source's HTTP client could not be set up (its CA bundle).
    #[error("source {name:?}: {cause}")]
    OAuth2 {
        /// Source name.
        name: String,
        /// What failed.
        cause: oauth2::BuildError,
    },
    /// A `vault-lease` source's Vault source is not (yet) built.
    #[error("source {name:?}: its Vault source {vault:?} has not logged in")]
    LeaseVault {
        /// Source name.
        name: String,
        /// The Vault source it names.
        vault: String,
    },
    /// A source's name is the one its Vault source's transit side would take.
    #[error("source {name:?}: the name is taken by the transit side of {vault:?}")]
    NameTaken {
        /// The clashing name.
        name: String,
        /// The Vault source with `transit_mount`.
        vault: String,
    },
}

impl BuildError {
    /// What failed, without the source's name.
    pub fn cause(&self) -> String {
        match self {
            BuildError::Vault { cause, .. } => cause.to_string(),
            BuildError::Aws { cause, .. } => cause.to_string(),
            BuildError::Command { cause, .. } => cause.to_string(),
            BuildError::OAuth2 { cause, .. } => cause.to_string(),
            BuildError::NameTaken { vault, .. } => {
                format!("the name is taken by the transit side of {vault:?}")
            }
            BuildError::LeaseVault { vault, .. } => {
                format!("its Vault source {vault:?} has not logged in")
            }
        }
    }

    /// Whether starting again later may succeed (a backend unreachable, slow or throttled):
    /// exit 75. Otherwise the refusal stands (credentials rejected, access denied, no such
    /// role, a bad key file or CA bundle): exit 77, and systemd does not restart.
    pub fn retry_may_help(&self) -> bool {
        match self {
            BuildError::Vault { cause, .. } => cause.retry_may_help(),
            BuildError::Aws { cause, .. } => cause.retry_may_help(),
            // The Vault source may still be starting (its own startup_check = "retry").
            BuildError::LeaseVault { .. } => true,
            BuildError::Command { .. }
            | BuildError::OAuth2 { .. }
            | BuildError::NameTaken { .. } => false,
        }
    }
}

fn warn_plain_http(name: &str) {
    tracing::warn!(
        source = name,
        "allow_plain_http = true: plain http to hosts other than loopback is accepted for this \
         source, so its credentials and values may cross the network in clear text (for tests only)"
    );
}

/// Every source except the transit ones, shared with the transit sources (which read
/// ciphertexts through them); a source whose start-up check passes late is added then.
pub type SharedSources = Arc<RwLock<Sources>>;

/// What [`build_all`] made of a config.
#[derive(Debug)]
pub struct Built {
    /// The sources that passed their start-up check.
    pub sources: Sources,
    /// Sources with `startup_check = "retry"` whose check failed, and why.
    pub starting: BTreeMap<String, BuildError>,
    /// Shared with the transit sources; [`build_one`] of a late source takes it.
    pub others: SharedSources,
}

/// The names a configured source answers to: its own and, for a Vault source with
/// `transit_mount`, `{name}-transit`.
pub fn served_names(name: &str, cfg: &crate::config::SourceConfig) -> Vec<String> {
    match &cfg.kind {
        crate::config::SourceKind::Vault(vault) if vault.transit_mount.is_some() => {
            vec![name.to_owned(), vault::transit_name(name)]
        }
        _ => vec![name.to_owned()],
    }
}

/// Constructs every configured source (backends are contacted here, e.g. to check
/// credentials). A source whose check fails stops the start, unless it has
/// `startup_check = "retry"`: then it is listed in [`Built::starting`] for
/// `startup::spawn_source_retries`.
pub async fn build_all(config: &crate::config::Config) -> Result<Built, BuildError> {
    // A name clash is the config's fault, not the backend's: refused whatever startup_check.
    for (name, cfg) in &config.sources {
        if let [_, companion] = served_names(name, cfg).as_slice()
            && config.sources.contains_key(companion)
        {
            return Err(BuildError::NameTaken {
                name: companion.clone(),
                vault: name.clone(),
            });
        }
    }
    let others: SharedSources = Arc::new(RwLock::new(Sources::new()));
    let mut sources = Sources::new();
    let mut starting = BTreeMap::new();
    // vault-lease sources after the Vault sources whose session they use.
    let (leases, first): (Vec<_>, Vec<_>) = config
        .sources
        .iter()
        .partition(|(_, cfg)| matches!(cfg.kind, crate::config::SourceKind::VaultLease(_)));
    for (name, cfg) in first.into_iter().chain(leases) {
        match build_one(name, cfg, &others).await {
            Ok(entries) => sources.extend(entries),
            Err(err) if cfg.startup_check == crate::config::StartupCheck::Retry => {
                starting.insert(name.clone(), err);
            }
            Err(err) => return Err(err),
        }
    }
    Ok(Built {
        sources,
        starting,
        others,
    })
}

/// Constructs one configured source (and its transit side), adds it to `others` for the
/// transit sources, and returns its entries by the names it answers to.
pub async fn build_one(
    name: &str,
    cfg: &crate::config::SourceConfig,
    others: &SharedSources,
) -> Result<Vec<(String, Arc<SourceEntry>)>, BuildError> {
    let entry = |source| {
        Arc::new(SourceEntry {
            source,
            ttl: cfg.ttl,
            fetch_timeout: cfg.fetch_timeout,
            limit: FetchLimit::new(cfg.max_concurrent_fetches),
        })
    };
    let mut entries = Vec::with_capacity(2);
    let source = match &cfg.kind {
        crate::config::SourceKind::Vault(vault) => {
            if vault.allow_plain_http {
                warn_plain_http(name);
            }
            let session =
                vault_auth::connect(name, vault)
                    .await
                    .map_err(|cause| BuildError::Vault {
                        name: name.to_owned(),
                        cause,
                    })?;
            if let Some(mount) = &vault.transit_mount {
                entries.push((
                    vault::transit_name(name),
                    entry(Source::VaultTransit(vault_transit::TransitSource::new(
                        session.clone(),
                        mount.clone(),
                        vault.ciphertexts.clone(),
                        others.clone(),
                    ))),
                ));
            }
            Source::Vault(vault::VaultSource::new(session, vault.kv_mount.clone()))
        }
        crate::config::SourceKind::File { dir } => Source::File(file::FileSource::new(dir.clone())),
        crate::config::SourceKind::Env { prefix } => {
            Source::Env(env::EnvSource::new(prefix.clone()))
        }
        crate::config::SourceKind::Aws(aws) => Source::Aws({
            if aws.allow_plain_http {
                warn_plain_http(name);
            }
            aws::AwsSource::build(aws, cfg.fetch_timeout)
                .await
                .map_err(|cause| BuildError::Aws {
                    name: name.to_owned(),
                    cause,
                })?
        }),
        crate::config::SourceKind::Command(command) => {
            Source::Command(command::CommandSource::build(command).map_err(|cause| {
                BuildError::Command {
                    name: name.to_owned(),
                    cause,
                }
            })?)
        }
        crate::config::SourceKind::AwsS3(s3) => Source::AwsS3({
            if s3.aws.allow_plain_http {
                warn_plain_http(name);
            }
            aws_s3::S3Source::build(s3, cfg.fetch_timeout)
                .await
                .map_err(|cause| BuildError::Aws {
                    name: name.to_owned(),
                    cause,
                })?
        }),
        crate::config::SourceKind::OAuth2(oauth) => {
            if oauth.allow_plain_http {
                warn_plain_http(name);
            }
            let source = oauth2::OAuth2Source::build(oauth, others.clone()).map_err(|cause| {
                BuildError::OAuth2 {
                    name: name.to_owned(),
                    cause,
                }
            })?;
            Source::OAuth2(Box::new(source))
        }
        crate::config::SourceKind::VaultLease(lease) => {
            let session = others
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&lease.vault)
                .and_then(|entry| match &entry.source {
                    Source::Vault(vault) => Some(vault.session()),
                    _ => None,
                })
                .ok_or_else(|| BuildError::LeaseVault {
                    name: name.to_owned(),
                    vault: lease.vault.clone(),
                })?;
            Source::VaultLease(vault::lease::LeaseSource::new(name, session, lease))
        }
        crate::config::SourceKind::AwsSsm(ssm) => Source::AwsSsm({
            if ssm.aws.allow_plain_http {
                warn_plain_http(name);
            }
            aws_ssm::SsmSource::build(ssm, cfg.fetch_timeout)
                .await
                .map_err(|cause| BuildError::Aws {
                    name: name.to_owned(),
                    cause,
                })?
        }),
    };
    let main = entry(source);
    // No transit entry in `others`: no cycles, and no transit-of-transit.
    others
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.to_owned(), main.clone());
    entries.push((name.to_owned(), main));
    Ok(entries)
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use std::num::NonZeroUsize;

    #[tokio::test(start_paused = true)]
    async fn at_most_max_run_a_bounded_queue_waits_and_the_rest_are_busy() {
        let limit = Arc::new(FetchLimit::new(NonZeroUsize::new(2).unwrap()));
        let wait = Duration::from_secs(5);
        let a = limit.acquire(wait).await.unwrap();
        let _b = limit.acquire(wait).await.unwrap();
        // 8 may queue (2 x 4); the 9th is refused at once.
        let mut queued = Vec::new();
        for _ in 0..8 {
            let limit = limit.clone();
            queued.push(tokio::spawn(async move { limit.acquire(wait).await }));
        }
        tokio::task::yield_now().await;
        assert!(matches!(limit.acquire(wait).await, Err(SourceError::Busy)));
        // One place frees up: one waiter gets it, the others time out as busy.
        drop(a);
        // Permits are held (kept in `granted`) so a waiter that got one does not pass it on.
        let mut granted = Vec::new();
        for task in queued {
            if let Ok(permit) = task.await.unwrap() {
                granted.push(permit);
            }
        }
        assert_eq!(granted.len(), 1);
        assert!(SourceError::Busy.is_transient());
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
