//! The transit companion of a Vault source (`{name}-transit`): decrypts ciphertexts that are
//! stored elsewhere, so the store keeps only ciphertext and a Vault key decrypts it.
//!
//! Ids are `{key}/{ciphertext}` where `{ciphertext}` is a name in `[sources.NAME.ciphertexts]`
//! or `{other-source}/{id}`, whose value (read through that source, bypassing the cache) is the
//! ciphertext. Two forms are accepted:
//! - `vault:v…:…`: decrypted by `POST {transit_mount}/decrypt/{key}`;
//! - a data-key envelope `{"ciphertext_key":"vault:v…","nonce":"<b64 12 bytes>",
//!   "ciphertext":"<b64 ciphertext+16-byte tag>"}`: the data key (from `datakey/wrapped` or
//!   `datakey/plaintext`) is decrypted by transit, then the value is opened locally with
//!   AES-256-GCM (no associated data).
//!
//! Plaintexts and data keys exist only in secure memory; the ciphertext is never served.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use bytes::Bytes;
use hyper::Method;
use serde::Deserialize;

use super::auth::VaultSession;
use crate::name::SecretName;
use crate::secure_mem::{SecretBuf, SecretBytes};
use crate::source::error::SourceError;
use crate::source::secret::Secret;

/// Decrypts ciphertexts through one transit mount.
#[derive(Debug)]
pub struct TransitSource {
    session: Arc<VaultSession>,
    mount: String,
    ciphertexts: BTreeMap<String, String>,
    others: crate::source::secret::Others,
}

#[derive(Deserialize)]
struct DecryptReply<'a> {
    #[serde(borrow)]
    data: DecryptData<'a>,
}

#[derive(Deserialize)]
struct DecryptData<'a> {
    #[serde(borrow)]
    plaintext: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(borrow)]
    ciphertext_key: &'a str,
    #[serde(borrow)]
    nonce: &'a str,
    #[serde(borrow)]
    ciphertext: &'a str,
}

impl TransitSource {
    /// A transit source; `others` holds every other source once built (ciphertexts held by
    /// another source are read through it).
    pub fn new(
        session: Arc<VaultSession>,
        mount: String,
        ciphertexts: BTreeMap<String, String>,
        others: crate::source::secret::Others,
    ) -> Self {
        TransitSource {
            session,
            mount,
            ciphertexts,
            others,
        }
    }

    /// Where the ciphertext for `id` is read from, when it is another source's secret (not one
    /// of the configured `ciphertexts`): the broker asks the ACL about that location too.
    pub fn ciphertext_location(&self, id: &str) -> Option<SecretName> {
        let (_, rest) = split_id(id).ok()?;
        if self.ciphertexts.contains_key(rest) {
            return None;
        }
        let (source, inner) = rest.split_once('/')?;
        SecretName::new(source, inner).ok()
    }

    /// Decrypts `{key}/{ciphertext name or source/id}`.
    pub async fn fetch(&self, id: &str) -> Result<Secret, SourceError> {
        let (key, rest) = split_id(id).map_err(|why| SourceError::Invalid(why.to_owned()))?;
        let ciphertext = self.ciphertext(rest).await?;
        let text = trim(ciphertext.as_slice());
        let value = if text.starts_with(b"vault:") {
            self.decrypt(key, text).await?
        } else if text.starts_with(b"{") {
            self.open_envelope(key, text).await?
        } else {
            return Err(SourceError::BadReply {
                detail: format!(
                    "the ciphertext for {rest} is neither \"vault:v…\" nor a data-key envelope"
                ),
            });
        };
        Ok(Secret::new(value, None))
    }

    /// The ciphertext named by `rest`: from the config, or read through another source.
    async fn ciphertext(&self, rest: &str) -> Result<SecretBytes, SourceError> {
        if let Some(text) = self.ciphertexts.get(rest) {
            return Ok(SecretBytes::from_slice(text.as_bytes())?);
        }
        let Some((source, inner)) = rest.split_once('/') else {
            return Err(SourceError::NotFound);
        };
        let name = SecretName::new(source, inner)
            .map_err(|e| SourceError::Invalid(format!("ciphertext name: {e}")))?;
        self.others.read_other(name).await
    }

    /// `POST {mount}/decrypt/{key}`; the plaintext, base64-decoded, in secure memory.
    async fn decrypt(&self, key: &str, ciphertext: &[u8]) -> Result<SecretBytes, SourceError> {
        let text = std::str::from_utf8(ciphertext).map_err(|_| SourceError::BadReply {
            detail: "ciphertext is not UTF-8".to_owned(),
        })?;
        let body = serde_json::json!({ "ciphertext": text }).to_string();
        let reply = self
            .session
            .call(
                Method::POST,
                &format!("{}/decrypt/{key}", self.mount),
                Some(Bytes::from(body)),
            )
            .await?;
        let parsed: DecryptReply<'_> =
            serde_json::from_slice(reply.body.as_slice()).map_err(|_| SourceError::BadReply {
                detail: "Vault's transit decrypt reply has no plaintext".to_owned(),
            })?;
        decode_base64(parsed.data.plaintext.as_bytes()).ok_or_else(|| SourceError::BadReply {
            detail: "Vault's transit plaintext is not base64".to_owned(),
        })
    }

    /// Data-key mode: decrypt the data key with transit, open the value with AES-256-GCM.
    async fn open_envelope(&self, key: &str, text: &[u8]) -> Result<SecretBytes, SourceError> {
        let bad = |what: &str| SourceError::BadReply {
            detail: format!("data-key envelope: {what}"),
        };
        let envelope: Envelope<'_> = serde_json::from_slice(text).map_err(|_| {
            bad("expected {\"ciphertext_key\",\"nonce\",\"ciphertext\"} with string values")
        })?;
        let data_key = self
            .decrypt(key, envelope.ciphertext_key.as_bytes())
            .await?;
        if data_key.len() != 32 {
            return Err(bad("the data key is not 256 bits"));
        }
        let nonce = decode_base64(envelope.nonce.as_bytes()).ok_or_else(|| bad("bad nonce"))?;
        let nonce: [u8; NONCE_LEN] = nonce
            .as_slice()
            .try_into()
            .map_err(|_| bad("the nonce is not 12 bytes"))?;
        let mut sealed =
            decode_base64(envelope.ciphertext.as_bytes()).ok_or_else(|| bad("bad ciphertext"))?;
        let unbound = UnboundKey::new(&AES_256_GCM, data_key.as_slice())
            .map_err(|_| bad("unusable data key"))?;
        let key = LessSafeKey::new(unbound);
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                sealed.as_mut_slice(),
            )
            .map_err(|_| bad("authentication failed (wrong key, nonce or ciphertext)"))?;
        Ok(SecretBytes::from_slice(plain)?)
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i.saturating_add(1));
    &bytes[start..end]
}

/// Standard base64 (padding optional) into secure memory.
///
/// Not the `base64` crate (in the lock file): its decoders write into a `Vec` or a plain slice,
/// and this plaintext (a data key or a decrypted value) must land in locked memory directly.
#[allow(
    clippy::arithmetic_side_effects,
    reason = "each subtraction stays in its matched range, shifts are at most 18, chunks are \
              2 to 4 long (a 1-long last chunk is refused), and the capacity is below the input's"
)]
fn decode_base64(text: &[u8]) -> Option<SecretBytes> {
    fn sextet(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let body = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = SecretBuf::with_capacity(body.len() / 4 * 3 + 3).ok()?;
    for chunk in body.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= sextet(c)? << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]).ok()?;
    }
    out.finish().ok()
}

/// `KEY/NAME` or `KEY/SOURCE/ID` split into the key and the rest (checked by the broker before
/// the cache, and by `fetch`).
pub fn split_id(id: &str) -> Result<(&str, &str), &'static str> {
    let (key, rest) = id
        .split_once('/')
        .ok_or("transit ids are KEY/NAME or KEY/SOURCE/ID")?;
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("transit key names are letters, digits, '-', '_', '.'");
    }
    Ok((key, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonval::push_base64;

    #[test]
    fn base64_round_trips() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let mut enc = SecretBuf::with_capacity(8).unwrap();
            push_base64(&mut enc, &data).unwrap();
            let dec = decode_base64(enc.as_slice()).unwrap();
            assert_eq!(dec.as_slice(), &data[..], "len {len}");
        }
        assert!(decode_base64(b"ab$d").is_none());
        assert!(decode_base64(b"a").is_none());
        assert_eq!(decode_base64(b"Zm9v").unwrap().as_slice(), b"foo");
        assert_eq!(decode_base64(b"Zm8").unwrap().as_slice(), b"fo");
    }

    #[test]
    fn trims_whitespace() {
        assert_eq!(trim(b"  vault:v1:x\n"), b"vault:v1:x");
        assert_eq!(trim(b"   "), b"");
    }
}
