//! The file source: one file per secret under a directory; ids may contain `/`.
//!
//! Files are opened with `openat2(RESOLVE_BENEATH)` relative to the directory, so neither `..`
//! nor a symlink (absolute or relative) can reach outside it; symlinks that stay inside are
//! followed. Directories, FIFOs and devices are not secrets (not found); a value is at most
//! [`MAX_SECRET_LEN`] bytes, read straight into secure memory. It does not watch files: the
//! cache's TTL and the control file decide when a file is read again.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;
use serde::Deserialize;
use zeroize::Zeroize;

use super::{Secret, SourceError};
use crate::secure_mem::{MAX_SECRET_LEN, SecretBytes};

/// `[sources.NAME]` with `type = "file"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileSource {
    /// Directory holding one file per secret.
    pub dir: PathBuf,
    /// Per-source TTL override.
    pub ttl_secs: Option<u64>,
    /// Per-source fetch timeout.
    pub fetch_timeout_secs: Option<u64>,
}

/// Serves files below `dir`.
#[derive(Debug)]
pub struct FileSource {
    dir: PathBuf,
}

impl FileSource {
    /// A source over `dir` (validated by the config to be a readable directory).
    pub fn new(dir: PathBuf) -> Self {
        FileSource { dir }
    }

    /// Reads the secret `id` (already validated: no `..`, no empty segments).
    pub async fn fetch(&self, id: &str) -> Result<Secret, SourceError> {
        let dir = self.dir.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || read_beneath(&dir, &id))
            .await
            .map_err(|e| SourceError::Unavailable {
                detail: format!("file read task failed: {e}"),
            })?
    }
}

fn read_beneath(dir: &Path, id: &str) -> Result<Secret, SourceError> {
    let dirfd: OwnedFd = std::fs::File::open(dir)
        .map_err(|e| SourceError::Unavailable {
            detail: format!("cannot open secrets directory {}: {e}", dir.display()),
        })?
        .into();
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        // SECURITY: resolution may not leave `dir`, by `..` or by any symlink.
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
        .mode(Mode::empty());
    let fd = match openat2(&dirfd, id, how) {
        Ok(fd) => fd,
        Err(nix::Error::ENOENT | nix::Error::ENOTDIR | nix::Error::EXDEV | nix::Error::ELOOP) => {
            return Err(SourceError::NotFound);
        }
        Err(nix::Error::EACCES | nix::Error::EPERM) => {
            return Err(SourceError::Denied {
                detail: format!("permission denied reading a file under {}", dir.display()),
            });
        }
        Err(e) => {
            return Err(SourceError::Unavailable {
                detail: format!("cannot open a file under {}: {e}", dir.display()),
            });
        }
    };
    let mut file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| SourceError::Unavailable {
        detail: format!("cannot stat a file under {}: {e}", dir.display()),
    })?;
    // Directories, FIFOs and devices are not secrets (and a FIFO would block the reader).
    if !meta.is_file() {
        return Err(SourceError::NotFound);
    }
    let size = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    if size > MAX_SECRET_LEN {
        return Err(SourceError::BadReply {
            detail: format!("file is larger than {MAX_SECRET_LEN} bytes"),
        });
    }
    // Read straight into a locked buffer of the size the file has now.
    let mut value = SecretBytes::zeroed(size)?;
    let mut filled = 0;
    while filled < size {
        match file.read(&mut value.as_mut_slice()[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_error(dir, &e)),
        }
    }
    // One more byte means the file grew while it was read (or it is a file that never ends).
    let mut probe = [0u8; 1];
    let grew = loop {
        match file.read(&mut probe) {
            Ok(n) => break n > 0,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_error(dir, &e)),
        }
    };
    probe.zeroize();
    if grew {
        return Err(SourceError::Unavailable {
            detail: "file changed while it was read".to_owned(),
        });
    }
    let value = if filled < size {
        value.truncated(filled)?
    } else {
        value
    };
    Ok(Secret {
        value,
        version: None,
        fetched_at: SystemTime::now(),
    })
}

fn read_error(dir: &Path, e: &std::io::Error) -> SourceError {
    SourceError::Unavailable {
        detail: format!("cannot read a file under {}: {e}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("secrets");
        std::fs::create_dir_all(dir.join("app")).unwrap();
        std::fs::write(dir.join("plain"), b"hello").unwrap();
        std::fs::write(dir.join("app/db"), b"nested").unwrap();
        std::fs::write(dir.join("empty"), b"").unwrap();
        std::fs::write(root.path().join("outside"), b"escaped").unwrap();
        std::os::unix::fs::symlink("../outside", dir.join("rel-escape")).unwrap();
        std::os::unix::fs::symlink(root.path().join("outside"), dir.join("abs-escape")).unwrap();
        std::os::unix::fs::symlink("app/db", dir.join("inside-link")).unwrap();
        (root, dir)
    }

    #[test]
    fn reads_and_confines_table() {
        let (_root, dir) = setup();
        let cases: &[(&str, Result<&[u8], SourceError>)] = &[
            ("plain", Ok(b"hello")),
            ("app/db", Ok(b"nested")),
            ("empty", Ok(b"")),
            ("inside-link", Ok(b"nested")),
            ("missing", Err(SourceError::NotFound)),
            ("app", Err(SourceError::NotFound)),
            ("rel-escape", Err(SourceError::NotFound)),
            ("abs-escape", Err(SourceError::NotFound)),
            ("plain/below-a-file", Err(SourceError::NotFound)),
        ];
        for (id, want) in cases {
            let got = read_beneath(&dir, id).map(|s| s.value.as_slice().to_vec());
            match want {
                Ok(bytes) => assert_eq!(got.as_deref(), Ok(*bytes), "{id}"),
                Err(e) => assert_eq!(got.as_ref().err(), Some(e), "{id}"),
            }
        }
    }
}
