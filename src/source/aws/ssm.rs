//! The SSM Parameter Store source (`type = "aws-ssm"`): `GetParameter` with decryption, by
//! name (`{prefix}{id}`), with an optional version (`?version=N`) or label (`?label=L`).
//!
//! It owns its config section ([`RawSsmSource`]: the Secrets Manager source's AWS settings plus
//! `prefix`), its id and selector rules, and moving values into secure memory. Credentials,
//! their refresh, and the mapping of SDK errors are shared with `aws-secretsmanager`
//! (`super::auth`, [`super::auth::map_sdk_error`]); caching and access control are the
//! cache's and the ACL's.
//!
//! Plain reads (no version or label) of concurrent misses are batched into `GetParameters`
//! calls of at most 10 names (`super::batch`); a read by version or label, and any name the
//! batch reply does not answer, is a `GetParameter` of its own.
//!
//! There is no rotation check: Parameter Store has no call cheaper than `GetParameter` that
//! tells whether a value changed (`DescribeParameters` is a list call with a lower quota), so
//! an expired entry is simply read again. `StringList` values are served as their text
//! (comma-separated), `SecureString` values decrypted (`kms:Decrypt` on the key).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::auth;
use super::auth::map_sdk_error;
use super::batch::{Answers, BatchCall, Batched, Batcher};
use super::calls::CallCounts;
use super::config::{AwsConfig, RawAwsSource, own_string};
use crate::secure_mem::SecretBytes;
use crate::source::error::SourceError;
use crate::source::secret::{Fetched, Secret, SecretRequest, Selector};
use crate::source::section::Invalid;

/// Most names one `GetParameters` takes.
pub const BATCH_MAX: usize = 10;

/// Longest parameter name SSM accepts (with its hierarchy).
const MAX_NAME_LEN: usize = 2048;

/// `[sources.NAME]` with `type = "aws-ssm"`: every `aws-secretsmanager` key, plus `prefix`.
#[derive(Debug)]
pub struct RawSsmSource {
    /// Prepended to the id to form the parameter name; default `/`.
    pub prefix: Option<String>,
    /// The shared AWS settings (region, endpoint, auth, assume role, TTL, timeout).
    pub aws: RawAwsSource,
}

impl<'de> Deserialize<'de> for RawSsmSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (own, aws) = super::config::split_aws_section(deserializer, &["prefix"])?;
        Ok(RawSsmSource {
            prefix: own_string(&own, "prefix")?,
            aws,
        })
    }
}

/// A validated `aws-ssm` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsmConfig {
    /// Shared AWS settings.
    pub aws: AwsConfig,
    /// Parameter name prefix.
    pub prefix: String,
}

impl RawSsmSource {
    /// Validates the section at `key` (`sources.NAME`).
    pub fn validate(&self, key: &str, config_path: &Path) -> Result<SsmConfig, Invalid> {
        let aws = self.aws.validate(key, config_path)?;
        let prefix = self.prefix.clone().unwrap_or_else(|| "/".to_owned());
        let ok = prefix.len() < MAX_NAME_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b))
            && !prefix.contains("//");
        if !ok {
            return Err(Invalid {
                key: format!("{key}.prefix"),
                reason: format!(
                    "{prefix:?} must be letters, digits and /_.- (no \"//\"), e.g. \"/\" or \"/prod/\""
                ),
            });
        }
        Ok(SsmConfig { aws, prefix })
    }
}

/// Ids are parameter names below the prefix: letters, digits and `/_.-` (no `:`, which SSM
/// reads as a version or label selector).
pub fn check_id(id: &str) -> Result<(), &'static str> {
    let ok = (1..MAX_NAME_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("a parameter name is letters, digits and /_.- (at most 2047 characters)")
    }
}

/// Selectors this source accepts: `version` or `label` (1–100 letters, digits, `._-`), not both.
pub fn check_selector(selector: &Selector) -> Result<(), &'static str> {
    if selector.version_id.is_some() || selector.version_stage.is_some() {
        return Err("SSM parameters take ?version=N or ?label=L, not version_id or version_stage");
    }
    if selector.version.is_some() && selector.label.is_some() {
        return Err("give ?version=N or ?label=L, not both");
    }
    if let Some(label) = &selector.label {
        let ok = (1..=100).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err("label must be 1 to 100 letters, digits or ._-");
        }
    }
    Ok(())
}

/// The name `GetParameter` is asked for: `{prefix}{id}`, with `:N` or `:LABEL` when selected.
fn parameter_name(prefix: &str, id: &str, selector: &Selector) -> String {
    match (selector.version, &selector.label) {
        (Some(n), _) => format!("{prefix}{id}:{n}"),
        (None, Some(label)) => format!("{prefix}{id}:{label}"),
        (None, None) => format!("{prefix}{id}"),
    }
}

/// A Parameter Store client with its own credentials.
pub struct SsmSource {
    client: aws_sdk_ssm::Client,
    prefix: String,
    operation_timeout: Duration,
    batcher: Batcher<BatchGet>,
    calls: Arc<CallCounts>,
}

/// `GetParameters` (decrypted) for the batcher.
struct BatchGet {
    client: aws_sdk_ssm::Client,
    prefix: String,
    operation_timeout: Duration,
    calls: Arc<CallCounts>,
}

impl BatchCall for BatchGet {
    const MAX: usize = BATCH_MAX;
    const OPERATION: &'static str = "GetParameters";

    async fn call(&self, ids: &[String]) -> Result<Answers, SourceError> {
        let names: Vec<String> = ids
            .iter()
            .map(|id| parameter_name(&self.prefix, id, &Selector::default()))
            .collect();
        self.calls.count(Self::OPERATION);
        let out = self
            .client
            .get_parameters()
            .set_names(Some(names.clone()))
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| map_sdk_error("GetParameters", e, self.operation_timeout))?;
        Ok(answers(&names, out))
    }
}

/// Each name's answer in a `GetParameters` reply: the parameter carrying it, `NotFound` for the
/// names the reply lists as invalid (as `GetParameter`'s `ParameterNotFound`), or `None`.
fn answers(
    names: &[String],
    out: aws_sdk_ssm::operation::get_parameters::GetParametersOutput,
) -> Answers {
    let mut parameters = out.parameters.unwrap_or_default();
    let invalid = out.invalid_parameters.unwrap_or_default();
    let answers = names
        .iter()
        .map(|name| {
            // SECURITY: a parameter answers the name it carries exactly.
            if let Some(at) = parameters
                .iter()
                .position(|p| p.name() == Some(name.as_str()))
            {
                return Some(secret_of("GetParameters", parameters.swap_remove(at)));
            }
            invalid.contains(name).then_some(Err(SourceError::NotFound))
        })
        .collect();
    for mut parameter in parameters {
        if let Some(mut text) = parameter.value.take() {
            zeroize::Zeroize::zeroize(&mut text);
        }
    }
    answers
}

/// A parameter's value in secure memory (the SDK's buffer wiped), its version number as the
/// secret's version.
fn secret_of(
    operation: &str,
    mut parameter: aws_sdk_ssm::types::Parameter,
) -> Result<Secret, SourceError> {
    let Some(text) = parameter.value.take() else {
        return Err(SourceError::BadReply {
            detail: format!("{operation} returned a Parameter without a Value"),
        });
    };
    Ok(Secret::new(
        SecretBytes::from_vec_wiping(text.into_bytes())?,
        Some(parameter.version.to_string()),
    ))
}

impl std::fmt::Debug for SsmSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsmSource")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl SsmSource {
    /// Builds the credentials (checking them with STS) and the client.
    pub async fn build(
        config: &SsmConfig,
        fetch_timeout: Duration,
    ) -> Result<SsmSource, auth::AuthError> {
        let sdk = config.aws.sdk_config(fetch_timeout).await?;
        let client = aws_sdk_ssm::Client::new(&sdk);
        let calls = Arc::new(CallCounts::new(&["GetParameter", "GetParameters"]));
        Ok(SsmSource {
            batcher: Batcher::new(
                BatchGet {
                    client: client.clone(),
                    prefix: config.prefix.clone(),
                    operation_timeout: fetch_timeout,
                    calls: calls.clone(),
                },
                config.aws.batch_window,
            ),
            calls,
            client,
            prefix: config.prefix.clone(),
            operation_timeout: fetch_timeout,
        })
    }

    /// How many ids one batch call takes; `None` with `batch_window_ms = 0`.
    pub(crate) fn batch_size(&self) -> Option<usize> {
        self.batcher.enabled().then_some(BATCH_MAX)
    }

    /// Its backend calls so far.
    pub(crate) fn calls(&self) -> &CallCounts {
        &self.calls
    }

    /// `ids`' plain values by `GetParameters` calls sent at once (`[prefetch]`).
    pub(crate) async fn fetch_batch(&self, ids: &[String]) -> Vec<Batched> {
        self.batcher.get_now(ids).await
    }

    /// Reads the parameter (decrypted); its version number becomes the secret's version.
    pub async fn fetch(&self, request: &SecretRequest) -> Result<Fetched, SourceError> {
        let id = request.name.id();
        check_id(id).map_err(|why| SourceError::Invalid(why.to_owned()))?;
        check_selector(&request.selector).map_err(|why| SourceError::Invalid(why.to_owned()))?;
        let plain = request.selector.version.is_none() && request.selector.label.is_none();
        if plain && let Batched::Done(answer) = self.batcher.get(id).await {
            return answer.map(Fetched::New);
        }
        self.calls.count("GetParameter");
        let out = self
            .client
            .get_parameter()
            .name(parameter_name(&self.prefix, id, &request.selector))
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| map_sdk_error("GetParameter", e, self.operation_timeout))?;
        let Some(parameter) = out.parameter else {
            return Err(SourceError::BadReply {
                detail: "GetParameter returned no Parameter".to_owned(),
            });
        };
        secret_of("GetParameter", parameter).map(Fetched::New)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<SsmConfig, Invalid> {
        let text = format!("region = \"eu-west-1\"\nauth = \"instance-profile\"\n{extra}");
        let raw: RawSsmSource = toml::from_str(&text).map_err(|e| Invalid {
            key: "parse".into(),
            reason: e.to_string(),
        })?;
        raw.validate("sources.ssm", Path::new("/nonexistent/config.toml"))
    }

    #[test]
    fn config_shares_the_aws_keys_and_refuses_unknown_ones() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.prefix, "/");
        assert_eq!(cfg.aws.region, "eu-west-1");
        assert_eq!(parse("prefix = \"/prod/\"").unwrap().prefix, "/prod/");
        assert_eq!(parse("prefix = \"\"").unwrap().prefix, "");
        assert_eq!(cfg.aws.batch_window, Duration::from_millis(5));
        let off = parse("batch_window_ms = 0").unwrap();
        assert_eq!(off.aws.batch_window, Duration::ZERO);
        let role = "[assume_role]\nrole_arn = \"arn:aws:iam::210987654321:role/r\"\n";
        assert!(parse(role).unwrap().aws.auth.assume_role.is_some());
        for (extra, key) in [
            ("prefix = \"a b\"", "sources.ssm.prefix"),
            ("prefix = \"//x\"", "sources.ssm.prefix"),
            ("prefix = 3", "parse"),
            ("bucket = \"x\"", "parse"),
            ("region2 = \"x\"", "parse"),
            ("endpoint_url = \"ftp://x\"", "sources.ssm.endpoint_url"),
            ("batch_window_ms = 101", "sources.ssm.batch_window_ms"),
            ("batch_window_ms = -1", "parse"),
        ] {
            assert_eq!(parse(extra).unwrap_err().key, key, "{extra}");
        }
    }

    #[test]
    fn a_get_parameters_reply_answers_each_name_with_its_own_value_or_not_found() {
        use aws_sdk_ssm::operation::get_parameters::GetParametersOutput;
        use aws_sdk_ssm::types::Parameter;
        let out = GetParametersOutput::builder()
            .parameters(
                Parameter::builder()
                    .name("/b")
                    .value("vb")
                    .version(3)
                    .build(),
            )
            .parameters(
                Parameter::builder()
                    .name("/a")
                    .value("va")
                    .version(1)
                    .build(),
            )
            .parameters(Parameter::builder().name("/novalue").build())
            .parameters(Parameter::builder().name("/not-asked").value("x").build())
            .invalid_parameters("/missing")
            .build();
        let names: Vec<String> = ["/a", "/b", "/missing", "/novalue", "/unnamed"]
            .map(String::from)
            .into();
        let got = answers(&names, out);
        let a = got[0].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(
            (a.value.as_slice(), a.version.as_deref()),
            (&b"va"[..], Some("1"))
        );
        let b = got[1].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(
            (b.value.as_slice(), b.version.as_deref()),
            (&b"vb"[..], Some("3"))
        );
        assert!(matches!(got[2], Some(Err(SourceError::NotFound))));
        assert!(matches!(got[3], Some(Err(SourceError::BadReply { .. }))));
        assert!(got[4].is_none());
    }

    #[test]
    fn ids_and_selectors_table() {
        for (id, ok) in [
            ("prod/db/password", true),
            ("a.b_c-d", true),
            ("name:3", false),
            ("with space", false),
            ("", false),
        ] {
            assert_eq!(check_id(id).is_ok(), ok, "{id}");
        }
        let sel = |version: Option<u64>, label: Option<&str>, stage: Option<&str>| Selector {
            version,
            label: label.map(str::to_owned),
            version_stage: stage.map(str::to_owned),
            version_id: None,
            caller: None,
        };
        assert!(check_selector(&sel(None, None, None)).is_ok());
        assert!(check_selector(&sel(Some(2), None, None)).is_ok());
        assert!(check_selector(&sel(None, Some("blue"), None)).is_ok());
        assert!(check_selector(&sel(Some(2), Some("blue"), None)).is_err());
        assert!(check_selector(&sel(None, Some("a:b"), None)).is_err());
        assert!(check_selector(&sel(None, None, Some("AWSCURRENT"))).is_err());
        assert_eq!(
            parameter_name("/", "app/db", &sel(Some(2), None, None)),
            "/app/db:2"
        );
        assert_eq!(
            parameter_name("/p/", "x", &sel(None, Some("blue"), None)),
            "/p/x:blue"
        );
        assert_eq!(parameter_name("", "x", &Selector::default()), "x");
    }
}
