//! The Unix socket server: bind (mode, group, stale-socket handling), an accept loop with a
//! connection cap, one HTTP/1.1 connection task per client with its peer identity read once at
//! accept and every read checked to come from that peer (`sender`), and a graceful drain on
//! shutdown. Routing and handling live in `route` and `handler`.

pub mod creds;
pub mod error;
pub mod handler;
pub mod route;
pub mod sender;

use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};

use crate::config::ServerConfig;
use crate::peer;
use crate::state::AppState;

/// Largest request head (request line plus headers); larger gets 431.
const MAX_HEAD: usize = 16 * 1024;
/// A client must send its request head within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures to set up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Could not create the socket's directory.
    #[error("cannot create socket directory {path}: {source}")]
    SocketDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Another process answers on the socket.
    #[error("{path} is in use: another agent is answering on it")]
    InUse {
        /// Socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// Path.
        path: PathBuf,
    },
    /// bind(2) failed.
    #[error("cannot bind {path}: {source}")]
    BindSocket {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// chmod/chown of the socket failed.
    #[error("cannot set owner or mode of {path}: {source}")]
    Permissions {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// `SO_PASSCRED` could not be set, so the writer of each request could not be checked.
    #[error("cannot enable SO_PASSCRED on {path}: {source}")]
    PassCredentials {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

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
    let std_listener =
        std::os::unix::net::UnixListener::bind(path).map_err(|source| ServerError::BindSocket {
            path: path.clone(),
            source,
        })?;
    let perm_err = |source| ServerError::Permissions {
        path: path.clone(),
        source,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode))
        .map_err(perm_err)?;
    if let Some(gid) = config.socket_group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| perm_err(std::io::Error::from(e)))?;
    }
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

/// Resolves when `rx` says `true` (or its sender is gone).
pub async fn signalled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Serves until `shutdown` turns true, then drains in-flight requests (bounded by
/// `config.shutdown_timeout`) and removes the socket file it created.
pub async fn serve(
    listener: Listener,
    state: Arc<AppState>,
    config: ServerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let max = config.max_connections.get();
    let limit = Arc::new(Semaphore::new(max));
    let conn_shutdown = shutdown.clone();
    accept_until_shutdown(
        listener,
        &limit,
        &mut shutdown,
        "agent socket",
        move |stream| {
            let accepted = peer::AcceptTime::now();
            serve_connection(stream, accepted, state.clone(), conn_shutdown.clone())
        },
    )
    .await;
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    match tokio::time::timeout(config.shutdown_timeout, limit.acquire_many(all)).await {
        Ok(_) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(
            timeout = ?config.shutdown_timeout,
            "shutdown timeout reached with connections still open"
        ),
    }
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
    mut shutdown: watch::Receiver<bool>,
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
    let (stream, taint) = sender::CheckedStream::new(stream, sender::Connector::of(&identity));
    let service = service_fn(move |req| {
        let state = state.clone();
        let identity = identity.clone();
        let taint = taint.clone();
        async move { Ok::<_, Infallible>(handler::handle(&state, &identity, &taint, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        // A client may shut down its write side (or exit) once its request is sent: the request
        // is still answered and audited, not dropped when its EOF is read.
        .half_close(true)
        .max_buf_size(MAX_HEAD)
        .writev(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        }
        () = signalled(&mut shutdown) => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }
}
