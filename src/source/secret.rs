//! The vocabulary every source kind, the cache and the broker share: what is asked for
//! ([`SecretRequest`], [`Selector`]), what comes back ([`Secret`], [`Fetched`], [`Lifetime`]),
//! and how a kind reads another configured source ([`ReadOther`]). No I/O and no kind here.

use std::time::{Duration, SystemTime};

use super::error::SourceError;
use crate::name::SecretName;
use crate::peer::PeerIdentity;
use crate::secure_mem::{MemError, SecretBytes};

/// Version selectors a request may carry. Which ones a source accepts is its own business.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    /// AWS `VersionId`.
    pub version_id: Option<String>,
    /// AWS `VersionStage` (`AWSCURRENT`, `AWSPREVIOUS`, custom).
    pub version_stage: Option<String>,
    /// Vault KV v2 version number; SSM parameter version.
    pub version: Option<u64>,
    /// SSM parameter label.
    pub label: Option<String>,
    /// Whom the value is for, when the kind keeps values per caller ([`CallerScope`]); set by
    /// the broker from the kernel's identity of the peer, never by a client (not a version
    /// selector: `is_empty` ignores it). Behind one pointer: a read request is moved on every
    /// request, and most have none.
    pub caller: Option<std::sync::Arc<CallerScope>>,
}

/// The part of a cache key that says whom a value is for, for the kinds that keep one value per
/// caller. A kind decides it from the peer ([`super::Source::scoped`]) after the access decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallerScope {
    /// A `per_caller` vault-lease profile: one lease per caller identity.
    Identity(CallerKey),
    /// aws-credentials: the session (its name, and source identity) the profile's template
    /// renders for the caller; callers whose session renders the same share it.
    AwsSession(String),
}

/// One caller identity, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallerKey {
    /// The caller's effective uid.
    pub uid: u32,
    /// Its system unit (`app.service`), when known.
    pub unit: Option<String>,
    /// Its unit inside a user manager, when known.
    pub user_unit: Option<String>,
}

impl CallerKey {
    /// The identity of `peer`.
    pub fn of(peer: &PeerIdentity) -> Self {
        CallerKey {
            uid: peer.uid,
            unit: peer.unit.clone(),
            user_unit: peer.user_unit.clone(),
        }
    }
}

impl std::fmt::Display for CallerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid {}", self.uid)?;
        if let Some(unit) = &self.unit {
            write!(f, " unit {unit}")?;
        }
        if let Some(unit) = &self.user_unit {
            write!(f, " user unit {unit}")?;
        }
        Ok(())
    }
}

impl Selector {
    /// Whether no selector is set.
    pub fn is_empty(&self) -> bool {
        self.version_id.is_none()
            && self.version_stage.is_none()
            && self.version.is_none()
            && self.label.is_none()
    }
}

/// What to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRequest {
    /// `source/id`.
    pub name: SecretName,
    /// Version selectors.
    pub selector: Selector,
}

/// The cache hashes a request on every read: a request without selectors (nearly all) feeds
/// the hasher its name and one byte, not a write per selector field.
impl std::hash::Hash for SecretRequest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.selector.caller.hash(state);
        if self.selector.is_empty() {
            state.write_u8(0);
        } else {
            state.write_u8(1);
            self.selector.hash(state);
        }
    }
}

/// A fetched secret.
#[derive(Debug)]
pub struct Secret {
    /// The value, in locked memory.
    pub value: SharedValue,
    /// The backend's version label, when it has one.
    pub version: Option<String>,
    /// When it was fetched from the backend.
    pub fetched_at: SystemTime,
    /// A lifetime the backend gave the value itself (an OAuth2 access token); `None` for
    /// values that stay valid until they are rotated.
    pub lifetime: Option<Lifetime>,
    /// The value's change tag, computed on first use and kept while the value is cached (every
    /// read of the whole value answers with it).
    tag: std::sync::OnceLock<bytes::Bytes>,
    /// Whether the value is UTF-8 (its content type), checked once per fetch, not per read.
    text: bool,
}

impl Secret {
    /// A value fetched now.
    pub fn new(value: SecretBytes, version: Option<String>) -> Self {
        let text = std::str::from_utf8(value.as_slice()).is_ok();
        Secret {
            text,
            value: SharedValue(bytes::Bytes::from_owner(value)),
            version,
            fetched_at: SystemTime::now(),
            lifetime: None,
            tag: std::sync::OnceLock::new(),
        }
    }

    /// Whether the value is UTF-8.
    pub fn is_text(&self) -> bool {
        self.text
    }

    /// The value's change tag: `compute(value)` the first time, the same bytes after (a
    /// reference count, not a copy).
    pub fn tag(&self, compute: impl FnOnce(&[u8]) -> bytes::Bytes) -> bytes::Bytes {
        self.tag
            .get_or_init(|| compute(self.value.as_slice()))
            .clone()
    }
}

/// A value in locked memory that responses share without a copy or an allocation: each holds a
/// reference, and the memory is wiped when the cache and the last response have let go (as
/// [`SecretBytes`] on its own). Debug output never shows the bytes.
#[derive(Clone)]
pub struct SharedValue(bytes::Bytes);

impl SharedValue {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Another reference to the same bytes, for a response body.
    pub fn shared(&self) -> bytes::Bytes {
        self.0.clone()
    }
}

impl std::fmt::Debug for SharedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedValue({} bytes)", self.0.len())
    }
}

/// How long a value with a lifetime of its own may be served, counted from when it was fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// When the backend says it stops working (`expires_at` in JSON replies).
    pub expires_at: SystemTime,
    /// How long the cache serves it (its lifetime minus a skew, so callers get time to use it).
    pub serve_for: Duration,
    /// How long it works: never served past this, not even stale.
    pub valid_for: Duration,
    /// When to renew it, counted from the fetch; `None`: the cache's refresh-ahead decides.
    pub refresh_after: Option<Duration>,
}

/// The outcome of a fetch that may reuse a previously fetched value.
#[derive(Debug)]
pub enum Fetched {
    /// A new value.
    New(Secret),
    /// The backend confirmed the previous value is still current (rotation check).
    Unchanged,
}

/// A read of another source's value (boxed: the reading source's own fetch holds it).
pub type OtherRead<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<SecretBytes, SourceError>> + Send + 'a>,
>;

/// Reads a secret of another configured source for a source that needs one (transit's
/// ciphertexts, OAuth2 client credentials); the configured sources implement it.
pub trait ReadOther: Send + Sync + std::fmt::Debug {
    /// `name` straight from its source (no cache, no ACL).
    fn read_other(&self, name: SecretName) -> OtherRead<'_>;
}

/// The sources a reading source reads through, filled once every source exists.
pub type Others = std::sync::Arc<dyn ReadOther>;

/// `value` without trailing whitespace (a secret file's final newline); `None` if nothing is
/// left.
pub fn trim_trailing_whitespace(value: SecretBytes) -> Result<Option<SecretBytes>, MemError> {
    let len = value
        .as_slice()
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i.saturating_add(1));
    if len == 0 {
        return Ok(None);
    }
    value.truncated(len).map(Some)
}
