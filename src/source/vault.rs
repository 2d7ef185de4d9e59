//! The Vault source: KV v2 reads (`GET /v1/secrets/{source}/{path}`, latest or `?version=N`).
//!
//! The value is the JSON text of the secret's `data` object exactly as Vault sent it, copied
//! from the reply (already in secure memory) into its own [`SecretBytes`]; `?field=` then works
//! like for any JSON secret. `Secret.version` is the KV version number. Login, renewal and the
//! HTTP details live in `vault_auth` and `vault_http`; transit in `vault_transit`; the config
//! shape in `vault_config`.

// vault-lease: leased secrets (database credentials, certificates) over this source's session.
mod kv_check;
pub mod lease;
pub mod lease_caller;
pub mod lease_config;
pub mod lease_metrics;
mod lease_reply;
mod renew;

use std::sync::Arc;

use hyper::Method;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::vault_auth::VaultSession;
use super::{Fetched, Secret, SourceError};
use crate::secure_mem::SecretBytes;

pub use super::vault_config::{RawVaultAuth, RawVaultSource, VaultAuthConfig, VaultConfig};

/// The name of the transit companion of Vault source `name`.
pub fn transit_name(name: &str) -> String {
    format!("{name}-transit")
}

/// Reads KV v2 secrets below one mount.
#[derive(Debug)]
pub struct VaultSource {
    session: Arc<VaultSession>,
    kv_mount: String,
    check: kv_check::KvCheck,
}

#[derive(Deserialize)]
struct KvReply<'a> {
    #[serde(borrow)]
    data: KvData<'a>,
}

#[derive(Deserialize)]
struct KvData<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    metadata: Option<KvMeta>,
}

#[derive(Deserialize)]
struct KvMeta {
    version: Option<u64>,
}

impl VaultSource {
    /// A KV v2 source over `kv_mount`, using `session`'s token.
    pub fn new(session: Arc<VaultSession>, kv_mount: String) -> Self {
        VaultSource {
            session,
            kv_mount,
            check: kv_check::KvCheck::default(),
        }
    }

    /// The session, for a `vault-lease` source that names this one.
    pub fn session(&self) -> Arc<VaultSession> {
        self.session.clone()
    }

    /// Reads `path` (already validated: no `..`, no empty segments), latest or `version`. A
    /// refresh of the latest version (`previous`) first asks the metadata whether it changed.
    pub async fn fetch(
        &self,
        path: &str,
        version: Option<u64>,
        previous: Option<&Secret>,
    ) -> Result<Fetched, SourceError> {
        if let (None, Some(previous)) = (version, previous)
            && self
                .check
                .unchanged(&self.session, &self.kv_mount, path, previous)
                .await?
        {
            return Ok(Fetched::Unchanged);
        }
        self.read(path, version).await.map(Fetched::New)
    }

    async fn read(&self, path: &str, version: Option<u64>) -> Result<Secret, SourceError> {
        let mut url = format!("{}/data/{}", self.kv_mount, path);
        if let Some(v) = version {
            url.push_str(&format!("?version={v}"));
        }
        let reply = self.session.call(Method::GET, &url, None).await?;
        parse_kv(reply.body.as_slice())
    }
}

/// Extracts `data.data` (raw JSON text) and `data.metadata.version` from a KV v2 read reply.
fn parse_kv(body: &[u8]) -> Result<Secret, SourceError> {
    // SECURITY: serde_json's errors can quote input; only a fixed message is kept.
    let reply: KvReply<'_> = serde_json::from_slice(body).map_err(|_| SourceError::BadReply {
        detail: "Vault's KV v2 reply is not {\"data\":{\"data\":…}} (is kv_mount a KV v2 mount?)"
            .to_owned(),
    })?;
    // A deleted or destroyed version has `data: null`.
    let data = reply.data.data.ok_or(SourceError::NotFound)?;
    let value = SecretBytes::from_slice(data.get().as_bytes())?;
    Ok(Secret::new(
        value,
        reply
            .data
            .metadata
            .and_then(|m| m.version)
            .map(|v| v.to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_reply_table() {
        let ok = br#"{"request_id":"x","data":{"data":{"password":"p","n":1},"metadata":{"version":3,"destroyed":false}},"warnings":null}"#;
        let secret = parse_kv(ok).unwrap();
        assert_eq!(secret.value.as_slice(), br#"{"password":"p","n":1}"#);
        assert_eq!(secret.version.as_deref(), Some("3"));
        let deleted = br#"{"data":{"data":null,"metadata":{"version":2,"deletion_time":"2024-01-01T00:00:00Z"}}}"#;
        assert!(matches!(parse_kv(deleted), Err(SourceError::NotFound)));
        let kv1 = br#"{"data":"p-value"}"#;
        assert!(matches!(
            parse_kv(kv1),
            Err(SourceError::BadReply { detail }) if !detail.contains("p-value")
        ));
    }
}
