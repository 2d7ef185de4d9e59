//! API errors: each variant has one status and one stable code; clients get a fixed message in
//! a JSON body. The causes (source error chains) go to the log with the request id, never here.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};

use crate::broker::BrokerError;
use crate::name::NameError;
use crate::source::oauth2::OAuthError;

/// Everything a request can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Malformed request (bad escape, non-UTF-8 path, bad JSON body…).
    BadRequest(&'static str),
    /// The secret name failed validation.
    InvalidName(NameError),
    /// A query parameter the endpoint does not know, or one given twice.
    BadParameter(&'static str),
    /// A version selector the source does not support.
    BadSelector(&'static str),
    /// `?field=` on a value that is not a JSON object.
    NotJson,
    /// No rule admits this peer.
    Forbidden,
    /// The request was written by a process other than the one that connected.
    PeerChanged,
    /// No such secret (or version) at the source, or no such source.
    NotFound,
    /// The JSON value has no such field.
    FieldNotFound,
    /// No such endpoint.
    NoRoute,
    /// Endpoint exists, method does not; the methods it takes (for `Allow:`).
    MethodNotAllowed(&'static str),
    /// Request body too large.
    PayloadTooLarge,
    /// The agent is draining.
    ShuttingDown,
    /// The backend refused the agent's identity.
    UpstreamDenied,
    /// The backend failed or could not be reached.
    UpstreamUnavailable,
    /// The backend did not answer in time.
    UpstreamTimeout,
    /// The backend answered with something unusable.
    UpstreamBadReply,
    /// Secure memory could not hold the value.
    MemoryUnavailable,
    /// The caller's uid holds its share of connections (or every general slot is taken).
    TooManyConnections,
    /// Holding the response would exceed `cache.max_locked_bytes`.
    MemoryBudget,
    /// The caller's uid's in-flight responses hold its `cache.max_locked_bytes_per_uid`.
    MemoryBudgetUid,
    /// The source has `max_concurrent_fetches` running and its queue is full or timed out.
    SourceBusy,
    /// An OAuth2 token endpoint refused the agent's token request, with this code.
    TokenRefused(OAuthError),
    /// The source has `startup_check = "retry"` and has not passed its check yet.
    SourceStarting,
    /// A request body did not arrive within its bound.
    BodyTimeout,
    /// A `vault-lease` profile has no valid lease right now.
    LeaseUnavailable,
    /// The client of a waiting read hung up (the response is written to nobody).
    ClientGone,
}

impl ApiError {
    /// The HTTP status. Exhaustive on purpose: a new variant needs a status to compile.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_)
            | ApiError::InvalidName(_)
            | ApiError::BadParameter(_)
            | ApiError::BadSelector(_)
            | ApiError::NotJson => StatusCode::BAD_REQUEST,
            ApiError::Forbidden | ApiError::PeerChanged => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::FieldNotFound | ApiError::NoRoute => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::ShuttingDown
            | ApiError::MemoryUnavailable
            | ApiError::MemoryBudget
            | ApiError::MemoryBudgetUid
            | ApiError::SourceBusy
            | ApiError::SourceStarting
            | ApiError::LeaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UpstreamDenied
            | ApiError::UpstreamUnavailable
            | ApiError::UpstreamBadReply
            | ApiError::TokenRefused(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            // nginx's "client closed request": written to nobody, counted as "other".
            ApiError::ClientGone => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::InvalidName(_) => "invalid_name",
            ApiError::BadParameter(_) => "bad_parameter",
            ApiError::BadSelector(_) => "bad_selector",
            ApiError::NotJson => "bad_field",
            ApiError::Forbidden => "forbidden",
            ApiError::PeerChanged => "peer_changed",
            ApiError::NotFound => "not_found",
            ApiError::FieldNotFound => "field_not_found",
            ApiError::NoRoute => "no_route",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::BodyTimeout => "request_timeout",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::UpstreamDenied => "upstream_denied",
            ApiError::UpstreamUnavailable | ApiError::UpstreamTimeout => "upstream_unavailable",
            ApiError::UpstreamBadReply => "upstream_bad_reply",
            ApiError::MemoryUnavailable => "memory_unavailable",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::MemoryBudget => "memory_budget",
            ApiError::MemoryBudgetUid => "memory_budget_uid",
            ApiError::SourceBusy => "source_busy",
            ApiError::TokenRefused(_) => "token_refused",
            ApiError::SourceStarting => "source_starting",
            ApiError::LeaseUnavailable => "lease_unavailable",
            ApiError::ClientGone => "client_gone",
        }
    }

    /// The fixed human-readable message (never a value, never an internal error chain).
    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(why) => format!("bad request: {why}"),
            ApiError::InvalidName(e) => format!("invalid secret name: {e}"),
            ApiError::BadParameter(why) => format!("bad query parameter: {why}"),
            ApiError::BadSelector(why) => format!("unsupported version selector: {why}"),
            ApiError::NotJson => {
                "the secret is not a JSON object, so ?field= cannot apply".to_owned()
            }
            ApiError::Forbidden => "this peer is not allowed to read that secret".to_owned(),
            ApiError::PeerChanged => {
                "the request was written by a process other than the one that connected".to_owned()
            }
            ApiError::NotFound => "no such secret".to_owned(),
            ApiError::FieldNotFound => "the secret has no such field".to_owned(),
            ApiError::NoRoute => "no such endpoint".to_owned(),
            ApiError::MethodNotAllowed(_) => "method not allowed on this endpoint".to_owned(),
            ApiError::PayloadTooLarge => "request body too large".to_owned(),
            ApiError::BodyTimeout => "the request body did not arrive in time".to_owned(),
            ApiError::ShuttingDown => "the agent is shutting down".to_owned(),
            ApiError::UpstreamDenied => "the secret backend denied the agent's request".to_owned(),
            ApiError::UpstreamUnavailable => "the secret backend is unavailable".to_owned(),
            ApiError::UpstreamTimeout => "the secret backend did not answer in time".to_owned(),
            ApiError::UpstreamBadReply => "the secret backend's reply was unusable".to_owned(),
            ApiError::MemoryUnavailable => "no secure memory left to hold the secret".to_owned(),
            ApiError::TooManyConnections => {
                "too many connections from this user; close idle ones and retry".to_owned()
            }
            ApiError::MemoryBudget => {
                "the agent's locked-memory budget is exhausted; retry later".to_owned()
            }
            ApiError::MemoryBudgetUid => {
                "this user's responses in flight hold its share of the agent's locked memory; \
                 read them, then retry"
                    .to_owned()
            }
            ApiError::SourceBusy => {
                "too many fetches from this source are in flight; retry later".to_owned()
            }
            ApiError::TokenRefused(code) => {
                format!("the OAuth2 token endpoint refused the agent's token request: {code}")
            }
            ApiError::SourceStarting => {
                "the source has not passed its start-up check yet; retry later".to_owned()
            }
            ApiError::LeaseUnavailable => {
                "no valid lease for this secret and the backend gave no new one; retry later"
                    .to_owned()
            }
            ApiError::ClientGone => "the client hung up while its read waited".to_owned(),
        }
    }

    /// The JSON error body `{"error":{"code","message"}}`.
    pub fn body(&self) -> String {
        let mut error = serde_json::json!({ "code": self.code(), "message": self.message() });
        if let ApiError::TokenRefused(code) = self {
            error["oauth2_error"] = serde_json::Value::from(code.as_str());
        }
        serde_json::json!({ "error": error }).to_string()
    }

    /// The JSON error response.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let body = self.body();
        let mut builder = Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "application/json");
        if let ApiError::MethodNotAllowed(allowed) = self {
            builder = builder.header(header::ALLOW, *allowed);
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    }
}

impl From<BrokerError> for ApiError {
    /// The HTTP face of a broker error. Exhaustive: a new broker error needs an answer here.
    fn from(err: BrokerError) -> Self {
        match err {
            BrokerError::BadSelector(why) => ApiError::BadSelector(why),
            BrokerError::InvalidId(why) | BrokerError::BadFlush(why) => ApiError::BadRequest(why),
            BrokerError::NotJson => ApiError::NotJson,
            BrokerError::FlushBodyTooLarge => ApiError::PayloadTooLarge,
            BrokerError::FlushBodyTimeout => ApiError::BodyTimeout,
            // NotRoot and UnitMismatch only come from the credentials socket.
            // A revoked waiter is told what any denied caller is told.
            BrokerError::Forbidden
            | BrokerError::Revoked
            | BrokerError::NotRoot
            | BrokerError::UnitMismatch => ApiError::Forbidden,
            BrokerError::PeerChanged => ApiError::PeerChanged,
            BrokerError::NotFound => ApiError::NotFound,
            BrokerError::FieldNotFound => ApiError::FieldNotFound,
            BrokerError::ShuttingDown => ApiError::ShuttingDown,
            BrokerError::UpstreamDenied => ApiError::UpstreamDenied,
            BrokerError::UpstreamUnavailable => ApiError::UpstreamUnavailable,
            BrokerError::UpstreamTimeout => ApiError::UpstreamTimeout,
            BrokerError::UpstreamBadReply => ApiError::UpstreamBadReply,
            BrokerError::MemoryUnavailable => ApiError::MemoryUnavailable,
            BrokerError::MemoryBudget => ApiError::MemoryBudget,
            BrokerError::MemoryBudgetUid => ApiError::MemoryBudgetUid,
            BrokerError::SourceBusy => ApiError::SourceBusy,
            BrokerError::TokenRefused(code) => ApiError::TokenRefused(code),
            BrokerError::SourceStarting => ApiError::SourceStarting,
            BrokerError::LeaseUnavailable => ApiError::LeaseUnavailable,
            BrokerError::ClientGone => ApiError::ClientGone,
        }
    }
}

/// The error response for a broker error; a connection that carried another process's bytes is
/// closed after it.
pub(super) fn broker_error(err: BrokerError) -> Response<Full<Bytes>> {
    let close = matches!(err, BrokerError::PeerChanged);
    let mut response = ApiError::from(err).response();
    if close {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_code_table() {
        let cases = [
            (ApiError::BadRequest("x"), 400, "bad_request"),
            (
                ApiError::InvalidName(NameError::BadSegment),
                400,
                "invalid_name",
            ),
            (ApiError::BadParameter("x"), 400, "bad_parameter"),
            (ApiError::BadSelector("x"), 400, "bad_selector"),
            (ApiError::NotJson, 400, "bad_field"),
            (ApiError::Forbidden, 403, "forbidden"),
            (ApiError::PeerChanged, 403, "peer_changed"),
            (ApiError::NotFound, 404, "not_found"),
            (ApiError::FieldNotFound, 404, "field_not_found"),
            (ApiError::NoRoute, 404, "no_route"),
            (
                ApiError::MethodNotAllowed("POST"),
                405,
                "method_not_allowed",
            ),
            (ApiError::PayloadTooLarge, 413, "payload_too_large"),
            (ApiError::ShuttingDown, 503, "shutting_down"),
            (ApiError::MemoryUnavailable, 503, "memory_unavailable"),
            (ApiError::UpstreamDenied, 502, "upstream_denied"),
            (ApiError::UpstreamUnavailable, 502, "upstream_unavailable"),
            (ApiError::UpstreamTimeout, 504, "upstream_unavailable"),
            (ApiError::UpstreamBadReply, 502, "upstream_bad_reply"),
            (ApiError::TooManyConnections, 429, "too_many_connections"),
            (ApiError::MemoryBudget, 503, "memory_budget"),
            (ApiError::MemoryBudgetUid, 503, "memory_budget_uid"),
            (ApiError::SourceBusy, 503, "source_busy"),
            (
                ApiError::TokenRefused(OAuthError::InvalidClient),
                502,
                "token_refused",
            ),
            (ApiError::SourceStarting, 503, "source_starting"),
            (ApiError::LeaseUnavailable, 503, "lease_unavailable"),
            (ApiError::ClientGone, 499, "client_gone"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.code(), code, "{err:?}");
        }
    }

    /// What the audit line records for a broker error is what the client is answered.
    #[test]
    fn broker_errors_answer_with_the_audited_status() {
        let all = [
            BrokerError::BadSelector("x"),
            BrokerError::InvalidId("x"),
            BrokerError::BadFlush("x"),
            BrokerError::FlushBodyTooLarge,
            BrokerError::FlushBodyTimeout,
            BrokerError::NotJson,
            BrokerError::Forbidden,
            BrokerError::Revoked,
            BrokerError::PeerChanged,
            BrokerError::NotRoot,
            BrokerError::UnitMismatch,
            BrokerError::NotFound,
            BrokerError::FieldNotFound,
            BrokerError::ShuttingDown,
            BrokerError::UpstreamDenied,
            BrokerError::UpstreamUnavailable,
            BrokerError::UpstreamTimeout,
            BrokerError::UpstreamBadReply,
            BrokerError::MemoryUnavailable,
            BrokerError::MemoryBudget,
            BrokerError::MemoryBudgetUid,
            BrokerError::SourceBusy,
            BrokerError::TokenRefused(OAuthError::InvalidGrant),
            BrokerError::SourceStarting,
            BrokerError::LeaseUnavailable,
            BrokerError::ClientGone,
        ];
        for err in all {
            let status = err.status();
            assert_eq!(
                ApiError::from(err.clone()).status().as_u16(),
                status,
                "{err:?}"
            );
        }
    }
}
