//! The container-credentials front end of aws-credentials profiles (`exec --aws`): the Unix
//! socket's `POST /v1/aws-token/SOURCE/PROFILE`, which issues a token to a caller the rules let
//! read the profile, and the optional loopback TCP listener (`server.aws_container_listen`) that
//! the AWS SDKs' container provider calls with that token. The listener answers only a valid
//! token presented from a socket the kernel says belongs to the token's uid (`peer_tcp`), and
//! then reads the profile through the broker *as the token's caller* (same rules, session and
//! audit as a read on the Unix socket). Policy stays in the broker; tokens in `aws_token`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::aws_token::{Holder, TOKEN_TTL, TokenError};
use super::bind::ServerError;
use super::error::ApiError;
use super::idle::signalled;
use crate::audit::AuditEvent;
use crate::broker::{self, Caller, ReadRequest};
use crate::name::SecretName;
use crate::rate_limited;
use crate::secure_mem::{SecretBuf, SecretBytes};
use crate::state::AppState;

/// The one path the listener serves.
pub(crate) const CONTAINER_PATH: &str = "/v1/aws-container-credentials";
/// Connections the listener serves at once.
const MAX_CONNECTIONS: usize = 64;
/// Connections one uid may hold at once, so one local user cannot take every slot.
const MAX_CONNECTIONS_PER_UID: usize = 8;
/// A connection is closed this long after it was accepted (SDKs fetch and go).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

type Resp = Response<Full<Bytes>>;

/// Binds the listener (called before READY, so a taken port fails the start).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ServerError> {
    let bind_err = |source| ServerError::BindTcp { addr, source };
    // SECURITY: the config refuses other addresses; checked again where the socket is made.
    if !addr.ip().is_loopback() {
        return Err(bind_err(std::io::Error::other("not a loopback address")));
    }
    let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// Serves the listener until `shutdown` turns true.
pub async fn serve(
    listener: std::net::TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(error = %err, "cannot serve the container-credentials listener");
            return;
        }
    };
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_uid = Arc::new(PerUid::default());
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = signalled(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "container-credentials accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = signalled(&mut shutdown) => break,
        };
        let state = state.clone();
        let per_uid = per_uid.clone();
        tokio::spawn(async move {
            let Ok(local) = stream.local_addr() else {
                return;
            };
            // SECURITY: the kernel's owner of the connecting socket, found once at accept: a
            // socket keeps the uid of the process that made it.
            let uid = match crate::peer_tcp::peer_uid(peer, local) {
                Ok(uid) => uid,
                Err(err) => {
                    rate_limited!(warn, %peer, error = %err, "container-credentials connection without a known owner; closing");
                    return;
                }
            };
            // SECURITY: one uid holds at most MAX_CONNECTIONS_PER_UID of the slots.
            let Some(_held) = per_uid.admit(uid) else {
                rate_limited!(
                    info,
                    uid,
                    "too many container-credentials connections from this uid; closing"
                );
                return;
            };
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, uid, &req).await) }
            });
            let conn = http1::Builder::new()
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(permit);
        });
    }
}

/// Connections held per uid.
#[derive(Debug, Default)]
struct PerUid(std::sync::Mutex<std::collections::HashMap<u32, usize>>);

/// One connection's place in [`PerUid`]; given back on drop.
struct Held<'a> {
    counts: &'a PerUid,
    uid: u32,
}

impl PerUid {
    fn admit(&self, uid: u32) -> Option<Held<'_>> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let held = counts.entry(uid).or_insert(0);
        if *held >= MAX_CONNECTIONS_PER_UID {
            return None;
        }
        *held += 1;
        Some(Held { counts: self, uid })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = counts.get_mut(&self.uid) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

/// The answer to one request from a socket owned by `uid`.
async fn answer(state: &AppState, uid: u32, req: &Request<hyper::body::Incoming>) -> Resp {
    let response = Box::pin(container_reply(state, uid, req)).await;
    state.metrics.count_request(response.status().as_u16());
    response
}

async fn container_reply(state: &AppState, uid: u32, req: &Request<hyper::body::Incoming>) -> Resp {
    if req.uri().path() != CONTAINER_PATH {
        return refusal(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
    }
    if req.method() != Method::GET {
        return refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET",
        );
    }
    // SECURITY: a request relayed by a proxy on this host would carry the proxy's uid, not the
    // caller's; such requests are refused whatever they hold.
    if req.headers().contains_key("x-forwarded-for") || req.headers().contains_key("forwarded") {
        rate_limited!(
            warn,
            uid,
            "container-credentials request with X-Forwarded-For refused"
        );
        return refusal(
            StatusCode::BAD_REQUEST,
            "forwarded_request",
            "forwarded requests are refused",
        );
    }
    let tokens = &state.aws_tokens;
    if tokens.throttled(uid) {
        return refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_bad_tokens",
            "too many bad tokens from this uid; try again later",
        );
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let Some(Holder { owner, profile }) = tokens.find(presented) else {
        bad_token(state, uid);
        rate_limited!(
            info,
            uid,
            "container-credentials request with a missing, unknown or expired token"
        );
        return refusal(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "missing, unknown or expired token",
        );
    };
    // SECURITY: the token is bound to its caller's uid; the same bytes from another uid's
    // socket (a leaked or stolen token file) are refused and audited under the token's owner.
    if owner.uid != uid {
        bad_token(state, uid);
        rate_limited!(
            warn,
            uid,
            owner_uid = owner.uid,
            "container-credentials token presented from another uid's socket"
        );
        let mut event = AuditEvent::new(state.next_request_id(), "aws-container", &owner);
        event.secret = Some(profile.joined());
        event.reason = Some("token_other_uid");
        event.presented_by_uid = Some(uid);
        event.status = 403;
        state.audit.record(event);
        return refusal(
            StatusCode::FORBIDDEN,
            "token_other_uid",
            "this token belongs to another uid",
        );
    }
    let caller = Caller {
        peer: &owner,
        sender_is_connector: true,
    };
    match broker::read(state, caller, &ReadRequest::plain(profile)).await {
        Ok(reply) => match container_body(&reply.body) {
            Some(body) => json(StatusCode::OK, Bytes::from_owner(body)),
            None => refusal(
                StatusCode::BAD_REQUEST,
                "not_aws_credentials",
                "the token's profile is not an aws-credentials profile",
            ),
        },
        Err(err) => {
            let err = ApiError::from(err);
            // A refusal by STS is no transient failure: a 5xx would have the SDK retry it.
            let status = match err {
                ApiError::UpstreamDenied => StatusCode::FORBIDDEN,
                _ => err.status(),
            };
            refusal(status, err.code(), &err.message())
        }
    }
}

/// Counts a bad token from `uid` (towards its throttle, and in the metric).
fn bad_token(state: &AppState, uid: u32) {
    state.aws_tokens.count_bad(uid);
    state
        .metrics
        .aws_container_bad_tokens
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The credential_process JSON of a profile, as the container provider's fields.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessJson<'a> {
    #[serde(borrow)]
    access_key_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    secret_access_key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    session_token: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    expiration: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    account_id: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerJson<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
}

/// `{"AccessKeyId","SecretAccessKey","Token","Expiration","AccountId"}` in locked memory (no
/// `AccountId` when the profile's JSON has none); `None` when the
/// value is not credential_process JSON.
fn container_body(process: &[u8]) -> Option<SecretBytes> {
    let parsed: ProcessJson<'_> = serde_json::from_slice(process).ok()?;
    let body = ContainerJson {
        access_key_id: &parsed.access_key_id,
        secret_access_key: &parsed.secret_access_key,
        token: &parsed.session_token,
        expiration: &parsed.expiration,
        account_id: parsed.account_id.as_deref(),
    };
    let mut out = SecretBuf::with_capacity(process.len().saturating_add(64)).ok()?;
    serde_json::to_writer(&mut Writer(&mut out), &body).ok()?;
    out.finish().ok()
}

/// `io::Write` into a [`SecretBuf`], so the body is never in unlocked memory.
struct Writer<'a>(&'a mut SecretBuf);

impl std::io::Write for Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .extend_from_slice(buf)
            .map_err(std::io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `POST /v1/aws-token/SOURCE/PROFILE` on the Unix socket: a token for `caller` once the broker
/// has read the profile for it (the same rules, session and audit line as a `GET` of it).
pub(super) async fn issue(state: &AppState, caller: Caller<'_>, profile: &SecretName) -> Resp {
    let Some(listen) = state.aws_tokens.listen() else {
        return api_refusal(
            StatusCode::NOT_FOUND,
            "aws_container_off",
            "this agent has no server.aws_container_listen",
        );
    };
    let peer = caller.peer;
    let reply = match broker::read(state, caller, &ReadRequest::plain(profile.clone())).await {
        Ok(reply) => reply,
        Err(err) => return super::error::broker_error(err),
    };
    if container_body(&reply.body).is_none() {
        return api_refusal(
            StatusCode::BAD_REQUEST,
            "not_aws_credentials",
            "not an aws-credentials profile",
        );
    }
    drop(reply);
    let token = match state.aws_tokens.issue(peer, profile) {
        Ok(token) => token,
        Err(TokenError::TooMany) => {
            return api_refusal(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_tokens",
                "this uid holds too many container-credentials tokens",
            );
        }
        Err(TokenError::Make(why)) => {
            tracing::error!(error = %why, "cannot make a container-credentials token");
            return api_refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "memory_unavailable",
                "cannot make a token",
            );
        }
    };
    match token_body(&token, listen) {
        Some(body) => json(StatusCode::OK, Bytes::from_owner(body)),
        None => api_refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "memory_unavailable",
            "cannot make a token",
        ),
    }
}

/// `{"token","uri","expires_in_secs"}` in locked memory.
fn token_body(token: &SecretBytes, listen: SocketAddr) -> Option<SecretBytes> {
    let token = std::str::from_utf8(token.as_slice()).ok()?;
    let body = serde_json::json!({
        "uri": format!("http://{listen}{CONTAINER_PATH}"),
        "expires_in_secs": TOKEN_TTL.as_secs(),
    });
    // The token is written by hand (hex: nothing to escape) so no `Value` holds a copy.
    let text = body.to_string();
    let head = text.strip_suffix('}')?;
    let mut out = SecretBuf::with_capacity(text.len() + token.len() + 16).ok()?;
    for part in [head, ",\"token\":\"", token, "\"}"] {
        out.extend_from_slice(part.as_bytes()).ok()?;
    }
    out.finish().ok()
}

/// The Unix socket API's error shape, `{"error":{"code","message"}}`.
fn api_refusal(status: StatusCode, code: &str, message: &str) -> Resp {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    json(status, Bytes::from(body))
}

/// `{"code","message"}`: the shape the SDKs' container provider reads.
fn refusal(status: StatusCode, code: &str, message: &str) -> Resp {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    json(status, Bytes::from(body))
}

fn json(status: StatusCode, body: Bytes) -> Resp {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    // SECURITY: no intermediary or client-side cache should keep a copy.
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_process_json_becomes_the_container_shape() {
        let process = br#"{"Version":1,"AccessKeyId":"AKIA1","SecretAccessKey":"s\/k","SessionToken":"tok","Expiration":"2026-12-04T20:00:00Z","AccountId":"210987654321"}"#;
        let body = container_body(process).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(body.as_slice()).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"AccessKeyId":"AKIA1","SecretAccessKey":"s/k","Token":"tok","Expiration":"2026-12-04T20:00:00Z","AccountId":"210987654321"})
        );
        let process = br#"{"Version":1,"AccessKeyId":"AKIA1","SecretAccessKey":"s","SessionToken":"tok","Expiration":"2026-12-04T20:00:00Z"}"#;
        let parsed: serde_json::Value =
            serde_json::from_slice(container_body(process).unwrap().as_slice()).unwrap();
        assert!(parsed.get("AccountId").is_none(), "{parsed}");
        assert!(container_body(b"plain secret").is_none());
        assert!(container_body(br#"{"AccessKeyId":"A"}"#).is_none());
    }

    #[test]
    fn one_uid_holds_a_bounded_share_of_the_connections() {
        let per_uid = PerUid::default();
        let held: Vec<_> = (0..MAX_CONNECTIONS_PER_UID)
            .map(|_| per_uid.admit(7).unwrap())
            .collect();
        assert!(per_uid.admit(7).is_none());
        assert!(per_uid.admit(8).is_some());
        drop(held);
        assert!(per_uid.admit(7).is_some());
        assert!(per_uid.0.lock().unwrap().is_empty());
    }

    #[test]
    fn the_token_body_carries_uri_token_and_lifetime() {
        let token = SecretBytes::from_slice(b"00ff").unwrap();
        let body = token_body(&token, "127.0.0.1:8099".parse().unwrap()).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(body.as_slice()).unwrap();
        assert_eq!(parsed["token"], "00ff");
        assert_eq!(
            parsed["uri"],
            "http://127.0.0.1:8099/v1/aws-container-credentials"
        );
        assert_eq!(parsed["expires_in_secs"], 900);
    }
}
