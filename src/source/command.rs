//! The command source (`type = "command"`): for stores with a CLI of their own (`pass`,
//! `gopass`, `op`, `sops -d`), the value is what a command prints.
//!
//! It owns its config section ([`RawCommandSource`]), running the command and reading its
//! output. The command runs without a shell: `argv` is executed as given, each element equal to
//! `{id}` replaced by the id as one whole argument, with the environment cleared except the
//! variables named in `env_passthrough`, stdin from /dev/null, stderr discarded, no descriptor
//! of the agent's beyond those three (not its sockets, not one passed by systemd), in its own
//! process group (killed whole on timeout). Its stdout is read through a locked buffer into
//! locked memory, at most [`MAX_SECRET_LEN`] bytes. An exit status listed in
//! `not_found_exit_codes` is "no such secret"; any other failure is reported with its exit code
//! in the log only — what the command wrote to stderr reaches neither the log nor a client.
//!
//! It does not cache, check access, or retry: the cache and the ACL do, and a failure is
//! transient for stale-if-error.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::source::error::SourceError;

use crate::secure_mem::{MAX_SECRET_LEN, SecretBuf, SecretBytes};
use crate::source::secret::{Fetched, Secret, SecretRequest};
use crate::source::section::Invalid;

/// The argument `argv` elements must equal to receive the id.
pub const ID_PLACEHOLDER: &str = "{id}";

/// Default bound on one run.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `[sources.NAME]` with `type = "command"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommandSource {
    /// Program and arguments; elements equal to `{id}` receive the id.
    pub argv: Vec<String>,
    /// Bound on one run (the process group is killed after it); default 10.
    pub timeout_secs: Option<u64>,
    /// Remove one trailing `\n` (or `\r\n`) from the output; default true.
    pub trim_newline: Option<bool>,
    /// Variables of the agent's environment the command receives (all others are cleared).
    #[serde(default)]
    pub env_passthrough: Vec<String>,
    /// Exit statuses meaning "no such secret" (404).
    #[serde(default)]
    pub not_found_exit_codes: Vec<i32>,
    /// Every run prints a new value (a token minter): a forced refresh of a fresh one is
    /// answered from the cache; default false.
    #[serde(default)]
    pub minted: bool,
}

/// A validated `command` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandConfig {
    /// Program and arguments, `{id}` elements still in place.
    pub argv: Vec<String>,
    /// Bound on one run.
    pub timeout: Duration,
    /// Remove one trailing newline.
    pub trim_newline: bool,
    /// Variables passed through.
    pub env_passthrough: Vec<String>,
    /// Exit statuses meaning 404.
    pub not_found_exit_codes: Vec<i32>,
    /// Every run prints a new value.
    pub minted: bool,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid::new(key, reason)
}

impl RawCommandSource {
    /// Validates the section.
    pub fn validate(&self) -> Result<CommandConfig, Invalid> {
        let Some(program) = self.argv.first() else {
            return Err(invalid("argv", "must name a program"));
        };
        if program.is_empty() || program == ID_PLACEHOLDER {
            return Err(invalid("argv", "the first element must name a program"));
        }
        if program.contains('/') && !program.starts_with('/') {
            return Err(invalid(
                "argv",
                format!("{program:?}: a program path must be absolute (or a bare name)"),
            ));
        }
        if !self.argv.iter().any(|a| a == ID_PLACEHOLDER) {
            return Err(invalid(
                "argv",
                "needs an element \"{id}\" (every id would get the same value otherwise)",
            ));
        }
        if let Some(arg) = self
            .argv
            .iter()
            .find(|a| a.contains(ID_PLACEHOLDER) && *a != ID_PLACEHOLDER)
        {
            return Err(invalid(
                "argv",
                format!("{arg:?}: \"{{id}}\" is substituted only as a whole argument"),
            ));
        }
        let secs = self.timeout_secs.unwrap_or(DEFAULT_TIMEOUT.as_secs());
        if !(1..=599).contains(&secs) {
            return Err(invalid(
                "timeout_secs",
                format!("must be between 1 and 599, got {secs}"),
            ));
        }
        for var in &self.env_passthrough {
            let ok = !var.is_empty()
                && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !var.as_bytes()[0].is_ascii_digit();
            if !ok {
                return Err(invalid(
                    "env_passthrough",
                    format!("{var:?} is not a variable name"),
                ));
            }
            // SECURITY: the agent's own credentials are not handed to other programs.
            if super::env::is_reserved(var) {
                return Err(invalid(
                    "env_passthrough",
                    format!(
                        "{var:?} is one of the agent's own variables (AWS_*, VAULT_*, BAO_*, \
                         CREDAGENT_*), which commands never receive"
                    ),
                ));
            }
        }
        if let Some(code) = self
            .not_found_exit_codes
            .iter()
            .find(|c| !(1..=255).contains(*c))
        {
            return Err(invalid(
                "not_found_exit_codes",
                format!("{code} is not a failing exit status (1 to 255)"),
            ));
        }
        Ok(CommandConfig {
            argv: self.argv.clone(),
            timeout: Duration::from_secs(secs),
            trim_newline: self.trim_newline.unwrap_or(true),
            env_passthrough: self.env_passthrough.clone(),
            not_found_exit_codes: self.not_found_exit_codes.clone(),
            minted: self.minted,
        })
    }
}

/// Ids are letters, digits and `/_+=.@-`, not starting with `-` (which the command would read
/// as an option).
pub fn check_id(id: &str) -> Result<(), &'static str> {
    // SECURITY: `-x` or `--flag` as the id would be an option to the command.
    if id.starts_with('-') {
        return Err("a command source id must not start with '-'");
    }
    if id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b))
    {
        Ok(())
    } else {
        Err("a command source id is letters, digits and /_+=.@-")
    }
}

/// The command's program is not an executable file (an absolute path), or no executable of that
/// name is in the agent's `PATH`.
#[derive(Debug, thiserror::Error)]
#[error("{name:?} is not an executable {}", if *searched_path { "in the agent's PATH" } else { "file" })]
pub struct ProgramNotFound {
    /// `argv[0]`.
    pub name: String,
    /// Whether `PATH` was searched (a bare name) or the path was taken as given.
    pub searched_path: bool,
}

/// Runs a configured command per fetch.
#[derive(Debug)]
pub struct CommandSource {
    program: PathBuf,
    config: CommandConfig,
}

impl CommandSource {
    /// Whether every run prints a new value (`minted = true`).
    pub fn minted(&self) -> bool {
        self.config.minted
    }

    /// Resolves the program (a bare name through the agent's `PATH`, once, at start).
    pub fn build(config: &CommandConfig) -> Result<CommandSource, ProgramNotFound> {
        let name = config.argv.first().map(String::as_str).unwrap_or_default();
        let program = resolve_program(name, std::env::var_os("PATH").as_deref())?;
        Ok(CommandSource {
            program,
            config: config.clone(),
        })
    }

    /// Runs the command for `request`'s id.
    pub async fn fetch(&self, request: &SecretRequest) -> Result<Fetched, SourceError> {
        let id = request.name.id();
        check_id(id).map_err(|why| SourceError::Invalid(why.to_owned()))?;
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(self.config.argv.iter().skip(1).map(|arg| {
                if arg == ID_PLACEHOLDER {
                    id
                } else {
                    arg.as_str()
                }
            }))
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // SECURITY: stderr may echo what it failed on; it goes nowhere.
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        for var in &self.config.env_passthrough {
            if let Some(value) = std::env::var_os(var) {
                command.env(var, value);
            }
        }
        // SECURITY: the agent's sockets (its listeners, connections, a backend's) never reach
        // a command: it gets fds 0, 1 and 2 only.
        crate::secure_mem::close_other_fds_on_exec(command.as_std_mut());
        let mut child = command.spawn().map_err(|e| SourceError::Unavailable {
            detail: format!("cannot run {}: {e}", self.program.display()),
        })?;
        let pid = child.id();
        let run = async {
            let Some(mut stdout) = child.stdout.take() else {
                return Err(SourceError::Unavailable {
                    detail: "no stdout pipe".to_owned(),
                });
            };
            let value = read_limited(&mut stdout).await;
            drop(stdout);
            let status = child.wait().await.map_err(|e| SourceError::Unavailable {
                detail: format!("waiting for the command: {e}"),
            })?;
            Ok((value, status))
        };
        let (value, status) = match tokio::time::timeout(self.config.timeout, run).await {
            Err(_) => {
                // The child is not reaped yet, so its pid still names its group: kill the
                // whole group (a daemon the command started in its own session survives).
                kill_group(pid);
                tracing::warn!(program = %self.program.display(), "command timed out; killed");
                return Err(SourceError::Timeout(self.config.timeout));
            }
            Ok(result) => result?,
        };
        match status.code() {
            Some(0) => {}
            Some(code) if self.config.not_found_exit_codes.contains(&code) => {
                return Err(SourceError::NotFound);
            }
            Some(code) => {
                return Err(SourceError::Unavailable {
                    detail: format!("{} exited with status {code}", self.program.display()),
                });
            }
            None => {
                return Err(SourceError::Unavailable {
                    detail: format!("{} was killed by a signal", self.program.display()),
                });
            }
        }
        let mut value = value?;
        if self.config.trim_newline {
            value = trim_one_newline(value)?;
        }
        Ok(Fetched::New(Secret::new(value, None)))
    }
}

/// Reads `reader` to its end into locked memory (through a locked chunk), refusing more than
/// [`MAX_SECRET_LEN`] bytes.
async fn read_limited<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<SecretBytes, SourceError> {
    let mut chunk = SecretBytes::zeroed(16 * 1024)?;
    let mut out = SecretBuf::with_capacity(1024)?;
    loop {
        let n = reader
            .read(chunk.as_mut_slice())
            .await
            .map_err(|e| SourceError::Unavailable {
                detail: format!("reading the command's output: {e}"),
            })?;
        if n == 0 {
            break;
        }
        if out.len().saturating_add(n) > MAX_SECRET_LEN {
            return Err(SourceError::BadReply {
                detail: format!("the command printed more than {MAX_SECRET_LEN} bytes"),
            });
        }
        out.extend_from_slice(&chunk.as_slice()[..n])?;
    }
    Ok(out.finish()?)
}

/// Drops one trailing `\n` or `\r\n`.
fn trim_one_newline(value: SecretBytes) -> Result<SecretBytes, SourceError> {
    let bytes = value.as_slice();
    let len = match bytes {
        [.., b'\r', b'\n'] => bytes.len().saturating_sub(2),
        [.., b'\n'] => bytes.len().saturating_sub(1),
        _ => return Ok(value),
    };
    Ok(value.truncated(len)?)
}

/// Kills the process group led by `pid` (the command ran with `process_group(0)`).
fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    // ESRCH (the group is gone) is the usual case and not an error.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// An absolute program path, or a bare name looked up in `path` (the agent's `PATH`).
fn resolve_program(name: &str, path: Option<&std::ffi::OsStr>) -> Result<PathBuf, ProgramNotFound> {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.starts_with('/') {
        let path = PathBuf::from(name);
        return if executable(&path) {
            Ok(path)
        } else {
            Err(ProgramNotFound {
                name: name.to_owned(),
                searched_path: false,
            })
        };
    }
    path.map(std::env::split_paths)
        .into_iter()
        .flatten()
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
        .ok_or_else(|| ProgramNotFound {
            name: name.to_owned(),
            searched_path: true,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CommandConfig, Invalid> {
        let raw: RawCommandSource = toml::from_str(text).map_err(|e| Invalid {
            key: "parse".into(),
            reason: e.to_string(),
        })?;
        raw.validate()
    }

    #[test]
    fn config_defaults_and_invalid_values_table() {
        let cfg = parse("argv = [\"pass\", \"show\", \"{id}\"]").unwrap();
        assert_eq!(cfg.timeout, DEFAULT_TIMEOUT);
        assert!(cfg.trim_newline);
        assert!(cfg.env_passthrough.is_empty() && cfg.not_found_exit_codes.is_empty());
        for (text, key) in [
            ("argv = []", "argv"),
            ("argv = [\"{id}\"]", "argv"),
            ("argv = [\"bin/pass\", \"{id}\"]", "argv"),
            ("argv = [\"pass\", \"show\"]", "argv"),
            ("argv = [\"op\", \"op://{id}\"]", "argv"),
            (
                "argv = [\"pass\", \"{id}\"]\ntimeout_secs = 0",
                "timeout_secs",
            ),
            (
                "argv = [\"pass\", \"{id}\"]\nenv_passthrough = [\"A-B\"]",
                "env_passthrough",
            ),
            (
                "argv = [\"pass\", \"{id}\"]\nenv_passthrough = [\"AWS_SECRET_ACCESS_KEY\"]",
                "env_passthrough",
            ),
            (
                "argv = [\"pass\", \"{id}\"]\nnot_found_exit_codes = [0]",
                "not_found_exit_codes",
            ),
            ("argv = [\"pass\", \"{id}\"]\nshell = true", "parse"),
        ] {
            assert_eq!(parse(text).unwrap_err().key, key, "{text}");
        }
    }

    #[test]
    fn ids_table() {
        for (id, ok) in [
            ("app/db", true),
            ("a+b=c.d@e_f-g", true),
            ("-x", false),
            ("--help", false),
            ("a b", false),
            ("a:b", false),
        ] {
            assert_eq!(check_id(id).is_ok(), ok, "{id}");
        }
    }

    #[test]
    fn programs_resolve_through_path_only_when_executable() {
        let path = std::ffi::OsString::from("relative:/nonexistent:/bin:/usr/bin");
        assert!(resolve_program("sh", Some(&path)).unwrap().is_absolute());
        assert!(resolve_program("no-such-program-x", Some(&path)).is_err());
        assert!(resolve_program("sh", None).is_err());
        assert!(resolve_program("/bin/sh", None).is_ok());
        assert!(resolve_program("/etc/passwd", None).is_err());
    }

    #[test]
    fn one_trailing_newline_is_trimmed() {
        for (input, want) in [
            (&b"pw\n"[..], &b"pw"[..]),
            (b"pw\r\n", b"pw"),
            (b"pw\n\n", b"pw\n"),
            (b"pw", b"pw"),
            (b"\n", b""),
            (b"", b""),
        ] {
            let value = SecretBytes::from_slice(input).unwrap();
            assert_eq!(trim_one_newline(value).unwrap().as_slice(), want);
        }
    }

    #[tokio::test]
    async fn output_past_the_limit_is_refused() {
        let big = vec![b'x'; MAX_SECRET_LEN + 1];
        let err = read_limited(&mut big.as_slice()).await.unwrap_err();
        assert!(matches!(err, SourceError::BadReply { .. }));
        let ok = vec![b'y'; MAX_SECRET_LEN];
        assert_eq!(
            read_limited(&mut ok.as_slice()).await.unwrap().len(),
            MAX_SECRET_LEN
        );
    }
}
