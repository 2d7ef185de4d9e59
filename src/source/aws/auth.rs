//! AWS credentials for the Secrets Manager source: the base identity (access key, instance
//! profile, or the SDK's default chain), an optional STS AssumeRole on top of it, and the
//! start-up identity check (STS `GetCallerIdentity`).
//!
//! Refresh is the SDK's: every provider here sits behind the SDK's lazy identity cache, which
//! reloads credentials a buffer time before they expire, so no request is signed with a lapsed
//! credential. This module does not talk to Secrets Manager and does not cache secrets.
//!
//! The SDK keeps credential strings in its own (unlocked) memory; this module never logs them
//! and wipes the copies it reads from files or the environment once the SDK has its own.
#![deny(clippy::arithmetic_side_effects)]

pub mod access_key;
pub mod assume_role;
pub mod error;
pub mod instance_profile;

pub use access_key::KeyFiles;
pub use assume_role::AssumeRoleConfig;
pub use error::AuthError;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_sts::config::Region;
use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::source::error::SourceError;

/// How the base identity is obtained (`auth = …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// `auth = "access-key"`: key files, or `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    AccessKey {
        /// Key files; `None` reads the environment.
        files: Option<KeyFiles>,
    },
    /// `auth = "instance-profile"`: the EC2 instance metadata service (IMDSv2).
    InstanceProfile,
    /// `auth = "default-chain"`: the SDK's default provider chain.
    DefaultChain,
}

impl AuthMethod {
    /// The config spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthMethod::AccessKey { .. } => "access-key",
            AuthMethod::InstanceProfile => "instance-profile",
            AuthMethod::DefaultChain => "default-chain",
        }
    }
}

/// Everything needed to build the credentials of one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Dotted config key of the source, for messages (`sources.aws`).
    pub key: String,
    /// Base identity.
    pub method: AuthMethod,
    /// Optional role on top.
    pub assume_role: Option<AssumeRoleConfig>,
    /// The source's region (STS default region).
    pub region: String,
    /// The source's `endpoint_url` (STS default endpoint when set: emulators serve every
    /// service on one URL).
    pub endpoint_url: Option<String>,
}

/// Network settings shared by every AWS client of a source.
#[derive(Debug, Clone, Copy)]
pub struct NetSettings {
    /// Bound on one operation including retries.
    pub operation_timeout: Duration,
}

/// Half of `d` (which, unlike `d / 2`, says it cannot panic).
fn half(d: Duration) -> Duration {
    d.checked_div(2).unwrap_or_default()
}

impl NetSettings {
    /// Short connect timeout and two attempts, so a down endpoint fails a fresh miss quickly
    /// (the cache's stale-if-error covers cached values).
    pub fn timeout_config(&self) -> TimeoutConfig {
        let attempt = half(self.operation_timeout).max(Duration::from_secs(1));
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(2).min(attempt))
            .operation_attempt_timeout(attempt)
            .operation_timeout(self.operation_timeout)
            .build()
    }

    /// Standard retries, two attempts in all.
    pub fn retry_config(&self) -> RetryConfig {
        RetryConfig::standard()
            .with_max_attempts(2)
            .with_initial_backoff(Duration::from_millis(200))
    }
}

/// An SDK config for `region` and `endpoint` signed with `credentials`.
pub async fn sdk_config(
    credentials: SharedCredentialsProvider,
    region: &str,
    endpoint: Option<&str>,
    net: NetSettings,
) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(credentials)
        .timeout_config(net.timeout_config())
        .retry_config(net.retry_config());
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// Builds the credentials a source signs its Secrets Manager calls with, checking the base
/// identity (and the assumed role, when configured) with STS `GetCallerIdentity`.
pub async fn build(
    config: &AuthConfig,
    net: NetSettings,
) -> Result<SharedCredentialsProvider, AuthError> {
    let base = match &config.method {
        AuthMethod::AccessKey { files } => access_key::provider(&config.key, files.as_ref())?,
        AuthMethod::InstanceProfile => instance_profile::provider(),
        AuthMethod::DefaultChain => {
            let chain =
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .region(Region::new(config.region.clone()))
                    .build()
                    .await;
            SharedCredentialsProvider::new(chain)
        }
    };
    let (sts_region, sts_endpoint) = match &config.assume_role {
        Some(role) => (
            role.sts_region.as_str(),
            role.sts_endpoint
                .as_deref()
                .or(config.endpoint_url.as_deref()),
        ),
        None => (config.region.as_str(), config.endpoint_url.as_deref()),
    };
    let sts_base = sdk_config(base.clone(), sts_region, sts_endpoint, net).await;
    caller_identity(&config.key, &sts_base, net)
        .await
        .map_err(|cause| AuthError::BaseIdentity {
            key: config.key.clone(),
            method: config.method.as_str(),
            cause,
        })?;
    let Some(role) = &config.assume_role else {
        return Ok(base);
    };
    let assumed = assume_role::provider(role, &sts_base).await;
    let sts_assumed = sdk_config(assumed.clone(), sts_region, sts_endpoint, net).await;
    caller_identity(&config.key, &sts_assumed, net)
        .await
        .map_err(|cause| AuthError::AssumeRole {
            key: config.key.clone(),
            role_arn: role.role_arn.clone(),
            cause,
        })?;
    tracing::info!(source = %config.key, role = %role.role_arn, "assumed role");
    Ok(assumed)
}

/// STS `GetCallerIdentity`: the caller's ARN, or the SDK's error chain.
async fn caller_identity(
    key: &str,
    config: &aws_config::SdkConfig,
    net: NetSettings,
) -> Result<String, SourceError> {
    let client = aws_sdk_sts::Client::new(config);
    match client.get_caller_identity().send().await {
        Ok(out) => {
            let arn = out.arn().unwrap_or("(no ARN)").to_owned();
            tracing::info!(source = key, identity = %arn, "AWS identity checked");
            Ok(arn)
        }
        Err(err) => Err(map_sdk_error(
            "GetCallerIdentity",
            err,
            net.operation_timeout,
        )),
    }
}

/// Maps any AWS SDK error to a [`SourceError`]: timeouts, the service's error code when the SDK
/// parsed one, else the HTTP status. Shared by every AWS client (STS, Secrets Manager).
pub fn map_sdk_error<E>(
    operation: &str,
    err: SdkError<E, HttpResponse>,
    timeout: Duration,
) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let SdkError::ResponseError(ctx) = &err {
        // SECURITY: the SDK's context for an unparseable response includes the raw body, which
        // on a success status is the value itself: log the status only. 401/403 without a
        // parseable body (moto answers auth failures in XML to JSON protocols) is a denial.
        let status = ctx.raw().status().as_u16();
        let detail = format!("{operation}: unparseable response, HTTP {status}");
        return match status {
            401 | 403 => SourceError::Denied { detail },
            _ => SourceError::Unavailable { detail },
        };
    }
    let detail = format!("{operation}: {}", DisplayErrorContext(&err));
    match &err {
        SdkError::TimeoutError(_) => SourceError::Timeout(timeout),
        SdkError::DispatchFailure(f) if f.is_timeout() => SourceError::Timeout(timeout),
        SdkError::ServiceError(ctx) => {
            classify(ctx.err().code(), ctx.raw().status().as_u16(), detail)
        }
        _ => match assume_role_refusal(&err) {
            Some((code, status)) => classify(code.as_deref(), status, detail),
            None => SourceError::Unavailable { detail },
        },
    }
}

/// A credentials provider that could not load credentials because STS `AssumeRole` answered
/// with an error (wrong external id, no trust, no such role) shows up as a dispatch failure of
/// the call it was loading credentials for; the STS answer is further down the error chain.
/// Its code and status, when it is there.
fn assume_role_refusal(err: &(dyn std::error::Error + 'static)) -> Option<(Option<String>, u16)> {
    type AssumeRoleSdkError =
        SdkError<aws_sdk_sts::operation::assume_role::AssumeRoleError, HttpResponse>;
    let mut link = err.source();
    while let Some(current) = link {
        if let Some(SdkError::ServiceError(ctx)) = current.downcast_ref::<AssumeRoleSdkError>() {
            return Some((
                ctx.err().code().map(str::to_owned),
                ctx.raw().status().as_u16(),
            ));
        }
        link = current.source();
    }
    None
}

/// Maps a service error (its code when the SDK parsed one, and the HTTP status) to a
/// [`SourceError`]. 403 without a code (moto's XML auth errors) is a denial.
pub fn classify(code: Option<&str>, status: u16, detail: String) -> SourceError {
    match code {
        // Secrets Manager; SSM Parameter Store; S3.
        Some(
            "ResourceNotFoundException"
            | "ParameterNotFound"
            | "ParameterVersionNotFound"
            | "NoSuchKey"
            | "NoSuchVersion",
        ) => SourceError::NotFound,
        // A secret scheduled for deletion: gone, as far as a reader is concerned.
        Some("InvalidRequestException") if detail.contains("deleted") => SourceError::NotFound,
        Some(
            "AccessDeniedException"
            | "AccessDenied"
            | "DecryptionFailure"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "InvalidClientTokenId"
            | "ExpiredTokenException"
            | "IncompleteSignature"
            | "KMSAccessDeniedException"
            | "InvalidId"
            | "NoSuchBucket",
        ) => SourceError::Denied { detail },
        Some(
            "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "InternalServiceError"
            | "InternalFailure"
            | "InternalServerError"
            | "InternalError"
            | "SlowDown"
            | "ServiceUnavailable",
        ) => SourceError::Unavailable { detail },
        _ => match status {
            401 | 403 => SourceError::Denied { detail },
            404 => SourceError::NotFound,
            408 | 429 | 500..=599 => SourceError::Unavailable { detail },
            _ => SourceError::BadReply { detail },
        },
    }
}
