//! The S3 source (`type = "aws-s3"`): one object per secret, `GetObject` of `{prefix}{id}` in
//! `bucket`, with an optional `?version_id=`. For teams still migrating off secrets kept in S3
//! (README says why Secrets Manager is preferable).
//!
//! It owns its config section ([`RawS3Source`]: the Secrets Manager source's AWS settings plus
//! `bucket` and `prefix`), its id and selector rules, the 4 MiB limit, and moving the body into
//! secure memory. Credentials and the mapping of SDK errors are shared with the other AWS
//! sources. SSE-S3 and SSE-KMS objects are decrypted by S3 and read like any other (the
//! agent's identity needs `kms:Decrypt` on the key).
//!
//! The body arrives in the SDK's (unlocked) buffers, chunk by chunk; each chunk is copied into
//! locked memory and dropped, as the other AWS sources do with the parsed value.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::auth;
use super::auth::map_sdk_error;
use super::config::{AwsConfig, RawAwsSource, own_string};
use crate::secure_mem::{MAX_SECRET_LEN, SecretBuf};
use crate::source::error::SourceError;
use crate::source::secret::{Fetched, Secret, SecretRequest, Selector};
use crate::source::section::Invalid;

/// Longest S3 key.
const MAX_KEY_LEN: usize = 1024;

/// `[sources.NAME]` with `type = "aws-s3"`: every `aws-secretsmanager` key, plus `bucket` and
/// `prefix`.
#[derive(Debug)]
pub struct RawS3Source {
    /// The bucket (required).
    pub bucket: Option<String>,
    /// Prepended to the id to form the key; default empty.
    pub prefix: Option<String>,
    /// The shared AWS settings.
    pub aws: RawAwsSource,
}

impl<'de> Deserialize<'de> for RawS3Source {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (own, aws) =
            super::config::split_unbatched_aws_section(deserializer, &["bucket", "prefix"])?;
        Ok(RawS3Source {
            bucket: own_string(&own, "bucket")?,
            prefix: own_string(&own, "prefix")?,
            aws,
        })
    }
}

/// A validated `aws-s3` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Shared AWS settings.
    pub aws: AwsConfig,
    /// Bucket.
    pub bucket: String,
    /// Key prefix.
    pub prefix: String,
}

impl RawS3Source {
    /// Validates the section at `key` (`sources.NAME`).
    pub fn validate(&self, key: &str, config_path: &Path) -> Result<S3Config, Invalid> {
        let aws = self.aws.validate(key, config_path)?;
        let bucket = self.bucket.clone().unwrap_or_default();
        let ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && bucket
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(Invalid {
                key: format!("{key}.bucket"),
                reason: format!(
                    "{bucket:?} is not a bucket name (3 to 63 lower-case letters, digits, '.' and '-')"
                ),
            });
        }
        let prefix = self.prefix.clone().unwrap_or_default();
        if prefix.len() >= MAX_KEY_LEN || prefix.chars().any(char::is_control) {
            return Err(Invalid {
                key: format!("{key}.prefix"),
                reason: "must be shorter than 1024 bytes, without control characters".to_owned(),
            });
        }
        Ok(S3Config {
            aws,
            bucket,
            prefix,
        })
    }
}

/// Selectors this source accepts: `version_id` (1–1024 printable ASCII characters) only.
pub fn check_selector(selector: &Selector) -> Result<(), &'static str> {
    if selector.version.is_some() || selector.version_stage.is_some() || selector.label.is_some() {
        return Err("S3 objects take ?version_id= only");
    }
    if let Some(id) = &selector.version_id {
        let ok = (1..=MAX_KEY_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err("version_id must be 1 to 1024 printable characters");
        }
    }
    Ok(())
}

/// An S3 client with its own credentials, reading one bucket.
pub struct S3Source {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    operation_timeout: Duration,
}

impl std::fmt::Debug for S3Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Source")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Source {
    /// Builds the credentials (checking them with STS) and the client (path-style addressing
    /// when an endpoint is configured: emulators and some VPC endpoints have no per-bucket
    /// host names).
    pub async fn build(
        config: &S3Config,
        fetch_timeout: Duration,
    ) -> Result<S3Source, auth::AuthError> {
        let sdk = config.aws.sdk_config(fetch_timeout).await?;
        let s3 = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(config.aws.endpoint_url.is_some())
            .build();
        Ok(S3Source {
            client: aws_sdk_s3::Client::from_conf(s3),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            operation_timeout: fetch_timeout,
        })
    }

    /// Reads the object; its version id (or ETag, in an unversioned bucket) is the version.
    pub async fn fetch(&self, request: &SecretRequest) -> Result<Fetched, SourceError> {
        let key = format!("{}{}", self.prefix, request.name.id());
        if key.len() > MAX_KEY_LEN {
            return Err(SourceError::Invalid(
                "the key is longer than 1024 bytes".to_owned(),
            ));
        }
        check_selector(&request.selector).map_err(|why| SourceError::Invalid(why.to_owned()))?;
        let mut out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(request.selector.version_id.clone())
            .send()
            .await
            .map_err(|e| map_sdk_error("GetObject", e, self.operation_timeout))?;
        let too_large = || SourceError::BadReply {
            detail: format!("the object is larger than {MAX_SECRET_LEN} bytes"),
        };
        let length = out
            .content_length
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        if length > MAX_SECRET_LEN {
            return Err(too_large());
        }
        let mut value = SecretBuf::with_capacity(length)?;
        while let Some(chunk) = out
            .body
            .try_next()
            .await
            .map_err(|e| SourceError::Unavailable {
                detail: format!("GetObject: reading the body: {e}"),
            })?
        {
            if value.len().saturating_add(chunk.len()) > MAX_SECRET_LEN {
                return Err(too_large());
            }
            value.extend_from_slice(&chunk)?;
        }
        Ok(Fetched::New(Secret::new(
            value.finish()?,
            out.version_id.take().or_else(|| out.e_tag.take()),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<S3Config, Invalid> {
        let text = format!("region = \"eu-west-1\"\nauth = \"instance-profile\"\n{extra}");
        let raw: RawS3Source = toml::from_str(&text).map_err(|e| Invalid {
            key: "parse".into(),
            reason: e.to_string(),
        })?;
        raw.validate("sources.s3", Path::new("/nonexistent/config.toml"))
    }

    #[test]
    fn config_table() {
        let cfg = parse("bucket = \"app-secrets\"\nprefix = \"prod/\"").unwrap();
        assert_eq!(
            (cfg.bucket.as_str(), cfg.prefix.as_str()),
            ("app-secrets", "prod/")
        );
        assert_eq!(parse("bucket = \"b.c-1\"").unwrap().prefix, "");
        for (extra, key) in [
            ("", "sources.s3.bucket"),
            ("bucket = \"Upper\"", "sources.s3.bucket"),
            ("bucket = \"ab\"", "sources.s3.bucket"),
            ("bucket = \"-ab\"", "sources.s3.bucket"),
            ("bucket = \"abc\"\nprefix = \"a\\nb\"", "sources.s3.prefix"),
            ("bucket = 3", "parse"),
            ("bucket = \"abc\"\nlabel = \"x\"", "parse"),
            ("bucket = \"abc\"\nbatch_window_ms = 5", "parse"),
        ] {
            assert_eq!(parse(extra).unwrap_err().key, key, "{extra}");
        }
    }

    #[test]
    fn selectors_table() {
        let with_id = |id: &str| Selector {
            version_id: Some(id.to_owned()),
            ..Selector::default()
        };
        assert!(check_selector(&Selector::default()).is_ok());
        assert!(check_selector(&with_id("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjV")).is_ok());
        assert!(check_selector(&with_id("a b")).is_err());
        let numbered = Selector {
            version: Some(1),
            ..Selector::default()
        };
        assert!(check_selector(&numbered).is_err());
    }
}
