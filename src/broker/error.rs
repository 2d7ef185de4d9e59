//! [`BrokerError`]: why the broker refused or failed a request, the status every front end's
//! audit lines record for it, and its audit reason. Messages never contain a value.

use crate::secure_mem::MemError;
use crate::source::SourceError;
use crate::source::oauth2::OAuthError;

/// Why the broker refused or failed a request. Messages never contain a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// A version selector the source does not support.
    #[error("unsupported version selector: {0}")]
    BadSelector(&'static str),
    /// An id the source could never serve.
    #[error("invalid id for this source: {0}")]
    InvalidId(&'static str),
    /// A flush pattern that is not a valid glob (or a malformed body).
    #[error("bad flush request: {0}")]
    BadFlush(&'static str),
    /// A flush body larger than the front end accepts.
    #[error("the flush request's body is too large")]
    FlushBodyTooLarge,
    /// A flush body that did not arrive within the front end's bound.
    #[error("the flush request's body did not arrive in time")]
    FlushBodyTimeout,
    /// `field` on a value that is not a JSON object.
    #[error("the value is not a JSON object")]
    NotJson,
    /// No rule admits this caller.
    #[error("no rule admits this caller")]
    Forbidden,
    /// A rule admitted this caller when its (waiting) read arrived, and the config in force when
    /// the answer was due no longer does.
    #[error("access was revoked while the read waited")]
    Revoked,
    /// Part of the request was written by another process than the connector.
    #[error("the request was written by another process than the connector")]
    PeerChanged,
    /// A credentials-socket peer that is not uid 0.
    #[error("only PID 1 (uid 0) may load credentials")]
    NotRoot,
    /// A credentials-socket peer that is not in the unit its address names.
    #[error("the connecting process is not in the unit its address names")]
    UnitMismatch,
    /// No such secret (or version, or source, or credential id).
    #[error("no such secret")]
    NotFound,
    /// The JSON value has no such field.
    #[error("no such field")]
    FieldNotFound,
    /// The agent is draining.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// The backend refused the agent's own identity.
    #[error("the backend denied the agent")]
    UpstreamDenied,
    /// The backend failed or could not be reached.
    #[error("the backend is unavailable")]
    UpstreamUnavailable,
    /// The backend did not answer in time.
    #[error("the backend did not answer in time")]
    UpstreamTimeout,
    /// The backend answered with something unusable.
    #[error("the backend's reply is unusable")]
    UpstreamBadReply,
    /// Secure memory could not hold the value.
    #[error("no secure memory for the value")]
    MemoryUnavailable,
    /// The locked-memory budget (`cache.max_locked_bytes`) is spent, even after evictions.
    #[error("the locked-memory budget is spent")]
    MemoryBudget,
    /// The caller's uid's in-flight responses hold its `cache.max_locked_bytes_per_uid`.
    #[error("the caller's share of the locked-memory budget is spent")]
    MemoryBudgetUid,
    /// The source's concurrent fetches and their queue are full.
    #[error("the source is busy")]
    SourceBusy,
    /// An OAuth2 token endpoint refused the agent's token request, with this code.
    #[error("the token endpoint refused the request: {0}")]
    TokenRefused(OAuthError),
    /// The source has `startup_check = "retry"` and has not passed its check yet.
    #[error("the source is still starting")]
    SourceStarting,
    /// A `vault-lease` profile's lease lapsed (or none was ever obtained) and Vault gave no new one.
    #[error("no valid lease")]
    LeaseUnavailable,
    /// The client of a waiting read hung up before its answer was due.
    #[error("the client hung up while its read waited")]
    ClientGone,
}

impl BrokerError {
    /// The status the audit line records (HTTP's numbers; the HTTP front end answers with the
    /// same). Exhaustive on purpose: a new variant needs a status to compile.
    pub fn status(&self) -> u16 {
        match self {
            BrokerError::BadSelector(_)
            | BrokerError::InvalidId(_)
            | BrokerError::BadFlush(_)
            | BrokerError::NotJson => 400,
            BrokerError::FlushBodyTimeout => 408,
            BrokerError::FlushBodyTooLarge => 413,
            BrokerError::Forbidden
            | BrokerError::Revoked
            | BrokerError::PeerChanged
            | BrokerError::NotRoot
            | BrokerError::UnitMismatch => 403,
            BrokerError::NotFound | BrokerError::FieldNotFound => 404,
            BrokerError::ShuttingDown
            | BrokerError::MemoryUnavailable
            | BrokerError::MemoryBudget
            | BrokerError::MemoryBudgetUid
            | BrokerError::SourceBusy
            | BrokerError::SourceStarting
            | BrokerError::LeaseUnavailable => 503,
            BrokerError::UpstreamDenied
            | BrokerError::UpstreamUnavailable
            | BrokerError::UpstreamBadReply
            | BrokerError::TokenRefused(_) => 502,
            BrokerError::UpstreamTimeout => 504,
            // Nobody reads it: the number the audit trail (and nginx) give a closed request.
            BrokerError::ClientGone => 499,
        }
    }

    /// Why a request was refused before any rule was asked, for the audit line.
    pub(super) fn reason(&self) -> Option<&'static str> {
        match self {
            BrokerError::PeerChanged => Some("peer_changed"),
            BrokerError::Revoked => Some("revoked"),
            BrokerError::NotRoot => Some("not_root"),
            BrokerError::UnitMismatch => Some("unit_mismatch"),
            BrokerError::ClientGone => Some("client_gone"),
            _ => None,
        }
    }
}

impl From<&SourceError> for BrokerError {
    fn from(err: &SourceError) -> Self {
        match err {
            SourceError::NotFound => BrokerError::NotFound,
            SourceError::Denied { .. } => BrokerError::UpstreamDenied,
            SourceError::Unavailable { .. } => BrokerError::UpstreamUnavailable,
            SourceError::Timeout(_) => BrokerError::UpstreamTimeout,
            SourceError::BadReply { .. } => BrokerError::UpstreamBadReply,
            // The broker checked the id before the cache: what is left is the agent's own
            // request to the backend failing to build, which no caller can fix.
            SourceError::Invalid(_) => BrokerError::UpstreamBadReply,
            SourceError::Memory(_) => BrokerError::MemoryUnavailable,
            SourceError::MemoryBudget(_) => BrokerError::MemoryBudget,
            SourceError::Busy => BrokerError::SourceBusy,
            SourceError::TokenRefused(code) => BrokerError::TokenRefused(*code),
            SourceError::LeaseUnavailable { .. } => BrokerError::LeaseUnavailable,
        }
    }
}

impl From<MemError> for BrokerError {
    fn from(err: MemError) -> Self {
        match err {
            MemError::Budget { .. } => BrokerError::MemoryBudget,
            _ => BrokerError::MemoryUnavailable,
        }
    }
}
