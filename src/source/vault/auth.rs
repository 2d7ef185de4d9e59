//! The agent's own Vault identity: login (token file, AppRole, JWT/Kubernetes), the token in
//! secure memory, and a background task that renews it at about 2/3 of its TTL and logs in again
//! (exponential backoff with jitter) when it can no longer be renewed or Vault calls it invalid.
//!
//! Tokens, secret_ids and JWTs exist only in [`SecretBytes`]; none is ever logged, and `Debug`
//! prints none. Login request bodies are built in secure memory. It does not read secrets: the KV
//! and transit modules call [`VaultSession::call`], which retries once after a re-login when a
//! 403 turns out to mean "this token is no longer valid" rather than "your policy says no".

// SECURITY: TTLs here come from Vault's replies; arithmetic on them must not overflow.
#![deny(clippy::arithmetic_side_effects)]

use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde::Deserialize;
use tokio::sync::{Notify, watch};

use super::config::{VaultAuthConfig, VaultConfig};
use crate::jsonval::push_json_string;
use crate::secure_mem::{SecretBuf, SecretBytes};
use crate::source::error::SourceError;
use crate::source::http::{Reply, VaultHttp};

/// Bound on one login or renewal call of the background task.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// First re-login delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between login attempts (as Vault Agent).
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a request waits for a re-login after Vault called the token invalid.
const RELOGIN_WAIT: Duration = Duration::from_secs(5);

/// What Vault granted: the token and how long it lives.
struct Grant {
    token: SecretBytes,
    ttl: Duration,
    renewable: bool,
}

/// A logged-in Vault client shared by a KV source and its transit companion.
pub struct VaultSession {
    name: String,
    http: VaultHttp,
    auth: VaultAuthConfig,
    token: RwLock<Arc<SecretBytes>>,
    generation: watch::Sender<u64>,
    relogin: Arc<Notify>,
}

impl std::fmt::Debug for VaultSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSession")
            .field("source", &self.name)
            .field("address", &self.http.address())
            .field("method", &self.auth.method())
            .finish_non_exhaustive()
    }
}

/// Why the first login to Vault failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The client could not be set up (CA bundle, TLS).
    #[error("{0}")]
    Setup(crate::source::http::SetupError),
    /// The login itself failed.
    #[error("login to Vault ({method}) failed: {cause}")]
    Login {
        /// Auth method.
        method: &'static str,
        /// What kind of failure.
        cause: SourceError,
    },
}

impl ConnectError {
    /// Whether trying again later may succeed (Vault unreachable, sealed, slow), as opposed to a
    /// refusal that stands (credentials rejected, no such role, a bad CA bundle).
    pub fn retry_may_help(&self) -> bool {
        match self {
            ConnectError::Setup(_) => false,
            ConnectError::Login { cause, .. } => cause.is_transient(),
        }
    }
}

/// Logs in to Vault for source `name` and starts the renewal task.
pub async fn connect(name: &str, config: &VaultConfig) -> Result<Arc<VaultSession>, ConnectError> {
    let http = VaultHttp::new(
        &config.address,
        config.namespace.as_deref(),
        config.ca_file.as_deref(),
    )
    .map_err(ConnectError::Setup)?;
    let grant = tokio::time::timeout(CALL_TIMEOUT, login(&http, &config.auth))
        .await
        .map_err(|_| ConnectError::Login {
            method: config.auth.method(),
            cause: SourceError::Timeout(CALL_TIMEOUT),
        })?
        .map_err(|cause| ConnectError::Login {
            method: config.auth.method(),
            cause,
        })?;
    tracing::info!(
        source = name,
        method = config.auth.method(),
        ttl_secs = grant.ttl.as_secs(),
        "logged in to Vault"
    );
    let (generation, _) = watch::channel(0);
    let session = Arc::new(VaultSession {
        name: name.to_owned(),
        http,
        auth: config.auth.clone(),
        token: RwLock::new(Arc::new(grant.token)),
        generation,
        relogin: Arc::new(Notify::new()),
    });
    let weak = Arc::downgrade(&session);
    let relogin = session.relogin.clone();
    tokio::spawn(maintain(
        weak,
        relogin,
        name.to_owned(),
        grant.ttl,
        grant.renewable,
    ));
    Ok(session)
}

impl VaultSession {
    fn current(&self) -> Arc<SecretBytes> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn install(&self, token: SecretBytes) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(token);
        // A change counter compared for equality only: wrapping is harmless.
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Calls Vault with the agent's token. On 403, asks Vault whether the token itself is still
    /// valid: if not, triggers a re-login, waits briefly for it and retries once; otherwise the
    /// 403 is a policy denial and is returned as such.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Reply, SourceError> {
        let seen = *self.generation.borrow();
        let token = self.current();
        let first = self
            .http
            .call(method.clone(), path, Some(&token), body.clone())
            .await;
        let Err(SourceError::Denied { detail }) = first else {
            return first;
        };
        match self
            .http
            .call(Method::GET, "auth/token/lookup-self", Some(&token), None)
            .await
        {
            Ok(_) => return Err(SourceError::Denied { detail }),
            Err(SourceError::Denied { .. }) => {}
            Err(other) => return Err(other),
        }
        tracing::warn!(
            source = %self.name,
            "Vault says the agent's token is no longer valid; logging in again"
        );
        let mut waiter = self.generation.subscribe();
        if *waiter.borrow_and_update() == seen {
            self.relogin.notify_one();
            let changed = tokio::time::timeout(RELOGIN_WAIT, waiter.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return Err(SourceError::Unavailable {
                    detail: "the agent's Vault token is invalid and re-login has not succeeded yet"
                        .to_owned(),
                });
            }
        }
        let token = self.current();
        self.http.call(method, path, Some(&token), body).await
    }
}

/// The background task: renew at 2/3 of the TTL; re-login when renewal is impossible, refused,
/// or a request reported the token invalid. Holds only a weak reference between steps, so it
/// ends once the source is dropped (config reload).
async fn maintain(
    session: Weak<VaultSession>,
    relogin: Arc<Notify>,
    name: String,
    mut ttl: Duration,
    mut renewable: bool,
) {
    let mut login_ttl = ttl;
    let mut renew_failures = 0u32;
    loop {
        let renew_at = renew_delay(ttl);
        let want_login = tokio::select! {
            () = relogin.notified() => true,
            () = sleep_opt(renew_at) => false,
        };
        let Some(strong) = session.upgrade() else {
            return;
        };
        let mut do_login = want_login || !renewable;
        if !do_login {
            let token = strong.current();
            match tokio::time::timeout(CALL_TIMEOUT, renew_self(&strong.http, &token)).await {
                Ok(Ok((new_ttl, new_renewable))) => {
                    renew_failures = 0;
                    tracing::info!(
                        source = %name,
                        ttl_secs = new_ttl.as_secs(),
                        "Vault token renewed"
                    );
                    // A renewal that no longer restores the full TTL means max_ttl is near:
                    // use what is left, then log in again.
                    if new_ttl < login_ttl {
                        ttl = new_ttl;
                        renewable = false;
                    } else {
                        ttl = new_ttl;
                        renewable = new_renewable;
                    }
                    continue;
                }
                Ok(Err(SourceError::Denied { .. })) => do_login = true,
                Ok(Err(err)) => {
                    renew_failures = renew_failures.saturating_add(1);
                    tracing::warn!(source = %name, error = %err, "Vault token renewal failed; will retry");
                    ttl = retry_ttl(backoff(renew_failures));
                    continue;
                }
                Err(_) => {
                    renew_failures = renew_failures.saturating_add(1);
                    tracing::warn!(source = %name, "Vault token renewal timed out; will retry");
                    ttl = retry_ttl(backoff(renew_failures));
                    continue;
                }
            }
        }
        if do_login {
            drop(strong);
            match login_with_backoff(&session, &name).await {
                Some(grant_ttl) => {
                    (ttl, renewable) = grant_ttl;
                    login_ttl = ttl;
                    renew_failures = 0;
                }
                None => return,
            }
        }
    }
}

/// When to renew a token of lifetime `ttl`: at 2/3 of it, at least 500 ms from now; `None` for
/// a token that does not expire. `ttl` comes from Vault's reply (`lease_duration`, up to
/// `u64::MAX` seconds), so the arithmetic must not overflow.
fn renew_delay(ttl: Duration) -> Option<Duration> {
    if ttl.is_zero() {
        return None;
    }
    let two_thirds = ttl.checked_div(3).unwrap_or_default().saturating_mul(2);
    Some(two_thirds.max(Duration::from_millis(500)))
}

/// The TTL whose renewal point ([`renew_delay`]) is `delay` from now.
fn retry_ttl(delay: Duration) -> Duration {
    delay.saturating_mul(3).checked_div(2).unwrap_or(delay)
}

async fn sleep_opt(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Logs in until it succeeds (or the source is gone). Returns the new TTL and renewability.
async fn login_with_backoff(session: &Weak<VaultSession>, name: &str) -> Option<(Duration, bool)> {
    let mut attempt = 0u32;
    loop {
        let strong = session.upgrade()?;
        let result = tokio::time::timeout(CALL_TIMEOUT, login(&strong.http, &strong.auth)).await;
        match result {
            Ok(Ok(grant)) => {
                let out = (grant.ttl, grant.renewable);
                strong.install(grant.token);
                tracing::info!(
                    source = %name,
                    method = strong.auth.method(),
                    ttl_secs = out.0.as_secs(),
                    "logged in to Vault again"
                );
                return Some(out);
            }
            Ok(Err(err)) => {
                tracing::warn!(source = %name, error = %err, attempt, "Vault login failed; backing off")
            }
            Err(_) => tracing::warn!(source = %name, attempt, "Vault login timed out; backing off"),
        }
        drop(strong);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(backoff(attempt)).await;
    }
}

/// Exponential backoff from [`MIN_BACKOFF`] to [`MAX_BACKOFF`], with up to 50 % random jitter
/// subtracted (so many agents do not retry in lockstep).
fn backoff(attempt: u32) -> Duration {
    let base = MIN_BACKOFF
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(attempt);
    let jitter = hasher.finish() % 1000; // per mille of half the base
    let per_mille = base.checked_div(2000).unwrap_or_default();
    base.saturating_sub(per_mille.saturating_mul(u32::try_from(jitter).unwrap_or(0)))
}

/// Longest credential file a login reads (a token, a role or secret id, a JWT).
const MAX_CREDENTIAL_FILE: usize = 64 * 1024;

/// Reads a credential file into secure memory (checked again on the open descriptor), without
/// trailing whitespace.
fn read_secret_file(path: &Path) -> Result<SecretBytes, SourceError> {
    use crate::source::credfile::{self, CredFileError};
    let secret = credfile::read(path, MAX_CREDENTIAL_FILE).map_err(|err| match err {
        CredFileError::Refused(reason) => SourceError::Denied { detail: reason },
        CredFileError::Memory(err) => SourceError::from(err),
        other => SourceError::Unavailable {
            detail: format!("cannot read {}: {other}", path.display()),
        },
    })?;
    crate::source::secret::trim_trailing_whitespace(secret)?.ok_or_else(|| SourceError::BadReply {
        detail: format!("{} is empty", path.display()),
    })
}

/// `{"k1":"v1","k2":"v2"}` in secure memory, values taken from secret files.
fn login_body(fields: &[(&str, &SecretBytes)]) -> Result<Bytes, SourceError> {
    let mut out = SecretBuf::with_capacity(256)?;
    out.extend_from_slice(b"{")?;
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",")?;
        }
        push_json_string(&mut out, key)?;
        out.extend_from_slice(b":")?;
        let text = std::str::from_utf8(value.as_slice()).map_err(|_| SourceError::BadReply {
            detail: format!("{key} is not UTF-8"),
        })?;
        push_json_string(&mut out, text)?;
    }
    out.extend_from_slice(b"}")?;
    Ok(Bytes::from_owner(out.finish()?))
}

#[derive(Deserialize)]
struct AuthReply<'a> {
    #[serde(borrow)]
    auth: Option<AuthData<'a>>,
}

#[derive(Deserialize)]
struct AuthData<'a> {
    #[serde(borrow)]
    client_token: &'a str,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct LookupReply {
    data: LookupData,
}

#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    renewable: bool,
}

fn parse_auth(reply: &Reply) -> Result<Grant, SourceError> {
    let parsed: AuthReply<'_> =
        serde_json::from_slice(reply.body.as_slice()).map_err(|_| SourceError::BadReply {
            detail: "Vault's login reply has no usable auth block".to_owned(),
        })?;
    let auth = parsed.auth.ok_or_else(|| SourceError::BadReply {
        detail: "Vault's login reply has no auth block".to_owned(),
    })?;
    Ok(Grant {
        token: SecretBytes::from_slice(auth.client_token.as_bytes())?,
        ttl: Duration::from_secs(auth.lease_duration),
        renewable: auth.renewable,
    })
}

async fn login(http: &VaultHttp, auth: &VaultAuthConfig) -> Result<Grant, SourceError> {
    match auth {
        VaultAuthConfig::Token { token_file } => {
            let token = read_secret_file(token_file)?;
            let reply = http
                .call(Method::GET, "auth/token/lookup-self", Some(&token), None)
                .await?;
            let lookup: LookupReply =
                serde_json::from_slice(reply.body.as_slice()).map_err(|_| {
                    SourceError::BadReply {
                        detail: "Vault's token lookup reply is unusable".to_owned(),
                    }
                })?;
            Ok(Grant {
                token,
                ttl: Duration::from_secs(lookup.data.ttl),
                renewable: lookup.data.renewable,
            })
        }
        VaultAuthConfig::AppRole {
            mount,
            role_id_file,
            secret_id_file,
        } => {
            let role_id = read_secret_file(role_id_file)?;
            let secret_id = read_secret_file(secret_id_file)?;
            let body = login_body(&[("role_id", &role_id), ("secret_id", &secret_id)])?;
            post_login(http, mount, body).await
        }
        VaultAuthConfig::Jwt {
            mount,
            role,
            jwt_file,
        } => {
            // Re-read at every login: projected service-account tokens rotate.
            let jwt = read_secret_file(jwt_file)?;
            let role = SecretBytes::from_slice(role.as_bytes())?;
            let body = login_body(&[("role", &role), ("jwt", &jwt)])?;
            post_login(http, mount, body).await
        }
    }
}

/// `POST auth/{mount}/login` with a prepared body; the reply's auth block is the grant.
async fn post_login(http: &VaultHttp, mount: &str, body: Bytes) -> Result<Grant, SourceError> {
    let reply = http
        .call(
            Method::POST,
            &format!("auth/{mount}/login"),
            None,
            Some(body),
        )
        .await?;
    parse_auth(&reply)
}

async fn renew_self(
    http: &VaultHttp,
    token: &SecretBytes,
) -> Result<(Duration, bool), SourceError> {
    let reply = http
        .call(
            Method::POST,
            "auth/token/renew-self",
            Some(token),
            Some(Bytes::from_static(b"{}")),
        )
        .await?;
    let grant = parse_auth(&reply)?;
    Ok((grant.ttl, grant.renewable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_huge_lease_duration_schedules_renewal_without_panicking() {
        // Vault's reply decides `lease_duration`; u64::MAX seconds once killed the renewal task.
        let huge = Duration::from_secs(u64::MAX);
        let at = renew_delay(huge).unwrap();
        assert!(at >= Duration::from_secs(u64::MAX / 3));
        let sleeping = tokio::time::timeout(Duration::from_secs(1), sleep_opt(Some(at))).await;
        assert!(
            sleeping.is_err(),
            "a far-future renewal sleeps, it does not fire"
        );
        assert_eq!(renew_delay(Duration::ZERO), None);
        assert_eq!(
            renew_delay(Duration::from_secs(30)),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            renew_delay(Duration::from_millis(1)),
            Some(Duration::from_millis(500))
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..30 {
            let d = backoff(attempt);
            let base = MIN_BACKOFF
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(d <= base && d >= base / 2, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(40) <= MAX_BACKOFF);
    }

    #[test]
    fn login_body_escapes_and_reads_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret_id");
        std::fs::write(&path, "abc\"def\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        // SECURITY: a credential file opened up to others since the config was checked.
        assert!(matches!(
            read_secret_file(&path),
            Err(SourceError::Denied { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let secret = read_secret_file(&path).unwrap();
        assert_eq!(secret.as_slice(), b"abc\"def");
        let role = SecretBytes::from_slice(b"r").unwrap();
        let body = login_body(&[("role_id", &role), ("secret_id", &secret)]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["secret_id"], "abc\"def");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_secret_file(&path).is_err());
    }
}
