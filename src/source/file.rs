//! The file source: one file per secret under a directory; ids may contain `/`.
//!
//! Files are opened with `openat2(RESOLVE_BENEATH)` relative to the directory, so neither `..`
//! nor a symlink (absolute or relative) can reach outside it; symlinks that stay inside are
//! followed. Where `openat2` is refused (a seccomp filter that predates it answers ENOSYS or
//! EPERM, as systemd 252's `SystemCallFilter=` does), the path is walked one component at a time
//! with `openat(O_NOFOLLOW)`, refusing `..` and every symlink: the same no-escape guarantee,
//! stricter about links inside the directory. Directories, FIFOs and devices are not secrets
//! (not found); a value is at most [`MAX_SECRET_LEN`] bytes, read straight into secure memory. It
//! does not watch files: the cache's TTL and the control file decide when a file is read again.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fstat};
use serde::Deserialize;
use zeroize::Zeroize;

use crate::source::error::SourceError;

use crate::secure_mem::{MAX_SECRET_LEN, SecretBytes};
use crate::source::secret::Secret;

/// `[sources.NAME]` with `type = "file"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileSource {
    /// Directory holding one file per secret.
    pub dir: PathBuf,
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

/// Set once `openat2` has been refused, so later reads go straight to the walk.
static OPENAT2_REFUSED: AtomicBool = AtomicBool::new(false);

/// Flags of the final open: read-only, and a FIFO or terminal cannot block or become ours.
fn read_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK
}

/// `openat2(RESOLVE_BENEATH)`, or the component walk where it is refused (or `walk` asks for it).
fn open_beneath(dirfd: &OwnedFd, id: &str, walk: bool) -> nix::Result<OwnedFd> {
    if !walk && !OPENAT2_REFUSED.load(Ordering::Relaxed) {
        let how = OpenHow::new()
            .flags(read_flags())
            // SECURITY: resolution may not leave `dir`, by `..` or by any symlink.
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
            .mode(Mode::empty());
        match openat2(dirfd, id, how) {
            Err(nix::Error::ENOSYS | nix::Error::EPERM) => {
                OPENAT2_REFUSED.store(true, Ordering::Relaxed);
                tracing::info!(
                    "openat2 is refused here (seccomp filter); the file source walks paths \
                     component by component and follows no symlinks"
                );
            }
            other => return other,
        }
    }
    open_walk(dirfd, id)
}

/// Opens `id` below `dirfd` one component at a time.
///
/// SECURITY: every component is opened with `O_NOFOLLOW` relative to the previous one, so a
/// symlink anywhere (final component: ELOOP; directory: refused by the `S_ISDIR` check below) and
/// `..`/`.`/empty components are refused: nothing outside the directory is reachable, whatever
/// the files inside it are.
fn open_walk(dirfd: &OwnedFd, id: &str) -> nix::Result<OwnedFd> {
    let mut parts = id.split('/').peekable();
    let mut current: Option<OwnedFd> = None;
    while let Some(part) = parts.next() {
        if part.is_empty() || part == "." || part == ".." {
            return Err(nix::Error::ENOENT);
        }
        let base = current.as_ref().unwrap_or(dirfd).as_fd();
        if parts.peek().is_none() {
            return openat(base, part, read_flags() | OFlag::O_NOFOLLOW, Mode::empty());
        }
        // O_PATH needs only search permission, as a normal path walk does. With O_NOFOLLOW it
        // would open a symlink itself, so the type is checked on the descriptor.
        let next = openat(
            base,
            part,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let kind = SFlag::from_bits_truncate(fstat(&next)?.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFDIR {
            return Err(nix::Error::ENOTDIR);
        }
        current = Some(next);
    }
    Err(nix::Error::ENOENT)
}

fn read_beneath(dir: &Path, id: &str) -> Result<Secret, SourceError> {
    read_resolved(dir, id, false)
}

fn read_resolved(dir: &Path, id: &str, walk: bool) -> Result<Secret, SourceError> {
    let dirfd: OwnedFd = std::fs::File::open(dir)
        .map_err(|e| SourceError::Unavailable {
            detail: format!("cannot open secrets directory {}: {e}", dir.display()),
        })?
        .into();
    let fd = match open_beneath(&dirfd, id, walk) {
        Ok(fd) => fd,
        // ENAMETOOLONG: a segment longer than a file name can be names no file.
        Err(
            nix::Error::ENOENT
            | nix::Error::ENOTDIR
            | nix::Error::EXDEV
            | nix::Error::ELOOP
            | nix::Error::ENAMETOOLONG,
        ) => {
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
            Ok(n) => filled = filled.saturating_add(n),
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
    Ok(Secret::new(value, None))
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
        assert_table(&dir, cases, false);
    }

    fn assert_table(dir: &Path, cases: &[(&str, Result<&[u8], SourceError>)], walk: bool) {
        for (id, want) in cases {
            let got = read_resolved(dir, id, walk).map(|s| s.value.as_slice().to_vec());
            match want {
                Ok(bytes) => assert_eq!(got.as_deref(), Ok(*bytes), "{id}"),
                Err(e) => assert_eq!(got.as_ref().err(), Some(e), "{id}"),
            }
        }
    }

    /// The fallback used where `openat2` is refused: the same confinement, and no symlink is
    /// followed at all, not even one that stays inside.
    #[test]
    fn component_walk_confines_and_refuses_every_symlink_table() {
        let (root, dir) = setup();
        std::os::unix::fs::symlink("..", dir.join("up")).unwrap();
        std::os::unix::fs::symlink(root.path(), dir.join("abs-dir")).unwrap();
        std::os::unix::fs::symlink("app", dir.join("inside-dir")).unwrap();
        let cases: &[(&str, Result<&[u8], SourceError>)] = &[
            ("plain", Ok(b"hello")),
            ("app/db", Ok(b"nested")),
            ("empty", Ok(b"")),
            ("inside-link", Err(SourceError::NotFound)),
            ("inside-dir/db", Err(SourceError::NotFound)),
            ("rel-escape", Err(SourceError::NotFound)),
            ("abs-escape", Err(SourceError::NotFound)),
            ("up/outside", Err(SourceError::NotFound)),
            ("abs-dir/outside", Err(SourceError::NotFound)),
            ("../outside", Err(SourceError::NotFound)),
            ("app/../../outside", Err(SourceError::NotFound)),
            ("./plain", Err(SourceError::NotFound)),
            ("app//db", Err(SourceError::NotFound)),
            ("/etc/passwd", Err(SourceError::NotFound)),
            ("missing", Err(SourceError::NotFound)),
            ("missing/x", Err(SourceError::NotFound)),
            ("app", Err(SourceError::NotFound)),
            ("plain/below-a-file", Err(SourceError::NotFound)),
        ];
        assert_table(&dir, cases, true);
    }
}
