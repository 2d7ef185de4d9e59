//! [`SourceError`]: why a fetch failed, shared by every kind, the cache (is it transient?) and
//! the broker (which status). Details are for logs and never hold secret material.

use std::time::Duration;

use crate::secure_mem::MemError;

/// Why a fetch failed. Details are for logs; they never contain secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The backend has no such secret (or version).
    #[error("no such secret")]
    NotFound,
    /// The backend refused the agent's own identity.
    #[error("the backend denied access: {detail}")]
    Denied {
        /// Backend's reason, without values.
        detail: String,
    },
    /// The backend could not be reached, throttled, or failed (transient).
    #[error("the backend is unavailable: {detail}")]
    Unavailable {
        /// What failed.
        detail: String,
    },
    /// The backend did not answer in time (transient).
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend answered with something the agent cannot use.
    #[error("the backend's reply is unusable: {detail}")]
    BadReply {
        /// What was wrong.
        detail: String,
    },
    /// The request is not valid for this source (checked before any call).
    #[error("invalid request for this source: {0}")]
    Invalid(String),
    /// Secure memory could not hold the value.
    #[error("secure memory: {0}")]
    Memory(String),
    /// Holding the value would pass `cache.max_locked_bytes` (transient: room comes back).
    #[error("secure memory: {0}")]
    MemoryBudget(String),
    /// `max_concurrent_fetches` were in flight and the queue was full or the wait ran out
    /// (transient).
    #[error("too many fetches in flight")]
    Busy,
    /// An OAuth2 token endpoint refused the request, with this error code (never its body).
    #[error("the token endpoint refused the request: {0}")]
    TokenRefused(OAuthError),
    /// A `vault-lease` profile has no valid lease and none could be obtained (transient).
    #[error("no valid lease: {detail}")]
    LeaseUnavailable {
        /// What failed.
        detail: String,
    },
}

impl SourceError {
    /// Transient failures: stale-if-error may serve the previous value.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Unavailable { .. }
                | SourceError::Timeout(_)
                | SourceError::MemoryBudget(_)
                | SourceError::Busy
                | SourceError::LeaseUnavailable { .. }
        )
    }
}

impl From<MemError> for SourceError {
    fn from(err: MemError) -> Self {
        match err {
            MemError::Budget { .. } => SourceError::MemoryBudget(err.to_string()),
            _ => SourceError::Memory(err.to_string()),
        }
    }
}

/// The standard OAuth2 error codes (RFC 6749 §5.2, RFC 8707 `invalid_target`): what a token
/// endpoint's refusal is reported as. A code outside this list is `Other` — the server's own
/// text is never passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthError {
    /// `invalid_request`.
    InvalidRequest,
    /// `invalid_client`: the client id or secret is wrong.
    InvalidClient,
    /// `invalid_grant`: the refresh token is unknown, used, expired or revoked.
    InvalidGrant,
    /// `unauthorized_client`: the client may not use this grant.
    UnauthorizedClient,
    /// `unsupported_grant_type`.
    UnsupportedGrantType,
    /// `invalid_scope`.
    InvalidScope,
    /// `invalid_target` (RFC 8707): the audience/resource is refused.
    InvalidTarget,
    /// Another code, or none.
    Other,
}

impl OAuthError {
    /// Maps the `error` member of an error reply.
    pub fn parse(code: &str) -> Self {
        match code {
            "invalid_request" => OAuthError::InvalidRequest,
            "invalid_client" => OAuthError::InvalidClient,
            "invalid_grant" => OAuthError::InvalidGrant,
            "unauthorized_client" => OAuthError::UnauthorizedClient,
            "unsupported_grant_type" => OAuthError::UnsupportedGrantType,
            "invalid_scope" => OAuthError::InvalidScope,
            "invalid_target" => OAuthError::InvalidTarget,
            _ => OAuthError::Other,
        }
    }

    /// The code as OAuth2 spells it (`other` for [`OAuthError::Other`]).
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthError::InvalidRequest => "invalid_request",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::InvalidGrant => "invalid_grant",
            OAuthError::UnauthorizedClient => "unauthorized_client",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::InvalidTarget => "invalid_target",
            OAuthError::Other => "other",
        }
    }
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
