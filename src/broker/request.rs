//! The requests front ends hand the broker: a read, a credential, and who is asking.
//!
//! Types only: what each field means to the policy is said in `broker/mod.rs`.

use std::sync::Arc;
use std::time::Duration;

use crate::name::SecretName;
use crate::peer::PeerIdentity;
use crate::source::{SecretRequest, Selector};

/// The shape of a secret in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The raw value bytes.
    Raw,
    /// `{"name","source","value","version","fetched_at"}`.
    Json,
}

/// A read, as any front end asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// The name (its syntax already valid: [`SecretName`] cannot hold anything else) and the
    /// version selectors: the cache's key.
    pub secret: SecretRequest,
    /// One top-level field of a JSON-object value.
    pub field: Option<String>,
    /// Raw or JSON.
    pub format: Format,
    /// The ETag the caller holds (`If-None-Match`): the same bytes are answered `NotModified`.
    pub if_none_match: Option<String>,
    /// Hold the read up to this long while the served bytes would still match
    /// `if_none_match`.
    pub wait: Option<Duration>,
    /// Re-fetch now, once per `cache.min_refresh_interval` per uid, unless a minted value is
    /// still fresh (`?refresh=true`).
    pub refresh: bool,
}

impl ReadRequest {
    /// A plain read of `name`: raw value, no selector, no field, no condition.
    pub fn plain(name: SecretName) -> Self {
        ReadRequest {
            secret: SecretRequest {
                name,
                selector: Selector::default(),
            },
            field: None,
            format: Format::Raw,
            if_none_match: None,
            wait: None,
            refresh: false,
        }
    }
}

/// Who is asking, as the front end established it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The connecting process, as the kernel described it.
    pub peer: &'a Arc<PeerIdentity>,
    /// Whether every byte of the request was written by that process (`server::sender`).
    pub sender_is_connector: bool,
}

/// What PID 1 asks the credentials socket for, from its socket address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRequest {
    /// The unit being started, e.g. `web.service`.
    pub unit: String,
    /// The credential id from `LoadCredential=ID:…`.
    pub id: String,
}
