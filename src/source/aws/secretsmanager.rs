//! The AWS Secrets Manager source (`type = "aws-secretsmanager"`): `GetSecretValue` by name or
//! ARN with an optional version id or stage, and the rotation check (`DescribeSecret`: is the
//! cached version still the one carrying the requested stage?).
//!
//! It owns its id and selector rules, the mapping of SDK errors to [`SourceError`], and moving
//! values into secure memory. Its config section is `super::config`'s (shared with the other
//! AWS kinds); credentials (and their refresh) are `super::auth`'s; caching and access control
//! are the cache's and the ACL's.
//!
//! Plain reads (no version id or stage) of concurrent misses are batched into
//! `BatchGetSecretValue` calls of at most 20 ids (`super::batch`); a read by version id or
//! stage, and any id the batch reply does not answer, is a `GetSecretValue` of its own.
//!
//! Values: `SecretString` bytes or the `SecretBinary` blob are moved out of the SDK's output
//! and copied into [`SecretBytes`], and the SDK-owned buffer is wiped. The raw HTTP response
//! body the SDK parsed them from is dropped by the SDK without wiping (README, "Secrets in
//! memory").

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};

use super::auth;
use super::batch::{Answers, BatchCall, Batched, Batcher};
use super::calls::CallCounts;
use super::config::{AwsConfig, check_region};
use crate::secure_mem::SecretBytes;
use crate::source::error::SourceError;
use crate::source::secret::{Fetched, Secret, SecretRequest, Selector};

/// Most ids one `BatchGetSecretValue` takes.
pub const BATCH_MAX: usize = 20;

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
    batcher: Batcher<BatchGet>,
    calls: Arc<CallCounts>,
}

/// `BatchGetSecretValue` for the batcher.
struct BatchGet {
    client: aws_sdk_secretsmanager::Client,
    operation_timeout: Duration,
    calls: Arc<CallCounts>,
}

impl BatchCall for BatchGet {
    const MAX: usize = BATCH_MAX;
    const OPERATION: &'static str = "BatchGetSecretValue";

    async fn call(&self, ids: &[String]) -> Result<Answers, SourceError> {
        self.calls.count(Self::OPERATION);
        let out = self
            .client
            .batch_get_secret_value()
            .set_secret_id_list(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| auth::map_sdk_error("BatchGetSecretValue", e, self.operation_timeout))?;
        Ok(answers(ids, out))
    }
}

/// Each id's answer in a `BatchGetSecretValue` reply: its entry's value, its own error (with
/// the status a single `GetSecretValue` answers that error with), or `None` when the reply
/// names it nowhere.
fn answers(
    ids: &[String],
    out: aws_sdk_secretsmanager::operation::batch_get_secret_value::BatchGetSecretValueOutput,
) -> Answers {
    let mut values = out.secret_values.unwrap_or_default();
    let errors = out.errors.unwrap_or_default();
    let answers = ids
        .iter()
        .map(|id| {
            // SECURITY: an entry answers the id it names exactly (its name or full ARN); an id
            // no entry names (a partial ARN) is read on its own.
            let named = |name: Option<&str>, arn: Option<&str>| {
                name == Some(id.as_str()) || arn == Some(id.as_str())
            };
            if let Some(at) = values.iter().position(|v| named(v.name(), v.arn())) {
                let mut entry = values.swap_remove(at);
                let value = value_of(
                    "BatchGetSecretValue",
                    entry.secret_string.take(),
                    entry.secret_binary.take(),
                );
                return Some(value.map(|v| Secret::new(v, entry.version_id.take())));
            }
            let error = errors.iter().find(|e| e.secret_id() == Some(id.as_str()))?;
            let code = error.error_code();
            let detail = format!(
                "BatchGetSecretValue: {}: {}",
                code.unwrap_or("no error code"),
                error.message().unwrap_or_default()
            );
            Some(Err(auth::classify(code, 400, detail)))
        })
        .collect();
    // Entries that answered no id (none, from an honest backend) are wiped.
    for mut entry in values {
        wipe(entry.secret_string.take(), entry.secret_binary.take());
    }
    answers
}

/// A reply's value in secure memory (the SDK's buffer wiped): the text, else the binary.
fn value_of(
    operation: &str,
    text: Option<String>,
    blob: Option<aws_sdk_secretsmanager::primitives::Blob>,
) -> Result<SecretBytes, SourceError> {
    match (text, blob) {
        (Some(text), blob) => {
            wipe(None, blob);
            Ok(SecretBytes::from_vec_wiping(text.into_bytes())?)
        }
        (None, Some(blob)) => Ok(SecretBytes::from_vec_wiping(blob.into_inner())?),
        (None, None) => Err(SourceError::BadReply {
            detail: format!("{operation} returned neither SecretString nor SecretBinary"),
        }),
    }
}

fn wipe(text: Option<String>, blob: Option<aws_sdk_secretsmanager::primitives::Blob>) {
    use zeroize::Zeroize;
    if let Some(mut text) = text {
        text.zeroize();
    }
    if let Some(blob) = blob {
        blob.into_inner().zeroize();
    }
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
        let client = aws_sdk_secretsmanager::Client::new(&sdk);
        let calls = Arc::new(CallCounts::new(&[
            "GetSecretValue",
            "BatchGetSecretValue",
            "DescribeSecret",
        ]));
        Ok(AwsSource {
            batcher: Batcher::new(
                BatchGet {
                    client: client.clone(),
                    operation_timeout: fetch_timeout,
                    calls: calls.clone(),
                },
                config.batch_window,
            ),
            calls,
            client,
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
        let plain = selector.version_id.is_none() && selector.version_stage.is_none();
        if plain && let Batched::Done(answer) = self.batcher.get(id).await {
            return answer.map(Fetched::New);
        }
        self.calls.count("GetSecretValue");
        let mut out = self
            .client
            .get_secret_value()
            .secret_id(id)
            .set_version_id(selector.version_id.clone())
            .set_version_stage(selector.version_stage.clone())
            .send()
            .await
            .map_err(|e| self.map_error("GetSecretValue", e))?;
        let value = value_of(
            "GetSecretValue",
            out.secret_string.take(),
            out.secret_binary.take(),
        )?;
        Ok(Fetched::New(Secret::new(value, out.version_id.take())))
    }

    /// How many ids one batch call takes; `None` with `batch_window_ms = 0`.
    pub(crate) fn batch_size(&self) -> Option<usize> {
        self.batcher.enabled().then_some(BATCH_MAX)
    }

    /// Its backend calls so far.
    pub(crate) fn calls(&self) -> &CallCounts {
        &self.calls
    }

    /// `ids`' plain values by `BatchGetSecretValue` calls sent at once (`[prefetch]`).
    pub(crate) async fn fetch_batch(&self, ids: &[String]) -> Vec<Batched> {
        self.batcher.get_now(ids).await
    }

    async fn still_current(
        &self,
        id: &str,
        selector: &Selector,
        version: &str,
    ) -> Result<bool, SourceError> {
        self.calls.count("DescribeSecret");
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
    fn a_batch_reply_answers_each_id_with_its_own_value_or_error() {
        use aws_sdk_secretsmanager::operation::batch_get_secret_value::BatchGetSecretValueOutput;
        use aws_sdk_secretsmanager::primitives::Blob;
        use aws_sdk_secretsmanager::types::{ApiErrorType, SecretValueEntry};
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:by-arn-AbCdEf";
        let out = BatchGetSecretValueOutput::builder()
            .secret_values(
                SecretValueEntry::builder()
                    .name("text")
                    .arn("arn:aws:secretsmanager:eu-west-1:123456789012:secret:text-x")
                    .secret_string("text-value")
                    .version_id("v-text")
                    .build(),
            )
            .secret_values(
                SecretValueEntry::builder()
                    .name("by-arn")
                    .arn(arn)
                    .secret_binary(Blob::new(vec![0, 255]))
                    .build(),
            )
            .secret_values(SecretValueEntry::builder().name("nothing").build())
            .errors(
                ApiErrorType::builder()
                    .secret_id("denied")
                    .error_code("AccessDeniedException")
                    .message("not allowed")
                    .build(),
            )
            .errors(
                ApiErrorType::builder()
                    .secret_id("missing")
                    .error_code("ResourceNotFoundException")
                    .build(),
            )
            .errors(
                ApiErrorType::builder()
                    .secret_id("kms")
                    .error_code("DecryptionFailure")
                    .build(),
            )
            .build();
        let ids: Vec<String> = [
            "text", arn, "nothing", "denied", "missing", "kms", "partial",
        ]
        .map(String::from)
        .into();
        let got = answers(&ids, out);
        let text = got[0].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(text.value.as_slice(), b"text-value");
        assert_eq!(text.version.as_deref(), Some("v-text"));
        let blob = got[1].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(blob.value.as_slice(), &[0, 255]);
        assert!(matches!(got[2], Some(Err(SourceError::BadReply { .. }))));
        assert!(matches!(got[3], Some(Err(SourceError::Denied { .. }))));
        assert!(matches!(got[4], Some(Err(SourceError::NotFound))));
        assert!(matches!(got[5], Some(Err(SourceError::Denied { .. }))));
        // An id the reply names nowhere is read on its own.
        assert!(got[6].is_none());
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
