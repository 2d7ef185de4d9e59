//! The AWS Secrets Manager source (`type = "aws-secretsmanager"`): `GetSecretValue` by name or
//! ARN with an optional version id or stage, and the rotation check (`DescribeSecret`: is the
//! cached version still the one carrying the requested stage?).
//!
//! It owns its id and selector rules, the mapping of SDK errors to [`SourceError`], and moving
//! values into secure memory. Its config section is `super::config`'s (shared with the other
//! AWS kinds); credentials (and their refresh) are `super::auth`'s; caching and access control
//! are the cache's and the ACL's.
//!
//! Values: `SecretString` bytes or the `SecretBinary` blob are moved out of the SDK's output
//! and copied into [`SecretBytes`], and the SDK-owned buffer is wiped. The raw HTTP response
//! body the SDK parsed them from is dropped by the SDK without wiping (README, "Secrets in
//! memory").

use std::time::Duration;

use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};

use super::auth;
use super::config::{AwsConfig, check_region};
use crate::secure_mem::SecretBytes;
use crate::source::error::SourceError;
use crate::source::secret::{Fetched, Secret, SecretRequest, Selector};

/// The stage a request without selectors reads.
const CURRENT_STAGE: &str = "AWSCURRENT";

/// Checks a secret id before any call: a name (at most 512 characters of letters, digits and
/// `/_+=.@-`) or a Secrets Manager ARN.
pub fn check_secret_id(id: &str) -> Result<(), &'static str> {
    let name_ok = |name: &str| {
        (1..=512).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b))
    };
    if !id.contains(':') {
        return if name_ok(id) {
            Ok(())
        } else {
            Err("a secret name is 1 to 512 characters of letters, digits and /_+=.@-")
        };
    }
    let parts: Vec<&str> = id.splitn(7, ':').collect();
    let ok = parts.len() == 7
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "secretsmanager"
        && check_region(parts[3]).is_ok()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5] == "secret"
        && name_ok(parts[6]);
    if ok {
        Ok(())
    } else {
        Err("not a Secrets Manager ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)")
    }
}

/// Selectors this source accepts: `version_id` (32–64 of letters, digits, `-`) and
/// `version_stage` (1–256 characters); not `version`.
pub fn check_selector(selector: &Selector) -> Result<(), &'static str> {
    if selector.version.is_some() || selector.label.is_some() {
        return Err("AWS secrets take version_id or version_stage, not version or label");
    }
    if let Some(id) = &selector.version_id {
        let ok = (32..=64).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err("version_id must be 32 to 64 letters, digits or '-'");
        }
    }
    if let Some(stage) = &selector.version_stage {
        let ok = (1..=256).contains(&stage.len())
            && stage
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_+=.@-".contains(&b));
        if !ok {
            return Err("version_stage must be 1 to 256 letters, digits or _+=.@-");
        }
    }
    Ok(())
}

/// A Secrets Manager client with its own credentials.
pub struct AwsSource {
    client: aws_sdk_secretsmanager::Client,
    region: String,
    endpoint_url: Option<String>,
    operation_timeout: Duration,
}

impl std::fmt::Debug for AwsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSource")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .finish_non_exhaustive()
    }
}

impl AwsSource {
    /// Builds the credentials (checking them with STS) and the client.
    pub async fn build(
        config: &AwsConfig,
        fetch_timeout: Duration,
    ) -> Result<AwsSource, auth::AuthError> {
        let sdk = config.sdk_config(fetch_timeout).await?;
        Ok(AwsSource {
            client: aws_sdk_secretsmanager::Client::new(&sdk),
            region: config.region.clone(),
            endpoint_url: config.endpoint_url.clone(),
            operation_timeout: fetch_timeout,
        })
    }

    /// Fetches `request`; with `previous`, first asks `DescribeSecret` whether the cached
    /// version still carries the requested stage (or still exists, for a `version_id`).
    pub async fn fetch(
        &self,
        request: &SecretRequest,
        previous: Option<&Secret>,
    ) -> Result<Fetched, SourceError> {
        let id = request.name.id();
        check_secret_id(id).map_err(|why| SourceError::Invalid(why.to_owned()))?;
        let selector = &request.selector;
        if let Some(version) = previous.and_then(|p| p.version.as_deref()) {
            match self.still_current(id, selector, version).await {
                Ok(true) => return Ok(Fetched::Unchanged),
                Ok(false) => {}
                // Without secretsmanager:DescribeSecret, fall back to reading the value.
                Err(SourceError::Denied { detail }) => {
                    tracing::debug!(%detail, "rotation check denied; fetching the value");
                }
                Err(err) => return Err(err),
            }
        }
        let mut out = self
            .client
            .get_secret_value()
            .secret_id(id)
            .set_version_id(selector.version_id.clone())
            .set_version_stage(selector.version_stage.clone())
            .send()
            .await
            .map_err(|e| self.map_error("GetSecretValue", e))?;
        let value = match (out.secret_string.take(), out.secret_binary.take()) {
            (Some(text), _) => SecretBytes::from_vec_wiping(text.into_bytes())?,
            (None, Some(blob)) => SecretBytes::from_vec_wiping(blob.into_inner())?,
            (None, None) => {
                return Err(SourceError::BadReply {
                    detail: "GetSecretValue returned neither SecretString nor SecretBinary"
                        .to_owned(),
                });
            }
        };
        Ok(Fetched::New(Secret::new(value, out.version_id.take())))
    }

    async fn still_current(
        &self,
        id: &str,
        selector: &Selector,
        version: &str,
    ) -> Result<bool, SourceError> {
        let out = self
            .client
            .describe_secret()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| self.map_error("DescribeSecret", e))?;
        let stages = out.version_ids_to_stages().and_then(|map| map.get(version));
        let current = match (&selector.version_id, &selector.version_stage) {
            // A version id names immutable bytes: current while the version exists.
            (Some(_), None) => stages.is_some(),
            (_, stage) => {
                let stage = stage.as_deref().unwrap_or(CURRENT_STAGE);
                stages.is_some_and(|s| s.iter().any(|s| s == stage))
            }
        };
        Ok(current)
    }

    fn map_error<E>(
        &self,
        operation: &str,
        err: SdkError<E, aws_sdk_secretsmanager::config::http::HttpResponse>,
    ) -> SourceError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        auth::map_sdk_error(operation, err, self.operation_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn secret_ids_table() {
        let cases = [
            ("prod/db", true),
            ("a+b=c.d@e_f-g", true),
            (
                "arn:aws:secretsmanager:eu-west-1:210987654321:secret:shared/db-AbCdEf",
                true,
            ),
            (
                "arn:aws:secretsmanager:eu-west-1:21098765432:secret:x",
                false,
            ),
            ("arn:aws:s3:eu-west-1:210987654321:secret:x", false),
            (
                "arn:aws:secretsmanager:eu-west-1:210987654321:secret:",
                false,
            ),
            ("name:with-colon", false),
        ];
        for (id, ok) in cases {
            assert_eq!(check_secret_id(id).is_ok(), ok, "{id}");
        }
        assert!(check_secret_id(&"a".repeat(513)).is_err());
    }

    #[test]
    fn selectors_table() {
        let sel = |id: Option<&str>, stage: Option<&str>, version: Option<u64>| Selector {
            version_id: id.map(str::to_owned),
            version_stage: stage.map(str::to_owned),
            version,
            label: None,
            caller: None,
        };
        assert!(check_selector(&sel(None, None, None)).is_ok());
        assert!(check_selector(&sel(None, Some("AWSPREVIOUS"), None)).is_ok());
        assert!(
            check_selector(&sel(
                Some("0a1b2c3d-0000-1111-2222-333344445555"),
                None,
                None
            ))
            .is_ok()
        );
        assert!(check_selector(&sel(Some("short"), None, None)).is_err());
        assert!(check_selector(&sel(None, Some(""), None)).is_err());
        assert!(check_selector(&sel(None, None, Some(2))).is_err());
    }

    #[test]
    fn errors_table() {
        let d = || "detail".to_owned();
        assert_eq!(
            auth::classify(Some("ResourceNotFoundException"), 400, d()),
            SourceError::NotFound
        );
        assert!(matches!(
            auth::classify(Some("AccessDeniedException"), 400, d()),
            SourceError::Denied { .. }
        ));
        assert!(matches!(
            auth::classify(Some("DecryptionFailure"), 400, d()),
            SourceError::Denied { .. }
        ));
        assert!(matches!(
            auth::classify(None, 403, d()),
            SourceError::Denied { .. }
        ));
        assert!(matches!(
            auth::classify(Some("ThrottlingException"), 400, d()),
            SourceError::Unavailable { .. }
        ));
        assert!(matches!(
            auth::classify(None, 503, d()),
            SourceError::Unavailable { .. }
        ));
        assert!(matches!(
            auth::classify(None, 429, d()),
            SourceError::Unavailable { .. }
        ));
        assert!(matches!(
            auth::classify(None, 400, d()),
            SourceError::BadReply { .. }
        ));
        assert!(auth::classify(None, 500, d()).is_transient());
    }
}
