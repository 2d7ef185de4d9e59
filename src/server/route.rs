//! Request routing: one `(method, path)` match from a request head to a [`Route`]. Pure: no I/O,
//! no body, and nothing here logs. Percent-escapes are decoded and names validated here, so a
//! handler only ever sees a well-formed [`SecretName`].

use std::borrow::Cow;
use std::time::Duration;

use hyper::{Method, header};

use super::error::ApiError;
use crate::name::{Glob, SecretName};
use crate::source::{SecretRequest, Selector};

pub use crate::broker::{Format, ReadRequest};

/// What `Allow:` says for the routes that read.
const READ_METHODS: &str = "GET, HEAD";

/// The longest `?wait=` a read may hold its connection.
pub const MAX_WAIT_SECS: u16 = 300;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v1/health`.
    Health,
    /// `GET /v1/ready`.
    Ready,
    /// `GET /v1/secrets/{source}/{id}`: the read as the broker takes it (`?wait=` is 1–300 s).
    Secret(ReadRequest),
    /// `POST /v1/cache/flush`.
    Flush,
    /// `GET /v1/metrics`.
    Metrics,
    /// `POST /v1/aws-token/{source}/{profile}`: a container-credentials token (`exec --aws`).
    AwsToken(SecretName),
}

impl Route {
    /// Maps a request head to a route.
    pub fn parse(
        method: &Method,
        uri: &hyper::Uri,
        headers: &hyper::HeaderMap,
    ) -> Result<Route, ApiError> {
        let path = uri.path();
        let query = uri.query();
        if let Some(rest) = path.strip_prefix("/v1/secrets/") {
            if method != Method::GET && method != Method::HEAD {
                return Err(ApiError::MethodNotAllowed(READ_METHODS));
            }
            return parse_secret(rest, query, headers);
        }
        if let Some(rest) = path.strip_prefix("/v1/aws-token/") {
            if method != Method::POST {
                return Err(ApiError::MethodNotAllowed("POST"));
            }
            if query.is_some_and(|q| !q.is_empty()) {
                return Err(ApiError::BadParameter(
                    "this endpoint takes no query parameters",
                ));
            }
            let name = SecretName::parse(&percent_decode(rest)?).map_err(ApiError::InvalidName)?;
            return Ok(Route::AwsToken(name));
        }
        let route = match path {
            "/v1/health" => Route::Health,
            "/v1/ready" => Route::Ready,
            "/v1/cache/flush" => Route::Flush,
            "/v1/metrics" => Route::Metrics,
            _ => return Err(ApiError::NoRoute),
        };
        let allowed = match route {
            Route::Flush => "POST",
            _ => READ_METHODS,
        };
        let method_ok = match route {
            Route::Flush => method == Method::POST,
            _ => method == Method::GET || method == Method::HEAD,
        };
        if !method_ok {
            return Err(ApiError::MethodNotAllowed(allowed));
        }
        if query.is_some_and(|q| !q.is_empty()) {
            return Err(ApiError::BadParameter(
                "this endpoint takes no query parameters",
            ));
        }
        Ok(route)
    }
}

fn parse_secret(
    rest: &str,
    query: Option<&str>,
    headers: &hyper::HeaderMap,
) -> Result<Route, ApiError> {
    let name = SecretName::parse(&percent_decode(rest)?).map_err(ApiError::InvalidName)?;
    let mut selector = Selector::default();
    let mut field = None;
    let mut wait = None;
    let mut refresh = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key)?;
        let value = percent_decode(value)?.into_owned();
        if value.is_empty() {
            return Err(ApiError::BadParameter("empty value"));
        }
        let dup = match &*key {
            "field" => field.replace(value).is_some(),
            "version_id" => selector.version_id.replace(value).is_some(),
            "version_stage" => selector.version_stage.replace(value).is_some(),
            "label" => selector.label.replace(value).is_some(),
            "version" => {
                let n = value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(ApiError::BadParameter("version must be a positive integer"))?;
                selector.version.replace(n).is_some()
            }
            "wait" => {
                let secs = value
                    .parse::<u16>()
                    .ok()
                    .filter(|n| (1..=MAX_WAIT_SECS).contains(n))
                    .ok_or(ApiError::BadParameter("wait must be 1 to 300 seconds"))?;
                wait.replace(secs).is_some()
            }
            "refresh" => {
                let on = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(ApiError::BadParameter("refresh must be true or false")),
                };
                refresh.replace(on).is_some()
            }
            _ => return Err(ApiError::BadParameter("unknown parameter")),
        };
        if dup {
            return Err(ApiError::BadParameter("parameter given twice"));
        }
    }
    for value in [
        &selector.version_id,
        &selector.version_stage,
        &selector.label,
        &field,
    ]
    .into_iter()
    .flatten()
    {
        if value.len() > 256 || value.chars().any(char::is_control) {
            return Err(ApiError::BadParameter(
                "value too long or has control characters",
            ));
        }
    }
    if wait.is_some() && refresh == Some(true) {
        return Err(ApiError::BadParameter("refresh and wait do not combine"));
    }
    let (if_none_match, format) = read_headers(headers)?;
    Ok(Route::Secret(ReadRequest {
        secret: SecretRequest { name, selector },
        field,
        format,
        if_none_match,
        wait: wait.map(|secs: u16| Duration::from_secs(secs.into())),
        refresh: refresh.unwrap_or(false),
    }))
}

/// The headers a read looks at, in one pass over the few a request has (two lookups by name
/// hashed each name): the first `If-None-Match`, and whether any `Accept` asks for JSON.
fn read_headers(headers: &hyper::HeaderMap) -> Result<(Option<String>, Format), ApiError> {
    let mut if_none_match = None;
    let mut format = Format::Raw;
    for (name, value) in headers {
        if *name == header::IF_NONE_MATCH {
            if if_none_match.is_none() {
                let tag = value
                    .to_str()
                    .ok()
                    .filter(|t| t.len() <= 1024)
                    .ok_or(ApiError::BadRequest("unusable If-None-Match"))?;
                if_none_match = Some(tag.to_owned());
            }
        } else if *name == header::ACCEPT && accepts_json(value.as_bytes()) {
            format = Format::Json;
        }
    }
    Ok((if_none_match, format))
}

/// Whether one `Accept` value lists `application/json`. Bytes, not `str::split`: every read
/// asks, and a char searcher's set-up cost more than these short scans.
fn accepts_json(value: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|item| {
        let media = item.split(|&b| b == b';').next().unwrap_or_default();
        media.trim_ascii().eq_ignore_ascii_case(b"application/json")
    })
}

/// Decodes `%XX` escapes; invalid escapes and non-UTF-8 results are errors.
///
/// Not the `percent-encoding` crate (in the lock file): it passes a malformed escape such as
/// `%zz` or a trailing `%` through as literal text, and a name must mean one thing only, so a
/// malformed escape here is a `400`.
pub fn percent_decode(text: &str) -> Result<Cow<'_, str>, ApiError> {
    // Most paths have no escape: no copy then.
    if !text.as_bytes().contains(&b'%') {
        return Ok(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(ApiError::BadRequest("invalid percent-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| ApiError::BadRequest("path is not UTF-8 after decoding"))
}

/// The body of `POST /v1/cache/flush`: empty, or `{"pattern":"…"}`.
pub fn parse_flush_body(body: &[u8]) -> Result<Option<Glob>, &'static str> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FlushBody {
        pattern: Option<String>,
    }
    let parsed: FlushBody =
        serde_json::from_slice(body).map_err(|_| "body must be {\"pattern\":\"…\"} or empty")?;
    parsed
        .pattern
        .map(|p| Glob::parse(&p).map_err(|_| "invalid pattern"))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::NameError;

    fn route(method: Method, uri: &str) -> Result<Route, ApiError> {
        route_h(method, uri, &[])
    }

    fn route_h(method: Method, uri: &str, headers: &[(&str, &str)]) -> Result<Route, ApiError> {
        let uri: hyper::Uri = uri.parse().unwrap();
        let mut map = hyper::HeaderMap::new();
        for (k, v) in headers {
            map.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Route::parse(&method, &uri, &map)
    }

    fn secret(source: &str, id: &str) -> Route {
        Route::Secret(ReadRequest::plain(SecretName::new(source, id).unwrap()))
    }

    fn conditional(id: &str, wait: Option<u16>, refresh: bool) -> Route {
        Route::Secret(ReadRequest {
            wait: wait.map(|secs| Duration::from_secs(secs.into())),
            refresh,
            ..ReadRequest::plain(SecretName::new("files", id).unwrap())
        })
    }

    #[test]
    fn route_table() {
        let cases: Vec<(Method, &str, Result<Route, ApiError>)> = vec![
            (Method::GET, "/v1/health", Ok(Route::Health)),
            (Method::GET, "/v1/ready", Ok(Route::Ready)),
            (Method::HEAD, "/v1/ready", Ok(Route::Ready)),
            (
                Method::POST,
                "/v1/ready",
                Err(ApiError::MethodNotAllowed("GET, HEAD")),
            ),
            (
                Method::GET,
                "/v1/ready?names=1",
                Err(ApiError::BadParameter(
                    "this endpoint takes no query parameters",
                )),
            ),
            (
                Method::POST,
                "/v1/health",
                Err(ApiError::MethodNotAllowed("GET, HEAD")),
            ),
            (
                Method::GET,
                "/v1/health?x=1",
                Err(ApiError::BadParameter(
                    "this endpoint takes no query parameters",
                )),
            ),
            (Method::GET, "/v1/metrics", Ok(Route::Metrics)),
            (
                Method::POST,
                "/v1/aws-token/aws/reader",
                Ok(Route::AwsToken(SecretName::parse("aws/reader").unwrap())),
            ),
            (
                Method::GET,
                "/v1/aws-token/aws/reader",
                Err(ApiError::MethodNotAllowed("POST")),
            ),
            (
                Method::POST,
                "/v1/aws-token/aws/reader?x=1",
                Err(ApiError::BadParameter(
                    "this endpoint takes no query parameters",
                )),
            ),
            (Method::POST, "/v1/cache/flush", Ok(Route::Flush)),
            (
                Method::GET,
                "/v1/cache/flush",
                Err(ApiError::MethodNotAllowed("POST")),
            ),
            (
                Method::GET,
                "/v1/secrets/files/demo-password",
                Ok(secret("files", "demo-password")),
            ),
            (
                Method::GET,
                "/v1/secrets/files/app/db",
                Ok(secret("files", "app/db")),
            ),
            (
                Method::GET,
                "/v1/secrets/files/app%2Fdb",
                Ok(secret("files", "app/db")),
            ),
            (
                Method::GET,
                "/v1/secrets/aws/arn:aws:secretsmanager:eu-west-1:1:secret:x",
                Ok(secret("aws", "arn:aws:secretsmanager:eu-west-1:1:secret:x")),
            ),
            (
                Method::DELETE,
                "/v1/secrets/files/x",
                Err(ApiError::MethodNotAllowed("GET, HEAD")),
            ),
            (
                Method::GET,
                "/v1/secrets/files/../etc/passwd",
                Err(ApiError::InvalidName(NameError::BadSegment)),
            ),
            (
                Method::GET,
                "/v1/secrets/files/%2E%2E/etc",
                Err(ApiError::InvalidName(NameError::BadSegment)),
            ),
            (
                Method::GET,
                "/v1/secrets/files/a%00b",
                Err(ApiError::InvalidName(NameError::BadChar)),
            ),
            (
                Method::GET,
                "/v1/secrets/files/a%zz",
                Err(ApiError::BadRequest("invalid percent-escape")),
            ),
            (
                Method::GET,
                "/v1/secrets/files/a%2",
                Err(ApiError::BadRequest("invalid percent-escape")),
            ),
            (
                Method::GET,
                "/v1/secrets/files/a%ff",
                Err(ApiError::BadRequest("path is not UTF-8 after decoding")),
            ),
            (
                Method::GET,
                "/v1/secrets/files",
                Err(ApiError::InvalidName(NameError::Empty)),
            ),
            (
                Method::GET,
                "/v1/secrets/files/",
                Err(ApiError::InvalidName(NameError::Empty)),
            ),
            (
                Method::GET,
                "/v1/secrets/Files/x",
                Err(ApiError::InvalidName(NameError::BadSource)),
            ),
            (
                Method::GET,
                "/v1/secrets/files/x?bogus=1",
                Err(ApiError::BadParameter("unknown parameter")),
            ),
            (
                Method::GET,
                "/v1/secrets/files/x?field=a&field=b",
                Err(ApiError::BadParameter("parameter given twice")),
            ),
            (
                Method::GET,
                "/v1/secrets/files/x?wait=300",
                Ok(conditional("x", Some(300), false)),
            ),
            (
                Method::GET,
                "/v1/secrets/files/x?refresh=true",
                Ok(conditional("x", None, true)),
            ),
            (
                Method::GET,
                "/v1/secrets/files/x?wait=0",
                Err(ApiError::BadParameter("wait must be 1 to 300 seconds")),
            ),
            (
                Method::GET,
                "/v1/secrets/files/x?wait=301",
                Err(ApiError::BadParameter("wait must be 1 to 300 seconds")),
            ),
            (
                Method::GET,
                "/v1/secrets/files/x?refresh=yes",
                Err(ApiError::BadParameter("refresh must be true or false")),
            ),
            (
                Method::GET,
                "/v1/secrets/files/x?refresh=true&wait=5",
                Err(ApiError::BadParameter("refresh and wait do not combine")),
            ),
            (
                Method::GET,
                "/v1/secrets/files/x?field=",
                Err(ApiError::BadParameter("empty value")),
            ),
            (
                Method::GET,
                "/v1/secrets/files/x?version=0",
                Err(ApiError::BadParameter("version must be a positive integer")),
            ),
            (Method::GET, "/v1/nope", Err(ApiError::NoRoute)),
            (Method::GET, "/", Err(ApiError::NoRoute)),
        ];
        for (method, uri, want) in cases {
            assert_eq!(route(method.clone(), uri), want, "{method} {uri}");
        }
    }

    #[test]
    fn query_and_accept() {
        let got = route_h(
            Method::GET,
            "/v1/secrets/aws/db?field=pass%20word&version_stage=AWSPREVIOUS",
            &[("accept", "text/html, application/json;q=0.9")],
        )
        .unwrap();
        let Route::Secret(ReadRequest {
            field,
            secret: SecretRequest { selector, .. },
            format,
            ..
        }) = got
        else {
            panic!("not a secret route: {got:?}");
        };
        assert_eq!(field.as_deref(), Some("pass word"));
        assert_eq!(selector.version_stage.as_deref(), Some("AWSPREVIOUS"));
        assert_eq!(format, Format::Json);
    }

    #[test]
    fn flush_body_table() {
        assert_eq!(parse_flush_body(b"").unwrap(), None);
        assert_eq!(parse_flush_body(b"{}").unwrap(), None);
        assert_eq!(
            parse_flush_body(br#"{"pattern":"files/*"}"#)
                .unwrap()
                .unwrap()
                .as_str(),
            "files/*"
        );
        assert!(parse_flush_body(b"nope").is_err());
        assert!(parse_flush_body(br#"{"pattern":"a b"}"#).is_err());
        assert!(parse_flush_body(br#"{"other":1}"#).is_err());
    }
}
