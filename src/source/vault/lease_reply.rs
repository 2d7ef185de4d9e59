//! The wire format of the `vault-lease` source: an engine's reply read into a [`Lease`] (its
//! id, lifetime and data), the `sys/leases/renew` reply, the bodies of renew and revoke calls,
//! a GET profile's query, and the accessor a lease is logged under. Pure: no I/O.
//!
//! SECURITY: a lease id and the data live only in [`SecretBytes`]; errors never quote a reply.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::lease_slot::{Counts, Lease};
use super::renew::Times;
use crate::secure_mem::SecretBytes;
use crate::source::error::SourceError;

/// `{"lease_id","renewable","lease_duration","data"}` of an engine reply.
#[derive(Deserialize)]
struct LeaseReply<'a> {
    #[serde(default, borrow)]
    lease_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    renewable: bool,
    #[serde(default)]
    lease_duration: u64,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// The one field of a certificate's `data` the schedule needs (other fields are skipped, not
/// copied).
#[derive(Deserialize)]
struct CertExpiry {
    expiration: Option<u64>,
}

/// `sys/leases/renew`'s reply.
#[derive(Deserialize)]
pub(super) struct RenewReply {
    #[serde(default)]
    pub(super) renewable: bool,
    #[serde(default)]
    pub(super) lease_duration: u64,
}

/// `{"lease_id":"…"}` (plus `"increment"` for a renewal), built in secure memory and handed
/// to the HTTP client as its body.
pub(super) fn lease_body(
    id: &SecretBytes,
    increment: Option<Duration>,
) -> Result<Bytes, SourceError> {
    let text = std::str::from_utf8(id.as_slice()).map_err(|_| SourceError::BadReply {
        detail: "a lease id is not UTF-8".to_owned(),
    })?;
    let mut out = crate::secure_mem::SecretBuf::with_capacity(text.len().saturating_add(48))?;
    out.extend_from_slice(b"{\"lease_id\":")?;
    crate::jsonval::push_json_string(&mut out, text)?;
    if let Some(inc) = increment {
        out.extend_from_slice(format!(",\"increment\":{}", inc.as_secs()).as_bytes())?;
    }
    out.extend_from_slice(b"}")?;
    Ok(Bytes::from_owner(out.finish()?))
}

/// Reads an engine reply issued at `now`: the lease id, its duration (or, for a certificate
/// without a lease, the `expiration` in its data), and the data itself.
pub(super) fn parse_lease(
    path: &str,
    body: &[u8],
    now: Instant,
    counts: Arc<Counts>,
) -> Result<Lease, SourceError> {
    // SECURITY: serde_json's errors can quote input; only a fixed message is kept.
    let reply: LeaseReply<'_> =
        serde_json::from_slice(body).map_err(|_| SourceError::BadReply {
            detail: format!("{path} answered something other than a Vault secret reply"),
        })?;
    let data = reply.data.ok_or_else(|| SourceError::BadReply {
        detail: format!("{path} answered without data"),
    })?;
    let id = reply.lease_id.unwrap_or_default();
    let ttl = if reply.lease_duration > 0 {
        Duration::from_secs(reply.lease_duration)
    } else {
        let expiration = serde_json::from_str::<CertExpiry>(data.get())
            .ok()
            .and_then(|c| c.expiration)
            .ok_or_else(|| SourceError::BadReply {
                detail: format!(
                    "{path} answered neither a lease_duration nor a certificate expiration"
                ),
            })?;
        let at = SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(expiration))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        at.duration_since(SystemTime::now()).unwrap_or_default()
    };
    let accessor = accessor(path, id.as_bytes());
    Ok(Lease {
        id: SecretBytes::from_slice(id.as_bytes())?,
        accessor,
        data: SecretBytes::from_slice(data.get().as_bytes())?,
        times: Mutex::new(Times::issued(now, ttl, reply.renewable && !id.is_empty())),
        counts,
    })
}

/// The name a lease is logged under: the engine path and the first 12 hex digits of the
/// SHA-256 of its id (a certificate without a lease: the path and `-`).
fn accessor(path: &str, id: &[u8]) -> String {
    if id.is_empty() {
        return format!("{path}#-");
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id);
    let hex: String = digest
        .as_ref()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{path}#{hex}")
}

/// `k=v&…` with every byte but the unreserved ones percent-encoded.
pub(super) fn query(params: &serde_json::Map<String, serde_json::Value>) -> String {
    let encode = |text: &str| {
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    params
        .iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{}={}", encode(k), encode(&v))
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_database_reply_is_a_renewable_lease_and_its_id_is_only_hashed() {
        let body = br#"{"request_id":"r","lease_id":"database/creds/app/AbC123","renewable":true,"lease_duration":20,"data":{"password":"PW-1","username":"v-app-1"},"warnings":null}"#;
        let lease =
            parse_lease("database/creds/app", body, Instant::now(), Arc::default()).unwrap();
        assert_eq!(
            lease.data.as_slice(),
            br#"{"password":"PW-1","username":"v-app-1"}"#
        );
        assert_eq!(lease.id.as_slice(), b"database/creds/app/AbC123");
        assert!(lease.accessor.starts_with("database/creds/app#"));
        assert!(!lease.accessor.contains("AbC123"));
        assert!(!format!("{lease:?}").contains("AbC123"));
        let times = lease.times();
        assert!(times.renewable);
        assert_eq!(times.issued_ttl, Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_certificate_without_a_lease_lives_until_its_expiration() {
        let expiration = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let body = format!(
            r#"{{"lease_id":"","renewable":false,"lease_duration":0,"data":{{"certificate":"C","private_key":"K","expiration":{expiration}}}}}"#
        );
        let lease = parse_lease(
            "pki/issue/web",
            body.as_bytes(),
            Instant::now(),
            Arc::default(),
        )
        .unwrap();
        assert!(!lease.has_id());
        let times = lease.times();
        assert!(!times.renewable);
        assert!(times.issued_ttl <= Duration::from_secs(3600));
        assert!(times.issued_ttl >= Duration::from_secs(3590));
        assert_eq!(lease.accessor, "pki/issue/web#-");
    }

    #[test]
    fn replies_without_a_lifetime_or_data_are_refused_without_quoting_them() {
        for body in [
            &br#"{"lease_id":"x","lease_duration":0,"data":{"password":"SECRET-PW"}}"#[..],
            br#"{"lease_id":"x","lease_duration":5}"#,
            br#"not json SECRET-PW"#,
        ] {
            let err = parse_lease("database/creds/app", body, Instant::now(), Arc::default())
                .unwrap_err();
            assert!(matches!(&err, SourceError::BadReply { detail } if !detail.contains("SECRET")));
        }
    }

    #[test]
    fn lease_bodies_and_queries_are_escaped() {
        let id = SecretBytes::from_slice(b"db/creds/a/\"x").unwrap();
        let body = lease_body(&id, Some(Duration::from_secs(20))).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["lease_id"], "db/creds/a/\"x");
        assert_eq!(value["increment"], 20);
        let mut params = serde_json::Map::new();
        params.insert("common_name".into(), "a b&c".into());
        params.insert("ttl".into(), 60.into());
        assert_eq!(query(&params), "common_name=a%20b%26c&ttl=60");
    }
}
