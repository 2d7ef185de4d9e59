//! The AWS sources' shared config section (`type = "aws-secretsmanager"`, and the base of
//! `aws-ssm` and `aws-s3`): region, endpoint, credentials and the optional AssumeRole, as
//! written ([`RawAwsSource`]) and validated ([`AwsConfig`]), and the split of a kind's own keys
//! off the section. It builds the SDK config from it; it makes no call of its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::auth::{self, AssumeRoleConfig, AuthConfig, AuthMethod, KeyFiles, NetSettings};
use crate::source::section::Invalid;

/// `[sources.NAME]` with `type = "aws-secretsmanager"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAwsSource {
    /// AWS region of the secrets, e.g. `eu-west-1`.
    pub region: String,
    /// Endpoint override (VPC endpoint, emulator).
    pub endpoint_url: Option<String>,
    /// `access-key`, `instance-profile` or `default-chain`.
    pub auth: String,
    /// File with the access key id (`auth = "access-key"`).
    pub access_key_id_file: Option<PathBuf>,
    /// File with the secret access key (`auth = "access-key"`).
    pub secret_access_key_file: Option<PathBuf>,
    /// `[sources.NAME.assume_role]`.
    pub assume_role: Option<RawAssumeRole>,
    /// Accept `http://` to a host other than loopback for `endpoint_url` and `sts_endpoint`
    /// (for tests only; logged at start).
    #[serde(default)]
    pub allow_plain_http: bool,
    /// Batch concurrent plain reads into `BatchGetSecretValue` / `GetParameters` calls: a
    /// batch goes once no id joined it for this many ms (0–100, default 5; 0 turns batching
    /// off; `aws-secretsmanager` and `aws-ssm` only).
    pub batch_window_ms: Option<u64>,
}

/// `[sources.NAME.assume_role]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssumeRole {
    /// Role to assume.
    pub role_arn: String,
    /// `sts:ExternalId`.
    pub external_id: Option<String>,
    /// Session name; `{hostname}` is replaced. Default `credagent-{hostname}`.
    pub session_name: Option<String>,
    /// Session length, 900–43200 s. Default 3600.
    pub duration_secs: Option<u64>,
    /// STS endpoint override.
    pub sts_endpoint: Option<String>,
    /// Region STS calls are signed for; default the source's region.
    pub sts_region: Option<String>,
}

/// A validated `aws-secretsmanager` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    /// Region.
    pub region: String,
    /// Endpoint override.
    pub endpoint_url: Option<String>,
    /// Credentials settings.
    pub auth: AuthConfig,
    /// `http://` to a host other than loopback was allowed (for tests only).
    pub allow_plain_http: bool,
    /// `batch_window_ms`; zero when reads are not batched.
    pub batch_window: Duration,
}

/// The default `batch_window_ms` (docs/aws.md, "Batched reads").
pub const DEFAULT_BATCH_WINDOW_MS: u64 = 5;

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid::new(key, reason)
}

impl RawAwsSource {
    /// Validates the section at `key` (`sources.NAME`); relative key-file paths are relative
    /// to the config file's directory.
    pub fn validate(&self, key: &str, config_path: &Path) -> Result<AwsConfig, Invalid> {
        check_region(&self.region).map_err(|r| invalid(format!("{key}.region"), r))?;
        if let Some(url) = &self.endpoint_url {
            check_url(url, self.allow_plain_http)
                .map_err(|r| invalid(format!("{key}.endpoint_url"), r))?;
        }
        let files = match (&self.access_key_id_file, &self.secret_access_key_file) {
            (Some(id), Some(secret)) => Some(KeyFiles {
                access_key_id: check_key_file(
                    &format!("{key}.access_key_id_file"),
                    config_path,
                    id,
                )?,
                secret_access_key: check_key_file(
                    &format!("{key}.secret_access_key_file"),
                    config_path,
                    secret,
                )?,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    format!("{key}.secret_access_key_file"),
                    "access_key_id_file is set, so secret_access_key_file is needed too",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    format!("{key}.access_key_id_file"),
                    "secret_access_key_file is set, so access_key_id_file is needed too",
                ));
            }
        };
        let method = match self.auth.as_str() {
            "access-key" => AuthMethod::AccessKey { files },
            "instance-profile" | "default-chain" if files.is_some() => {
                return Err(invalid(
                    format!("{key}.access_key_id_file"),
                    "key files are only used with auth = \"access-key\"",
                ));
            }
            "instance-profile" => AuthMethod::InstanceProfile,
            "default-chain" => AuthMethod::DefaultChain,
            other => {
                return Err(invalid(
                    format!("{key}.auth"),
                    format!(
                        "{other:?} is not \"access-key\", \"instance-profile\" or \"default-chain\""
                    ),
                ));
            }
        };
        let assume_role = match &self.assume_role {
            None => None,
            Some(raw) => Some(raw.validate(
                &format!("{key}.assume_role"),
                &self.region,
                self.allow_plain_http,
            )?),
        };
        Ok(AwsConfig {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            auth: AuthConfig {
                key: key.to_owned(),
                method,
                assume_role,
                region: self.region.clone(),
                endpoint_url: self.endpoint_url.clone(),
            },
            allow_plain_http: self.allow_plain_http,
            batch_window: self.batch_window(key)?,
        })
    }

    /// `batch_window_ms`, 0–100 ms (default [`DEFAULT_BATCH_WINDOW_MS`]).
    fn batch_window(&self, key: &str) -> Result<Duration, Invalid> {
        match self.batch_window_ms.unwrap_or(DEFAULT_BATCH_WINDOW_MS) {
            ms @ 0..=100 => Ok(Duration::from_millis(ms)),
            ms => Err(invalid(
                format!("{key}.batch_window_ms"),
                format!("must be between 0 and 100 ms, got {ms}"),
            )),
        }
    }
}

impl AwsConfig {
    /// The SDK config every AWS source kind builds its client from: the credentials (checked
    /// with STS here), region, endpoint, timeouts and retries.
    pub async fn sdk_config(
        &self,
        fetch_timeout: Duration,
    ) -> Result<aws_config::SdkConfig, auth::AuthError> {
        let net = NetSettings {
            operation_timeout: fetch_timeout,
        };
        let credentials = auth::build(&self.auth, net).await?;
        Ok(auth::sdk_config(credentials, &self.region, self.endpoint_url.as_deref(), net).await)
    }
}

/// Splits the keys a kind adds to the shared AWS settings (`bucket`, `prefix`) off a source
/// section, and parses the rest as [`RawAwsSource`] (unknown keys still refused).
pub fn split_aws_section<'de, D>(
    deserializer: D,
    own_keys: &[&str],
) -> Result<(toml::Table, RawAwsSource), D::Error>
where
    D: serde::Deserializer<'de>,
{
    split(deserializer, own_keys, true)
}

/// [`split_aws_section`] for the kinds without a batch call (`aws-s3`, `aws-credentials`): for
/// them `batch_window_ms` is an unknown field.
pub fn split_unbatched_aws_section<'de, D>(
    deserializer: D,
    own_keys: &[&str],
) -> Result<(toml::Table, RawAwsSource), D::Error>
where
    D: serde::Deserializer<'de>,
{
    split(deserializer, own_keys, false)
}

fn split<'de, D>(
    deserializer: D,
    own_keys: &[&str],
    batched: bool,
) -> Result<(toml::Table, RawAwsSource), D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error as _;
    let mut table = toml::Table::deserialize(deserializer)?;
    if !batched && table.contains_key("batch_window_ms") {
        return Err(D::Error::custom(
            "unknown field `batch_window_ms`: only aws-secretsmanager and aws-ssm sources batch \
             their reads",
        ));
    }
    let mut own = toml::Table::new();
    for key in own_keys {
        if let Some(value) = table.remove(*key) {
            own.insert((*key).to_owned(), value);
        }
    }
    let aws = toml::Value::Table(table)
        .try_into::<RawAwsSource>()
        .map_err(|e| D::Error::custom(e.message().trim_end().to_owned()))?;
    Ok((own, aws))
}

/// An optional string among the keys [`split_aws_section`] split off.
pub fn own_string<E: serde::de::Error>(own: &toml::Table, key: &str) -> Result<Option<String>, E> {
    match own.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(E::custom(format!(
            "{key}: expected a string, found {}",
            other.type_str()
        ))),
    }
}

impl RawAssumeRole {
    fn validate(
        &self,
        key: &str,
        region: &str,
        allow_plain_http: bool,
    ) -> Result<AssumeRoleConfig, Invalid> {
        check_role_arn(&self.role_arn).map_err(|r| invalid(format!("{key}.role_arn"), r))?;
        if let Some(id) = &self.external_id {
            check_external_id(id).map_err(|r| invalid(format!("{key}.external_id"), r))?;
        }
        let template = self
            .session_name
            .as_deref()
            .unwrap_or("credagent-{hostname}");
        let session_name = template.replace("{hostname}", &hostname());
        let ok = (2..=64).contains(&session_name.len())
            && session_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b));
        if !ok {
            return Err(invalid(
                format!("{key}.session_name"),
                format!(
                    "{session_name:?} must be 2 to 64 characters of letters, digits and _+=,.@-"
                ),
            ));
        }
        let secs = self.duration_secs.unwrap_or(3600);
        check_session_secs(secs).map_err(|r| invalid(format!("{key}.duration_secs"), r))?;
        if let Some(url) = &self.sts_endpoint {
            check_url(url, allow_plain_http)
                .map_err(|r| invalid(format!("{key}.sts_endpoint"), r))?;
        }
        let sts_region = self.sts_region.clone().unwrap_or_else(|| region.to_owned());
        check_region(&sts_region).map_err(|r| invalid(format!("{key}.sts_region"), r))?;
        Ok(AssumeRoleConfig {
            role_arn: self.role_arn.clone(),
            external_id: self.external_id.clone(),
            session_name,
            duration: Duration::from_secs(secs),
            sts_endpoint: self.sts_endpoint.clone(),
            sts_region,
        })
    }
}

/// STS's limits on a session's length (`DurationSeconds`).
pub(crate) fn check_session_secs(secs: u64) -> Result<(), String> {
    if (900..=43_200).contains(&secs) {
        Ok(())
    } else {
        Err(format!(
            "must be between 900 and 43200 seconds (STS limits), got {secs}"
        ))
    }
}

/// `sts:ExternalId`'s limits: 2–1224 characters of letters, digits and `_+=,.@:/-`.
pub(crate) fn check_external_id(id: &str) -> Result<(), &'static str> {
    let ok = (2..=1224).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@:/-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("must be 2 to 1224 characters of letters, digits and _+=,.@:/-")
    }
}

/// The host name with characters a session name cannot hold replaced by `-`, shortened so
/// `credagent-{hostname}` fits 64 characters.
pub(crate) fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(54)
        .collect()
}

pub(crate) fn check_region(region: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{region:?} is not a region name such as \"eu-west-1\""
        ))
    }
}

pub(crate) fn check_url(url: &str, allow_plain_http: bool) -> Result<(), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => {
            crate::source::section::check_plain_http(url, allow_plain_http)
        }
        _ => Err(format!(
            "{url:?} must be an http:// or https:// URL with a host"
        )),
    }
}

pub(crate) fn check_role_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5]
            .strip_prefix("role/")
            .is_some_and(|r| !r.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{arn:?} is not a role ARN such as \"arn:aws:iam::210987654321:role/secrets-reader\""
        ))
    }
}

fn check_key_file(key: &str, config_path: &Path, path: &Path) -> Result<PathBuf, Invalid> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        match config_path.parent() {
            Some(parent) if config_path.exists() => parent.join(path),
            _ => path.to_path_buf(),
        }
    };
    crate::source::credfile::check(&path).map_err(|r| invalid(key, r))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(extra: &str) -> Result<AwsConfig, Invalid> {
        let text = format!("region = \"eu-west-1\"\nauth = \"instance-profile\"\n{extra}");
        let raw: RawAwsSource = toml::from_str(&text).unwrap();
        raw.validate("sources.aws", Path::new("/nonexistent/config.toml"))
    }

    #[test]
    fn valid_config_with_assume_role_defaults() {
        let cfg =
            raw("[assume_role]\nrole_arn = \"arn:aws:iam::210987654321:role/secrets-reader\"\n")
                .unwrap();
        let role = cfg.auth.assume_role.unwrap();
        assert_eq!(role.duration, Duration::from_secs(3600));
        assert_eq!(role.sts_region, "eu-west-1");
        assert!(role.session_name.starts_with("credagent-"));
        assert_eq!(cfg.auth.method, AuthMethod::InstanceProfile);
    }

    #[test]
    fn invalid_values_name_their_key() {
        let role = "[assume_role]\nrole_arn = \"arn:aws:iam::210987654321:role/r\"\n";
        let cases: &[(String, &str)] = &[
            (
                "region = \"EU WEST\"".replace("region", "endpoint_url"),
                "sources.aws.endpoint_url",
            ),
            ("auth2 = 1".to_owned(), "parse"),
            (
                format!("{role}duration_secs = 60\n"),
                "sources.aws.assume_role.duration_secs",
            ),
            (
                format!("{role}sts_region = \"Nowhere 1\"\n"),
                "sources.aws.assume_role.sts_region",
            ),
            (
                format!("{role}sts_endpoint = \"ftp://x\"\n"),
                "sources.aws.assume_role.sts_endpoint",
            ),
            (
                format!("{role}external_id = \"x\"\n"),
                "sources.aws.assume_role.external_id",
            ),
            (
                format!("{role}session_name = \"a b\"\n"),
                "sources.aws.assume_role.session_name",
            ),
            (
                "[assume_role]\nrole_arn = \"arn:aws:iam::21098765432:role/r\"\n".to_owned(),
                "sources.aws.assume_role.role_arn",
            ),
            (
                "[assume_role]\nrole_arn = \"arn:aws:iam::210987654321:user/r\"\n".to_owned(),
                "sources.aws.assume_role.role_arn",
            ),
            (
                "access_key_id_file = \"/nonexistent/id\"\n".to_owned(),
                "sources.aws.secret_access_key_file",
            ),
        ];
        for (extra, key) in cases {
            let text = format!("region = \"eu-west-1\"\nauth = \"instance-profile\"\n{extra}");
            let parsed: Result<RawAwsSource, _> = toml::from_str(&text);
            match parsed {
                Err(_) => assert_eq!(*key, "parse", "{extra}"),
                Ok(raw) => {
                    let err = raw
                        .validate("sources.aws", Path::new("/nonexistent/config.toml"))
                        .unwrap_err();
                    assert_eq!(err.key, *key, "{extra}: {}", err.reason);
                }
            }
        }
        let bad_auth: RawAwsSource =
            toml::from_str("region = \"eu-west-1\"\nauth = \"password\"\n").unwrap();
        assert_eq!(
            bad_auth
                .validate("sources.aws", Path::new("c.toml"))
                .unwrap_err()
                .key,
            "sources.aws.auth"
        );
        let bad_region: RawAwsSource =
            toml::from_str("region = \"EU\"\nauth = \"default-chain\"\n").unwrap();
        assert_eq!(
            bad_region
                .validate("sources.aws", Path::new("c.toml"))
                .unwrap_err()
                .key,
            "sources.aws.region"
        );
    }

    #[test]
    fn plain_http_off_the_host_is_refused_unless_allowed() {
        let role = "[assume_role]\nrole_arn = \"arn:aws:iam::210987654321:role/r\"\n";
        let refused = |url: &str| {
            format!(
                "\"{url}\" is plain http to a host other than loopback (tokens and secret values \
                 would cross the network in clear text); use https://, or set allow_plain_http = \
                 true (for tests only)"
            )
        };
        let err = raw("endpoint_url = \"http://secretsmanager.internal\"\n").unwrap_err();
        assert_eq!(err.key, "sources.aws.endpoint_url");
        assert_eq!(err.reason, refused("http://secretsmanager.internal"));
        let err = raw(&format!("{role}sts_endpoint = \"http://10.1.2.3:4566\"\n")).unwrap_err();
        assert_eq!(err.key, "sources.aws.assume_role.sts_endpoint");
        assert_eq!(err.reason, refused("http://10.1.2.3:4566"));
        assert!(raw("endpoint_url = \"http://127.0.0.1:5000\"\n").is_ok());
        assert!(raw("endpoint_url = \"https://secretsmanager.internal\"\n").is_ok());
        let allowed = raw(&format!(
            "endpoint_url = \"http://moto.internal:5000\"\nallow_plain_http = true\n{role}sts_endpoint = \"http://moto.internal:5000\"\n"
        ))
        .unwrap();
        assert!(allowed.allow_plain_http);
    }

    #[test]
    fn key_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("id");
        let secret = dir.path().join("secret");
        std::fs::write(&id, "AKIAX").unwrap();
        std::fs::write(&secret, "s").unwrap();
        std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = format!(
            "region = \"eu-west-1\"\nauth = \"access-key\"\naccess_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n",
            id.display(),
            secret.display()
        );
        let raw: RawAwsSource = toml::from_str(&text).unwrap();
        let err = raw
            .validate("sources.aws", Path::new("c.toml"))
            .unwrap_err();
        assert_eq!(err.key, "sources.aws.secret_access_key_file");
        assert!(err.reason.contains("0600"), "{}", err.reason);
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o400)).unwrap();
        let raw: RawAwsSource = toml::from_str(&text).unwrap();
        assert!(raw.validate("sources.aws", Path::new("c.toml")).is_ok());
    }
}
