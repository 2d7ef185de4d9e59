//! Building the configured sources at start and reload: each kind's constructor (which may
//! contact its backend: a login, an identity check), the names each answers to, and the
//! [`BuildError`] that decides the exit code. Kinds own their construction; this file only
//! calls it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::config::{SourceConfig, SourceKind};
use super::limit::FetchLimit;
use super::section::{StartupCheck, warn_plain_http};
use super::{SharedSources, Source, SourceEntry, Sources, aws, command, env, file, oauth2, vault};

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

/// Failure to construct a source at start or reload.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Vault login (or its client set-up) failed.
    #[error("source {name:?}: {cause}")]
    Vault {
        /// Source name.
        name: String,
        /// What failed.
        cause: vault::auth::ConnectError,
    },
    /// The AWS credentials (or their identity check) failed.
    #[error("source {name:?}: {cause}")]
    Aws {
        /// Source name.
        name: String,
        /// What failed.
        cause: aws::auth::AuthError,
    },
    /// An aws-credentials source's base identity or a role profile failed.
    #[error("source {name:?}: {cause}")]
    AwsCredentials {
        /// Source name.
        name: String,
        /// What failed.
        cause: aws::credentials::CredentialsError,
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
            BuildError::AwsCredentials { cause, .. } => cause.to_string(),
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
            BuildError::AwsCredentials { cause, .. } => cause.retry_may_help(),
            // The Vault source may still be starting (its own startup_check = "retry").
            BuildError::LeaseVault { .. } => true,
            BuildError::Command { .. }
            | BuildError::OAuth2 { .. }
            | BuildError::NameTaken { .. } => false,
        }
    }
}

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
pub fn served_names(name: &str, cfg: &SourceConfig) -> Vec<String> {
    match &cfg.kind {
        SourceKind::Vault(vault) if vault.transit_mount.is_some() => {
            vec![name.to_owned(), vault::transit_name(name)]
        }
        _ => vec![name.to_owned()],
    }
}

/// Constructs every configured source (backends are contacted here, e.g. to check
/// credentials). A source whose check fails stops the start, unless it has
/// `startup_check = "retry"`: then it is listed in [`Built::starting`] for
/// `startup::spawn_source_retries`.
pub async fn build_all(configured: &BTreeMap<String, SourceConfig>) -> Result<Built, BuildError> {
    // A name clash is the config's fault, not the backend's: refused whatever startup_check.
    for (name, cfg) in configured {
        if let [_, companion] = served_names(name, cfg).as_slice()
            && configured.contains_key(companion)
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
    let (leases, first): (Vec<_>, Vec<_>) = configured
        .iter()
        .partition(|(_, cfg)| matches!(cfg.kind, SourceKind::VaultLease(_)));
    for (name, cfg) in first.into_iter().chain(leases) {
        match build_one(name, cfg, &others).await {
            Ok(entries) => sources.extend(entries),
            Err(err) if cfg.startup_check == StartupCheck::Retry => {
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
    cfg: &SourceConfig,
    others: &SharedSources,
) -> Result<Vec<(String, Arc<SourceEntry>)>, BuildError> {
    let entry = |source| {
        Arc::new(SourceEntry {
            source,
            ttl: cfg.ttl,
            fetch_timeout: cfg.fetch_timeout,
            limit: FetchLimit::new(cfg.max_concurrent_fetches),
            shares: super::share::UidShares::new(cfg.max_fetches_per_uid),
        })
    };
    let mut entries = Vec::with_capacity(2);
    let source = match &cfg.kind {
        SourceKind::Vault(vault) => {
            if vault.allow_plain_http {
                warn_plain_http(name);
            }
            let session =
                vault::auth::connect(name, vault)
                    .await
                    .map_err(|cause| BuildError::Vault {
                        name: name.to_owned(),
                        cause,
                    })?;
            if let Some(mount) = &vault.transit_mount {
                entries.push((
                    vault::transit_name(name),
                    entry(Source::VaultTransit(vault::transit::TransitSource::new(
                        session.clone(),
                        mount.clone(),
                        vault.ciphertexts.clone(),
                        others.clone(),
                    ))),
                ));
            }
            Source::Vault(vault::VaultSource::new(session, vault.kv_mount.clone()))
        }
        SourceKind::File { dir } => Source::File(file::FileSource::new(dir.clone())),
        SourceKind::Env { prefix } => Source::Env(env::EnvSource::new(prefix.clone())),
        SourceKind::Aws(aws) => Source::Aws({
            if aws.allow_plain_http {
                warn_plain_http(name);
            }
            aws::secretsmanager::AwsSource::build(aws, cfg.fetch_timeout)
                .await
                .map_err(|cause| BuildError::Aws {
                    name: name.to_owned(),
                    cause,
                })?
        }),
        SourceKind::Command(command) => {
            Source::Command(command::CommandSource::build(command).map_err(|cause| {
                BuildError::Command {
                    name: name.to_owned(),
                    cause,
                }
            })?)
        }
        SourceKind::AwsS3(s3) => Source::AwsS3({
            if s3.aws.allow_plain_http {
                warn_plain_http(name);
            }
            aws::s3::S3Source::build(s3, cfg.fetch_timeout)
                .await
                .map_err(|cause| BuildError::Aws {
                    name: name.to_owned(),
                    cause,
                })?
        }),
        SourceKind::OAuth2(oauth) => {
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
        SourceKind::VaultLease(lease) => {
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
        // aws-credentials: role sessions for local callers.
        SourceKind::AwsCredentials(creds) => Source::AwsCredentials({
            if creds.aws.allow_plain_http {
                warn_plain_http(name);
            }
            aws::credentials::CredentialsSource::build(creds, cfg.fetch_timeout)
                .await
                .map_err(|cause| BuildError::AwsCredentials {
                    name: name.to_owned(),
                    cause,
                })?
        }),
        SourceKind::AwsSsm(ssm) => Source::AwsSsm({
            if ssm.aws.allow_plain_http {
                warn_plain_http(name);
            }
            aws::ssm::SsmSource::build(ssm, cfg.fetch_timeout)
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
