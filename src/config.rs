//! Configuration: the TOML file as written ([`RawConfig`], unknown keys rejected) and the
//! validated [`Config`] the agent runs on.
//!
//! Every value is checked here, with an error naming the file, the key and the reason; the rest
//! of the agent takes `Config` as correct. Building a config reads the filesystem (directories
//! exist, users and groups resolve) but never contacts a backend: sources connect in `run`.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::acl::{PeerMatch, Rule};
use crate::name::{Glob, SecretName, validate_source_name};
use crate::secure_mem::LockPolicy;
pub use crate::source::config::{
    DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_FETCHES, RawSource, SourceConfig, SourceKind,
};
pub use crate::source::section::StartupCheck;
use crate::source::section::{self, Invalid, resolve_relative};

/// Default config path of `serve` and `check-config`.
pub const DEFAULT_PATH: &str = "/etc/credagent/config.toml";

/// The demo config embedded in the binary (`serve --demo`): it serves `examples/secrets`.
pub const DEMO_CONFIG: &str = include_str!("../examples/demo.toml");

/// A config problem: which file, which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, duplicate key…).
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: String,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: {key}: {reason}")]
    Invalid {
        /// File.
        path: String,
        /// Dotted key, e.g. `server.socket_mode`.
        key: String,
        /// Why.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Raw (as written)

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`.
    pub server: RawServer,
    /// `[cache]`.
    #[serde(default)]
    pub cache: RawCache,
    /// `[control]`.
    pub control: Option<RawControl>,
    /// `[audit]`.
    #[serde(default)]
    pub audit: RawAudit,
    /// `[sources.NAME]`.
    #[serde(default)]
    pub sources: BTreeMap<String, RawSource>,
    /// `[[allow]]`.
    #[serde(default)]
    pub allow: Vec<RawAllow>,
    /// `[credentials]`: systemd credential id -> `source/id` (see `server::creds`).
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
    /// `[prefetch]`: secrets fetched at start.
    #[serde(default)]
    pub prefetch: RawPrefetch,
    /// `[log]`: where and how the agent's own log lines go.
    #[serde(default)]
    pub log: RawLog,
}

/// `[log]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `auto` (journald when stderr is the journal, else text), `text`, `json` or `journald`.
    #[serde(default)]
    pub format: crate::logging::LogFormat,
}

/// `[prefetch]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrefetch {
    /// `SOURCE/ID` of each secret to fetch at start.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The fetches start at random moments within this many seconds of start.
    #[serde(default)]
    pub jitter_secs: u64,
}

/// `[server]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Socket path.
    pub socket: PathBuf,
    /// Octal mode string, e.g. "0660".
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// Group name or numeric gid owning the socket.
    pub socket_group: Option<String>,
    /// Connection cap.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one uid may hold (default: a quarter of `max_connections`).
    pub max_connections_per_uid: Option<usize>,
    /// Connections uid 0 and admin peers may hold, apart from every other caller's.
    #[serde(default = "default_max_operator_connections")]
    pub max_operator_connections: usize,
    /// A write that makes no progress this long closes the connection.
    #[serde(default = "default_write_timeout")]
    pub write_timeout_secs: u64,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: u64,
    /// Socket speaking systemd's `LoadCredential=ID:PATH` protocol (optional).
    pub creds_socket: Option<PathBuf>,
    /// Loopback TCP address of the container-credentials listener (`exec --aws`); off when unset.
    pub aws_container_listen: Option<String>,
}

fn default_socket_mode() -> String {
    "0660".to_owned()
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_operator_connections() -> usize {
    16
}
fn default_shutdown_timeout() -> u64 {
    10
}
fn default_write_timeout() -> u64 {
    10
}

/// `[cache]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Default TTL.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// Entry cap (LRU).
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Background refresh this long before expiry.
    #[serde(default = "default_refresh_ahead")]
    pub refresh_ahead_secs: u64,
    /// Serve the old value this long past expiry while the source fails transiently.
    #[serde(default = "default_stale_if_error")]
    pub stale_if_error_secs: u64,
    /// "required" or "best-effort".
    #[serde(default = "default_lock_memory")]
    pub lock_memory: String,
    /// Budget on secret memory: cached values and in-flight responses.
    #[serde(default = "default_max_locked_bytes")]
    pub max_locked_bytes: u64,
    /// Of that, what one uid's in-flight responses may hold (default: a quarter).
    pub max_locked_bytes_per_uid: Option<u64>,
    /// A reader's `?refresh=true` re-fetches a secret at most once per this many seconds.
    #[serde(default = "default_min_refresh_interval")]
    pub min_refresh_interval_secs: u64,
    /// TTL expiry and refresh-ahead are spread by up to this percentage.
    #[serde(default = "default_jitter_percent")]
    pub jitter_percent: u8,
    /// A source's "no such secret" is remembered this long (0: not at all).
    #[serde(default)]
    pub negative_ttl_secs: u64,
}

fn default_ttl() -> u64 {
    3600
}
fn default_max_entries() -> usize {
    10_000
}
fn default_refresh_ahead() -> u64 {
    60
}
fn default_stale_if_error() -> u64 {
    300
}
fn default_lock_memory() -> String {
    "required".to_owned()
}
fn default_min_refresh_interval() -> u64 {
    10
}
fn default_jitter_percent() -> u8 {
    10
}
fn default_max_locked_bytes() -> u64 {
    64 * 1024 * 1024
}
/// The smallest `cache.max_locked_bytes`: a few slab chunks and one large value.
const MIN_LOCKED_BYTES: u64 = 1024 * 1024;

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            ttl_secs: default_ttl(),
            max_entries: default_max_entries(),
            refresh_ahead_secs: default_refresh_ahead(),
            stale_if_error_secs: default_stale_if_error(),
            lock_memory: default_lock_memory(),
            max_locked_bytes: default_max_locked_bytes(),
            max_locked_bytes_per_uid: None,
            min_refresh_interval_secs: default_min_refresh_interval(),
            jitter_percent: default_jitter_percent(),
            negative_ttl_secs: 0,
        }
    }
}

/// The largest `cache.negative_ttl_secs`: an absence hides a secret created later at most this
/// long.
const MAX_NEGATIVE_TTL_SECS: u64 = 3600;

/// `[control]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    /// The watched control file.
    pub file: PathBuf,
}

/// `[audit]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// "-" for stderr, or a path opened append-only.
    #[serde(default = "default_audit_file")]
    pub file: String,
}

fn default_audit_file() -> String {
    "-".to_owned()
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            file: default_audit_file(),
        }
    }
}

/// `[[allow]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllow {
    /// Peer attributes, all of which must match; required (`{ any = true }` for every caller).
    pub peer: Option<RawPeer>,
    /// Globs over `{source}/{id}`.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// May flush the cache and read metrics.
    #[serde(default)]
    pub admin: bool,
}

/// `peer = { … }` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    /// `true`: every local caller, said on purpose (no other key may be given).
    pub any: Option<bool>,
    /// Numeric uid.
    pub uid: Option<u32>,
    /// User name (resolved to a uid when the config is built).
    pub user: Option<String>,
    /// Numeric gid.
    pub gid: Option<u32>,
    /// Group name.
    pub group: Option<String>,
    /// Absolute executable path.
    pub exe: Option<PathBuf>,
    /// systemd system unit name.
    pub unit: Option<String>,
    /// Unit inside a user manager (`user@UID.service`); needs `uid` or `user` in the same rule.
    pub user_unit: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Validated

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was loaded from (for reload and messages).
    pub path: PathBuf,
    /// Socket settings.
    pub server: ServerConfig,
    /// Cache settings.
    pub cache: CacheConfig,
    /// Control file, when configured.
    pub control: Option<PathBuf>,
    /// Audit sink.
    pub audit: AuditSink,
    /// Sources by name.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Access rules, in order.
    pub rules: Vec<Rule>,
    /// systemd credential id -> secret, served on `server.creds_socket`.
    pub credentials: BTreeMap<String, SecretName>,
    /// Secrets fetched at start.
    pub prefetch: PrefetchConfig,
    /// `[log]`, validated.
    pub log: LogConfig,
}

/// `[log]`, validated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// The log sink's format.
    pub format: crate::logging::LogFormat,
}

/// `[prefetch]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// Each names a configured source and an id that source could serve.
    pub secrets: Vec<SecretName>,
    /// The fetches start at random moments within this window of start.
    pub jitter: Duration,
}

impl Config {
    /// Rules that are valid but weaker than they look, one line each (`check-config` prints
    /// them; `serve` logs them at start).
    pub fn warnings(&self) -> Vec<String> {
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                let p = &rule.peer;
                if *p == crate::acl::PeerMatch::default() {
                    return Some(format!(
                        "allow[{i}]: peer = {{ any = true }} matches every local caller that can connect to the socket"
                    ));
                }
                let exe = p.exe.as_ref()?;
                let only_exe = p.uid.is_none()
                    && p.gid.is_none()
                    && p.unit.is_none()
                    && p.user_unit.is_none();
                let exe = exe.display().to_string();
                // SECURITY: every rule naming `exe` is told what it is: no boundary against
                // other processes of the same uid (README, "Peer attributes").
                Some(if only_exe {
                    format!(
                        "allow[{i}]: peer names only exe = {exe:?}: anyone who can run that file can run it with LD_PRELOAD or under a debugger of their own; add uid, user, group or unit"
                    )
                } else {
                    format!(
                        "allow[{i}]: peer names exe = {exe:?}: exe is no boundary against other processes of the same uid (one that writes its request and then execs that file is identified as it, about 7 of 20 tries); the rule's other attributes are what it trusts"
                    )
                })
            })
            .collect()
    }
}

/// `[server]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Socket path.
    pub socket: PathBuf,
    /// Permission bits.
    pub socket_mode: u32,
    /// Owning group.
    pub socket_group: Option<u32>,
    /// Connection cap.
    pub max_connections: NonZeroUsize,
    /// Connections one uid may hold (uid 0 and admin peers are not counted against it).
    pub max_connections_per_uid: NonZeroUsize,
    /// Connections uid 0 and admin peers hold at most, counted apart from the others'.
    pub max_operator_connections: NonZeroUsize,
    /// A write that makes no progress this long closes the connection.
    pub write_timeout: Duration,
    /// Drain bound on shutdown.
    pub shutdown_timeout: Duration,
    /// The systemd credentials socket, when configured.
    pub creds_socket: Option<PathBuf>,
    /// The loopback container-credentials listener (`exec --aws`), when configured.
    pub aws_container_listen: Option<std::net::SocketAddr>,
}

/// `[cache]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Default TTL.
    pub ttl: Duration,
    /// Entry cap.
    pub max_entries: NonZeroUsize,
    /// Refresh-ahead window.
    pub refresh_ahead: Duration,
    /// Stale-if-error bound.
    pub stale_if_error: Duration,
    /// Memory locking policy.
    pub lock_memory: LockPolicy,
    /// Budget on secret memory mapped (cached values and in-flight responses), in bytes.
    pub max_locked_bytes: usize,
    /// Of that, what one uid's in-flight responses (`?field=`, JSON renders) may hold.
    pub max_locked_bytes_per_uid: usize,
    /// Least time between two reader-forced re-fetches of one secret, per uid.
    pub min_refresh_interval: Duration,
    /// TTL expiry and refresh-ahead spread, in percent (0–50).
    pub jitter_percent: u8,
    /// How long a source's "no such secret" is remembered (zero: not at all).
    pub negative_ttl: Duration,
}

impl CacheConfig {
    /// What of `max_locked_bytes` only response renders may map: one uid's share, at most half
    /// of the budget (cached values keep the rest).
    pub fn render_reserve(&self) -> usize {
        self.max_locked_bytes_per_uid.min(self.max_locked_bytes / 2)
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(default_ttl()),
            max_entries: NonZeroUsize::new(default_max_entries()).unwrap_or(NonZeroUsize::MIN),
            refresh_ahead: Duration::from_secs(default_refresh_ahead()),
            stale_if_error: Duration::from_secs(default_stale_if_error()),
            lock_memory: LockPolicy::Required,
            max_locked_bytes: 64 << 20,
            max_locked_bytes_per_uid: 16 << 20,
            min_refresh_interval: Duration::from_secs(default_min_refresh_interval()),
            jitter_percent: default_jitter_percent(),
            negative_ttl: Duration::ZERO,
        }
    }
}

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// Standard error (journald under systemd).
    Stderr,
    /// A file opened append-only.
    File(PathBuf),
}

// ---------------------------------------------------------------------------------------------
// Loading and building

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, path)
}

/// The `path` of a [`Config`] built from the embedded demo config.
pub const DEMO_PATH: &str = "<embedded demo config>";

/// The embedded demo config, with the invoking user's uid allowed.
pub fn demo() -> Result<Config, ConfigError> {
    let uid = nix::unistd::geteuid().as_raw();
    let text = DEMO_CONFIG.replace("{uid}", &uid.to_string());
    parse(&text, Path::new(DEMO_PATH))
}

/// Parses and validates config text; `path` is used for relative paths and messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: describe_toml_error(text, &e),
    })?;
    raw.build(path)
}

/// `line L, column C: MESSAGE (at `SNIPPET`)` on one line, for logs and `check-config`.
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim_end();
    let Some(span) = err.span() else {
        return message.to_owned();
    };
    let before = text.get(..span.start).unwrap_or_default();
    let line = before.matches('\n').count().saturating_add(1);
    let line_start = before.rfind('\n').map_or(0, |i| i.saturating_add(1));
    let column = before.len().saturating_sub(line_start).saturating_add(1);
    let snippet = text
        .get(span)
        .and_then(|s| s.lines().next())
        .unwrap_or_default()
        .trim();
    if snippet.is_empty() {
        format!("line {line}, column {column}: {message}")
    } else {
        format!("line {line}, column {column}: {message} (at `{snippet}`)")
    }
}

struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    /// A source section's [`Invalid`] (its key already dotted from the root) as a config error.
    fn wrap_invalid(&self, invalid: Invalid) -> ConfigError {
        self.invalid(invalid.key, invalid.reason)
    }

    fn invalid(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.display().to_string(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

fn secs(ctx: &Ctx<'_>, key: &str, value: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
    section::secs(key, value, min, max).map_err(|e| ctx.wrap_invalid(e))
}

impl RawConfig {
    /// Validates into a [`Config`]; `path` is used for messages.
    pub fn build(self, path: &Path) -> Result<Config, ConfigError> {
        let ctx = Ctx { path };
        let server = self.server.build(&ctx)?;
        let cache = self.cache.build(&ctx)?;
        let control = match self.control {
            Some(c) => {
                if c.file.as_os_str().is_empty() || c.file.file_name().is_none() {
                    return Err(ctx.invalid("control.file", "must be a file path"));
                }
                Some(resolve_relative(ctx.path, &c.file))
            }
            None => None,
        };
        let audit = match self.audit.file.as_str() {
            "-" => AuditSink::Stderr,
            "" => return Err(ctx.invalid("audit.file", "must be \"-\" (stderr) or a file path")),
            other => AuditSink::File(resolve_relative(ctx.path, Path::new(other))),
        };
        let mut sources = BTreeMap::new();
        for (name, raw) in self.sources {
            let key = format!("sources.{name}");
            validate_source_name(&name).map_err(|e| ctx.invalid(&key, e.to_string()))?;
            let defaults = section::Defaults {
                config_path: ctx.path,
                ttl: cache.ttl,
                refresh_ahead: cache.refresh_ahead,
            };
            let built = raw
                .build(&key, &defaults)
                .map_err(|e| ctx.wrap_invalid(e))?;
            sources.insert(name, built);
        }
        check_oauth2_references(&ctx, &sources)?;
        check_transit_names(&ctx, &sources)?;
        check_lease_vaults(&ctx, &sources)?;
        let mut rules = Vec::with_capacity(self.allow.len());
        for (index, raw) in self.allow.into_iter().enumerate() {
            rules.push(raw.build(&ctx, index, &sources)?);
        }
        let credentials = build_credentials(&ctx, self.credentials, &sources)?;
        let prefetch = build_prefetch(&ctx, self.prefetch, &sources)?;
        Ok(Config {
            path: path.to_path_buf(),
            server,
            cache,
            control,
            audit,
            sources,
            rules,
            credentials,
            prefetch,
            log: LogConfig {
                format: self.log.format,
            },
        })
    }
}

/// `[prefetch]`: each entry names a configured source (or a Vault source's transit side) and an
/// id that source's own rules accept, so a typo fails here rather than retrying for ever.
fn build_prefetch(
    ctx: &Ctx<'_>,
    raw: RawPrefetch,
    sources: &BTreeMap<String, SourceConfig>,
) -> Result<PrefetchConfig, ConfigError> {
    let jitter = secs(ctx, "prefetch.jitter_secs", raw.jitter_secs, 0, 3600)?;
    let mut secrets: Vec<SecretName> = Vec::with_capacity(raw.secrets.len());
    for (i, entry) in raw.secrets.iter().enumerate() {
        let key = format!("prefetch.secrets[{i}]");
        let name = SecretName::parse(entry)
            .map_err(|e| ctx.invalid(&key, format!("{entry:?} is not SOURCE/ID: {e}")))?;
        let rule = crate::source::IdRule::configured(sources, name.source())
            .ok_or_else(|| ctx.invalid(&key, format!("no source named {:?}", name.source())))?;
        rule.check(name.id())
            .map_err(|why| ctx.invalid(&key, format!("{entry:?}: {why}")))?;
        // aws-credentials (issue 29): a session is made for a caller, never ahead of one.
        if rule == crate::source::IdRule::AwsCredentials {
            return Err(ctx.invalid(
                &key,
                format!(
                    "{entry:?}: role credentials are made for a caller; they cannot be prefetched"
                ),
            ));
        }
        // A per-caller lease is issued at its caller's read; the agent's own read has none.
        if let Some(SourceKind::VaultLease(lease)) = sources.get(name.source()).map(|s| &s.kind)
            && lease.profiles.get(name.id()).is_some_and(|p| p.per_caller)
        {
            return Err(ctx.invalid(
                &key,
                format!("{entry:?} has per_caller = true: its leases are issued per caller"),
            ));
        }
        if secrets.contains(&name) {
            return Err(ctx.invalid(&key, format!("{entry:?} is listed twice")));
        }
        secrets.push(name);
    }
    Ok(PrefetchConfig { secrets, jitter })
}

impl RawServer {
    fn build(mut self, ctx: &Ctx<'_>) -> Result<ServerConfig, ConfigError> {
        if self.socket.as_os_str().is_empty() || self.socket.file_name().is_none() {
            return Err(ctx.invalid("server.socket", "must be a file path"));
        }
        // One rule for every path in the file: relative to the config file's directory.
        self.socket = resolve_relative(ctx.path, &self.socket);
        self.creds_socket = self
            .creds_socket
            .map(|creds| resolve_relative(ctx.path, &creds));
        // sun_path holds 108 bytes including the terminating NUL.
        if self.socket.as_os_str().len() > 107 {
            return Err(ctx.invalid(
                "server.socket",
                "path is longer than 107 bytes (the Unix socket limit)",
            ));
        }
        if let Some(creds) = &self.creds_socket
            && (creds.file_name().is_none()
                || creds.as_os_str().len() > 107
                || *creds == self.socket)
        {
            return Err(ctx.invalid(
                "server.creds_socket",
                "must be a file path of at most 107 bytes, other than server.socket",
            ));
        }
        let socket_mode = parse_mode(&self.socket_mode).ok_or_else(|| {
            ctx.invalid(
                "server.socket_mode",
                format!(
                    "{:?} is not an octal mode between 0000 and 0777 (e.g. \"0660\")",
                    self.socket_mode
                ),
            )
        })?;
        let socket_group = match self.socket_group {
            None => None,
            Some(group) => Some(resolve_group(&group).ok_or_else(|| {
                ctx.invalid("server.socket_group", format!("no group named {group:?}"))
            })?),
        };
        let max_connections = NonZeroUsize::new(self.max_connections)
            .filter(|n| n.get() <= 65_536)
            .ok_or_else(|| ctx.invalid("server.max_connections", "must be between 1 and 65536"))?;
        let max_connections_per_uid = match self.max_connections_per_uid {
            None => NonZeroUsize::new(max_connections.get() / 4).unwrap_or(NonZeroUsize::MIN),
            Some(n) => NonZeroUsize::new(n)
                .filter(|n| *n <= max_connections)
                .ok_or_else(|| {
                    ctx.invalid(
                        "server.max_connections_per_uid",
                        format!("must be between 1 and server.max_connections ({max_connections})"),
                    )
                })?,
        };
        let max_operator_connections = NonZeroUsize::new(self.max_operator_connections)
            .filter(|n| n.get() <= 65_536)
            .ok_or_else(|| {
                ctx.invalid(
                    "server.max_operator_connections",
                    "must be between 1 and 65536",
                )
            })?;
        let write_timeout = secs(
            ctx,
            "server.write_timeout_secs",
            self.write_timeout_secs,
            1,
            3600,
        )?;
        let shutdown_timeout = secs(
            ctx,
            "server.shutdown_timeout_secs",
            self.shutdown_timeout_secs,
            0,
            3600,
        )?;
        Ok(ServerConfig {
            socket: self.socket,
            socket_mode,
            socket_group,
            max_connections,
            max_connections_per_uid,
            max_operator_connections,
            write_timeout,
            shutdown_timeout,
            creds_socket: self.creds_socket,
            aws_container_listen: parse_loopback(ctx, self.aws_container_listen.as_deref())?,
        })
    }
}

/// `server.aws_container_listen`: an `IP:PORT` on loopback, or nothing.
fn parse_loopback(
    ctx: &Ctx<'_>,
    raw: Option<&str>,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let key = "server.aws_container_listen";
    let addr: std::net::SocketAddr = raw.parse().map_err(|_| {
        ctx.invalid(
            key,
            format!("{raw:?} is not IP:PORT (e.g. \"127.0.0.1:8099\")"),
        )
    })?;
    // SECURITY: the listener answers by token and the kernel's owner of the peer socket, which
    // means something only for connections made on this host.
    if !addr.ip().is_loopback() {
        return Err(ctx.invalid(
            key,
            format!("{addr} is not a loopback address (127.0.0.0/8 or ::1)"),
        ));
    }
    if addr.port() == 0 {
        return Err(ctx.invalid(key, "needs a fixed port (the child is told it)"));
    }
    Ok(Some(addr))
}

/// `[credentials]`: each key is a systemd credential id (what a unit writes in
/// `LoadCredential=ID:…`), each value the `source/id` it receives.
fn build_credentials(
    ctx: &Ctx<'_>,
    raw: BTreeMap<String, String>,
    sources: &BTreeMap<String, SourceConfig>,
) -> Result<BTreeMap<String, SecretName>, ConfigError> {
    let mut out = BTreeMap::new();
    for (id, target) in raw {
        let key = format!("credentials.{id}");
        if !is_credential_id(&id) {
            return Err(ctx.invalid(
                &key,
                "a credential id is 1-255 printable bytes, without '/', not \".\" or \"..\"",
            ));
        }
        let name = SecretName::parse(&target)
            .map_err(|e| ctx.invalid(&key, format!("{target:?} is not SOURCE/ID: {e}")))?;
        if !sources.contains_key(name.source()) {
            return Err(ctx.invalid(&key, format!("no source named {:?}", name.source())));
        }
        out.insert(id, name);
    }
    Ok(out)
}

/// systemd's rule for credential names: a valid file name (no `/`, not `.`/`..`, ≤ 255 bytes),
/// here also restricted to printable ASCII.
pub fn is_credential_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

/// Parses "0660" / "660" / "0o660" into permission bits (no setuid/sticky bits).
pub fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o777)
}

fn resolve_group(group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Some(gid);
    }
    nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

fn resolve_user(user: &str) -> Option<u32> {
    nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

impl RawCache {
    fn build(self, ctx: &Ctx<'_>) -> Result<CacheConfig, ConfigError> {
        let ttl = secs(ctx, "cache.ttl_secs", self.ttl_secs, 1, 7 * 24 * 3600)?;
        let max_entries = NonZeroUsize::new(self.max_entries)
            .filter(|n| n.get() <= 1_000_000)
            .ok_or_else(|| ctx.invalid("cache.max_entries", "must be between 1 and 1000000"))?;
        let refresh_ahead = secs(
            ctx,
            "cache.refresh_ahead_secs",
            self.refresh_ahead_secs,
            0,
            7 * 24 * 3600,
        )?;
        let stale_if_error = secs(
            ctx,
            "cache.stale_if_error_secs",
            self.stale_if_error_secs,
            0,
            7 * 24 * 3600,
        )?;
        let lock_memory = match self.lock_memory.as_str() {
            "required" => LockPolicy::Required,
            "best-effort" => LockPolicy::BestEffort,
            other => {
                return Err(ctx.invalid(
                    "cache.lock_memory",
                    format!("{other:?} is not \"required\" or \"best-effort\""),
                ));
            }
        };
        let max_locked_bytes = usize::try_from(self.max_locked_bytes)
            .ok()
            .filter(|_| self.max_locked_bytes >= MIN_LOCKED_BYTES)
            .ok_or_else(|| {
                ctx.invalid(
                    "cache.max_locked_bytes",
                    format!("must be at least {MIN_LOCKED_BYTES} (1 MiB)"),
                )
            })?;
        let max_locked_bytes_per_uid = match self.max_locked_bytes_per_uid {
            None => max_locked_bytes / 4,
            Some(bytes) => usize::try_from(bytes)
                .ok()
                .filter(|b| (1..=max_locked_bytes).contains(b))
                .ok_or_else(|| {
                    ctx.invalid(
                        "cache.max_locked_bytes_per_uid",
                        "must be between 1 and cache.max_locked_bytes",
                    )
                })?,
        };
        let min_refresh_interval = secs(
            ctx,
            "cache.min_refresh_interval_secs",
            self.min_refresh_interval_secs,
            // SECURITY: 0 would let any reader make the source mint a new value per request.
            1,
            24 * 3600,
        )?;
        if self.jitter_percent > 50 {
            return Err(ctx.invalid("cache.jitter_percent", "must be between 0 and 50"));
        }
        let negative_ttl = secs(
            ctx,
            "cache.negative_ttl_secs",
            self.negative_ttl_secs,
            0,
            MAX_NEGATIVE_TTL_SECS,
        )?;
        section::check_ttl_exceeds_refresh_ahead("cache.ttl_secs", ttl, refresh_ahead)
            .map_err(|e| ctx.wrap_invalid(e))?;
        Ok(CacheConfig {
            ttl,
            max_entries,
            refresh_ahead,
            stale_if_error,
            lock_memory,
            max_locked_bytes,
            max_locked_bytes_per_uid,
            min_refresh_interval,
            jitter_percent: self.jitter_percent,
            negative_ttl,
        })
    }
}

/// A Vault source with `transit_mount` also answers as `{name}-transit`: no configured source may
/// take that name (a config error, so `check-config` and `serve` both refuse it with 78).
fn check_transit_names(
    ctx: &Ctx<'_>,
    sources: &BTreeMap<String, SourceConfig>,
) -> Result<(), ConfigError> {
    for (name, cfg) in sources {
        if let [_, companion] = crate::source::build::served_names(name, cfg).as_slice()
            && sources.contains_key(companion)
        {
            return Err(ctx.invalid(
                format!("sources.{companion}"),
                format!("the name is taken by the transit side of {name:?} (it has transit_mount)"),
            ));
        }
    }
    Ok(())
}

/// A `vault-lease` source's `vault` names a configured source of type `vault`.
fn check_lease_vaults(
    ctx: &Ctx<'_>,
    sources: &BTreeMap<String, SourceConfig>,
) -> Result<(), ConfigError> {
    for (name, source) in sources {
        let SourceKind::VaultLease(lease) = &source.kind else {
            continue;
        };
        if !matches!(
            sources.get(&lease.vault).map(|s| &s.kind),
            Some(SourceKind::Vault(_))
        ) {
            return Err(ctx.invalid(
                format!("sources.{name}.vault"),
                format!(
                    "{:?} must name a configured source of type \"vault\"",
                    lease.vault
                ),
            ));
        }
    }
    Ok(())
}

/// An OAuth2 source's `client_secret` and `refresh_token` name secrets of other configured
/// sources, which the agent reads for itself: not another OAuth2 source (no chains, no cycles),
/// not a transit side (it decrypts through yet another source).
fn check_oauth2_references(
    ctx: &Ctx<'_>,
    sources: &BTreeMap<String, SourceConfig>,
) -> Result<(), ConfigError> {
    for (name, source) in sources {
        let SourceKind::OAuth2(oauth) = &source.kind else {
            continue;
        };
        for (key, reference) in oauth.references() {
            let ok = sources
                .get(reference.source())
                .is_some_and(|s| !matches!(s.kind, SourceKind::OAuth2(_)));
            if !ok {
                return Err(ctx.invalid(
                    format!("sources.{name}.{key}"),
                    format!(
                        "{reference} must name a secret of another configured source that is \
                         not an oauth2 source"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// SECURITY: a rule with no `peer`, or an empty one, matches every local caller that can reach
/// the socket; that must be said on purpose (`peer = { any = true }`), never by omission.
fn check_peer_given(
    ctx: &Ctx<'_>,
    key: &str,
    peer: Option<RawPeer>,
) -> Result<RawPeer, ConfigError> {
    let Some(p) = peer else {
        return Err(ctx.invalid(
            format!("{key}.peer"),
            "is required: name who (uid, user, gid, group, exe, unit, user_unit), or write \
             peer = { any = true } to mean every local caller",
        ));
    };
    let named = p.uid.is_some()
        || p.user.is_some()
        || p.gid.is_some()
        || p.group.is_some()
        || p.exe.is_some()
        || p.unit.is_some()
        || p.user_unit.is_some();
    match (p.any, named) {
        (Some(true), true) => Err(ctx.invalid(
            format!("{key}.peer.any"),
            "any = true matches every caller and takes no other key",
        )),
        (Some(true), false) | (_, true) => Ok(p),
        (_, false) => Err(ctx.invalid(
            format!("{key}.peer"),
            "is empty and would match every local caller: name who, or write \
             peer = { any = true } on purpose",
        )),
    }
}

impl RawAllow {
    fn build(
        self,
        ctx: &Ctx<'_>,
        index: usize,
        sources: &BTreeMap<String, SourceConfig>,
    ) -> Result<Rule, ConfigError> {
        let key = format!("allow[{index}]");
        let p = check_peer_given(ctx, &key, self.peer)?;
        if p.uid.is_some() && p.user.is_some() {
            return Err(ctx.invalid(format!("{key}.peer"), "give uid or user, not both"));
        }
        if p.gid.is_some() && p.group.is_some() {
            return Err(ctx.invalid(format!("{key}.peer"), "give gid or group, not both"));
        }
        let uid = match (p.uid, p.user) {
            (Some(uid), _) => Some(uid),
            (None, Some(user)) => Some(resolve_user(&user).ok_or_else(|| {
                ctx.invalid(
                    format!("{key}.peer.user"),
                    format!("no user named {user:?}"),
                )
            })?),
            (None, None) => None,
        };
        let gid = match (p.gid, p.group) {
            (Some(gid), _) => Some(gid),
            (None, Some(group)) => Some(
                nix::unistd::Group::from_name(&group)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw())
                    .ok_or_else(|| {
                        ctx.invalid(
                            format!("{key}.peer.group"),
                            format!("no group named {group:?}"),
                        )
                    })?,
            ),
            (None, None) => None,
        };
        if let Some(exe) = &p.exe
            && !exe.is_absolute()
        {
            return Err(ctx.invalid(format!("{key}.peer.exe"), "must be an absolute path"));
        }
        for (name, value) in [("unit", &p.unit), ("user_unit", &p.user_unit)] {
            if let Some(unit) = value
                && (unit.is_empty() || unit.contains('/') || !unit.contains('.'))
            {
                return Err(ctx.invalid(
                    format!("{key}.peer.{name}"),
                    "must be a unit name such as \"app.service\"",
                ));
            }
        }
        // SECURITY: every user names the units in their own manager; a user unit means
        // something only together with whose manager it runs in.
        if p.user_unit.is_some() && uid.is_none() {
            return Err(ctx.invalid(
                format!("{key}.peer.user_unit"),
                "needs uid or user in the same rule (any user can name a unit in their own manager)",
            ));
        }
        if self.secrets.is_empty() && !self.admin {
            return Err(ctx.invalid(
                format!("{key}.secrets"),
                "a rule needs secrets, admin = true, or both",
            ));
        }
        let mut secrets = Vec::with_capacity(self.secrets.len());
        for (i, pattern) in self.secrets.iter().enumerate() {
            let skey = format!("{key}.secrets[{i}]");
            let glob = Glob::parse(pattern)
                .map_err(|e| ctx.invalid(&skey, format!("{pattern:?}: {e}")))?;
            // A literal source part must name a configured source: a typo would silently deny.
            let source_part = pattern.split('/').next().unwrap_or_default();
            // SECURITY: `*` crosses `/`, so `files*` would also match every id of a source named
            // `files-admin`; a wildcard in the source part means every source (`*`) or nothing.
            if source_part.contains(['*', '?']) && source_part != "*" {
                return Err(ctx.invalid(
                    &skey,
                    format!(
                        "{pattern:?}: the source part before the first '/' must be a source's \
                         name or exactly \"*\" (every source); a partial wildcard such as \
                         \"files*\" would also match other sources (\"files-admin\")"
                    ),
                ));
            }
            if !source_part.contains(['*', '?']) {
                if !pattern.contains('/') {
                    return Err(ctx.invalid(
                        &skey,
                        format!("{pattern:?} must look like \"SOURCE/ID\" (globs allowed)"),
                    ));
                }
                if !sources.contains_key(source_part)
                    && !sources.iter().any(|(n, c)| {
                        matches!(&c.kind, SourceKind::Vault(v) if v.transit_mount.is_some())
                            && crate::source::vault::transit_name(n) == source_part
                    })
                {
                    return Err(ctx.invalid(&skey, format!("no source named {source_part:?}")));
                }
            }
            secrets.push(glob);
        }
        Ok(Rule {
            peer: PeerMatch {
                uid,
                gid,
                exe: p.exe,
                unit: p.unit,
                user_unit: p.user_unit,
            },
            secrets,
            admin: self.admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(dir: &Path) -> String {
        format!(
            "[server]\nsocket = \"/tmp/x.sock\"\n\n[sources.files]\ntype = \"file\"\ndir = \"{}\"\n\n[[allow]]\npeer = {{ uid = 1000 }}\nsecrets = [\"files/*\"]\n",
            dir.display()
        )
    }

    fn check(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("test.toml"))
    }

    #[test]
    fn a_rule_for_any_peer_is_accepted_only_when_said_and_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let text = base(dir.path()).replace("peer = { uid = 1000 }", "peer = { any = true }");
        let config = check(&text).unwrap();
        assert_eq!(config.rules[0].peer, crate::acl::PeerMatch::default());
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("allow[0]: peer = { any = true } matches every local caller"),
            "{warnings:?}"
        );
    }

    #[test]
    fn each_uids_share_of_locked_memory_defaults_to_a_quarter_of_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let with = |cache: &str| check(&format!("[cache]\n{cache}\n{}", base(dir.path())));
        let default = with("max_locked_bytes = 4194304").unwrap();
        assert_eq!(default.cache.max_locked_bytes_per_uid, 1 << 20);
        let set = with("max_locked_bytes = 4194304\nmax_locked_bytes_per_uid = 4194304").unwrap();
        assert_eq!(set.cache.max_locked_bytes_per_uid, 4 << 20);
    }

    #[test]
    fn a_vault_lease_source_names_a_vault_source() {
        let dir = tempfile::tempdir().unwrap();
        let lease = |vault: &str| {
            format!(
                "{}\n[sources.db]\ntype = \"vault-lease\"\nvault = \"{vault}\"\n[sources.db.profiles.app]\npath = \"database/creds/app\"\n",
                base(dir.path())
            )
        };
        for vault in ["files", "missing"] {
            let err = check(&lease(vault)).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key, .. } if key == "sources.db.vault"),
                "{err}"
            );
        }
        let token = dir.path().join("token");
        std::fs::write(&token, "t").unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let text = format!(
            "{}[sources.bao]\ntype = \"vault\"\naddress = \"http://127.0.0.1:8200\"\nauth = {{ method = \"token\", token_file = \"{}\" }}\n",
            lease("bao"),
            token.display()
        );
        let config = check(&text).unwrap();
        let SourceKind::VaultLease(built) = &config.sources["db"].kind else {
            panic!("not a vault-lease source");
        };
        assert_eq!(built.vault, "bao");
        // A per-caller profile cannot be prefetched; a shared one can.
        let prefetch = format!("{text}[prefetch]\nsecrets = [\"db/app\"]\n");
        assert!(check(&prefetch).is_ok());
        let per_caller = prefetch.replace(
            "path = \"database/creds/app\"",
            "path = \"database/creds/app\"\nper_caller = true",
        );
        let err = check(&per_caller).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "prefetch.secrets[0]"),
            "{err}"
        );
        let bad = text.replace("path = \"database/creds/app\"", "path = \"a/../b\"");
        let err = check(&bad).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "sources.db.profiles.app.path"),
            "{err}"
        );
    }

    #[test]
    fn a_rule_naming_only_exe_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}\n[[allow]]\npeer = {{ exe = \"/usr/bin/app\" }}\nsecrets = [\"files/a\"]\n\n[[allow]]\npeer = {{ exe = \"/usr/bin/app\", uid = 1 }}\nsecrets = [\"files/b\"]\n",
            base(dir.path())
        );
        let warnings = check(&text).unwrap().warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("allow[1]: peer names only exe = \"/usr/bin/app\""),
            "{warnings:?}"
        );
        assert!(
            warnings[1].starts_with("allow[2]: peer names exe = \"/usr/bin/app\": exe is no boundary against other processes of the same uid"),
            "{warnings:?}"
        );
        assert!(check(&base(dir.path())).unwrap().warnings().is_empty());
    }

    #[test]
    fn oauth2_credentials_must_name_another_non_oauth2_source() {
        let dir = tempfile::tempdir().unwrap();
        let idp = |name: &str, secret: &str| {
            format!(
                "[sources.{name}]\ntype = \"oauth2\"\ntoken_url = \"https://login.example/token\"\nclient_id = \"app\"\nclient_secret = \"{secret}\"\ngrant = \"client_credentials\"\n[sources.{name}.tokens.api]\n"
            )
        };
        let ok = format!("{}\n{}", base(dir.path()), idp("idp", "files/client"));
        assert!(matches!(
            check(&ok).unwrap().sources["idp"].kind,
            SourceKind::OAuth2(_)
        ));
        for (extra, key) in [
            (idp("idp", "nowhere/client"), "sources.idp.client_secret"),
            (
                format!("{}{}", idp("idp", "files/client"), idp("other", "idp/api")),
                "sources.other.client_secret",
            ),
            (idp("idp", "idp/api"), "sources.idp.client_secret"),
        ] {
            let text = format!("{}\n{extra}", base(dir.path()));
            match check(&text) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{extra}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
    }

    #[test]
    fn minimal_config_builds_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = check(&base(dir.path())).unwrap();
        assert_eq!(config.server.socket_mode, 0o660);
        assert_eq!(config.server.max_connections_per_uid.get(), 256);
        assert_eq!(config.server.write_timeout, Duration::from_secs(10));
        assert_eq!(config.cache.ttl, Duration::from_secs(3600));
        assert_eq!(config.cache.lock_memory, LockPolicy::Required);
        assert_eq!(config.rules.len(), 1);
        assert_eq!(config.audit, AuditSink::Stderr);
    }

    #[test]
    fn invalid_values_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let ok = base(dir.path());
        let cases: &[(&str, &str, &str)] = &[
            (
                "socket_mode = \"0660\"",
                "socket_mode = \"0999\"",
                "server.socket_mode",
            ),
            (
                "socket_mode = \"0660\"",
                "socket_mode = \"rw\"",
                "server.socket_mode",
            ),
            (
                "socket_mode = \"0660\"",
                "socket_mode = \"01777\"",
                "server.socket_mode",
            ),
            (
                "socket_mode = \"0660\"",
                "max_connections = 0",
                "server.max_connections",
            ),
            (
                "socket_mode = \"0660\"",
                "socket_group = \"no-such-group-x\"",
                "server.socket_group",
            ),
            (
                "socket_mode = \"0660\"",
                "max_connections_per_uid = 0",
                "server.max_connections_per_uid",
            ),
            (
                "socket_mode = \"0660\"",
                "max_connections = 8\nmax_connections_per_uid = 9",
                "server.max_connections_per_uid",
            ),
            (
                "socket_mode = \"0660\"",
                "write_timeout_secs = 0",
                "server.write_timeout_secs",
            ),
            (
                "[server]",
                "[cache]\nmax_locked_bytes = 65536\n[server]",
                "cache.max_locked_bytes",
            ),
            (
                "[server]",
                "[cache]\njitter_percent = 51\n[server]",
                "cache.jitter_percent",
            ),
            (
                "[server]",
                "[cache]\nmin_refresh_interval_secs = 86401\n[server]",
                "cache.min_refresh_interval_secs",
            ),
            (
                "[server]",
                "[cache]\nnegative_ttl_secs = 3601\n[server]",
                "cache.negative_ttl_secs",
            ),
            ("dir = ", "ttl_secs = 0\ndir = ", "sources.files.ttl_secs"),
            // A TTL within the refresh-ahead window (default 60 s) would refresh at every read.
            ("dir = ", "ttl_secs = 60\ndir = ", "sources.files.ttl_secs"),
            ("dir = ", "ttl_secs = 5\ndir = ", "sources.files.ttl_secs"),
            (
                "[server]",
                "[cache]\nttl_secs = 60\n[server]",
                "cache.ttl_secs",
            ),
            (
                "[server]",
                "[cache]\nttl_secs = 10\nrefresh_ahead_secs = 30\n[server]",
                "cache.ttl_secs",
            ),
            (
                "dir = ",
                "max_concurrent_fetches = 0\ndir = ",
                "sources.files.max_concurrent_fetches",
            ),
            (
                "dir = ",
                "max_fetches_per_uid = 0\ndir = ",
                "sources.files.max_fetches_per_uid",
            ),
            ("peer = { uid = 1000 }\n", "", "allow[0].peer"),
            (
                "[server]",
                "[cache]\nmin_refresh_interval_secs = 0\n[server]",
                "cache.min_refresh_interval_secs",
            ),
            (
                "[server]",
                "[cache]\nmax_locked_bytes_per_uid = 0\n[server]",
                "cache.max_locked_bytes_per_uid",
            ),
            (
                "[server]",
                "[cache]\nmax_locked_bytes = 1048576\nmax_locked_bytes_per_uid = 1048577\n[server]",
                "cache.max_locked_bytes_per_uid",
            ),
            ("\"files/*\"", "\"files*\"", "allow[0].secrets[0]"),
            ("\"files/*\"", "\"f?les/x\"", "allow[0].secrets[0]"),
            ("peer = { uid = 1000 }", "peer = {}", "allow[0].peer"),
            (
                "peer = { uid = 1000 }",
                "peer = { any = false }",
                "allow[0].peer",
            ),
            (
                "peer = { uid = 1000 }",
                "peer = { any = true, uid = 1000 }",
                "allow[0].peer.any",
            ),
            (
                "secrets = [\"files/*\"]",
                "secrets = [\"filez/*\"]",
                "allow[0].secrets[0]",
            ),
            (
                "secrets = [\"files/*\"]",
                "secrets = [\"files/a b\"]",
                "allow[0].secrets[0]",
            ),
            (
                "secrets = [\"files/*\"]",
                "secrets = []",
                "allow[0].secrets",
            ),
            (
                "uid = 1000",
                "user = \"no-such-user-x\"",
                "allow[0].peer.user",
            ),
            ("uid = 1000", "exe = \"relative/bin\"", "allow[0].peer.exe"),
            (
                "uid = 1000",
                "user_unit = \"web.service\"",
                "allow[0].peer.user_unit",
            ),
            (
                "uid = 1000",
                "uid = 1000, user_unit = \"web\"",
                "allow[0].peer.user_unit",
            ),
            ("uid = 1000", "uid = 1, user = \"root\"", "allow[0].peer"),
        ];
        for (from, to, key) in cases {
            let text = if from.starts_with("socket_mode") && !ok.contains(from) {
                ok.replace(
                    "socket = \"/tmp/x.sock\"",
                    &format!("socket = \"/tmp/x.sock\"\n{to}"),
                )
            } else {
                ok.replacen(from, to, 1)
            };
            match check(&text) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(&k, key, "{to}"),
                other => panic!("{to}: expected Invalid at {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn parse_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ok = base(dir.path());
        let cases: &[(String, &str)] = &[
            (ok.replace("[server]", "[server]\nsockett = 1"), "sockett"),
            (
                ok.replace("type = \"file\"", "type = \"file\"\ndirr = \"x\""),
                "dirr",
            ),
            (ok.replace("type = \"file\"", "type = \"floppy\""), "floppy"),
            (format!("{ok}\n[sources.files]\ntype = \"env\"\n"), "files"),
            (format!("{ok}\n[bogus]\n"), "bogus"),
        ];
        for (text, needle) in cases {
            match check(text) {
                Err(ConfigError::Parse { message, .. }) => {
                    assert!(message.contains(needle), "{needle}: {message}")
                }
                other => panic!("{needle}: expected Parse error, got {other:?}"),
            }
        }
    }

    #[test]
    fn aws_container_listen_is_loopback_with_a_port_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let with = |value: &str| {
            base(dir.path()).replace(
                "socket = \"/tmp/x.sock\"\n",
                &format!("socket = \"/tmp/x.sock\"\naws_container_listen = \"{value}\"\n"),
            )
        };
        let config = check(&base(dir.path())).unwrap();
        assert_eq!(config.server.aws_container_listen, None);
        for ok in ["127.0.0.1:8099", "127.0.0.2:8099", "[::1]:8099"] {
            let config = check(&with(ok)).unwrap();
            assert_eq!(
                config.server.aws_container_listen,
                Some(ok.parse().unwrap())
            );
        }
        for bad in [
            "0.0.0.0:8099",
            "10.0.0.1:8099",
            "[::]:8099",
            "127.0.0.1:0",
            "localhost:8099",
            "127.0.0.1",
        ] {
            assert!(
                matches!(check(&with(bad)), Err(ConfigError::Invalid { key, .. }) if key == "server.aws_container_listen"),
                "{bad}"
            );
        }
    }

    #[test]
    fn missing_dir_is_invalid() {
        let text = base(Path::new("/nonexistent/credagent-test"));
        assert!(
            matches!(check(&text), Err(ConfigError::Invalid { key, .. }) if key == "sources.files.dir")
        );
    }

    #[test]
    fn credentials_table_builds_and_rejects_bad_entries() {
        let dir = tempfile::tempdir().unwrap();
        let ok = base(dir.path());
        let config = check(&format!(
            "{ok}\n[credentials]\ndb-password = \"files/app/database\"\n"
        ))
        .unwrap();
        assert_eq!(
            config.credentials.get("db-password").map(|n| n.to_string()),
            Some("files/app/database".to_owned())
        );
        let cases: &[(&str, &str)] = &[
            ("\"a/b\" = \"files/x\"", "credentials.a/b"),
            ("\"..\" = \"files/x\"", "credentials..."),
            ("\"\" = \"files/x\"", "credentials."),
            ("x = \"nosource\"", "credentials.x"),
            ("x = \"vault/x\"", "credentials.x"),
            ("x = \"files/../x\"", "credentials.x"),
        ];
        for (entry, key) in cases {
            match check(&format!("{ok}\n[credentials]\n{entry}\n")) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(&k, key, "{entry}"),
                other => panic!("{entry}: expected Invalid at {key}, got {other:?}"),
            }
        }
        let bad_socket = ok.replace(
            "socket = \"/tmp/x.sock\"",
            "socket = \"/tmp/x.sock\"\ncreds_socket = \"/tmp/x.sock\"",
        );
        assert!(
            matches!(check(&bad_socket), Err(ConfigError::Invalid { key, .. }) if key == "server.creds_socket")
        );
    }

    #[test]
    fn a_ttl_just_above_refresh_ahead_builds() {
        let dir = tempfile::tempdir().unwrap();
        let text = base(dir.path()).replace("dir = ", "ttl_secs = 61\ndir = ");
        assert_eq!(
            check(&text).unwrap().sources["files"].ttl,
            Duration::from_secs(61)
        );
        let text = base(dir.path()).replace(
            "[server]",
            "[cache]\nttl_secs = 1\nrefresh_ahead_secs = 0\n[server]",
        );
        assert_eq!(check(&text).unwrap().cache.ttl, Duration::from_secs(1));
    }

    #[test]
    fn prefetch_and_startup_check_build_and_reject_bad_entries() {
        let dir = tempfile::tempdir().unwrap();
        let ok = format!(
            "{}\n[sources.env]\ntype = \"env\"\nprefix = \"APP_SECRET_\"\n\n[sources.pass]\ntype = \"command\"\nargv = [\"/bin/cat\", \"{{id}}\"]\nstartup_check = \"retry\"\n",
            base(dir.path())
        );
        let config = check(&format!(
            "{ok}\n[prefetch]\nsecrets = [\"files/app/db\", \"env/DB\"]\njitter_secs = 5\n"
        ))
        .unwrap();
        let names: Vec<String> = config
            .prefetch
            .secrets
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["files/app/db", "env/DB"]);
        assert_eq!(config.prefetch.jitter, Duration::from_secs(5));
        assert_eq!(config.sources["pass"].startup_check, StartupCheck::Retry);
        assert_eq!(
            config.sources["files"].startup_check,
            StartupCheck::Required
        );
        assert!(check(&ok).unwrap().prefetch.secrets.is_empty());
        let cases: &[(&str, &str)] = &[
            ("secrets = [\"nosource/x\"]", "prefetch.secrets[0]"),
            ("secrets = [\"files\"]", "prefetch.secrets[0]"),
            ("secrets = [\"files/../x\"]", "prefetch.secrets[0]"),
            // The env source's own id rule: letters, digits and '_'.
            (
                "secrets = [\"files/a\", \"env/a.b\"]",
                "prefetch.secrets[1]",
            ),
            // The command source's: no leading '-'.
            ("secrets = [\"pass/-x\"]", "prefetch.secrets[0]"),
            (
                "secrets = [\"files/a\", \"files/a\"]",
                "prefetch.secrets[1]",
            ),
            ("jitter_secs = 3601", "prefetch.jitter_secs"),
        ];
        for (entry, key) in cases {
            match check(&format!("{ok}\n[prefetch]\n{entry}\n")) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(&k, key, "{entry}"),
                other => panic!("{entry}: expected Invalid at {key}, got {other:?}"),
            }
        }
        match check(&ok.replace("\"retry\"", "\"later\"")) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "sources.pass.startup_check"),
            other => panic!("expected Invalid at sources.pass.startup_check, got {other:?}"),
        }
        // A file source has no start-up check, so no such key.
        let file_retry = base(dir.path()).replace("dir = ", "startup_check = \"retry\"\ndir = ");
        assert!(matches!(check(&file_retry), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn an_aws_credentials_source_builds_and_cannot_be_prefetched() {
        let dir = tempfile::tempdir().unwrap();
        let ok = format!(
            "{}\n[sources.roles]\ntype = \"aws-credentials\"\nregion = \"eu-west-1\"\nauth = \"instance-profile\"\n\n[sources.roles.roles.reader]\nrole_arn = \"arn:aws:iam::123456789012:role/reader\"\n",
            base(dir.path())
        );
        let config = check(&ok).unwrap();
        let roles = &config.sources["roles"];
        assert!(matches!(roles.kind, SourceKind::AwsCredentials(_)));
        assert_eq!(roles.ttl, Duration::from_secs(43_200));
        match check(&format!("{ok}\n[prefetch]\nsecrets = [\"roles/reader\"]\n")) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "prefetch.secrets[0]"),
            other => panic!("expected Invalid at prefetch.secrets[0], got {other:?}"),
        }
    }

    #[test]
    fn modes_table() {
        assert_eq!(parse_mode("0660"), Some(0o660));
        assert_eq!(parse_mode("600"), Some(0o600));
        assert_eq!(parse_mode("0o666"), Some(0o666));
        assert_eq!(parse_mode("0777"), Some(0o777));
        assert_eq!(parse_mode("1777"), None);
        assert_eq!(parse_mode("08"), None);
        assert_eq!(parse_mode(""), None);
    }

    #[test]
    fn demo_config_builds_from_repo_root() {
        // The unit tests run from the crate root, where examples/secrets lives.
        let config = demo().unwrap();
        assert!(config.sources.contains_key("files"));
    }
}
