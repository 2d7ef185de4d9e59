//! The config of the `aws-credentials` source: the shared AWS base-identity keys (split off by
//! `split_aws_section`), `refresh_at_percent`, `min_remaining_secs`, and the role profiles
//! `[sources.NAME.roles.PROFILE]`; and the session-name templates (`{hostname}`, `{uid}`,
//! `{user}`, `{unit}`), checked against STS's limits here, at load.
//!
//! It does not talk to STS and does not know callers: [`Template::expand`] takes the caller's
//! fields as given (the broker reads them from the kernel's identity of the peer).
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::config::{
    AwsConfig, RawAwsSource, check_external_id, check_region, check_role_arn, check_session_secs,
    check_url, hostname,
};
use crate::source::section::Invalid as InvalidKey;

/// STS's limit on `RoleSessionName` and `SourceIdentity`.
const MAX_SESSION_NAME: usize = 64;
/// At most this much of the host name goes into a session name, so caller fields have room.
const MAX_HOSTNAME: usize = 32;
/// STS's limit on the packed session policy.
const MAX_POLICY_CHARS: usize = 2048;
/// STS's limit on managed session policies per call.
const MAX_POLICY_ARNS: usize = 10;
/// The session name when the profile sets none.
const DEFAULT_SESSION_NAME: &str = "credagent-{hostname}-{unit}";

/// `[sources.NAME]` with `type = "aws-credentials"`.
#[derive(Debug)]
pub struct RawCredentialsSource {
    /// `[sources.NAME.roles.PROFILE]`.
    pub roles: BTreeMap<String, RawRoleProfile>,
    /// When a session is renewed, in percent of its life (default 50).
    pub refresh_at_percent: Option<u64>,
    /// A session is never served with less than this left (default 900).
    pub min_remaining_secs: Option<u64>,
    /// The base identity (auth, key files, region, endpoint, startup_check…).
    pub aws: RawAwsSource,
}

impl<'de> Deserialize<'de> for RawCredentialsSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let (own, aws) = super::config::split_unbatched_aws_section(
            deserializer,
            &["roles", "refresh_at_percent", "min_remaining_secs"],
        )?;
        let number = |key: &str| match own.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) => u64::try_from(*n)
                .map(Some)
                .map_err(|_| D::Error::custom(format!("{key}: must not be negative"))),
            Some(other) => Err(D::Error::custom(format!(
                "{key}: expected an integer, found {}",
                other.type_str()
            ))),
        };
        let roles = match own.get("roles") {
            None => BTreeMap::new(),
            Some(value) => value
                .clone()
                .try_into::<BTreeMap<String, RawRoleProfile>>()
                .map_err(|e| D::Error::custom(format!("roles: {}", e.message().trim_end())))?,
        };
        Ok(RawCredentialsSource {
            roles,
            refresh_at_percent: number("refresh_at_percent")?,
            min_remaining_secs: number("min_remaining_secs")?,
            aws,
        })
    }
}

/// `[sources.NAME.roles.PROFILE]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoleProfile {
    /// The role callers get.
    pub role_arn: String,
    /// `sts:ExternalId`.
    pub external_id: Option<String>,
    /// Session length, 900–43200 s (default 3600).
    pub duration_secs: Option<u64>,
    /// Template of the session name.
    pub session_name: Option<String>,
    /// Template of the source identity.
    pub source_identity: Option<String>,
    /// A JSON session policy narrowing the role.
    pub policy_file: Option<PathBuf>,
    /// Managed policies narrowing the role.
    #[serde(default)]
    pub policy_arns: Vec<String>,
    /// STS endpoint (default the source's `endpoint_url`, else the SDK's).
    pub sts_endpoint: Option<String>,
    /// Region STS calls are signed for (default the source's region).
    pub sts_region: Option<String>,
}

/// A validated `aws-credentials` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsConfig {
    /// The base identity the roles are assumed with.
    pub aws: AwsConfig,
    /// The profiles by name (the id in `NAME/PROFILE`).
    pub profiles: BTreeMap<String, RoleProfile>,
    /// When a session is renewed, in percent of its life.
    pub refresh_at_percent: u8,
    /// The least life a served session has left.
    pub min_remaining: Duration,
}

/// One validated role profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleProfile {
    /// Dotted key, for messages.
    pub key: String,
    /// The role.
    pub role_arn: String,
    /// `sts:ExternalId`.
    pub external_id: Option<String>,
    /// Session length asked for.
    pub duration: Duration,
    /// Session name template.
    pub session_name: Template,
    /// Source identity template.
    pub source_identity: Option<Template>,
    /// The session policy, packed (no insignificant whitespace).
    pub policy: Option<String>,
    /// Managed session policies.
    pub policy_arns: Vec<String>,
    /// STS endpoint override.
    pub sts_endpoint: Option<String>,
    /// STS signing region.
    pub sts_region: String,
}

/// One piece of a session-name template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Literal text (the host name is substituted at load).
    Text(String),
    /// The caller's uid.
    Uid,
    /// The caller's user name (its uid when it has none).
    User,
    /// The caller's systemd unit (its uid when it has none).
    Unit,
}

/// A parsed session-name (or source-identity) template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    /// Characters of literal text.
    fixed: usize,
    /// Placeholders filled per caller.
    fields: usize,
}

/// The caller fields a template may use, as the kernel told them.
#[derive(Debug, Clone, Copy)]
pub struct CallerFields<'a> {
    /// uid.
    pub uid: u32,
    /// User name, when the uid has one.
    pub user: Option<&'a str>,
    /// systemd unit, when the caller runs in one.
    pub unit: Option<&'a str>,
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

impl Template {
    /// Parses `text`: literal characters STS accepts and `{hostname}` `{uid}` `{user}`
    /// `{unit}`, at most 64 characters once each caller field is one character long.
    pub fn parse(text: &str) -> Result<Template, String> {
        let host: String = hostname().chars().take(MAX_HOSTNAME).collect();
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if c == '{' {
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("{text:?}: unclosed '{{'"))?;
                let field = match rest.get(1..end).unwrap_or_default() {
                    "hostname" => {
                        literal.push_str(&host);
                        None
                    }
                    "uid" => Some(Piece::Uid),
                    "user" => Some(Piece::User),
                    "unit" => Some(Piece::Unit),
                    other => {
                        return Err(format!(
                            "{text:?}: unknown placeholder {{{other}}} (known: {{hostname}}, \
                             {{uid}}, {{user}}, {{unit}})"
                        ));
                    }
                };
                if let Some(field) = field {
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(field);
                }
                rest = rest.get(end.saturating_add(1)..).unwrap_or_default();
                continue;
            }
            if !allowed(c) {
                return Err(format!(
                    "{text:?}: {c:?} is not allowed (STS takes letters, digits and _+=,.@-)"
                ));
            }
            literal.push(c);
            rest = rest.get(c.len_utf8()..).unwrap_or_default();
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        let fixed = pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.len(),
                _ => 0,
            })
            .fold(0usize, usize::saturating_add);
        let fields = pieces
            .iter()
            .filter(|p| !matches!(p, Piece::Text(_)))
            .count();
        let shortest = fixed.saturating_add(fields);
        if !(2..=MAX_SESSION_NAME).contains(&shortest) {
            return Err(format!(
                "{text:?} is {shortest} characters with each caller field one character long; \
                 STS takes 2 to {MAX_SESSION_NAME}"
            ));
        }
        Ok(Template {
            pieces,
            fixed,
            fields,
        })
    }

    /// Whether a caller's user name is needed to expand it.
    pub fn uses_user(&self) -> bool {
        self.pieces.contains(&Piece::User)
    }

    /// Whether the expansion depends on the caller (then each caller has its own session).
    pub fn per_caller(&self) -> bool {
        self.fields > 0
    }

    /// The name for `caller`: each caller field with characters STS refuses replaced by `-`,
    /// and cut to an equal share of the room the literal text leaves (at most 64 in all).
    pub fn expand(&self, caller: &CallerFields<'_>) -> String {
        let share = MAX_SESSION_NAME
            .saturating_sub(self.fixed)
            .checked_div(self.fields)
            .unwrap_or(0);
        let uid = caller.uid.to_string();
        let mut out = String::with_capacity(MAX_SESSION_NAME);
        for piece in &self.pieces {
            let value = match piece {
                Piece::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Piece::Uid => uid.as_str(),
                Piece::User => caller.user.unwrap_or(&uid),
                Piece::Unit => caller.unit.unwrap_or(&uid),
            };
            out.extend(
                value
                    .chars()
                    .map(|c| if allowed(c) { c } else { '-' })
                    .take(share),
            );
        }
        out
    }
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> InvalidKey {
    InvalidKey {
        key: key.into(),
        reason: reason.into(),
    }
}

impl RawCredentialsSource {
    /// Validates the section at `key` (`sources.NAME`); a relative `policy_file` is relative
    /// to the config file's directory.
    pub fn validate(&self, key: &str, config_path: &Path) -> Result<CredentialsConfig, InvalidKey> {
        let aws = self.aws.validate(key, config_path)?;
        let percent = self.refresh_at_percent.unwrap_or(50);
        let refresh_at_percent = u8::try_from(percent)
            .ok()
            .filter(|p| (1..=99).contains(p))
            .ok_or_else(|| {
                invalid(
                    format!("{key}.refresh_at_percent"),
                    format!("must be between 1 and 99, got {percent}"),
                )
            })?;
        let min_secs = self.min_remaining_secs.unwrap_or(900);
        if min_secs > 43_200 {
            return Err(invalid(
                format!("{key}.min_remaining_secs"),
                format!("must be at most 43200 seconds, got {min_secs}"),
            ));
        }
        if self.roles.is_empty() {
            return Err(invalid(
                format!("{key}.roles"),
                "at least one [sources.NAME.roles.PROFILE] is needed",
            ));
        }
        let mut profiles = BTreeMap::new();
        for (name, raw) in &self.roles {
            let pkey = format!("{key}.roles.{name}");
            check_profile_name(name).map_err(|r| invalid(&pkey, r))?;
            let profile = raw.validate(&pkey, &aws, config_path)?;
            let life = profile.duration.as_secs();
            let refresh = life.saturating_mul(u64::from(refresh_at_percent)) / 100;
            let serve_until = life.saturating_sub(min_secs);
            if refresh >= serve_until {
                return Err(invalid(
                    format!("{pkey}.duration_secs"),
                    format!(
                        "a {life} s session is renewed after {refresh} s (refresh_at_percent = \
                         {refresh_at_percent}) but may be served only for {serve_until} s \
                         (min_remaining_secs = {min_secs}): lengthen the session, or lower \
                         refresh_at_percent or min_remaining_secs"
                    ),
                ));
            }
            profiles.insert(name.clone(), profile);
        }
        Ok(CredentialsConfig {
            aws,
            profiles,
            refresh_at_percent,
            min_remaining: Duration::from_secs(min_secs),
        })
    }
}

/// A profile name is the id of `NAME/PROFILE`: 1–64 letters, digits and `_.-`.
pub fn check_profile_name(name: &str) -> Result<(), &'static str> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("a role profile name is 1 to 64 letters, digits and _.-")
    }
}

impl RawRoleProfile {
    fn validate(
        &self,
        key: &str,
        aws: &AwsConfig,
        config_path: &Path,
    ) -> Result<RoleProfile, InvalidKey> {
        check_role_arn(&self.role_arn).map_err(|r| invalid(format!("{key}.role_arn"), r))?;
        if let Some(id) = &self.external_id {
            check_external_id(id).map_err(|r| invalid(format!("{key}.external_id"), r))?;
        }
        let secs = self.duration_secs.unwrap_or(3600);
        check_session_secs(secs).map_err(|r| invalid(format!("{key}.duration_secs"), r))?;
        let session_name =
            Template::parse(self.session_name.as_deref().unwrap_or(DEFAULT_SESSION_NAME))
                .map_err(|r| invalid(format!("{key}.session_name"), r))?;
        let source_identity = match &self.source_identity {
            None => None,
            Some(text) => Some(
                Template::parse(text).map_err(|r| invalid(format!("{key}.source_identity"), r))?,
            ),
        };
        let policy = match &self.policy_file {
            None => None,
            Some(path) => Some(
                load_policy(&resolve(config_path, path))
                    .map_err(|r| invalid(format!("{key}.policy_file"), r))?,
            ),
        };
        if self.policy_arns.len() > MAX_POLICY_ARNS {
            return Err(invalid(
                format!("{key}.policy_arns"),
                format!("STS takes at most {MAX_POLICY_ARNS} managed session policies"),
            ));
        }
        for arn in &self.policy_arns {
            check_policy_arn(arn).map_err(|r| invalid(format!("{key}.policy_arns"), r))?;
        }
        if let Some(url) = &self.sts_endpoint {
            check_url(url, aws.allow_plain_http)
                .map_err(|r| invalid(format!("{key}.sts_endpoint"), r))?;
        }
        let sts_region = self
            .sts_region
            .clone()
            .unwrap_or_else(|| aws.region.clone());
        check_region(&sts_region).map_err(|r| invalid(format!("{key}.sts_region"), r))?;
        Ok(RoleProfile {
            key: key.to_owned(),
            role_arn: self.role_arn.clone(),
            external_id: self.external_id.clone(),
            duration: Duration::from_secs(secs),
            session_name,
            source_identity,
            policy,
            policy_arns: self.policy_arns.clone(),
            sts_endpoint: self.sts_endpoint.clone(),
            sts_region,
        })
    }
}

fn resolve(config_path: &Path, path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(parent) if path.is_relative() => parent.join(path),
        _ => path.to_path_buf(),
    }
}

/// Reads a session policy: a JSON object, packed to at most 2048 characters.
fn load_policy(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    if !value.is_object() {
        return Err(format!("{}: a policy is a JSON object", path.display()));
    }
    let packed = value.to_string();
    if packed.len() > MAX_POLICY_CHARS {
        return Err(format!(
            "{}: {} characters packed; STS takes at most {MAX_POLICY_CHARS}",
            path.display(),
            packed.len()
        ));
    }
    Ok(packed)
}

fn check_policy_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = matches!(parts.as_slice(), ["arn", partition, "iam", "", account, resource]
        if partition.starts_with("aws")
            && (*account == "aws" || (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())))
            && resource.strip_prefix("policy/").is_some_and(|r| !r.is_empty()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{arn:?} is not a policy ARN such as \"arn:aws:iam::aws:policy/ReadOnlyAccess\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "region = \"eu-west-1\"\nauth = \"instance-profile\"\n";
    const ROLE: &str = "[roles.reader]\nrole_arn = \"arn:aws:iam::123456789012:role/reader\"\n";

    fn parse(text: &str) -> Result<CredentialsConfig, InvalidKey> {
        let raw: RawCredentialsSource = toml::from_str(text).map_err(|e| InvalidKey {
            key: "parse".into(),
            reason: e.to_string(),
        })?;
        raw.validate("sources.roles", Path::new("/nonexistent/config.toml"))
    }

    #[test]
    fn defaults() {
        let cfg = parse(&format!("{BASE}{ROLE}")).unwrap();
        assert_eq!(cfg.refresh_at_percent, 50);
        assert_eq!(cfg.min_remaining, Duration::from_secs(900));
        let p = &cfg.profiles["reader"];
        assert_eq!(p.duration, Duration::from_secs(3600));
        assert_eq!(p.sts_region, "eu-west-1");
        assert!(p.session_name.per_caller());
        let name = p.session_name.expand(&CallerFields {
            uid: 65534,
            user: None,
            unit: None,
        });
        assert!(name.starts_with("credagent-"), "{name}");
        assert!(name.ends_with("-65534"), "{name}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.json");
        std::fs::write(
            &big,
            format!(
                "{{\"Version\":\"2012-10-17\",\"x\":\"{}\"}}",
                "a".repeat(2100)
            ),
        )
        .unwrap();
        let list = dir.path().join("list.json");
        std::fs::write(&list, "[1]").unwrap();
        let cases: Vec<(String, &str)> = vec![
            (BASE.to_owned(), "sources.roles.roles"),
            (format!("{BASE}{ROLE}ttl_secs = 60\n"), "parse"),
            (format!("ttl_secs = 60\n{BASE}{ROLE}"), "parse"),
            (
                format!("refresh_at_percent = 0\n{BASE}{ROLE}"),
                "sources.roles.refresh_at_percent",
            ),
            (
                format!("refresh_at_percent = 100\n{BASE}{ROLE}"),
                "sources.roles.refresh_at_percent",
            ),
            (
                format!("min_remaining_secs = 50000\n{BASE}{ROLE}"),
                "sources.roles.min_remaining_secs",
            ),
            (format!("min_remaining_secs = -1\n{BASE}{ROLE}"), "parse"),
            (
                format!("{BASE}{ROLE}duration_secs = 899\n"),
                "sources.roles.roles.reader.duration_secs",
            ),
            (
                format!("{BASE}{ROLE}duration_secs = 43201\n"),
                "sources.roles.roles.reader.duration_secs",
            ),
            // 900 s renewed at 450 s but servable only until 0 s: both cannot hold.
            (
                format!("{BASE}{ROLE}duration_secs = 900\n"),
                "sources.roles.roles.reader.duration_secs",
            ),
            (
                format!("{BASE}{ROLE}session_name = \"a b\"\n"),
                "sources.roles.roles.reader.session_name",
            ),
            (
                format!("{BASE}{ROLE}session_name = \"x{{pid}}\"\n"),
                "sources.roles.roles.reader.session_name",
            ),
            (
                format!("{BASE}{ROLE}session_name = \"{}{{uid}}\"\n", "a".repeat(64)),
                "sources.roles.roles.reader.session_name",
            ),
            (
                format!("{BASE}{ROLE}session_name = \"x\"\n"),
                "sources.roles.roles.reader.session_name",
            ),
            (
                format!("{BASE}{ROLE}source_identity = \"x:y\"\n"),
                "sources.roles.roles.reader.source_identity",
            ),
            (
                format!("{BASE}{ROLE}external_id = \"x\"\n"),
                "sources.roles.roles.reader.external_id",
            ),
            (
                format!("{BASE}{ROLE}policy_file = \"/nonexistent/p.json\"\n"),
                "sources.roles.roles.reader.policy_file",
            ),
            (
                format!("{BASE}{ROLE}policy_file = \"{}\"\n", big.display()),
                "sources.roles.roles.reader.policy_file",
            ),
            (
                format!("{BASE}{ROLE}policy_file = \"{}\"\n", list.display()),
                "sources.roles.roles.reader.policy_file",
            ),
            (
                format!("{BASE}{ROLE}policy_arns = [\"arn:aws:iam::aws:role/x\"]\n"),
                "sources.roles.roles.reader.policy_arns",
            ),
            (
                format!("{BASE}{ROLE}sts_endpoint = \"http://10.0.0.1\"\n"),
                "sources.roles.roles.reader.sts_endpoint",
            ),
            (
                format!("{BASE}{ROLE}sts_region = \"EU\"\n"),
                "sources.roles.roles.reader.sts_region",
            ),
            (format!("{BASE}{ROLE}colour = 1\n"), "parse"),
            (
                format!("{BASE}[roles.reader]\nrole_arn = \"arn:aws:iam::1:role/r\"\n"),
                "sources.roles.roles.reader.role_arn",
            ),
            (
                format!("{BASE}[roles.\"a/b\"]\nrole_arn = \"arn:aws:iam::123456789012:role/r\"\n"),
                "sources.roles.roles.a/b",
            ),
        ];
        for (text, key) in cases {
            let got = parse(&text);
            assert_eq!(
                got.as_ref().map_err(|e| e.key.as_str()).err(),
                Some(key),
                "{text}: {got:?}"
            );
        }
    }

    #[test]
    fn refresh_and_min_remaining_that_both_hold_load() {
        let cfg = parse(&format!(
            "min_remaining_secs = 890\nrefresh_at_percent = 1\n{BASE}{ROLE}duration_secs = 900\n\
             policy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]\n"
        ))
        .unwrap();
        assert_eq!(cfg.min_remaining, Duration::from_secs(890));
        assert_eq!(cfg.profiles["reader"].policy_arns.len(), 1);
    }

    #[test]
    fn templates_expand_within_sts_limits() {
        let caller = |uid, user, unit| CallerFields { uid, user, unit };
        let t = Template::parse("app-{uid}").unwrap();
        assert_eq!(t.expand(&caller(1000, None, None)), "app-1000");
        let fixed = Template::parse("shared-session").unwrap();
        assert!(!fixed.per_caller());
        assert_eq!(fixed.expand(&caller(1, None, None)), "shared-session");
        let t = Template::parse("u-{user}-{unit}").unwrap();
        assert_eq!(
            t.expand(&caller(5, Some("alice"), Some("web@1:x.service"))),
            "u-alice-web@1-x.service"
        );
        assert_eq!(t.expand(&caller(5, None, None)), "u-5-5");
        let long = "a".repeat(200);
        let name = t.expand(&caller(5, Some(&long), Some(&long)));
        // Each of the two fields gets half of the 61 characters left: 30.
        assert_eq!(name.len(), 63, "{name}");
        assert!(name.chars().all(allowed));
        let host = Template::parse("{hostname}").unwrap();
        assert!(host.expand(&caller(0, None, None)).len() <= MAX_HOSTNAME);
        assert!(Template::parse("{uid").is_err());
    }
}
