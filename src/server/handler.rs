//! The HTTP front end of the broker: one function per route turns the parsed request into a
//! broker call and the broker's answer into a response. No policy lives here — access, caching,
//! fetching and auditing are the broker's — only HTTP: statuses, headers, bodies, and closing a
//! connection that carried another process's bytes.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};

use super::error::{ApiError, broker_error};
use super::route::{Route, parse_flush_body};
use super::sender::Taint;
use crate::broker::{self, BrokerError, Caller, Reply, ReplyKind};
use crate::cache::Refresh;
use crate::peer::PeerIdentity;
use crate::rate_limited;
use crate::state::AppState;

/// What every request of one connection shares.
pub(super) struct Connection {
    pub(super) state: Arc<AppState>,
    pub(super) identity: Arc<PeerIdentity>,
    pub(super) taint: Taint,
    pub(super) activity: Arc<super::idle::Activity>,
    /// Tells a waiting read that the client hung up.
    pub(super) hangup: super::hangup::PeerWatch,
}

/// Largest accepted request body (only `POST /v1/cache/flush` has one).
const MAX_BODY: usize = 64 * 1024;
/// How long an admitted request's body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type Resp = Response<Full<Bytes>>;

/// What a `?refresh=true` did: `refreshed`, `throttled`, or `fresh` (a minted value left alone).
const REFRESH_HEADER: header::HeaderName = header::HeaderName::from_static("x-credagent-refresh");

/// A request reduced to what serving it takes: its route, and the request itself only for a
/// flush, whose body is still to be read. Routing happens before `handle`'s future is made, so
/// that future does not hold the request head (hyper moves it on every request); a flush is
/// rare, so its request is boxed.
#[derive(Debug)]
pub struct Routed {
    route: Result<Route, ApiError>,
    flush: Option<Box<Request<Incoming>>>,
    /// The request's header map, emptied at once and given to a secret's response: hyper keeps a
    /// response's map for the next request's headers, so a connection parses into and answers
    /// with the same allocation from request to request (a new map per response, and the
    /// request's freed, cost about 160 more instructions per read).
    spare: header::HeaderMap,
}

/// Routes `req` (the request head only; no body is read).
pub fn route(mut req: Request<Incoming>) -> Routed {
    let route = Route::parse(req.method(), req.uri(), req.headers());
    let (flush, spare) = match route {
        Ok(Route::Flush) => (Some(Box::new(req)), header::HeaderMap::new()),
        _ => {
            // Emptied here, not when the answer is built: a `?wait=` read would otherwise hold
            // the request's header values for as long as it waits.
            let mut spare = std::mem::take(req.headers_mut());
            spare.clear();
            (None, spare)
        }
    };
    Routed {
        route,
        flush,
        spare,
    }
}

/// Serves one request on `connection`, then marks the connection idle again. Its taint says
/// whether any byte on the connection so far came from a process other than its peer (hyper has
/// read the request head when this runs).
///
/// A plain function that returns the future, which hyper stores and moves on every request: an
/// `async fn` keeps each argument twice (as passed, and moved into its body), and the route is
/// the largest of them; this future holds the connection and the route once, and is the service
/// future itself (no wrapper around it).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store the route twice in every request's future"
)]
pub(super) fn handle(
    connection: Arc<Connection>,
    mut routed: Routed,
) -> impl Future<Output = Result<Resp, Infallible>> + Send {
    async move {
        let response = respond(&connection, &mut routed).await;
        connection.activity.finish();
        Ok(response)
    }
}

/// The response to `routed` on `connection`.
async fn respond(connection: &Connection, routed: &mut Routed) -> Resp {
    let (state, peer, taint) = (&*connection.state, &connection.identity, &connection.taint);
    let caller = |taint: &Taint| Caller {
        peer,
        sender_is_connector: !taint.is_set(),
    };
    // Matched by reference: a move out of `routed` would be one more copy of the route in
    // this future.
    let response = match &routed.route {
        Err(_) if taint.is_set() => broker_error(broker::refuse_changed_peer(state, caller(taint))),
        Err(err) => {
            rate_limited!(info, uid = peer.uid, pid = ?peer.pid, code = err.code(), "rejected request");
            err.response()
        }
        Ok(Route::Health) => match broker::health(state, caller(taint)) {
            Ok(()) => json_response(StatusCode::OK, r#"{"status":"ok"}"#.to_owned()),
            Err(err) => broker_error(err),
        },
        Ok(Route::Ready) => match broker::ready(state, caller(taint)) {
            Ok(report) => ready_response(report),
            Err(err) => broker_error(err),
        },
        Ok(Route::Secret(request)) => {
            match broker::read_watched(state, caller(taint), request, &connection.hangup).await {
                Ok(reply) => secret_response(reply, std::mem::take(&mut routed.spare)),
                Err(err) => broker_error(err),
            }
        }
        // SECURITY: admitted before the body is read (a caller that may not flush never makes
        // the agent wait for one), and the body is read within BODY_TIMEOUT.
        Ok(Route::Flush) => match (
            broker::admit_flush(state, caller(taint)),
            routed.flush.take(),
        ) {
            (Err(err), _) => broker_error(err),
            (Ok(ticket), request) => {
                // Boxed, as its request: its body timer would size every read's future.
                let pattern = Box::pin(async {
                    // `route` keeps the request of every flush; were it missing, the flush would
                    // be refused and audited like one whose body is bad.
                    let Some(req) = request else {
                        return Err(BrokerError::BadFlush("the request body is missing"));
                    };
                    match tokio::time::timeout(BODY_TIMEOUT, read_body(*req)).await {
                        Ok(Ok(body)) => parse_flush_body(&body).map_err(BrokerError::BadFlush),
                        Ok(Err(err)) => Err(err),
                        Err(_) => Err(BrokerError::FlushBodyTimeout),
                    }
                })
                .await;
                // The body was read after the head: `caller` looks at the taint again.
                match ticket.flush(caller(taint), pattern) {
                    Ok(flushed) => {
                        json_response(StatusCode::OK, format!("{{\"flushed\":{flushed}}}"))
                    }
                    Err(err) => broker_error(err),
                }
            }
        },
        // issue 29: a container-credentials token (boxed: its read would size every future).
        Ok(Route::AwsToken(profile)) => {
            Box::pin(super::aws_container::issue(state, caller(taint), profile)).await
        }
        Ok(Route::Metrics) => match broker::metrics(state, caller(taint)) {
            Ok(text) => {
                let mut response = Response::new(Full::new(Bytes::from(text)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            Err(err) => broker_error(err),
        },
    };
    state.metrics.count_request(response.status().as_u16());
    response
}

/// The response carrying `reply`, its headers in `spare` (an empty map with room, from `route`:
/// nothing of the request's headers is sent back).
fn secret_response(reply: Reply, spare: header::HeaderMap) -> Resp {
    // Header values are checked byte by byte when made at run time: these are made at compile
    // time (`const`), which took a few hundred instructions off every read.
    let content_type = match reply.kind {
        ReplyKind::Text => const { header::HeaderValue::from_static("text/plain; charset=utf-8") },
        ReplyKind::Binary => const { header::HeaderValue::from_static("application/octet-stream") },
        ReplyKind::Json => const { header::HeaderValue::from_static("application/json") },
    };
    let not_modified = reply.not_modified;
    let mut response = Response::new(Full::new(reply.body));
    if not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    }
    debug_assert!(spare.is_empty(), "route empties the request's headers");
    let headers = response.headers_mut();
    *headers = spare;
    // Sized once for every header below, not grown by the first insert; from a connection's
    // second read on a no-op, as hyper parses each request into the previous response's map.
    headers.reserve(4);
    if !not_modified {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    if let Some(etag) = reply.etag.and_then(etag_header) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(refresh) = reply.refresh {
        let value = match refresh {
            Refresh::Done => const { header::HeaderValue::from_static("refreshed") },
            Refresh::Throttled => const { header::HeaderValue::from_static("throttled") },
            Refresh::Fresh => const { header::HeaderValue::from_static("fresh") },
        };
        headers.insert(REFRESH_HEADER, value);
    }
    // SECURITY: no intermediary or client-side cache should keep a copy.
    headers.insert(
        header::CACHE_CONTROL,
        const { header::HeaderValue::from_static("no-store") },
    );
    response
}

/// The `ETag` header for `tag`. Building a header value checks every byte (a visible share of a
/// cached read); the tag of a whole cached value is one shared `Bytes` for as long as the value
/// is cached, so each worker thread keeps the header it built last. The kept `Bytes` holds its
/// allocation, so a tag at the same address with the same length is the same bytes.
fn etag_header(tag: Bytes) -> Option<header::HeaderValue> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(Bytes, header::HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        if let Some((kept, value)) = last.as_ref()
            && kept.as_ptr() == tag.as_ptr()
            && kept.len() == tag.len()
        {
            return Some(value.clone());
        }
        let value = header::HeaderValue::from_maybe_shared(tag.clone()).ok()?;
        *last = Some((tag, value.clone()));
        Some(value)
    })
}

/// `200 {"ready":true}`, or `503` with counts only: never a secret's or a source's name.
fn ready_response(report: crate::readiness::Report) -> Resp {
    if report.ready {
        return json_response(StatusCode::OK, r#"{"ready":true}"#.to_owned());
    }
    let body = serde_json::json!({
        "ready": false,
        "prefetch_pending": report.prefetch_pending,
        "sources_starting": report.sources_starting,
    });
    json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
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

async fn read_body(req: Request<Incoming>) -> Result<Bytes, BrokerError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(BrokerError::FlushBodyTooLarge);
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            Err(BrokerError::FlushBodyTooLarge)
        }
        Err(_) => Err(BrokerError::BadFlush("could not read the request body")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept header is reused only for the very tag it was built from: another tag of the same
    /// length, or a tag built again with the same text, gets its own (correct) header.
    #[test]
    fn an_etag_header_is_reused_only_for_the_same_tag() {
        let first = Bytes::from("\"aaaa\"".to_owned());
        let second = Bytes::from("\"bbbb\"".to_owned());
        assert_eq!(etag_header(first.clone()).unwrap(), "\"aaaa\"");
        assert_eq!(etag_header(first.clone()).unwrap(), "\"aaaa\"");
        assert_eq!(etag_header(second.clone()).unwrap(), "\"bbbb\"");
        assert_eq!(etag_header(first.slice(0..3)).unwrap(), "\"aa");
        assert_eq!(etag_header(first).unwrap(), "\"aaaa\"");
        assert!(etag_header(Bytes::from_static(b"bad\nvalue")).is_none());
        assert_eq!(etag_header(second).unwrap(), "\"bbbb\"");
    }
}
