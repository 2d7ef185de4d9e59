//! The client side of the CLI: HTTP over the agent's Unix socket (this file: one connection per
//! request, and only to a server that is root or the agent's uid — `SO_PEERCRED`, checked before
//! anything is sent), and the commands built on it — `get`, `flush`, `render`, `exec`, `health` — in
//! [`commands`]; the long-running `render --watch` and `exec --watch` in [`rerender`] and
//! [`supervise`], on the change waiters of [`watch`]; both kinds of `render` read their template
//! through [`template_file`], both kinds of `exec` their `--env` bindings through [`bindings`];
//! `exec --aws` (container credentials with a renewed token) is [`aws`].
//! `main` only maps their errors to exit codes.

pub mod aws;
pub mod bindings;
pub mod commands;
pub mod rerender;
pub mod supervise;
pub mod template_file;
pub(crate) mod trust;
pub mod watch;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use nix::sys::socket::{getsockopt, sockopt};

use crate::secure_mem::{SecretBuf, SecretBytes};

/// What went wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent answered on the socket.
    #[error("cannot reach the agent at {socket}: {reason}")]
    Connect {
        /// Socket path.
        socket: String,
        /// Cause.
        reason: String,
    },
    /// The agent answered with an error.
    #[error("{code}: {message}")]
    Server {
        /// HTTP status.
        status: StatusCode,
        /// Stable error code.
        code: String,
        /// Server's message.
        message: String,
    },
    /// Bad arguments (caught before sending).
    #[error("{0}")]
    Usage(String),
    /// The process answering on the socket is not the agent: neither root nor the expected uid.
    #[error(
        "refusing the server at {socket}: it runs as uid {uid}, not root or {expected} (set --agent-uid or CREDAGENT_AGENT_UID to the agent's uid)"
    )]
    WrongServer {
        /// Socket path.
        socket: String,
        /// The server's uid (`SO_PEERCRED`).
        uid: u32,
        /// Whom the client accepts besides root.
        expected: String,
    },
    /// `reload`: the agent's process could not be signalled.
    #[error("reload: cannot signal process {pid}: {source}")]
    Signal {
        /// The process.
        pid: i32,
        /// Cause.
        source: nix::Error,
    },
}

/// Percent-encodes everything outside the secret-name alphabet (the server validates anyway).
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"_+=.@-:".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The uid the agent runs as (`--agent-uid`, `CREDAGENT_AGENT_UID`), when given.
static AGENT_UID: OnceLock<u32> = OnceLock::new();

/// Accept a server running as `uid` (besides root) instead of the socket file's owner. Set once,
/// by `main`, before any command talks to the agent.
pub fn expect_agent_uid(uid: u32) {
    let _ = AGENT_UID.set(uid);
}

/// SECURITY: who answers on the socket must be the agent — root, or the uid named by
/// `--agent-uid` (by default the socket file's owner) — before a request (a secret's name) goes
/// out or an answer (a value to use) is believed.
fn check_server(socket: &Path, stream: &tokio::net::UnixStream) -> Result<(), ClientError> {
    let uid = getsockopt(stream, sockopt::PeerCredentials)
        .map_err(|e| broken(socket, e))?
        .uid();
    let (expected, described) = match AGENT_UID.get() {
        Some(&agent) => (Some(agent), format!("uid {agent}")),
        None => (
            std::fs::metadata(socket).ok().map(|m| m.uid()),
            "the socket file's owner".to_owned(),
        ),
    };
    if uid == 0 || Some(uid) == expected {
        return Ok(());
    }
    Err(ClientError::WrongServer {
        socket: socket.display().to_string(),
        uid,
        expected: described,
    })
}

/// Sends one request on a connection of its own and returns the response, body unread.
async fn send(
    socket: &Path,
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| broken(socket, e))?;
    check_server(socket, &stream)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| broken(socket, e))?;
    // Drives the connection until the response body is read (or dropped).
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", "localhost")
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    sender
        .send_request(request)
        .await
        .map_err(|e| ClientError::Connect {
            socket: socket.display().to_string(),
            reason: std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string()),
        })
}

fn broken(socket: &Path, reason: impl std::fmt::Display) -> ClientError {
    ClientError::Connect {
        socket: socket.display().to_string(),
        reason: reason.to_string(),
    }
}

/// One request; the status and body, whatever the status.
async fn exchange(
    socket: &Path,
    method: Method,
    path_and_query: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), ClientError> {
    let response = send(socket, method, path_and_query, &[], body).await?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| broken(socket, e))?
        .to_bytes();
    Ok((status, body))
}

/// One request; the body of a success, else the agent's error code and message.
async fn call(
    socket: &Path,
    method: Method,
    path_and_query: &str,
    body: Bytes,
) -> Result<Bytes, ClientError> {
    let (status, body) = exchange(socket, method, path_and_query, body).await?;
    if status.is_success() {
        return Ok(body);
    }
    Err(server_error(status, &body))
}

/// The agent's error answer as a [`ClientError::Server`] (code and message from its JSON body).
fn server_error(status: StatusCode, body: &[u8]) -> ClientError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v["error"][k].as_str())
            .map(str::to_owned)
    };
    ClientError::Server {
        status,
        code: field("code").unwrap_or_else(|| status.as_u16().to_string()),
        message: field("message")
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned()),
    }
}

/// Selectors and field of a `get`.
#[derive(Debug, Default)]
pub struct GetOptions {
    /// `?field=`.
    pub field: Option<String>,
    /// `?version_id=`.
    pub version_id: Option<String>,
    /// `?version_stage=`.
    pub version_stage: Option<String>,
    /// `?version=`.
    pub version: Option<u64>,
    /// `?label=`.
    pub label: Option<String>,
}

/// `/v1/secrets/NAME?…` for `name` (`SOURCE/ID`) and `options`, plus `extra` query items.
fn secret_path(
    name: &str,
    options: &GetOptions,
    extra: Option<String>,
) -> Result<String, ClientError> {
    if !name.contains('/') {
        return Err(ClientError::Usage(format!(
            "{name:?}: expected SOURCE/ID, e.g. files/demo-password"
        )));
    }
    let mut query = Vec::new();
    for (key, value) in [
        ("field", options.field.clone()),
        ("version_id", options.version_id.clone()),
        ("version_stage", options.version_stage.clone()),
        ("version", options.version.map(|v| v.to_string())),
        ("label", options.label.clone()),
    ] {
        if let Some(value) = value {
            query.push(format!("{key}={}", encode(&value, false)));
        }
    }
    query.extend(extra);
    let mut path = format!("/v1/secrets/{}", encode(name, true));
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    Ok(path)
}

/// Fetches `name` (`SOURCE/ID`) and returns the value bytes.
pub async fn get(socket: &Path, name: &str, options: &GetOptions) -> Result<Bytes, ClientError> {
    let path = secret_path(name, options, None)?;
    call(socket, Method::GET, &path, Bytes::new()).await
}

/// A value with its `ETag`, or word that the held tag is still current.
#[derive(Debug)]
pub enum Tagged {
    /// `200`: the value, in locked memory, and its tag.
    Value {
        /// The `ETag` header (quotes included).
        etag: String,
        /// The value bytes.
        value: SecretBytes,
    },
    /// `304`: the held tag is still current (at once, or at the end of a wait).
    NotModified,
}

/// Fetches `name` with its `ETag`. With `held` (a tag from an earlier answer) and `wait`
/// (1–300 s), the agent holds the request until the value's tag differs from `held` or the
/// wait ends (`304`). The value is collected straight into a [`SecretBuf`].
pub async fn get_tagged(
    socket: &Path,
    name: &str,
    options: &GetOptions,
    held: Option<&str>,
    wait: Option<u16>,
) -> Result<Tagged, ClientError> {
    let path = secret_path(name, options, wait.map(|secs| format!("wait={secs}")))?;
    let headers: Vec<(&str, &str)> = held.map(|tag| ("if-none-match", tag)).into_iter().collect();
    let response = send(socket, Method::GET, &path, &headers, Bytes::new()).await?;
    let status = response.status();
    if status == StatusCode::NOT_MODIFIED {
        return Ok(Tagged::NotModified);
    }
    let etag = response
        .headers()
        .get(hyper::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map_err(|e| broken(socket, e))?
            .to_bytes();
        return Err(server_error(status, &bytes));
    }
    let memory = |e: crate::secure_mem::MemError| ClientError::Usage(e.to_string());
    let mut value = SecretBuf::with_capacity(256).map_err(memory)?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| broken(socket, e))?;
        if let Some(data) = frame.data_ref() {
            value.extend_from_slice(data).map_err(memory)?;
        }
    }
    let etag = etag.ok_or_else(|| broken(socket, "the agent's answer carries no ETag"))?;
    Ok(Tagged::Value {
        etag,
        value: value.finish().map_err(memory)?,
    })
}

/// Flushes the cache (all, or entries matching `pattern`); returns how many were flushed.
pub async fn flush(socket: &Path, pattern: Option<&str>) -> Result<u64, ClientError> {
    let body = match pattern {
        Some(p) => serde_json::json!({ "pattern": p }).to_string(),
        None => String::new(),
    };
    let reply = call(socket, Method::POST, "/v1/cache/flush", Bytes::from(body)).await?;
    let parsed: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
    Ok(parsed["flushed"].as_u64().unwrap_or(0))
}

/// `GET /v1/health` (or `/v1/ready` when `ready`): `Ok` on `200`. A `503` from `/v1/ready` is
/// a [`ClientError::Server`] whose message gives the counts.
pub async fn health(socket: &Path, ready: bool) -> Result<(), ClientError> {
    if !ready {
        return call(socket, Method::GET, "/v1/health", Bytes::new())
            .await
            .map(|_| ());
    }
    let (status, body) = exchange(socket, Method::GET, "/v1/ready", Bytes::new()).await?;
    if status == StatusCode::OK {
        return Ok(());
    }
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let (Some(pending), Some(starting)) = (
        parsed["prefetch_pending"].as_u64(),
        parsed["sources_starting"].as_u64(),
    ) else {
        return Err(ClientError::Server {
            status,
            code: status.as_u16().to_string(),
            message: status.canonical_reason().unwrap_or("error").to_owned(),
        });
    };
    Err(ClientError::Server {
        status,
        code: "not_ready".to_owned(),
        message: format!(
            "{pending} prefetched secret(s) not cached yet, {starting} source(s) starting"
        ),
    })
}
