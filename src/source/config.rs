//! `[sources.NAME]`: the section as written ([`RawSource`], `type` selects the kind) and its
//! validation into a [`SourceConfig`] (the kind's own settings and the common keys). Each kind
//! owns its section's struct and validation; this file picks the kind and applies the common
//! keys (`section`). It does not import the agent's config (`crate::config` composes this).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::aws::config::{AwsConfig, RawAwsSource};
use super::aws::credentials_config::{CredentialsConfig, RawCredentialsSource};
use super::aws::s3::{RawS3Source, S3Config};
use super::aws::ssm::{RawSsmSource, SsmConfig};
use super::command::{CommandConfig, RawCommandSource};
use super::env::RawEnvSource;
use super::file::RawFileSource;
use super::oauth2::{OAuth2Config, RawOAuth2Source};
use super::section::{
    Common, Defaults, FETCH_TIMEOUT, Invalid, MAX_FETCHES, PER_UID, STARTUP_CHECK, StartupCheck,
    TTL, check_ttl_exceeds_refresh_ahead, resolve_relative, secs, split_common,
};
use super::vault::lease_config::{LeaseConfig, RawLeaseSource};
use super::vault::{RawVaultSource, VaultConfig};

/// `[sources.NAME]` as written: the common keys, and the kind's own section.
#[derive(Debug)]
pub struct RawSource {
    /// The keys every kind may take (`ttl_secs`, `fetch_timeout_secs`, ...).
    common: Common,
    /// The kind's own keys; `type` selects the kind.
    kind: RawKind,
}

impl<'de> Deserialize<'de> for RawSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = toml::Table::deserialize(deserializer)?;
        // A common key the kind does not take stays in the table: the kind's own struct refuses
        // it as an unknown field, as it refuses any other key it does not know.
        let takes = table
            .get("type")
            .and_then(toml::Value::as_str)
            .map_or(&[][..], common_keys_of);
        let common = split_common(&mut table, takes).map_err(D::Error::custom)?;
        let kind = toml::Value::Table(table)
            .try_into::<RawKind>()
            .map_err(|e| {
                let message = e.message().trim_end();
                if message.starts_with("unknown field") && !takes.is_empty() {
                    // serde lists the kind's own keys; the common ones it takes are keys too.
                    D::Error::custom(format!("{message}, or one of `{}`", takes.join("`, `")))
                } else {
                    D::Error::custom(message.to_owned())
                }
            })?;
        Ok(RawSource { common, kind })
    }
}

/// Which of the common keys a `type` takes. Only sources with a start-up check (a login, an
/// identity check, a program lookup) take `startup_check`; sources whose values carry their own
/// lifetime (tokens, leases, role sessions) take no `ttl_secs`; a command's own `timeout_secs`
/// bounds its fetch. An oauth2 source's build contacts nothing: its token endpoint is first
/// asked at a read.
fn common_keys_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "file" | "env" => &[TTL, FETCH_TIMEOUT, MAX_FETCHES, PER_UID],
        "vault" | "aws-secretsmanager" | "aws-ssm" | "aws-s3" => {
            &[TTL, FETCH_TIMEOUT, MAX_FETCHES, PER_UID, STARTUP_CHECK]
        }
        "command" => &[TTL, MAX_FETCHES, PER_UID, STARTUP_CHECK],
        "oauth2" => &[FETCH_TIMEOUT, MAX_FETCHES, PER_UID],
        "aws-credentials" | "vault-lease" => &[FETCH_TIMEOUT, MAX_FETCHES, PER_UID, STARTUP_CHECK],
        _ => &[],
    }
}

/// A kind's own section as written; `type` selects the kind.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
enum RawKind {
    /// `type = "file"`.
    #[serde(rename = "file")]
    File(RawFileSource),
    /// `type = "env"`.
    #[serde(rename = "env")]
    Env(RawEnvSource),
    /// `type = "vault"`.
    #[serde(rename = "vault")]
    Vault(Box<RawVaultSource>),
    /// `type = "aws-secretsmanager"`.
    #[serde(rename = "aws-secretsmanager")]
    Aws(Box<RawAwsSource>),
    /// `type = "aws-ssm"`.
    #[serde(rename = "aws-ssm")]
    AwsSsm(Box<RawSsmSource>),
    /// `type = "aws-s3"`.
    #[serde(rename = "aws-s3")]
    AwsS3(Box<RawS3Source>),
    /// `type = "command"`.
    #[serde(rename = "command")]
    Command(RawCommandSource),
    /// `type = "oauth2"`.
    #[serde(rename = "oauth2")]
    OAuth2(Box<RawOAuth2Source>),
    /// `type = "aws-credentials"`.
    #[serde(rename = "aws-credentials")]
    AwsCredentials(Box<RawCredentialsSource>),
    /// `type = "vault-lease"`.
    #[serde(rename = "vault-lease")]
    VaultLease(Box<RawLeaseSource>),
}

/// A validated source, ready to be constructed.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Kind-specific settings.
    pub kind: SourceKind,
    /// TTL (per-source override or the cache default).
    pub ttl: Duration,
    /// Fetch timeout.
    pub fetch_timeout: Duration,
    /// Fetches in flight at once; further misses wait in a bounded queue.
    pub max_concurrent_fetches: NonZeroUsize,
    /// Fetches one uid may have running or queued at once (`max_fetches_per_uid`).
    pub max_fetches_per_uid: NonZeroUsize,
    /// Exit or retry when the start-up check fails.
    pub startup_check: StartupCheck,
}

/// Kind-specific source settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// Files below a directory.
    File {
        /// Canonical directory.
        dir: PathBuf,
    },
    /// Environment variables.
    Env {
        /// Variable prefix.
        prefix: String,
    },
    /// Vault KV v2 (and transit, as `{name}-transit`).
    Vault(Box<VaultConfig>),
    /// AWS Secrets Manager.
    Aws(Box<AwsConfig>),
    /// AWS SSM Parameter Store.
    AwsSsm(Box<SsmConfig>),
    /// A command's output.
    Command(CommandConfig),
    /// AWS S3.
    AwsS3(Box<S3Config>),
    /// OAuth2 access tokens.
    OAuth2(Box<OAuth2Config>),
    /// AWS role credentials for local callers.
    AwsCredentials(Box<CredentialsConfig>),
    /// Leased secrets (database credentials, certificates) through a Vault source.
    VaultLease(Box<LeaseConfig>),
}

/// Default `max_concurrent_fetches` of a source.
pub const DEFAULT_MAX_FETCHES: usize = 8;

/// Default fetch timeout of a source.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

impl RawSource {
    /// Validates the section at `key` (`sources.NAME`); keys in errors are dotted from the root.
    pub fn build(self, key: &str, defaults: &Defaults<'_>) -> Result<SourceConfig, Invalid> {
        let RawSource { common, kind: raw } = self;
        let max_concurrent_fetches =
            NonZeroUsize::new(common.max_concurrent_fetches.unwrap_or(DEFAULT_MAX_FETCHES))
                .filter(|n| n.get() <= 1024)
                .ok_or_else(|| {
                    Invalid::new(format!("{key}.{MAX_FETCHES}"), "must be between 1 and 1024")
                })?;
        let max_fetches_per_uid = match common.max_fetches_per_uid {
            None => crate::source::share::default_per_uid(max_concurrent_fetches),
            Some(n) => NonZeroUsize::new(n)
                .filter(|n| n.get() <= 1024)
                .ok_or_else(|| {
                    Invalid::new(format!("{key}.{PER_UID}"), "must be between 1 and 1024")
                })?,
        };
        let (kind, ttl_secs, timeout_secs) = match raw {
            RawKind::File(f) => {
                let dir = resolve_relative(defaults.config_path, &f.dir);
                let meta = std::fs::metadata(&dir).map_err(|e| {
                    Invalid::new(format!("{key}.dir"), format!("{}: {e}", dir.display()))
                })?;
                if !meta.is_dir() {
                    return Err(Invalid::new(
                        format!("{key}.dir"),
                        format!("{} is not a directory", dir.display()),
                    ));
                }
                let dir = dir.canonicalize().map_err(|e| {
                    Invalid::new(format!("{key}.dir"), format!("{}: {e}", dir.display()))
                })?;
                (
                    SourceKind::File { dir },
                    common.ttl_secs,
                    common.fetch_timeout_secs,
                )
            }
            RawKind::Env(e) => {
                let prefix = e.prefix.unwrap_or_default();
                if prefix.is_empty() {
                    return Err(Invalid::new(
                        format!("{key}.prefix"),
                        "is required and must not be empty (e.g. \"APP_SECRET_\"): without one, \
                     every variable of the agent would be a secret",
                    ));
                }
                if !prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(Invalid::new(
                        format!("{key}.prefix"),
                        "must be letters, digits and '_'",
                    ));
                }
                if super::env::is_reserved(&prefix) {
                    return Err(Invalid::new(
                        format!("{key}.prefix"),
                        format!(
                            "{prefix:?} names the agent's own variables (AWS_*, VAULT_*, BAO_*, \
                         CREDAGENT_*), which are never served; choose another, e.g. \"APP_SECRET_\""
                        ),
                    ));
                }
                (
                    SourceKind::Env { prefix },
                    common.ttl_secs,
                    common.fetch_timeout_secs,
                )
            }
            RawKind::Vault(v) => {
                let vault = v
                    .build(&|p| resolve_relative(defaults.config_path, p))
                    .map_err(|e| e.under(key))?;
                (
                    SourceKind::Vault(Box::new(vault)),
                    common.ttl_secs,
                    common.fetch_timeout_secs,
                )
            }
            RawKind::Aws(a) => {
                let aws = a.validate(key, defaults.config_path)?;
                (
                    SourceKind::Aws(Box::new(aws)),
                    common.ttl_secs,
                    common.fetch_timeout_secs,
                )
            }
            RawKind::Command(c) => {
                let command = c.validate().map_err(|e| e.under(key))?;
                // The command's own limit bounds the fetch; one second more lets it kill the
                // command's process group before the broker gives up on the fetch.
                let timeout_secs = Some(command.timeout.as_secs().saturating_add(1));
                (SourceKind::Command(command), common.ttl_secs, timeout_secs)
            }
            RawKind::AwsS3(a) => {
                let s3 = a.validate(key, defaults.config_path)?;
                (
                    SourceKind::AwsS3(Box::new(s3)),
                    common.ttl_secs,
                    common.fetch_timeout_secs,
                )
            }
            RawKind::OAuth2(o) => {
                let oauth = o
                    .validate(&|p| resolve_relative(defaults.config_path, p))
                    .map_err(|e| e.under(key))?;
                // A token is held as long as the token endpoint says (capped by cache.ttl_secs).
                (
                    SourceKind::OAuth2(Box::new(oauth)),
                    None,
                    common.fetch_timeout_secs,
                )
            }
            RawKind::VaultLease(l) => {
                let lease = l.build().map_err(|e| e.under(key))?;
                // A lease's own lifetime bounds how long the cache holds it.
                (
                    SourceKind::VaultLease(Box::new(lease)),
                    None,
                    common.fetch_timeout_secs,
                )
            }
            // Held for the session's life (its Lifetime), at most the longest STS session.
            RawKind::AwsCredentials(c) => {
                let creds = c.validate(key, defaults.config_path)?;
                (
                    SourceKind::AwsCredentials(Box::new(creds)),
                    Some(43_200),
                    common.fetch_timeout_secs,
                )
            }
            RawKind::AwsSsm(a) => {
                let ssm = a.validate(key, defaults.config_path)?;
                (
                    SourceKind::AwsSsm(Box::new(ssm)),
                    common.ttl_secs,
                    common.fetch_timeout_secs,
                )
            }
        };
        let ttl = match ttl_secs {
            Some(v) => secs(&format!("{key}.ttl_secs"), v, 1, 7 * 24 * 3600)?,
            None => defaults.ttl,
        };
        check_ttl_exceeds_refresh_ahead(&format!("{key}.ttl_secs"), ttl, defaults.refresh_ahead)?;
        let fetch_timeout = match timeout_secs {
            Some(v) => secs(&format!("{key}.fetch_timeout_secs"), v, 1, 600)?,
            None => DEFAULT_FETCH_TIMEOUT,
        };
        let startup_check = match common.startup_check.as_deref() {
            None | Some("required") => StartupCheck::Required,
            Some("retry") => StartupCheck::Retry,
            Some(other) => {
                return Err(Invalid::new(
                    format!("{key}.startup_check"),
                    format!("{other:?} is not \"required\" or \"retry\""),
                ));
            }
        };
        Ok(SourceConfig {
            kind,
            ttl,
            fetch_timeout,
            max_concurrent_fetches,
            max_fetches_per_uid,
            startup_check,
        })
    }
}
