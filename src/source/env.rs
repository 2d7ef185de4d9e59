//! The env source: secrets from the agent's own environment, `{prefix}{id}`.
//!
//! Meant for containers whose orchestrator injects secrets as variables. Ids must be valid
//! variable-name characters. The process environment itself is ordinary memory: this source
//! copies the value into secure memory and wipes its temporary copy, but cannot lock the
//! environment block (documented in the README).

use std::time::SystemTime;

use serde::Deserialize;
use zeroize::Zeroize;

use super::{Secret, SourceError};
use crate::secure_mem::SecretBytes;

/// `[sources.NAME]` with `type = "env"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvSource {
    /// Prefix prepended to the id to form the variable name.
    #[serde(default)]
    pub prefix: String,
    /// Per-source TTL override.
    pub ttl_secs: Option<u64>,
    /// Per-source fetch timeout.
    pub fetch_timeout_secs: Option<u64>,
}

/// Serves `{prefix}{id}` variables.
#[derive(Debug)]
pub struct EnvSource {
    prefix: String,
}

impl EnvSource {
    /// A source reading variables named `{prefix}{id}`.
    pub fn new(prefix: String) -> Self {
        EnvSource { prefix }
    }

    /// Reads the variable for `id`.
    pub fn fetch(&self, id: &str) -> Result<Secret, SourceError> {
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(SourceError::Invalid(
                "env ids are letters, digits and '_' only".to_owned(),
            ));
        }
        let name = format!("{}{}", self.prefix, id);
        let Some(value) = std::env::var_os(&name) else {
            return Err(SourceError::NotFound);
        };
        let mut bytes = std::os::unix::ffi::OsStringExt::into_vec(value);
        let secret = SecretBytes::from_slice(&bytes);
        bytes.zeroize();
        Ok(Secret {
            value: secret?,
            version: None,
            fetched_at: SystemTime::now(),
        })
    }
}
