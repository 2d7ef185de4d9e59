//! `auth = "access-key"`: a long-lived access key from two files (private to the agent:
//! `crate::source::credfile`, checked again on the open file) or from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
//! (`AWS_SESSION_TOKEN` optional).
//!
//! The key strings are moved, not copied, into the SDK's `Credentials`, which zeroizes them on
//! drop; nothing here logs them. It does not refresh anything: a static key never expires.

use std::path::{Path, PathBuf};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use zeroize::Zeroize;

use super::error::AuthError;

/// Files holding an access key (each private to the agent: `crate::source::credfile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// File with the access key id.
    pub access_key_id: PathBuf,
    /// File with the secret access key.
    pub secret_access_key: PathBuf,
}

/// Largest key file accepted (keys are tens of bytes; this only bounds a wrong path).
const MAX_KEY_FILE: usize = 4096;

/// A static provider from `files`, or from the environment when `files` is `None`.
pub fn provider(
    key: &str,
    files: Option<&KeyFiles>,
) -> Result<SharedCredentialsProvider, AuthError> {
    let credentials = match files {
        Some(files) => {
            let id = read_key_file(&format!("{key}.access_key_id_file"), &files.access_key_id)?;
            let secret = read_key_file(
                &format!("{key}.secret_access_key_file"),
                &files.secret_access_key,
            )?;
            Credentials::new(id, secret, None, None, "credagent-access-key-file")
        }
        None => {
            let id = env_var(key, "AWS_ACCESS_KEY_ID")?;
            let secret = env_var(key, "AWS_SECRET_ACCESS_KEY")?;
            let token = std::env::var("AWS_SESSION_TOKEN")
                .ok()
                .filter(|t| !t.is_empty());
            Credentials::new(id, secret, token, None, "credagent-access-key-env")
        }
    };
    Ok(SharedCredentialsProvider::new(credentials))
}

fn env_var(key: &str, var: &'static str) -> Result<String, AuthError> {
    let missing = || AuthError::MissingEnv {
        key: key.to_owned(),
        var,
    };
    let mut value = std::env::var(var).map_err(|_| missing())?;
    let trimmed = value.trim().to_owned();
    value.zeroize();
    if trimmed.is_empty() {
        return Err(missing());
    }
    Ok(trimmed)
}

/// Reads one key file (`credfile::read`: the rule checked on the open descriptor, into locked
/// memory), surrounding whitespace trimmed. The SDK takes the key as a `String`: that one copy
/// is the only one outside locked memory.
fn read_key_file(key: &str, path: &Path) -> Result<String, AuthError> {
    let fail = |reason: String| AuthError::KeyFile {
        key: key.to_owned(),
        path: path.to_path_buf(),
        reason,
    };
    let bytes =
        crate::source::credfile::read(path, MAX_KEY_FILE).map_err(|e| fail(e.to_string()))?;
    let text = std::str::from_utf8(bytes.as_slice())
        .map_err(|_| fail("is not UTF-8 text".to_owned()))?
        .trim();
    if text.is_empty() || text.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(fail(
            "must hold exactly one key (no inner whitespace, not empty)".to_owned(),
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn key_files_table() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(dir.path(), "ok", "  AKIAEXAMPLE\n", 0o600);
        let ro = write(dir.path(), "ro", "AKIAEXAMPLE", 0o400);
        let open = write(dir.path(), "open", "AKIAEXAMPLE", 0o644);
        let group = write(dir.path(), "group", "AKIAEXAMPLE", 0o640);
        let empty = write(dir.path(), "empty", "\n", 0o600);
        let two = write(dir.path(), "two", "A B", 0o600);
        assert_eq!(read_key_file("k", &ok).unwrap(), "AKIAEXAMPLE");
        assert_eq!(read_key_file("k", &ro).unwrap(), "AKIAEXAMPLE");
        for path in [&open, &group] {
            let err = read_key_file("sources.aws.access_key_id_file", path).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("sources.aws.access_key_id_file"), "{text}");
            assert!(text.contains("0600"), "{text}");
            assert!(!text.contains("AKIAEXAMPLE"), "{text}");
        }
        assert!(matches!(
            read_key_file("k", &empty),
            Err(AuthError::KeyFile { .. })
        ));
        assert!(matches!(
            read_key_file("k", &two),
            Err(AuthError::KeyFile { .. })
        ));
        assert!(matches!(
            read_key_file("k", &dir.path().join("missing")),
            Err(AuthError::KeyFile { .. })
        ));
    }
}
