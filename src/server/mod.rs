//! The Unix socket server: bind (mode, group, stale-socket handling), an accept loop with a
//! connection cap, one HTTP/1.1 connection task per client with its peer identity read once at
//! accept and every read checked to come from that peer (`sender`), and a graceful drain on
//! shutdown. Routing and handling live in `route` and `handler`.
//!
//! Fairness between local users is decided here, per connection: one uid holds at most
//! `max_connections_per_uid` connections and all uids together at most `max_connections`; past
//! that a connection is answered `429 too_many_connections` (in reply to its request head, awaited
//! for at most a second without holding a slot) and closed. uid 0 and admin peers have
//! `max_operator_connections` slots of their own instead (`admission`), so an operator can always
//! reach health, flush and metrics, and cannot take the others' slots. A client that hangs
//! up while its read waits frees its slot at once (`hangup`). Writes are bounded by
//! `write_timeout` (`write_timeout`).

mod admission;
pub mod aws_container;
pub mod aws_token;
mod bind;
pub mod creds;
pub mod error;
pub mod handler;
mod hangup;
pub mod idle;
pub mod route;
pub mod runtime;
pub mod sender;
pub mod write_timeout;

use admission::Admission;
pub use bind::ServerError;
use handler::Connection;
use idle::signalled;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};

use crate::config::ServerConfig;
use crate::peer::{self, PeerIdentity};
use crate::rate_limited;
use crate::state::AppState;
use crate::{acl, server::error::ApiError};

/// Largest request head (request line plus headers); larger gets 431.
const MAX_HEAD: usize = 16 * 1024;
/// A refused client's request head is awaited for up to this long before the 429, and what
/// it sends after is read (and dropped) for up to this long again and this many bytes before
/// closing, so its write does not fail with EPIPE before it reads the 429.
const REFUSED_LINGER: Duration = Duration::from_secs(1);
const REFUSED_DRAIN: usize = 16 * 1024;

/// A listening socket, and the path to remove at shutdown when the agent created it.
#[derive(Debug)]
pub struct Listener {
    listener: UnixListener,
    owned_path: Option<PathBuf>,
}

impl Listener {
    /// A socket handed over by the service manager (socket activation): systemd owns the file.
    /// `path` names it in errors.
    pub fn inherited(
        listener: std::os::unix::net::UnixListener,
        path: &Path,
    ) -> Result<Self, ServerError> {
        let bind_err = |source| ServerError::BindSocket {
            path: path.to_path_buf(),
            source,
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        Self::checked(
            UnixListener::from_std(listener).map_err(bind_err)?,
            path,
            None,
        )
    }

    /// Every listener passes its writers' credentials (see `sender`).
    fn checked(
        listener: UnixListener,
        path: &Path,
        owned_path: Option<PathBuf>,
    ) -> Result<Self, ServerError> {
        sender::pass_credentials(&listener).map_err(|source| ServerError::PassCredentials {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Listener {
            listener,
            owned_path,
        })
    }
}

/// Creates the socket with the configured mode and group, replacing a stale socket file.
pub fn bind(config: &ServerConfig) -> Result<Listener, ServerError> {
    let path = &config.socket;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::SocketDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    remove_stale(path)?;
    let std_listener = bind::bind_private(path, config.socket_mode, config.socket_group)?;
    let bind_err = |source| ServerError::BindSocket {
        path: path.clone(),
        source,
    };
    std_listener.set_nonblocking(true).map_err(bind_err)?;
    let listener = UnixListener::from_std(std_listener).map_err(bind_err)?;
    Listener::checked(listener, path, Some(path.clone()))
}

fn remove_stale(path: &Path) -> Result<(), ServerError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServerError::InUse {
            path: path.to_path_buf(),
        });
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ServerError::BindSocket {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Serves until `shutdown` turns true, then drains in-flight requests (bounded by
/// `config.shutdown_timeout`) and removes the socket file it created.
pub async fn serve(
    listener: Listener,
    state: Arc<AppState>,
    config: ServerConfig,
    idle: idle::IdleWatch,
    mut shutdown: watch::Receiver<bool>,
) {
    let idle = Arc::new(idle);
    // Every general and every operator slot: the accept loop never waits while either has room.
    let all = config
        .max_connections
        .get()
        .saturating_add(config.max_operator_connections.get());
    let limit = Arc::new(Semaphore::new(all));
    let admission = Arc::new(Admission::new(&config));
    let write_timeout = config.write_timeout;
    let watch = idle.clone();
    accept_until_shutdown(
        listener,
        &limit,
        &mut shutdown,
        "agent socket",
        move |stream| {
            let accepted = peer::AcceptTime::now();
            serve_connection(
                stream,
                accepted,
                state.clone(),
                admission.clone(),
                write_timeout,
                watch.clone(),
            )
        },
    )
    .await;
    // Finish the requests in flight, then close.
    idle.shutdown();
    let all = u32::try_from(all).unwrap_or(u32::MAX);
    match tokio::time::timeout(config.shutdown_timeout, limit.acquire_many(all)).await {
        Ok(_) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(
            timeout = ?config.shutdown_timeout,
            "shutdown timeout reached with connections still open"
        ),
    }
}

/// Answers `429 too_many_connections` to the client's request and closes. The request head is
/// awaited (at most [`REFUSED_LINGER`]) in a task of its own that holds no connection slot: a
/// reply written before the request arrives is an unexpected message to an HTTP client (hyper's
/// reports just that, not the status). Past [`MAX_LINGERING`] refused connections at once, the
/// reply is written at once instead.
async fn refuse(mut stream: UnixStream, write_timeout: Duration, lingering: &Arc<Semaphore>) {
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        let _ = tokio::time::timeout(write_timeout, write_refusal(&mut stream)).await;
        return;
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSED_LINGER, read_head(&mut stream)).await;
        if tokio::time::timeout(write_timeout, write_refusal(&mut stream))
            .await
            .is_err()
        {
            return;
        }
        // Whatever else the client sent is read (and dropped) before closing, so its write does
        // not fail with EPIPE before it reads the 429.
        let _ = tokio::time::timeout(REFUSED_LINGER, drain(&mut stream, REFUSED_DRAIN)).await;
        drop(permit);
    });
}

/// Writes the `429` and shuts the write side.
async fn write_refusal(stream: &mut UnixStream) -> std::io::Result<()> {
    let err = ApiError::TooManyConnections;
    let body = err.body();
    let status = err.status();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads (and drops) bytes until the end of a request head, end of file or [`REFUSED_DRAIN`]
/// bytes.
async fn read_head(stream: &mut UnixStream) {
    let mut buf = [0u8; 4096];
    // How much of `\r\n\r\n` the bytes so far end with; carried across reads.
    let mut matched = 0usize;
    let mut read = 0usize;
    while read < REFUSED_DRAIN {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for &byte in &buf[..n] {
            matched = match (matched, byte) {
                (1 | 3, b'\n') | (2, b'\r') => matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if matched == 4 {
                return;
            }
        }
        read = read.saturating_add(n);
    }
}

/// Reads (and drops) up to `limit` bytes or until end of file.
async fn drain(stream: &mut UnixStream, limit: usize) {
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < limit {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => drained = drained.saturating_add(n),
        }
    }
}

/// Whether `peer` takes an operator slot (`max_operator_connections`) instead of a general one.
fn is_operator(state: &AppState, peer: &PeerIdentity) -> bool {
    peer.uid == 0 || acl::decide_admin(&state.runtime().rules, peer).allowed()
}

/// Whether a connection error is the write deadline firing.
fn is_write_timeout(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = cause.source();
    }
    false
}

/// The accept loop both sockets share (mini-redis style): take a permit from `limit` (the
/// connection cap), accept, and run `handle` for the connection in a task that holds the permit.
/// On shutdown it stops accepting, closes the listener and removes the socket file it created;
/// waiting for in-flight connections is the caller's business (it owns `limit`).
pub(crate) async fn accept_until_shutdown<F, Fut>(
    listener: Listener,
    limit: &Arc<Semaphore>,
    shutdown: &mut watch::Receiver<bool>,
    what: &'static str,
    mut handle: F,
) where
    F: FnMut(UnixStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = signalled(shutdown) => break,
        };
        let stream = tokio::select! {
            accepted = listener.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(socket = what, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = signalled(shutdown) => break,
        };
        let connection = handle(stream);
        tokio::spawn(async move {
            connection.await;
            drop(permit);
        });
    }
    // Stop accepting: new clients get ECONNREFUSED/ENOENT instead of waiting in the backlog.
    drop(listener.listener);
    if let Some(path) = &listener.owned_path
        && let Err(err) = std::fs::remove_file(path)
    {
        tracing::warn!(path = %path.display(), error = %err, "cannot remove socket file");
    }
}

async fn serve_connection(
    stream: UnixStream,
    accepted: peer::AcceptTime,
    state: Arc<AppState>,
    admission: Arc<Admission>,
    write_timeout: Duration,
    idle: Arc<idle::IdleWatch>,
) {
    let identity = match peer::identify(&stream, accepted, &state.runtime().exe_rules) {
        Ok(identity) => Arc::new(identity),
        Err(err) => {
            tracing::warn!(error = %err, "dropping connection without peer credentials");
            return;
        }
    };
    // The listener's SO_PASSCRED reaches connections made after it was set; one that waited in
    // a backlog systemd created (socket activation) gets it here. Bytes queued before the
    // accept carry credentials anyway; without the flag, reads carry none and are refused.
    if let Err(err) = sender::pass_credentials(&stream) {
        tracing::warn!(error = %err, "dropping connection: cannot enable SO_PASSCRED on it");
        return;
    }
    // SECURITY: one local user cannot take every connection slot from the others, and operators
    // and other callers cannot take each other's.
    let operator = is_operator(&state, &identity);
    let Some(_admitted) = admission.admit(identity.uid, operator) else {
        state
            .metrics
            .connections_rejected
            .fetch_add(1, Ordering::Relaxed);
        rate_limited!(info, uid = identity.uid, pid = ?identity.pid, "too many connections from this uid; refusing");
        refuse(stream, write_timeout, admission.lingering()).await;
        return;
    };
    let (stream, taint) = sender::CheckedStream::new(stream, sender::Connector::of(&identity));
    let hangup = hangup::PeerWatch::new(stream.socket());
    let stream = write_timeout::WriteTimeout::new(stream, write_timeout);
    let metrics = state.metrics.clone();
    // One shared context per connection: a request clones one `Arc`, not four.
    let connection = Arc::new(Connection {
        state,
        identity,
        taint,
        activity: Arc::new(idle::Activity::default()),
        hangup,
    });
    let service = {
        let connection = connection.clone();
        service_fn(move |req| {
            connection.activity.start();
            handler::handle(connection.clone(), handler::route(req))
        })
    };
    // No hyper timer: its header-read timeout armed and cancelled a timer for every request on
    // a keep-alive connection. The idle check is `idle`'s thread's instead.
    let conn = http1::Builder::new()
        // A client may shut down its write side (or exit) once its request is sent: the request
        // is still answered and audited, not dropped when its EOF is read.
        .half_close(true)
        .max_buf_size(MAX_HEAD)
        .writev(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // The idle check and the shutdown signal come from `idle`'s thread, once, through one
    // channel: a request's wake-ups poll the connection and that channel, and no timer is
    // pending while a connection is open (measured: a few hundred instructions per request).
    let (_watched, mut stopped) = idle.register(connection.activity.clone());
    tokio::select! {
        biased;
        result = conn.as_mut() => {
            if let Err(err) = result {
                if is_write_timeout(&err) {
                    metrics.write_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(error = %err, "connection ended with an error");
            }
        }
        verdict = &mut stopped => match verdict {
            Ok(idle::Stop::Idle) => {
                tracing::debug!(limit = ?idle::IDLE_LIMIT, "closing a connection with no request");
            }
            // Finish the request in flight, then close.
            Ok(idle::Stop::Shutdown) | Err(_) => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `parts` to one end of a socket pair, a pause between them, and says whether
    /// `read_head` on the other end returned within a second.
    async fn head_found(parts: &[&[u8]]) -> bool {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        let reader = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(1), read_head(&mut server))
                .await
                .is_ok()
        });
        for part in parts {
            client.write_all(part).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let found = reader.await.unwrap();
        drop(client);
        found
    }

    #[tokio::test]
    async fn the_end_of_a_refused_request_head_is_found_even_split_across_reads() {
        assert!(head_found(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]).await);
        assert!(head_found(&[b"GET / HTTP/1.1\r\n\r", b"\n"]).await);
        assert!(head_found(&[b"GET / HTTP/1.1\r", b"\n", b"\r", b"\n"]).await);
        assert!(head_found(&[b"GET / HTTP/1.1\r\n\r\r\n\r\n"]).await);
        assert!(!head_found(&[b"GET / HTTP/1.1\r\nHost: x\r\n"]).await);
        assert!(!head_found(&[b"GET / HTTP/1.1\r\n\n\r\n"]).await);
        assert!(!head_found(&[b"\r\n", b"x", b"\r\n"]).await);
    }
}
