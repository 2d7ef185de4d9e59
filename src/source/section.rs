//! What every source section shares: the common keys ([`Common`], split off a section's table
//! by [`split_common`] before the kind's own keys are parsed) and their rules ([`StartupCheck`],
//! the bounds of `ttl_secs` and `fetch_timeout_secs`), the one validation error ([`Invalid`]),
//! the plain-http rule, and relative paths. Every kind's config uses it; it uses no kind.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A config value that failed validation: the dotted key and why. A kind reports keys relative
/// to its section (`region`, `auth.role_id_file`); whoever holds the section's key prefixes it
/// ([`Invalid::under`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted key, e.g. `assume_role.role_arn` below its section or
    /// `sources.aws.assume_role.role_arn` from the root.
    pub key: String,
    /// Why.
    pub reason: String,
}

impl Invalid {
    /// `key` is invalid because of `reason`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The same failure with its key below `prefix` (`prefix.key`).
    pub fn under(self, prefix: &str) -> Self {
        Invalid {
            key: format!("{prefix}.{}", self.key),
            reason: self.reason,
        }
    }
}

/// The keys every kind may take (`source::config` says which of them each kind does: a key it
/// does not take is refused as an unknown field, as the kind's own struct refuses any other).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Common {
    /// Per-source TTL override.
    pub ttl_secs: Option<u64>,
    /// Per-source fetch timeout.
    pub fetch_timeout_secs: Option<u64>,
    /// Fetches from this source in flight at once (default 8); further misses queue.
    pub max_concurrent_fetches: Option<usize>,
    /// Of those, running or queued for one uid at once (default half, at least 1).
    pub max_fetches_per_uid: Option<usize>,
    /// `"required"` (default: the agent exits when the start-up check fails) or `"retry"`.
    pub startup_check: Option<String>,
}

/// `ttl_secs`.
pub const TTL: &str = "ttl_secs";
/// `fetch_timeout_secs`.
pub const FETCH_TIMEOUT: &str = "fetch_timeout_secs";
/// `max_concurrent_fetches`.
pub const MAX_FETCHES: &str = "max_concurrent_fetches";
/// `max_fetches_per_uid`.
pub const PER_UID: &str = "max_fetches_per_uid";
/// `startup_check`.
pub const STARTUP_CHECK: &str = "startup_check";

/// Takes the common keys a kind `takes` off its section's `table` and parses them; the rest
/// is the kind's own (serde's `flatten` cannot be combined with `deny_unknown_fields`, so the
/// keys are split off the table instead). A common key of the wrong type is refused here.
pub fn split_common(table: &mut toml::Table, takes: &[&str]) -> Result<Common, String> {
    let mut common = toml::Table::new();
    for key in takes {
        if let Some(value) = table.remove(*key) {
            common.insert((*key).to_owned(), value);
        }
    }
    toml::Value::Table(common)
        .try_into::<Common>()
        .map_err(|e| e.message().trim_end().to_owned())
}

/// What a source section falls back on from the rest of the config.
#[derive(Debug, Clone, Copy)]
pub struct Defaults<'a> {
    /// The config file (relative paths are relative to its directory).
    pub config_path: &'a Path,
    /// `cache.ttl_secs`, for a section without `ttl_secs`.
    pub ttl: Duration,
    /// `cache.refresh_ahead_secs`: a source's TTL must be longer.
    pub refresh_ahead: Duration,
}

/// What the agent does when a source's start-up check (login, identity check, program lookup)
/// fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartupCheck {
    /// Exit (75 when retrying may help, 77 when the refusal stands).
    #[default]
    Required,
    /// Start anyway; the source answers `503 source_starting` until a retry succeeds.
    Retry,
}

/// A whole number of seconds between `min` and `max` at `key`.
pub fn secs(key: &str, value: u64, min: u64, max: u64) -> Result<Duration, Invalid> {
    if value < min || value > max {
        return Err(Invalid::new(
            key,
            format!("must be between {min} and {max} seconds, got {value}"),
        ));
    }
    Ok(Duration::from_secs(value))
}

/// A TTL no longer than the refresh-ahead window would start a background refresh at every
/// read: the value would be fetched again as soon as it is stored.
pub fn check_ttl_exceeds_refresh_ahead(
    key: &str,
    ttl: Duration,
    refresh_ahead: Duration,
) -> Result<(), Invalid> {
    if ttl > refresh_ahead {
        return Ok(());
    }
    Err(Invalid::new(
        key,
        format!(
            "must be greater than cache.refresh_ahead_secs ({}), got {}: a value would be \
             refreshed as soon as it is stored; lower cache.refresh_ahead_secs or raise the TTL",
            refresh_ahead.as_secs(),
            ttl.as_secs()
        ),
    ))
}

/// Relative paths in a config file are relative to the file's directory; in the embedded demo
/// config, to the working directory.
pub fn resolve_relative(config_path: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match config_path.parent() {
        Some(parent) if config_path.exists() => parent.join(path),
        _ => path.to_path_buf(),
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

/// Logged at start for a source with `allow_plain_http = true`.
pub fn warn_plain_http(name: &str) {
    tracing::warn!(
        source = name,
        "allow_plain_http = true: plain http to hosts other than loopback is accepted for this \
         source, so its credentials and values may cross the network in clear text (for tests only)"
    );
}
