//! One async function per route. Handlers check access, ask the cache, render the response and
//! write the audit line; they never log a value or put an internal error chain in a body.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};

use super::error::ApiError;
use super::route::{Format, Route, parse_flush_body};
use super::sender::Taint;
use crate::acl;
use crate::audit::{AuditEvent, RequestId};
use crate::cache::Served;
use crate::jsonval::{FieldError, extract_field, push_base64, push_json_string};
use crate::name::SecretName;
use crate::peer::PeerIdentity;
use crate::secure_mem::{SecretBuf, SecretBytes, locked_bytes, mapped_bytes};
use crate::source::{Secret, SecretRequest, Selector, SourceError};
use crate::state::AppState;
use crate::timefmt::rfc3339;

/// Largest accepted request body (only `POST /v1/cache/flush` has one).
const MAX_BODY: usize = 64 * 1024;

type Resp = Response<Full<Bytes>>;

/// Serves one request from `peer`. `taint` says whether any byte on the connection so far came
/// from a process other than `peer` (hyper has read the request head when this runs).
pub async fn handle(
    state: &AppState,
    peer: &Arc<PeerIdentity>,
    taint: &Taint,
    req: Request<Incoming>,
) -> Resp {
    let request_id = state.next_request_id();
    let route = Route::parse(req.method(), req.uri(), req.headers());
    if taint.is_set() {
        let response = peer_changed(state, peer, request_id, route.ok());
        state.metrics.count_request(response.status().as_u16());
        return response;
    }
    let response = match route {
        Err(err) => {
            if let Some(suppressed) = state.log_limit.check() {
                tracing::info!(%request_id, uid = peer.uid, pid = ?peer.pid, code = err.code(), suppressed, "rejected request");
            }
            err.response()
        }
        Ok(Route::Health) => json_response(StatusCode::OK, r#"{"status":"ok"}"#.to_owned()),
        Ok(_) if state.shutting_down() => ApiError::ShuttingDown.response(),
        Ok(Route::Secret {
            name,
            selector,
            field,
            format,
        }) => read_secret(state, peer, request_id, name, selector, field, format).await,
        Ok(Route::Flush) => flush(state, peer, taint, request_id, req).await,
        Ok(Route::Metrics) => metrics(state, peer, request_id, req.method()),
    };
    state.metrics.count_request(response.status().as_u16());
    response
}

/// SECURITY: the request (or part of it) was written by another process than the one whose
/// identity the connection carries. Answer 403, audit it, and close the connection.
fn peer_changed(
    state: &AppState,
    peer: &Arc<PeerIdentity>,
    request_id: RequestId,
    route: Option<Route>,
) -> Resp {
    let (action, secret) = match route {
        Some(Route::Secret { name, .. }) => ("read", Some(name.to_string())),
        Some(Route::Flush) => ("flush", None),
        Some(Route::Metrics) => ("metrics", None),
        Some(Route::Health) => ("health", None),
        None => ("request", None),
    };
    let mut event = AuditEvent::new(request_id, action, peer);
    event.secret = secret;
    event.reason = Some("peer_changed");
    let mut response = ApiError::PeerChanged.response();
    event.status = response.status().as_u16();
    state.audit.record(event);
    if state.log_limit.check().is_some() {
        tracing::warn!(%request_id, uid = peer.uid, pid = ?peer.pid, "request written by a process other than the connector; closing the connection");
    }
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

async fn read_secret(
    state: &AppState,
    peer: &Arc<PeerIdentity>,
    request_id: RequestId,
    name: SecretName,
    selector: Selector,
    field: Option<String>,
    format: Format,
) -> Resp {
    let runtime = state.runtime();
    let mut event = AuditEvent::new(request_id, "read", peer);
    event.secret = Some(name.to_string());
    let decision = acl::decide(&runtime.rules, peer, name.source(), name.id());
    let result = if decision.allowed() {
        event.decision = "allow";
        fetch_and_render(
            state, &runtime, request_id, name, selector, field, format, &mut event,
        )
        .await
    } else {
        Err(ApiError::Forbidden)
    };
    let response = result.unwrap_or_else(|err| err.response());
    event.status = response.status().as_u16();
    state.audit.record(event);
    response
}

#[allow(clippy::too_many_arguments)]
async fn fetch_and_render(
    state: &AppState,
    runtime: &crate::state::Runtime,
    request_id: RequestId,
    name: SecretName,
    selector: Selector,
    field: Option<String>,
    format: Format,
    event: &mut AuditEvent,
) -> Result<Resp, ApiError> {
    let request = SecretRequest { name, selector };
    let (result, served) = lookup(state, runtime, request_id, &request).await;
    event.cache = served.map(|s| s.as_str());
    let secret = result?;
    render(&request.name, secret, field.as_deref(), format)
}

/// Looks `request` up in the cache, fetching it from its source on a miss (single-flight,
/// timed, counted). Every reader goes through here: the HTTP API and the systemd credentials
/// socket. It does not check access: the caller has already asked the ACL.
pub(crate) async fn lookup(
    state: &AppState,
    runtime: &crate::state::Runtime,
    request_id: RequestId,
    request: &SecretRequest,
) -> (Result<Arc<Secret>, ApiError>, Option<Served>) {
    let Some(entry) = runtime.sources.get(request.name.source()).cloned() else {
        return (Err(ApiError::NotFound), None);
    };
    if let Err(err) = entry.source.check_selector(&request.selector) {
        return (Err(ApiError::BadSelector(err)), None);
    }
    let metrics = state.metrics.clone();
    let log_limit = state.log_limit.clone();
    let ttl = entry.ttl;
    // Only runs on a miss or refresh: nothing here is on the cache-hit path.
    let fetch = move |fetch_request: SecretRequest, previous: Option<Arc<Secret>>| async move {
        let source_metrics = metrics.source(fetch_request.name.source());
        source_metrics
            .fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let result = match tokio::time::timeout(
            entry.fetch_timeout,
            entry.fetch_limited(&fetch_request, previous.as_deref()),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(SourceError::Timeout(entry.fetch_timeout)),
        };
        source_metrics.observe(started.elapsed(), result.is_ok());
        match &result {
            // The detail never holds a value (SourceError's contract).
            Err(SourceError::NotFound) => {
                tracing::debug!(secret = %fetch_request.name, "fetch: no such secret")
            }
            // A client can provoke these (many names while a backend is down): rate-limited.
            Err(err) => {
                if let Some(suppressed) = log_limit.check() {
                    tracing::warn!(secret = %fetch_request.name, error = %err, suppressed, "fetch failed");
                }
            }
            Ok(_) => tracing::debug!(secret = %fetch_request.name, "fetched"),
        }
        result
    };
    let (result, served) = state.cache.get(request, ttl, fetch).await;
    let result = result.map_err(|err| {
        tracing::debug!(%request_id, secret = %request.name, error = %err, "request failed");
        ApiError::from(&err)
    });
    (result, Some(served))
}

/// Lets `Bytes` borrow a cached secret without copying it out of secure memory.
struct CachedBody(Arc<Secret>);

impl AsRef<[u8]> for CachedBody {
    fn as_ref(&self) -> &[u8] {
        self.0.value.as_slice()
    }
}

fn render(
    name: &SecretName,
    secret: Arc<Secret>,
    field: Option<&str>,
    format: Format,
) -> Result<Resp, ApiError> {
    let value: Bytes = match field {
        None => Bytes::from_owner(CachedBody(secret.clone())),
        Some(field) => match extract_field(secret.value.as_slice(), field) {
            Ok(bytes) => Bytes::from_owner(bytes),
            Err(FieldError::Missing) => return Err(ApiError::FieldNotFound),
            Err(FieldError::NotObject) => return Err(ApiError::NotJson),
            Err(FieldError::Memory(err)) => return Err(ApiError::from(&err)),
        },
    };
    match format {
        Format::Raw => {
            let content_type = if std::str::from_utf8(&value).is_ok() {
                "text/plain; charset=utf-8"
            } else {
                "application/octet-stream"
            };
            Ok(secret_response(content_type, value))
        }
        Format::Json => {
            let body = render_json(name, &secret, &value).map_err(|err| ApiError::from(&err))?;
            Ok(secret_response("application/json", Bytes::from_owner(body)))
        }
    }
}

/// `{"name","source","value","version","fetched_at"}` built in secure memory; a value that is
/// not UTF-8 is base64 with `"encoding":"base64"`.
fn render_json(
    name: &SecretName,
    secret: &Secret,
    value: &[u8],
) -> Result<SecretBytes, crate::secure_mem::MemError> {
    let mut out = SecretBuf::with_capacity(value.len() + 160)?;
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
    out.extend_from_slice(b"}")?;
    out.finish()
}

fn secret_response(content_type: &'static str, body: Bytes) -> Resp {
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    // SECURITY: no intermediary or client-side cache should keep a copy.
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

fn json_response(status: StatusCode, body: String) -> Resp {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn flush(
    state: &AppState,
    peer: &Arc<PeerIdentity>,
    taint: &Taint,
    request_id: RequestId,
    req: Request<Incoming>,
) -> Resp {
    let runtime = state.runtime();
    let mut event = AuditEvent::new(request_id, "flush", peer);
    let response = if acl::decide_admin(&runtime.rules, peer).allowed() {
        event.decision = "allow";
        let body = read_body(req).await;
        // SECURITY: the body was read after the head; it must come from the connector too.
        if taint.is_set() {
            return peer_changed(state, peer, request_id, Some(Route::Flush));
        }
        match body.and_then(|body| parse_flush_body(&body)) {
            Ok(pattern) => {
                event.secret = Some(pattern.as_ref().map_or("*", |g| g.as_str()).to_owned());
                let flushed = state.cache.flush(pattern.as_ref());
                tracing::info!(%request_id, pattern = ?pattern.as_ref().map(|g| g.as_str()), flushed, "cache flushed by API");
                json_response(StatusCode::OK, format!("{{\"flushed\":{flushed}}}"))
            }
            Err(err) => err.response(),
        }
    } else {
        ApiError::Forbidden.response()
    };
    event.status = response.status().as_u16();
    state.audit.record(event);
    response
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ApiError::PayloadTooLarge),
        Err(_) => Err(ApiError::BadRequest("could not read the request body")),
    }
}

fn metrics(
    state: &AppState,
    peer: &Arc<PeerIdentity>,
    request_id: RequestId,
    _method: &Method,
) -> Resp {
    let runtime = state.runtime();
    let mut event = AuditEvent::new(request_id, "metrics", peer);
    let response = if acl::decide_admin(&runtime.rules, peer).allowed() {
        event.decision = "allow";
        let text = state
            .metrics
            .render(state.cache.len(), locked_bytes(), mapped_bytes());
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    } else {
        ApiError::Forbidden.response()
    };
    event.status = response.status().as_u16();
    state.audit.record(event);
    response
}
