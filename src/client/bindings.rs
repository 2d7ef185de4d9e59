//! The `--env VAR=SOURCE/ID[#FIELD]` bindings of `exec` and `exec --watch`: parsed once, each
//! distinct secret listed once (a secret bound to two variables is fetched, and watched, once),
//! and the child's environment set from the values held for those secrets.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::ClientError;
use super::watch::{self, Current, Watched};
use crate::template::Schemes;

/// Parsed bindings.
#[derive(Debug)]
pub struct Bindings {
    /// Each variable with the index of its secret in `watched`.
    vars: Vec<(String, usize)>,
    /// Each distinct secret bound, in the order of first mention.
    pub watched: Vec<Watched>,
}

impl Bindings {
    /// Parses each `VAR=SOURCE/ID[#FIELD]` (`--scheme` mappings in `schemes`).
    pub fn parse(bindings: &[String], schemes: &Schemes) -> Result<Self, ClientError> {
        let mut watched = Vec::new();
        let mut vars = Vec::with_capacity(bindings.len());
        for binding in bindings {
            let (var, name, field) = crate::template::parse_env_binding_with(binding, schemes)
                .map_err(ClientError::Usage)?;
            let index = watch::index_of(
                &mut watched,
                Watched {
                    name: name.to_string(),
                    field,
                },
            );
            vars.push((var, index));
        }
        Ok(Bindings { vars, watched })
    }

    /// The first variable whose value cannot be in an environment (a NUL byte ends a C
    /// string), if any.
    pub fn unusable<'a>(&'a self, current: &'a [Current]) -> Option<&'a str> {
        self.env(current)
            .find(|(_, value)| value.as_bytes().contains(&0))
            .map(|(var, _)| var)
    }

    /// Each variable with its value, `current[i]` holding the value of `watched[i]`: for a
    /// command's `envs`.
    pub fn env<'a>(&'a self, current: &'a [Current]) -> impl Iterator<Item = (&'a str, &'a OsStr)> {
        self.vars.iter().map(|(var, index)| {
            let value = current.get(*index).map_or(&[][..], |c| c.value.as_slice());
            (var.as_str(), OsStr::from_bytes(value))
        })
    }
}
