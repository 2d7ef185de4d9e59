//! The env source: secrets from the agent's own environment, `{prefix}{id}`.
//!
//! Meant for containers whose orchestrator injects secrets as variables. Ids must be valid
//! variable-name characters. The prefix is required and non-empty (the config refuses an empty
//! one), and the variables the agent reads for its own credentials and settings (`AWS_*`,
//! `VAULT_*`, `BAO_*`, `CREDAGENT_*`) are never served, whatever the prefix and the rules say.
//! The process environment itself is ordinary memory: this source copies the value into secure
//! memory and wipes its temporary copy, but cannot lock the environment block (documented in the
//! README).

use serde::Deserialize;
use zeroize::Zeroize;

use crate::source::error::SourceError;

use crate::secure_mem::SecretBytes;
use crate::source::secret::Secret;

/// `[sources.NAME]` with `type = "env"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvSource {
    /// Prefix prepended to the id to form the variable name (required, non-empty).
    pub prefix: Option<String>,
}

/// Serves `{prefix}{id}` variables.
#[derive(Debug)]
pub struct EnvSource {
    prefix: String,
}

impl EnvSource {
    /// A source reading variables named `{prefix}{id}`.
    pub fn new(prefix: String) -> Self {
        EnvSource { prefix }
    }

    /// Reads the variable for `id`.
    pub fn fetch(&self, id: &str) -> Result<Secret, SourceError> {
        check_id(id).map_err(|why| SourceError::Invalid(why.to_owned()))?;
        let name = format!("{}{}", self.prefix, id);
        // SECURITY: the agent's own credentials live in its environment; they are not secrets
        // to serve (an `env/*` rule must not hand out AWS_SECRET_ACCESS_KEY or VAULT_TOKEN).
        if is_reserved(&name) {
            return Err(SourceError::NotFound);
        }
        let Some(value) = std::env::var_os(&name) else {
            return Err(SourceError::NotFound);
        };
        let mut bytes = std::os::unix::ffi::OsStringExt::into_vec(value);
        let secret = SecretBytes::from_slice(&bytes);
        bytes.zeroize();
        Ok(Secret::new(secret?, None))
    }
}

/// Prefixes of the variables the agent reads for its own credentials and settings.
pub const RESERVED_PREFIXES: [&str; 4] = ["AWS_", "VAULT_", "BAO_", "CREDAGENT_"];

/// Whether `name` is one of the agent's own variables (never served).
pub fn is_reserved(name: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Env ids are variable-name characters (checked by the broker before the cache, and here).
pub fn check_id(id: &str) -> Result<(), &'static str> {
    if id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err("env ids are letters, digits and '_' only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_table() {
        let cases = [
            ("AWS_SECRET_ACCESS_KEY", true),
            ("AWS_SESSION_TOKEN", true),
            ("VAULT_TOKEN", true),
            ("BAO_TOKEN", true),
            ("CREDAGENT_LOG", true),
            ("APP_SECRET_DB", false),
            ("MY_AWS_KEY", false),
            ("AWS", false),
        ];
        for (name, reserved) in cases {
            assert_eq!(is_reserved(name), reserved, "{name}");
        }
    }
}
