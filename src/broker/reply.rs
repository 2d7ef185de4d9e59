//! The reply: a value as the read wants it shown (raw, one field, or the JSON document), its
//! ETag, and `NotModified` for a caller that holds the current tag; built in secure memory, a
//! rendered field or document charged to the caller's share ([`held`](super::held)).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::error::BrokerError;
use super::fetch::{Target, cached_fetch};
use super::held::SHARES;
use super::request::Format;
use crate::cache::{Refresh, Served};
use crate::jsonval::{FieldError, extract_field, push_base64, push_json_string};
use crate::metrics::Metrics;
use crate::name::SecretName;
use crate::secure_mem::{MemError, SecretBuf, SecretBytes, without_reclaim};
use crate::source::Secret;
use crate::timefmt::rfc3339;

/// What a reply's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// A raw value that is valid UTF-8.
    Text,
    /// A raw value that is not.
    Binary,
    /// The JSON document of [`Format::Json`].
    Json,
}

/// A value to send, still backed by secure memory.
#[derive(Debug)]
pub struct Reply {
    /// The bytes (borrowing the cached secret or owning a locked buffer); empty when
    /// `not_modified`.
    pub body: Bytes,
    /// What they are.
    pub kind: ReplyKind,
    /// The served bytes' tag (reads carry one; credential replies do not).
    pub etag: Option<Bytes>,
    /// The caller's `If-None-Match` is still current: no body.
    pub not_modified: bool,
    /// What a `?refresh=true` did.
    pub refresh: Option<Refresh>,
    /// When the served value stops working, for a value with a lifetime (audited for AWS
    /// role sessions).
    pub expires_at: Option<std::time::SystemTime>,
}

impl Reply {
    pub(super) fn new(body: Bytes, kind: ReplyKind) -> Self {
        Reply {
            body,
            kind,
            etag: None,
            not_modified: false,
            refresh: None,
            expires_at: None,
        }
    }
}

/// SECURITY: the keys of every ETag, drawn from the OS per process: a tag says whether bytes
/// changed and nothing else; it cannot be matched against a guessed value, nor across restarts.
///
/// Keyed SipHash (std's `RandomState`), twice for 128 bits, not HMAC-SHA-256: a tag is computed
/// for every 200, and the HMAC (with per-byte hex formatting) cost the cached read about half
/// again its CPU in the bench; change detection under a secret key needs a keyed PRF, not a
/// collision-resistant hash.
static ETAG_KEYS: OnceLock<(RandomState, RandomState)> = OnceLock::new();

/// `"<32 hex>"`: two keyed hashes of `body` under [`ETAG_KEYS`].
pub(super) fn etag(body: &[u8]) -> Bytes {
    let (a, b) = ETAG_KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
    Bytes::from(format!(
        "\"{:016x}{:016x}\"",
        a.hash_one(body),
        b.hash_one(body)
    ))
}

/// Whether `If-None-Match` (one tag or a comma-separated list) names `etag`.
pub(super) fn etag_matches(if_none_match: Option<&str>, etag: Option<&[u8]>) -> bool {
    let (Some(held), Some(etag)) = (if_none_match, etag) else {
        return false;
    };
    held.split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t.as_bytes() == etag)
}

/// How a read wants the value shown, and the tag it already holds.
pub(super) struct View<'a> {
    pub(super) field: Option<&'a str>,
    pub(super) format: Format,
    pub(super) if_none_match: Option<&'a str>,
}

/// The value as `view` shows it now (re-fetched first when `force`), or `not_modified` when it
/// still matches the caller's tag; and how the cache served it.
pub(super) async fn current(
    target: &Target<'_>,
    view: &View<'_>,
    force: bool,
) -> (Result<Reply, BrokerError>, Served) {
    let request = target.request;
    let (secret, served, refresh) = cached_fetch(target, force).await;
    let reply = (|| {
        let secret = secret?;
        // A read of the whole value answers with the tag kept beside it in the cache.
        let whole = (view.field.is_none() && view.format == Format::Raw).then(|| secret.tag(etag));
        let expires_at = secret.lifetime.map(|l| l.expires_at);
        let holder = Holder {
            uid: target.uid,
            metrics: &target.state.metrics,
        };
        let mut reply = render(&request.name, secret, view.field, view.format, &holder)?;
        reply.expires_at = expires_at;
        reply.etag = Some(whole.unwrap_or_else(|| etag(&reply.body)));
        reply.refresh = force.then_some(refresh);
        reply.expires_at = expires_at;
        if !etag_matches(view.if_none_match, reply.etag.as_deref()) {
            return Ok(reply);
        }
        Ok(Reply {
            body: Bytes::new(),
            not_modified: true,
            ..reply
        })
    })();
    (reply, served)
}

pub(super) fn text_kind(text: bool) -> ReplyKind {
    if text {
        ReplyKind::Text
    } else {
        ReplyKind::Binary
    }
}

/// Whose share of the locked memory a rendered response takes ([`held`](super::held)).
pub(super) struct Holder<'a> {
    pub(super) uid: u32,
    pub(super) metrics: &'a Metrics,
}

impl Holder<'_> {
    fn hold(&self, bytes: SecretBytes) -> Result<Bytes, BrokerError> {
        Ok(Bytes::from_owner(SHARES.hold(
            self.uid,
            bytes,
            self.metrics,
        )?))
    }
}

/// The value as `field` and `format` show it. A whole raw value shares the cached bytes; a field
/// or a JSON document is a locked buffer of its own, charged to `holder`'s uid while the
/// response lives.
///
/// SECURITY: rendered without reclaiming: at the budget the render fails (`memory_budget`)
/// rather than evict values other callers read from the cache.
pub(super) fn render(
    name: &SecretName,
    secret: Arc<Secret>,
    field: Option<&str>,
    format: Format,
    holder: &Holder<'_>,
) -> Result<Reply, BrokerError> {
    if field.is_some() || format == Format::Json {
        SHARES.check(holder.uid, holder.metrics)?;
    }
    without_reclaim(|| {
        let (value, text): (Bytes, bool) = match field {
            None => (secret.value.shared(), secret.is_text()),
            Some(field) => match extract_field(secret.value.as_slice(), field) {
                Ok(bytes) => {
                    let text = std::str::from_utf8(bytes.as_slice()).is_ok();
                    (holder.hold(bytes)?, text)
                }
                Err(FieldError::Missing) => return Err(BrokerError::FieldNotFound),
                Err(FieldError::NotObject) => return Err(BrokerError::NotJson),
                Err(FieldError::Memory(err)) => return Err(BrokerError::from(err)),
            },
        };
        match format {
            Format::Raw => Ok(Reply::new(value, text_kind(text))),
            Format::Json => Ok(Reply::new(
                holder.hold(render_json(name, &secret, &value)?)?,
                ReplyKind::Json,
            )),
        }
    })
}

/// `{"name","source","value","version","fetched_at"}` built in secure memory (plus
/// `"expires_at"` for a value with a lifetime of its own, an OAuth2 token); a value that is not
/// UTF-8 is base64 with `"encoding":"base64"`.
pub(super) fn render_json(
    name: &SecretName,
    secret: &Secret,
    value: &[u8],
) -> Result<SecretBytes, MemError> {
    let mut out = SecretBuf::with_capacity(value.len().saturating_add(160))?;
    out.extend_from_slice(b"{\"name\":")?;
    push_json_string(&mut out, name.id())?;
    out.extend_from_slice(b",\"source\":")?;
    push_json_string(&mut out, name.source())?;
    out.extend_from_slice(b",\"value\":")?;
    match std::str::from_utf8(value) {
        Ok(text) => push_json_string(&mut out, text)?,
        Err(_) => {
            out.extend_from_slice(b"\"")?;
            push_base64(&mut out, value)?;
            out.extend_from_slice(b"\",\"encoding\":\"base64\"")?;
        }
    }
    out.extend_from_slice(b",\"version\":")?;
    match &secret.version {
        Some(v) => push_json_string(&mut out, v)?,
        None => out.extend_from_slice(b"null")?,
    }
    out.extend_from_slice(b",\"fetched_at\":")?;
    push_json_string(&mut out, &rfc3339(secret.fetched_at))?;
    if let Some(lifetime) = &secret.lifetime {
        out.extend_from_slice(b",\"expires_at\":")?;
        push_json_string(&mut out, &rfc3339(lifetime.expires_at))?;
    }
    out.extend_from_slice(b"}")?;
    out.finish()
}
