//! Creating the socket file so that it is never wider than configured: bound under a umask that
//! leaves at most the owner's bits of the configured mode (so at no moment may the agent's own
//! primary group or others reach it), then given its group, then its mode. At each step the
//! file grants no more than the configured owner, group and mode.
//!
//! It does not decide where the socket goes or what replaces a stale one (`server::bind`).
//! [`ServerError`], every failure to set up a listening socket, is here.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, umask};

/// Failures to set up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The thread that closes idle connections could not be started.
    #[error("cannot start the idle-connection thread: {0}")]
    IdleThread(std::io::Error),
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
    /// The container-credentials TCP listener could not be bound.
    #[error("cannot bind server.aws_container_listen {addr}: {source}")]
    BindTcp {
        /// Address.
        addr: std::net::SocketAddr,
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

/// SECURITY: binds a listening socket at `path`, owner-only at first, then with group `gid` (if
/// given), then with `mode`.
pub(crate) fn bind_private(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
) -> Result<UnixListener, ServerError> {
    let owner_only = Mode::from_bits_truncate(!(mode & 0o700) & 0o777);
    // The umask is the process's; nothing else creates files while the agent binds at start.
    let previous = umask(owner_only);
    let bound = UnixListener::bind(path);
    umask(previous);
    let listener = bound.map_err(|source| ServerError::BindSocket {
        path: path.to_path_buf(),
        source,
    })?;
    let perm_err = |source| ServerError::Permissions {
        path: path.to_path_buf(),
        source,
    };
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| perm_err(std::io::Error::from(e)))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(perm_err)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The socket ends with exactly its mode, and is reachable.
    #[test]
    fn the_socket_ends_with_its_mode_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let _listener = bind_private(&path, 0o660, None).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    }
}
