//! [`AuthError`]: why a source's AWS credentials could not be set up or were refused at start
//! (it decides exit 75 or 77). A leaf of `auth`: the providers and the checks return it.

use std::path::PathBuf;

use crate::source::error::SourceError;

/// Why credentials could not be set up or were refused at start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A key file is missing, unreadable, too open, or malformed.
    #[error("{key}: {path}: {reason}")]
    KeyFile {
        /// Config key naming the file.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why (never the contents).
        reason: String,
    },
    /// `auth = "access-key"` without files and without the variable.
    #[error(
        "{key}.auth = \"access-key\" without key files needs the environment variable {var}, which is not set"
    )]
    MissingEnv {
        /// Config key of the source.
        key: String,
        /// The variable.
        var: &'static str,
    },
    /// STS `GetCallerIdentity` with the base identity failed.
    #[error("{key}: base identity ({method}) check with sts:GetCallerIdentity failed: {cause}")]
    BaseIdentity {
        /// Config key of the source.
        key: String,
        /// Auth method.
        method: &'static str,
        /// What kind of failure (its detail is the SDK's chain, no credentials in it).
        cause: SourceError,
    },
    /// STS `AssumeRole` (checked with `GetCallerIdentity` on the assumed identity) failed.
    #[error("{key}.assume_role: cannot assume {role_arn}: {cause}")]
    AssumeRole {
        /// Config key of the source.
        key: String,
        /// The role.
        role_arn: String,
        /// What kind of failure.
        cause: SourceError,
    },
}

impl AuthError {
    /// Whether trying again later may succeed (the backend was unreachable, slow or throttled),
    /// as opposed to a refusal that stands (credentials rejected, access denied, no such role,
    /// a bad key file).
    pub fn retry_may_help(&self) -> bool {
        match self {
            AuthError::BaseIdentity { cause, .. } | AuthError::AssumeRole { cause, .. } => {
                cause.is_transient()
            }
            AuthError::KeyFile { .. } | AuthError::MissingEnv { .. } => false,
        }
    }
}
