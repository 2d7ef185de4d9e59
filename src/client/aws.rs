//! `credagent exec --aws PROFILE_PATH [--env …] -- CMD`: run CMD as a child that takes AWS
//! credentials from the agent's container-credentials listener. credagent asks the agent for a
//! token (`POST /v1/aws-token/PROFILE_PATH`, issued to this process's identity), writes it to a
//! private file (0600 in a 0700 directory), gives the child `AWS_CONTAINER_CREDENTIALS_FULL_URI`
//! and `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, renews the token at half its life, passes
//! SIGTERM/SIGINT/SIGHUP on, removes the file when the child exits and exits with its status.
//! It does not follow `--env` values (that is `exec --watch`).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use nix::sys::signal::Signal;

use super::ClientError;
use super::bindings::Bindings;
use super::supervise::{child_command, exit_code};
use super::watch::{self, Signals};
use crate::secure_mem::SecretBytes;

/// Variables that would take precedence over the container provider in the SDKs' chains, or
/// point it elsewhere: removed from the child's environment.
const SHADOWING: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
];
/// Shortest wait between two renewal attempts.
const MIN_RENEW: Duration = Duration::from_secs(5);

/// What `exec --aws` was asked to do.
#[derive(Debug)]
pub struct ExecAws<'a> {
    /// Agent socket.
    pub socket: &'a Path,
    /// `SOURCE/PROFILE` of an aws-credentials profile.
    pub profile: &'a str,
    /// `VAR=SOURCE/ID[#FIELD]` bindings, read once.
    pub bindings: &'a [String],
    /// `--scheme` mappings in effect.
    pub schemes: &'a crate::template::Schemes,
    /// The command and its arguments.
    pub command: &'a [String],
}

/// An issued token, where to present it, and for how long it holds.
struct Issued {
    token: SecretBytes,
    uri: String,
    lifetime: Duration,
}

#[derive(serde::Deserialize)]
struct TokenReply {
    token: String,
    uri: String,
    expires_in_secs: u64,
}

async fn issue(socket: &Path, profile: &str) -> Result<Issued, ClientError> {
    if !profile.contains('/') {
        return Err(ClientError::Usage(format!(
            "--aws {profile:?}: expected SOURCE/PROFILE, e.g. aws/reader"
        )));
    }
    let path = format!("/v1/aws-token/{}", super::encode(profile, true));
    let body = super::call(socket, Method::POST, &path, Bytes::new()).await?;
    let reply: TokenReply = serde_json::from_slice(&body)
        .map_err(|_| super::broken(socket, "the agent's token answer is not its JSON"))?;
    let token = SecretBytes::from_vec_wiping(reply.token.into_bytes())
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    Ok(Issued {
        token,
        uri: reply.uri,
        lifetime: Duration::from_secs(reply.expires_in_secs),
    })
}

/// A private directory holding the token file; removed on drop.
struct TokenDir {
    dir: PathBuf,
    file: PathBuf,
}

impl TokenDir {
    fn create() -> Result<Self, ClientError> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let random = getrandom::u64().map_err(|e| ClientError::Usage(e.to_string()))?;
        let dir = base.join(format!(
            "credagent-aws-{}-{random:016x}",
            std::process::id()
        ));
        // SECURITY: a new directory of our own (create fails if the name exists), 0700.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| ClientError::Usage(format!("cannot create {}: {e}", dir.display())))?;
        let file = dir.join("token");
        Ok(TokenDir { dir, file })
    }

    /// Writes `token` as the file's whole content, replacing the old one atomically (the SDKs
    /// re-read it on every fetch).
    fn write(&self, token: &SecretBytes) -> Result<(), ClientError> {
        let next = self.dir.join("token.next");
        let failed = |e: std::io::Error| {
            ClientError::Usage(format!("cannot write {}: {e}", self.file.display()))
        };
        let _ = std::fs::remove_file(&next);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&next)
            .map_err(failed)?;
        out.write_all(token.as_slice()).map_err(failed)?;
        out.sync_all().map_err(failed)?;
        std::fs::rename(&next, &self.file).map_err(failed)
    }
}

impl Drop for TokenDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the child until it exits; returns its exit code for credagent to exit with.
pub async fn run(exec: ExecAws<'_>) -> Result<u8, ClientError> {
    let mut signals = Signals::install(true)?;
    let bindings = Bindings::parse(exec.bindings, exec.schemes)?;
    let current = watch::fetch_once(exec.socket, &bindings.watched).await?;
    let issued = issue(exec.socket, exec.profile).await?;
    let dir = TokenDir::create()?;
    dir.write(&issued.token)?;
    let (mut cmd, program) = child_command(exec.command, &bindings, &current)?;
    for var in SHADOWING {
        cmd.env_remove(var);
    }
    cmd.env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &issued.uri)
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &dir.file);
    let mut child = cmd
        .spawn()
        .map_err(|e| ClientError::Usage(format!("cannot run {program}: {e}")))?;
    let mut schedule = Schedule::issued(issued.lifetime);
    drop(issued);
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| ClientError::Usage(format!("waiting for the child: {e}")))?;
                return Ok(exit_code(status));
            }
            signal = signals.recv() => pass_on(&child, signal),
            () = tokio::time::sleep(schedule.renew_in) => {
                match issue(exec.socket, exec.profile).await.and_then(|next| {
                    dir.write(&next.token)?;
                    Ok(next.lifetime)
                }) {
                    Ok(lifetime) => schedule = Schedule::issued(lifetime),
                    Err(err) => {
                        schedule = schedule.failed();
                        eprintln!("credagent: cannot renew the AWS container token (retrying in {}s): {err}", schedule.renew_in.as_secs());
                    }
                }
            }
        }
    }
}

/// When the next renewal is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Schedule {
    /// Until the next attempt.
    renew_in: Duration,
    /// How long the token in the file still holds.
    valid_for: Duration,
}

impl Schedule {
    /// A token that holds for `lifetime` was just written: renew at half of it.
    fn issued(lifetime: Duration) -> Self {
        Schedule {
            renew_in: (lifetime / 2).max(MIN_RENEW),
            valid_for: lifetime,
        }
    }

    /// The attempt due now failed. The old token holds until it expires, so the next attempts
    /// come at a quarter of the time it has left (at least [`MIN_RENEW`] apart), and the child
    /// keeps working meanwhile.
    fn failed(self) -> Self {
        let valid_for = self.valid_for.saturating_sub(self.renew_in);
        Schedule {
            renew_in: (valid_for / 4).max(MIN_RENEW),
            valid_for,
        }
    }
}

fn pass_on(child: &tokio::process::Child, signal: Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_renewed_at_half_its_life_and_retried_ever_sooner_before_it_expires() {
        let fresh = Schedule::issued(Duration::from_secs(900));
        assert_eq!(fresh.renew_in, Duration::from_secs(450));
        let once = fresh.failed();
        assert_eq!(once.valid_for, Duration::from_secs(450));
        assert_eq!(
            once.renew_in,
            Duration::from_secs(112) + Duration::from_millis(500)
        );
        let twice = once.failed();
        assert!(twice.renew_in < once.renew_in);
        // Near the end the retries keep coming, never faster than MIN_RENEW.
        let mut late = twice;
        for _ in 0..20 {
            late = late.failed();
        }
        assert_eq!(late.renew_in, MIN_RENEW);
        assert_eq!(late.valid_for, Duration::ZERO);
        assert_eq!(Schedule::issued(Duration::from_secs(2)).renew_in, MIN_RENEW);
    }
}
