//! `render -o FILE`: writing a file that holds secrets so that no one else can read or redirect
//! it at any moment.
//!
//! The bytes go to a temporary file with a random name in the target's directory, created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW`, given its final owner, group and mode before any byte is written
//! (so no other user can pre-create, link or open it, and the target never exists with the wrong
//! owner or mode), fsynced, then renamed over the target. On any error the temporary
//! file is removed. A target that is a symlink (or not a regular file) is refused rather than
//! followed or replaced. It does not talk to the agent: `client` fetches, this only writes.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a rendered file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The target is a symlink.
    #[error("{0} is a symlink; refusing to write through it (give the real path)")]
    Symlink(PathBuf),
    /// The target exists and is not a regular file.
    #[error("{0} exists and is not a regular file")]
    NotAFile(PathBuf),
    /// The target path has no file name.
    #[error("{0} has no file name")]
    NoFileName(PathBuf),
    /// A file system call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + use<> {
    let path = path.to_path_buf();
    move |source| OutputError::Io { what, path, source }
}

/// Removes the temporary file unless it was renamed into place.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Mode and ownership of a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAttrs {
    /// Permission bits.
    pub mode: u32,
    /// Owner uid (`None`: the writer's).
    pub owner: Option<u32>,
    /// Group gid (`None`: the writer's).
    pub group: Option<u32>,
}

impl FileAttrs {
    /// `mode`, owned by the writer.
    pub fn mode(mode: u32) -> Self {
        FileAttrs {
            mode,
            owner: None,
            group: None,
        }
    }
}

/// Writes `bytes` to `path` atomically with `attrs` (see the module docs).
pub fn write_private(path: &Path, bytes: &[u8], attrs: &FileAttrs) -> Result<(), OutputError> {
    let mode = attrs.mode;
    match std::fs::symlink_metadata(path) {
        // SECURITY: never follow or replace a link someone may have planted at the target.
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(OutputError::Symlink(path.to_path_buf()));
        }
        Ok(meta) if !meta.is_file() => return Err(OutputError::NotAFile(path.to_path_buf())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot inspect", path)(e)),
    }
    let name = path
        .file_name()
        .ok_or_else(|| OutputError::NoFileName(path.to_path_buf()))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut random = [0u8; 12];
    getrandom::fill(&mut random).map_err(|e| {
        io("cannot get random bytes for a temporary file next to", path)(std::io::Error::other(
            e.to_string(),
        ))
    })?;
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(".{}.{suffix}.tmp", name.to_string_lossy()));
    // SECURITY: O_EXCL|O_NOFOLLOW: the name must be new, never an existing file or link. It is
    // created 0600 and gets its final mode only after its final owner and group: created with a
    // group-readable mode, it would be readable by the creator's group until the fchown.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits())
        .mode(0o600)
        .open(&tmp)
        .map_err(io("cannot create", &tmp))?;
    let mut guard = TempGuard {
        path: tmp.clone(),
        armed: true,
    };
    if attrs.owner.is_some() || attrs.group.is_some() {
        nix::unistd::fchown(
            &file,
            attrs.owner.map(nix::unistd::Uid::from_raw),
            attrs.group.map(nix::unistd::Gid::from_raw),
        )
        .map_err(|e| io("cannot set the owner of", &tmp)(std::io::Error::from(e)))?;
    }
    // The umask may have narrowed the mode (and a chown clears set-id bits): set exactly the one
    // asked for, still before writing.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io("cannot set the mode of", &tmp))?;
    file.write_all(bytes).map_err(io("cannot write", &tmp))?;
    file.sync_all().map_err(io("cannot fsync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("cannot rename the temporary file onto", path))?;
    guard.armed = false;
    // Make the rename itself durable; a failure here leaves a complete file in place.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn writes_with_the_mode_replaces_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app.conf");
        write_private(&target, b"one", &FileAttrs::mode(0o600)).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"one");
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o600);
        write_private(&target, b"two", &FileAttrs::mode(0o640)).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o640);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn owner_and_group_are_set_before_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app.conf");
        let me = nix::unistd::geteuid().as_raw();
        let attrs = FileAttrs {
            mode: 0o640,
            owner: Some(me),
            group: Some(nix::unistd::getegid().as_raw()),
        };
        write_private(&target, b"one", &attrs).unwrap();
        let meta = std::fs::metadata(&target).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (me, 0o640));
        if me != 0 {
            // Giving the file away needs privilege: refused, nothing left behind.
            let away = FileAttrs {
                owner: Some(0),
                ..attrs
            };
            assert!(matches!(
                write_private(&target, b"two", &away),
                Err(OutputError::Io { .. })
            ));
            assert_eq!(std::fs::read(&target).unwrap(), b"one");
        }
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn a_symlink_target_is_refused_and_its_destination_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = dir.path().join("out");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = write_private(&link, b"secret", &FileAttrs::mode(0o600)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is a symlink; refusing to write through it (give the real path)",
                link.display()
            )
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn a_failed_rename_removes_the_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A directory at the target: refused before anything is created.
        let target = dir.path().join("is-a-dir");
        std::fs::create_dir(&target).unwrap();
        assert!(matches!(
            write_private(&target, b"x", &FileAttrs::mode(0o600)),
            Err(OutputError::NotAFile(_))
        ));
        // A target in a directory that does not exist: creation fails, nothing is left.
        let missing = dir.path().join("no/such/file");
        assert!(matches!(
            write_private(&missing, b"x", &FileAttrs::mode(0o600)),
            Err(OutputError::Io { .. })
        ));
        assert!(leftovers(dir.path()).is_empty());
    }
}
