//! Secret sources behind one interface.
//!
//! A source turns a validated [`SecretRequest`] into a [`Secret`] held in secure memory, or a
//! [`SourceError`] that says what kind of failure it was (so the server can pick a status and the
//! cache can decide whether stale-if-error applies). Sources never cache and never check access:
//! the cache and the ACL do. Dispatch is a plain enum, one variant per kind, one file per kind.

pub mod aws;
pub mod aws_s3;
pub mod aws_ssm;
pub mod command;
pub mod env;
pub mod file;
pub mod vault;
pub mod vault_auth;
pub mod vault_config;
pub mod vault_http;
pub mod vault_transit;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretRequest {
    /// `source/id`.
    pub name: SecretName,
    /// Version selectors.
    pub selector: Selector,
}

/// A fetched secret.
#[derive(Debug)]
pub struct Secret {
    /// The value, in locked memory.
    pub value: SecretBytes,
    /// The backend's version label, when it has one.
    pub version: Option<String>,
    /// When it was fetched from the backend.
    pub fetched_at: SystemTime,
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
}

impl SourceError {
    /// Transient failures: stale-if-error may serve the previous value.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Unavailable { .. } | SourceError::Timeout(_)
        )
    }
}

impl From<MemError> for SourceError {
    fn from(err: MemError) -> Self {
        SourceError::Memory(err.to_string())
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
            Source::File(_) | Source::Env(_) | Source::VaultTransit(_) | Source::Command(_) => {
                if selector.is_empty() {
                    Ok(())
                } else {
                    Err("this source has no versions")
                }
            }
            Source::Aws(_) => aws::check_selector(selector),
            Source::AwsSsm(_) => aws_ssm::check_selector(selector),
            Source::AwsS3(_) => aws_s3::check_selector(selector),
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
        match self {
            Source::File(_) | Source::Vault(_) | Source::AwsS3(_) => Ok(()),
            Source::Env(_) => env::check_id(id),
            Source::VaultTransit(_) => vault_transit::split_id(id).map(|_| ()),
            Source::Aws(_) => aws::check_secret_id(id),
            Source::AwsSsm(_) => aws_ssm::check_id(id),
            Source::Command(_) => command::check_id(id),
            #[cfg(test)]
            Source::Fake(_) => crate::testutil::FakeSource::check_id(id),
        }
    }

    /// Fetches `request`; `previous` is the cached value being refreshed, if any.
    pub async fn fetch(
        &self,
        request: &SecretRequest,
        previous: Option<&Secret>,
    ) -> Result<Fetched, SourceError> {
        match self {
            Source::File(s) => s.fetch(request.name.id()).await.map(Fetched::New),
            Source::Env(s) => s.fetch(request.name.id()).map(Fetched::New),
            Source::Vault(s) => s
                .fetch(request.name.id(), request.selector.version)
                .await
                .map(Fetched::New),
            Source::VaultTransit(s) => s.fetch(request.name.id()).await.map(Fetched::New),
            Source::Aws(s) => s.fetch(request, previous).await,
            Source::AwsSsm(s) => s.fetch(request).await,
            Source::Command(s) => s.fetch(request).await,
            Source::AwsS3(s) => s.fetch(request).await,
            #[cfg(test)]
            Source::Fake(s) => s.fetch(request.name.id()).map(Fetched::New),
        }
    }
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
}

/// All configured sources by name.
pub type Sources = BTreeMap<String, Arc<SourceEntry>>;

/// Failure to construct a source at start or reload.
#[derive(Debug, thiserror::Error)]
#[error("source {name:?}: {reason}")]
pub struct BuildError {
    /// Source name.
    pub name: String,
    /// What failed.
    pub reason: String,
}

fn warn_plain_http(name: &str) {
    tracing::warn!(
        source = name,
        "allow_plain_http = true: plain http to hosts other than loopback is accepted for this \
         source, so its credentials and values may cross the network in clear text (for tests only)"
    );
}

/// Constructs every configured source (backends are contacted here, e.g. to check credentials).
pub async fn build_all(config: &crate::config::Config) -> Result<Sources, BuildError> {
    let mut sources = Sources::new();
    // Filled once every source exists: transit reads ciphertexts through the other sources.
    let others: Arc<OnceLock<Sources>> = Arc::new(OnceLock::new());
    for (name, cfg) in &config.sources {
        let source = match &cfg.kind {
            crate::config::SourceKind::Vault(vault) => {
                if vault.allow_plain_http {
                    warn_plain_http(name);
                }
                let session =
                    vault_auth::connect(name, vault)
                        .await
                        .map_err(|reason| BuildError {
                            name: name.clone(),
                            reason,
                        })?;
                if let Some(mount) = &vault.transit_mount {
                    let companion = vault::transit_name(name);
                    if config.sources.contains_key(&companion) {
                        return Err(BuildError {
                            name: companion,
                            reason: format!("the name is taken by the transit side of {name:?}"),
                        });
                    }
                    sources.insert(
                        companion,
                        Arc::new(SourceEntry {
                            source: Source::VaultTransit(vault_transit::TransitSource::new(
                                session.clone(),
                                mount.clone(),
                                vault.ciphertexts.clone(),
                                others.clone(),
                            )),
                            ttl: cfg.ttl,
                            fetch_timeout: cfg.fetch_timeout,
                        }),
                    );
                }
                Source::Vault(vault::VaultSource::new(session, vault.kv_mount.clone()))
            }
            crate::config::SourceKind::File { dir } => {
                Source::File(file::FileSource::new(dir.clone()))
            }
            crate::config::SourceKind::Env { prefix } => {
                Source::Env(env::EnvSource::new(prefix.clone()))
            }
            crate::config::SourceKind::Aws(aws) => Source::Aws({
                if aws.allow_plain_http {
                    warn_plain_http(name);
                }
                aws::AwsSource::build(aws, cfg.fetch_timeout)
                    .await
                    .map_err(|e| BuildError {
                        name: name.clone(),
                        reason: e.to_string(),
                    })?
            }),
            crate::config::SourceKind::Command(command) => {
                Source::Command(command::CommandSource::build(command).map_err(|reason| {
                    BuildError {
                        name: name.clone(),
                        reason,
                    }
                })?)
            }
            crate::config::SourceKind::AwsS3(s3) => Source::AwsS3({
                if s3.aws.allow_plain_http {
                    warn_plain_http(name);
                }
                aws_s3::S3Source::build(s3, cfg.fetch_timeout)
                    .await
                    .map_err(|e| BuildError {
                        name: name.clone(),
                        reason: e.to_string(),
                    })?
            }),
            crate::config::SourceKind::AwsSsm(ssm) => Source::AwsSsm({
                if ssm.aws.allow_plain_http {
                    warn_plain_http(name);
                }
                aws_ssm::SsmSource::build(ssm, cfg.fetch_timeout)
                    .await
                    .map_err(|e| BuildError {
                        name: name.clone(),
                        reason: e.to_string(),
                    })?
            }),
        };
        sources.insert(
            name.clone(),
            Arc::new(SourceEntry {
                source,
                ttl: cfg.ttl,
                fetch_timeout: cfg.fetch_timeout,
            }),
        );
    }
    // No transit entry in `others`: no cycles, and no transit-of-transit.
    let _ = others.set(
        sources
            .iter()
            .filter(|(_, e)| !matches!(e.source, Source::VaultTransit(_)))
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect(),
    );
    Ok(sources)
}
