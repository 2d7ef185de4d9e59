//! The rule for credential files: files the agent reads to log in itself (AWS key files; Vault
//! token, role_id, secret_id and JWT files) must be private to it.
//!
//! A credential file readable by others hands them the agent's identity, and with it every secret
//! behind every `[[allow]]` rule; one writable by others, or owned by another user, lets them swap
//! the agent's identity. So a file is refused unless it is a regular file, owned by the agent's
//! user or root, with no group or other permission bits, and the agent can open it. The rule is
//! applied when a config is built (start, reload, `check-config`) and again on the descriptor
//! every credential file is read from ([`read`], the one reader: into locked memory, bounded).
//! CA bundles are public and never checked here.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::secure_mem::{MemError, SecretBytes};

/// Why a credential file could not be read. The messages name no contents.
#[derive(Debug, thiserror::Error)]
pub enum CredFileError {
    /// It could not be opened, examined or read.
    #[error("{0}")]
    Io(String),
    /// It breaks the rule (not a regular file, another owner, group or other bits).
    #[error("{0}")]
    Refused(String),
    /// It holds more than the reader takes.
    #[error("is larger than {0} bytes")]
    TooLarge(usize),
    /// Locked memory could not hold it.
    #[error(transparent)]
    Memory(#[from] MemError),
}

/// Reads the credential file at `path` (at most `max` bytes) into locked memory, checking the
/// rule on the descriptor it reads (a file swapped or opened up since the config was checked is
/// refused). The value is returned as written; callers trim it.
pub fn read(path: &Path, max: usize) -> Result<SecretBytes, CredFileError> {
    let mut file =
        std::fs::File::open(path).map_err(|e| CredFileError::Io(format!("cannot open: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| CredFileError::Io(format!("cannot stat: {e}")))?;
    // SECURITY: the same rule the config applied, again on the descriptor actually read.
    check_metadata(path, &meta).map_err(CredFileError::Refused)?;
    // One byte more than allowed tells a file that is too large from one that fits exactly.
    let mut buf = SecretBytes::zeroed(max.saturating_add(1))?;
    let mut len = 0;
    loop {
        let room = buf.as_mut_slice().get_mut(len..).unwrap_or_default();
        if room.is_empty() {
            return Err(CredFileError::TooLarge(max));
        }
        let n = file
            .read(room)
            .map_err(|e| CredFileError::Io(format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        len = len.saturating_add(n);
    }
    Ok(buf.truncated(len)?)
}

/// Checks that `path` is a credential file only the agent can read. The error is one sentence
/// naming the file, its mode and owner, and the commands that fix it.
pub fn check(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    check_metadata(path, &meta)?;
    // The agent must also be able to open it (a root-owned 0600 file is safe but unreadable
    // for a non-root agent): say so now rather than at the first login.
    std::fs::File::open(path).map(drop).map_err(|e| {
        format!(
            "{}: cannot open it as {} ({e}); fix: {}",
            path.display(),
            user_name(nix::unistd::geteuid().as_raw()),
            fix(path)
        )
    })
}

/// The rule on metadata already fetched (e.g. from the open descriptor).
pub fn check_metadata(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mode = meta.mode() & 0o7777;
    let agent = nix::unistd::geteuid().as_raw();
    let owner_ok = meta.uid() == agent || meta.uid() == 0;
    // SECURITY: group/other bits let others read the agent's identity or replace it.
    if mode & 0o077 != 0 || !owner_ok {
        return Err(format!(
            "{} has mode {mode:04o} and owner {}; a credential file must be owned by {} and not \
             readable or writable by group or others; fix: {}",
            path.display(),
            user_name(meta.uid()),
            owners(agent),
            fix(path)
        ));
    }
    Ok(())
}

/// Who may own a credential file, in words.
fn owners(agent: u32) -> String {
    if agent == 0 {
        "root (the agent's user)".to_owned()
    } else {
        format!("{} (the agent's user) or root", user_name(agent))
    }
}

/// The commands that make `path` private to the agent's user.
fn fix(path: &Path) -> String {
    let user = user_name(nix::unistd::geteuid().as_raw());
    format!(
        "chown {user} {p} && chmod 0600 {p}",
        p = shell_quote(&path.display().to_string())
    )
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

/// Quotes a path for a copy-pasted shell command when it needs it.
fn shell_quote(text: &str) -> String {
    if text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+=@:,".contains(&b))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_reader_checks_the_descriptor_and_bounds_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s.token\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&path, 8).unwrap().as_slice(), b"s.token\n");
        assert!(matches!(read(&path, 7), Err(CredFileError::TooLarge(7))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(read(&path, 8), Err(CredFileError::Refused(_))));
        assert!(matches!(
            read(&dir.path().join("missing"), 8),
            Err(CredFileError::Io(_))
        ));
        assert!(matches!(
            read(dir.path(), 8),
            Err(CredFileError::Refused(_))
        ));
    }

    #[test]
    fn modes_table() {
        let dir = tempfile::tempdir().unwrap();
        let me = user_name(nix::unistd::geteuid().as_raw());
        let owners = owners(nix::unistd::geteuid().as_raw());
        let cases: &[(u32, bool)] = &[
            (0o600, true),
            (0o400, true),
            (0o700, true),
            (0o640, false),
            (0o604, false),
            (0o620, false),
            (0o602, false),
            (0o644, false),
            (0o660, false),
        ];
        for (mode, ok) in cases {
            let path = dir.path().join(format!("f{mode:o}"));
            std::fs::write(&path, "x").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
            match check(&path) {
                Ok(()) => assert!(ok, "{mode:o} accepted"),
                Err(e) => {
                    assert!(!ok, "{mode:o} refused: {e}");
                    assert_eq!(
                        e,
                        format!(
                            "{p} has mode {mode:04o} and owner {me}; a credential file must be \
                             owned by {owners} and not readable or writable by group or others; \
                             fix: chown {me} {p} && chmod 0600 {p}",
                            p = path.display()
                        )
                    );
                }
            }
        }
        assert_eq!(
            check(dir.path()),
            Err(format!("{} is not a regular file", dir.path().display()))
        );
        assert!(check(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn quoting_table() {
        assert_eq!(shell_quote("/etc/credagent/token"), "/etc/credagent/token");
        assert_eq!(shell_quote("/a b"), "'/a b'");
        assert_eq!(shell_quote("/it's"), "'/it'\\''s'");
    }
}
