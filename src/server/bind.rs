//! Creating the socket file so that it is never wider than configured: bound in a private
//! staging directory (mode 0700, beside the final path) under a umask that yields at most the
//! configured mode, given its mode and group there, and only then renamed into place — the
//! first moment anyone can reach it, it has its final owner, group and mode.
//!
//! It does not decide where the socket goes or what replaces a stale one (`server::bind`).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, umask};

use super::ServerError;

/// Binds a listening socket at `path` with `mode` and, if given, group `gid`.
pub(crate) fn bind_private(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
) -> Result<UnixListener, ServerError> {
    let staging = staging_dir(path);
    clear_staging(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|source| ServerError::SocketDir {
            path: staging.clone(),
            source,
        })?;
    let staged = staging.join("s");
    let result = bind_with_mode(&staged, path, mode, gid).and_then(|listener| {
        std::fs::rename(&staged, path).map_err(|source| ServerError::BindSocket {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(listener)
    });
    clear_staging(&staging);
    result
}

/// `.NAME.PID.bind` beside `path` (short: a socket path has at most 107 bytes).
fn staging_dir(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.bind", std::process::id()))
}

/// Removes a staging directory and the socket in it, if left behind.
fn clear_staging(staging: &Path) {
    let _ = std::fs::remove_file(staging.join("s"));
    let _ = std::fs::remove_dir(staging);
}

/// SECURITY: binds at `staged` under a umask that leaves at most `mode`'s bits, then sets the
/// exact mode and group, all while the file is in a directory only the agent can enter.
fn bind_with_mode(
    staged: &Path,
    path: &Path,
    mode: u32,
    gid: Option<u32>,
) -> Result<UnixListener, ServerError> {
    let narrowest = Mode::from_bits_truncate(!mode & 0o777);
    // The umask is the process's; nothing else creates files while the agent binds at start.
    let previous = umask(narrowest);
    let bound = UnixListener::bind(staged);
    umask(previous);
    let listener = bound.map_err(|source| ServerError::BindSocket {
        path: path.to_path_buf(),
        source,
    })?;
    let perm_err = |source| ServerError::Permissions {
        path: path.to_path_buf(),
        source,
    };
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(mode)).map_err(perm_err)?;
    if let Some(gid) = gid {
        nix::unistd::chown(staged, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| perm_err(std::io::Error::from(e)))?;
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_socket_appears_with_its_final_mode_and_no_staging_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let _listener = bind_private(&path, 0o660, None).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(!staging_dir(&path).exists());
    }
}
