//! The cheap rotation check of the Vault KV v2 source (the DescribeSecret analogue): when a
//! cached value of the latest version expires, read `<kv>/metadata/<path>` and keep the cached
//! value when `current_version` is still the version it holds (and that version is neither
//! deleted nor destroyed); only then is the data read again.
//!
//! Metadata holds no secret values. A policy without `read` on the metadata path is not an
//! error: the first 403 turns the check off for the source (logged once), and every refresh
//! reads the data as before.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::Method;
use serde::Deserialize;

use super::auth::VaultSession;
use crate::source::{Secret, SourceError};

/// Whether the check is still on for a source.
#[derive(Debug, Default)]
pub struct KvCheck {
    denied: AtomicBool,
}

#[derive(Deserialize)]
struct MetaReply {
    data: Meta,
}

#[derive(Deserialize)]
struct Meta {
    current_version: u64,
    #[serde(default)]
    versions: BTreeMap<String, VersionMeta>,
}

#[derive(Deserialize)]
struct VersionMeta {
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
}

impl KvCheck {
    /// Whether `previous` (a cached read of the latest version of `path`) is still current.
    /// `false` means "read the data": the version changed, the check is off, or the metadata
    /// was unusable. A transient failure is returned, so stale-if-error applies as for a read.
    pub async fn unchanged(
        &self,
        session: &VaultSession,
        kv_mount: &str,
        path: &str,
        previous: &Secret,
    ) -> Result<bool, SourceError> {
        let Some(held) = previous.version.as_deref() else {
            return Ok(false);
        };
        if self.denied.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let url = format!("{kv_mount}/metadata/{path}");
        let reply = match session.call(Method::GET, &url, None).await {
            Ok(reply) => reply,
            Err(SourceError::Denied { .. }) => {
                if !self.denied.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        path = %url,
                        "the agent may not read KV metadata: rotation checks off for this source \
                         (each refresh reads the data)"
                    );
                }
                return Ok(false);
            }
            Err(err) if err.is_transient() => return Err(err),
            Err(_) => return Ok(false),
        };
        Ok(parse_unchanged(reply.body.as_slice(), held))
    }
}

/// Whether the metadata reply says version `held` is current and readable.
fn parse_unchanged(body: &[u8], held: &str) -> bool {
    let Ok(reply) = serde_json::from_slice::<MetaReply>(body) else {
        return false;
    };
    let current = reply.data.current_version.to_string();
    current == held
        && reply
            .data
            .versions
            .get(&current)
            .is_some_and(|v| v.deletion_time.is_empty() && !v.destroyed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_table() {
        let meta = |current: u64, deletion: &str, destroyed: bool| {
            format!(
                r#"{{"data":{{"current_version":{current},"custom_metadata":null,"versions":{{"{current}":{{"created_time":"2026-01-01T00:00:00Z","deletion_time":"{deletion}","destroyed":{destroyed}}}}}}}}}"#
            )
        };
        assert!(parse_unchanged(meta(3, "", false).as_bytes(), "3"));
        assert!(!parse_unchanged(meta(4, "", false).as_bytes(), "3"));
        assert!(!parse_unchanged(
            meta(3, "2026-01-02T00:00:00Z", false).as_bytes(),
            "3"
        ));
        assert!(!parse_unchanged(meta(3, "", true).as_bytes(), "3"));
        assert!(!parse_unchanged(b"garbage", "3"));
    }
}
