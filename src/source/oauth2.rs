//! The OAuth2 source (`type = "oauth2"`): access tokens from a token endpoint, one per named
//! profile (`[sources.NAME.tokens.ID]` with `scope` and `audience`), refreshed by the agent once
//! for all its callers.
//!
//! It owns its config section ([`RawOAuth2Source`]), the token request (RFC 6749 §4.4
//! `client_credentials` or §6 `refresh_token`, client authentication `client_secret_basic`),
//! reading the reply into secure memory, and the refresh token the server rotates. The client
//! secret and the configured refresh token are read from other configured sources (or the secret
//! from a credential file) at each token request, directly from that source: not through the
//! cache, and not under any caller's ACL — the agent reads them for itself, as it reads its own
//! Vault or AWS credentials.
//!
//! The token's lifetime (`expires_in`) becomes the cached value's [`Lifetime`]: the cache holds
//! it until `expires_in - refresh_skew_secs` and never serves it, not even stale, past
//! `expires_in`. A refresh token returned by the server replaces the configured one for the rest
//! of the process (in locked memory, kept across a reload of the same client); a restart goes
//! back to the configured one. A
//! refresh-token source sends one token request at a time, so two profiles never spend the same
//! refresh token.
//!
//! An error reply is reported by its OAuth2 code ([`OAuthError`]), never by its body or
//! description; nothing the server sends back is logged.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request};
use serde::Deserialize;
use zeroize::Zeroize;

use super::vault_http::{HttpClient, SetupError, error_chain, https_client, read_body_limited};
use super::{Fetched, Lifetime, Secret, SecretRequest, Selector, SourceError};
use crate::jsonval::push_base64;
use crate::name::SecretName;
use crate::secure_mem::{SecretBuf, SecretBytes};

/// Largest token endpoint reply read (a JWT access token with many claims is a few KiB).
pub const MAX_TOKEN_REPLY: usize = 64 * 1024;

/// Default `refresh_skew_secs`.
const DEFAULT_SKEW: Duration = Duration::from_secs(60);

/// Longest `scope` or `audience`.
const MAX_PARAM_LEN: usize = 1024;

/// `[sources.NAME]` with `type = "oauth2"`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth2Source {
    /// The token endpoint: `https://…` (or `http://` on loopback).
    pub token_url: String,
    /// The client's id.
    pub client_id: String,
    /// `"SOURCE/ID"`: the client secret, read from another configured source.
    pub client_secret: Option<String>,
    /// Or: a credential file holding the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// `"client_credentials"` or `"refresh_token"`.
    pub grant: String,
    /// `"SOURCE/ID"`: the refresh token (for `grant = "refresh_token"`).
    pub refresh_token: Option<String>,
    /// How long before `expires_in` a token is refreshed (default 60).
    pub refresh_skew_secs: Option<u64>,
    /// PEM bundle trusted for the endpoint's certificate (instead of the system roots).
    pub ca_file: Option<PathBuf>,
    /// Accept `http://` to a host other than loopback (for tests only; logged at start).
    #[serde(default)]
    pub allow_plain_http: bool,
    /// Named token profiles: the id of `GET /v1/secrets/NAME/ID`.
    #[serde(default)]
    pub tokens: BTreeMap<String, RawTokenProfile>,
    /// Per-source fetch timeout.
    pub fetch_timeout_secs: Option<u64>,
    /// Token requests in flight at once (default 8); further misses queue.
    pub max_concurrent_fetches: Option<usize>,
}

/// `[sources.NAME.tokens.ID]`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokenProfile {
    /// Space-separated scopes (`scope` parameter).
    pub scope: Option<String>,
    /// The API the token is for (`audience` parameter).
    pub audience: Option<String>,
}

/// Which grant the token request uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// RFC 6749 §4.4.
    ClientCredentials,
    /// RFC 6749 §6, starting from the refresh token at this name.
    RefreshToken(SecretName),
}

/// Where the client secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSecret {
    /// Another configured source.
    Source(SecretName),
    /// A credential file.
    File(PathBuf),
}

/// One token profile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenProfile {
    /// `scope` parameter.
    pub scope: Option<String>,
    /// `audience` parameter.
    pub audience: Option<String>,
}

/// A validated `oauth2` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Config {
    /// Token endpoint.
    pub token_url: String,
    /// Client id.
    pub client_id: String,
    /// Client secret location.
    pub client_secret: ClientSecret,
    /// Grant.
    pub grant: Grant,
    /// Refresh this long before expiry.
    pub refresh_skew: Duration,
    /// Trusted CA bundle, if any.
    pub ca_file: Option<PathBuf>,
    /// `http://` to a host other than loopback was allowed (for tests only).
    pub allow_plain_http: bool,
    /// Profiles by id.
    pub tokens: BTreeMap<String, TokenProfile>,
}

impl OAuth2Config {
    /// The other sources this one reads from (client secret, refresh token).
    pub fn references(&self) -> Vec<(&'static str, &SecretName)> {
        let mut out = Vec::new();
        if let ClientSecret::Source(name) = &self.client_secret {
            out.push(("client_secret", name));
        }
        if let Grant::RefreshToken(name) = &self.grant {
            out.push(("refresh_token", name));
        }
        out
    }
}

/// A validation failure: the key below `sources.NAME` and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Key relative to the source, e.g. `token_url` or `tokens.api.scope`.
    pub key: String,
    /// Why.
    pub reason: String,
}

pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

fn parse_reference(key: &str, value: &str) -> Result<SecretName, Invalid> {
    SecretName::parse(value).map_err(|e| {
        invalid(
            key,
            format!("{value:?} must name a secret of another source as \"SOURCE/ID\" ({e})"),
        )
    })
}

/// A parameter value: printable ASCII (RFC 6749's NQSCHAR), at most [`MAX_PARAM_LEN`].
fn check_param(key: &str, value: &str) -> Result<(), Invalid> {
    let ok = (1..=MAX_PARAM_LEN).contains(&value.len())
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && value.trim() == value;
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!(
                "must be 1 to {MAX_PARAM_LEN} printable ASCII characters, no surrounding spaces"
            ),
        ))
    }
}

impl RawOAuth2Source {
    /// Validates; `resolve` makes relative paths relative to the config file.
    pub fn validate(&self, resolve: &dyn Fn(&Path) -> PathBuf) -> Result<OAuth2Config, Invalid> {
        let url = self.token_url.as_str();
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| invalid("token_url", format!("{url:?} is not a URL")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(invalid(
                "token_url",
                format!("{url:?} must be an http(s):// URL with a host"),
            ));
        }
        crate::source::check_plain_http(url, self.allow_plain_http)
            .map_err(|reason| invalid("token_url", reason))?;
        let client_id = &self.client_id;
        if client_id.is_empty()
            || client_id.len() > 256
            || client_id.chars().any(|c| c.is_control())
        {
            return Err(invalid(
                "client_id",
                "must be 1 to 256 characters, no control characters",
            ));
        }
        let client_secret = match (&self.client_secret, &self.client_secret_file) {
            (Some(name), None) => ClientSecret::Source(parse_reference("client_secret", name)?),
            (None, Some(path)) => {
                let path = resolve(path);
                crate::credfile::check(&path)
                    .map_err(|reason| invalid("client_secret_file", reason))?;
                ClientSecret::File(path)
            }
            _ => {
                return Err(invalid(
                    "client_secret",
                    "give exactly one of client_secret = \"SOURCE/ID\" or client_secret_file",
                ));
            }
        };
        let grant = match (self.grant.as_str(), &self.refresh_token) {
            ("client_credentials", None) => Grant::ClientCredentials,
            ("client_credentials", Some(_)) => {
                return Err(invalid(
                    "refresh_token",
                    "only goes with grant = \"refresh_token\"",
                ));
            }
            ("refresh_token", Some(name)) => {
                Grant::RefreshToken(parse_reference("refresh_token", name)?)
            }
            ("refresh_token", None) => {
                return Err(invalid(
                    "refresh_token",
                    "grant = \"refresh_token\" needs refresh_token = \"SOURCE/ID\"",
                ));
            }
            (other, _) => {
                return Err(invalid(
                    "grant",
                    format!("{other:?} must be \"client_credentials\" or \"refresh_token\""),
                ));
            }
        };
        let refresh_skew = match self.refresh_skew_secs {
            None => DEFAULT_SKEW,
            Some(secs) if secs <= 3600 => Duration::from_secs(secs),
            Some(secs) => {
                return Err(invalid(
                    "refresh_skew_secs",
                    format!("must be between 0 and 3600, got {secs}"),
                ));
            }
        };
        let ca_file = match &self.ca_file {
            Some(path) => {
                let path = resolve(path);
                match std::fs::metadata(&path) {
                    Ok(meta) if meta.is_file() => Some(path),
                    Ok(_) => {
                        return Err(invalid(
                            "ca_file",
                            format!("{} is not a file", path.display()),
                        ));
                    }
                    Err(e) => return Err(invalid("ca_file", format!("{}: {e}", path.display()))),
                }
            }
            None => None,
        };
        if self.tokens.is_empty() {
            return Err(invalid(
                "tokens",
                "needs at least one profile, e.g. [sources.NAME.tokens.default]",
            ));
        }
        let mut tokens = BTreeMap::new();
        for (id, raw) in &self.tokens {
            check_id(id).map_err(|why| invalid(format!("tokens.{id}"), why))?;
            if let Some(scope) = &raw.scope {
                check_param(&format!("tokens.{id}.scope"), scope)?;
            }
            if let Some(audience) = &raw.audience {
                check_param(&format!("tokens.{id}.audience"), audience)?;
            }
            tokens.insert(
                id.clone(),
                TokenProfile {
                    scope: raw.scope.clone(),
                    audience: raw.audience.clone(),
                },
            );
        }
        Ok(OAuth2Config {
            token_url: url.to_owned(),
            client_id: client_id.clone(),
            client_secret,
            grant,
            refresh_skew,
            ca_file,
            allow_plain_http: self.allow_plain_http,
            tokens,
        })
    }
}

/// Profile ids: 1–64 letters, digits and `_.-`.
pub fn check_id(id: &str) -> Result<(), &'static str> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("a token profile id is 1 to 64 letters, digits and _.-")
    }
}

/// Tokens have no versions.
pub fn check_selector(selector: &Selector) -> Result<(), &'static str> {
    if selector.is_empty() {
        Ok(())
    } else {
        Err("OAuth2 tokens have no versions")
    }
}

/// The standard OAuth2 error codes (RFC 6749 §5.2, RFC 8707 `invalid_target`): what a token
/// endpoint's refusal is reported as. A code outside this list is `Other` — the server's own
/// text is never passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthError {
    /// `invalid_request`.
    InvalidRequest,
    /// `invalid_client`: the client id or secret is wrong.
    InvalidClient,
    /// `invalid_grant`: the refresh token is unknown, used, expired or revoked.
    InvalidGrant,
    /// `unauthorized_client`: the client may not use this grant.
    UnauthorizedClient,
    /// `unsupported_grant_type`.
    UnsupportedGrantType,
    /// `invalid_scope`.
    InvalidScope,
    /// `invalid_target` (RFC 8707): the audience/resource is refused.
    InvalidTarget,
    /// Another code, or none.
    Other,
}

impl OAuthError {
    /// Maps the `error` member of an error reply.
    pub fn parse(code: &str) -> Self {
        match code {
            "invalid_request" => OAuthError::InvalidRequest,
            "invalid_client" => OAuthError::InvalidClient,
            "invalid_grant" => OAuthError::InvalidGrant,
            "unauthorized_client" => OAuthError::UnauthorizedClient,
            "unsupported_grant_type" => OAuthError::UnsupportedGrantType,
            "invalid_scope" => OAuthError::InvalidScope,
            "invalid_target" => OAuthError::InvalidTarget,
            _ => OAuthError::Other,
        }
    }

    /// The code as OAuth2 spells it (`other` for [`OAuthError::Other`]).
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthError::InvalidRequest => "invalid_request",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::InvalidGrant => "invalid_grant",
            OAuthError::UnauthorizedClient => "unauthorized_client",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidScope => "invalid_scope",
            OAuthError::InvalidTarget => "invalid_target",
            OAuthError::Other => "other",
        }
    }
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the source could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("token endpoint client: {0}")]
pub struct BuildError(#[from] SetupError);

/// Sends token requests for one configured client.
pub struct OAuth2Source {
    client: HttpClient,
    config: OAuth2Config,
    /// Every source but transit ones, filled once all are built.
    others: super::SharedSources,
    /// The refresh token the server last returned; held across a whole refresh-token request,
    /// so one request at a time spends it. Shared with the same client's source after a reload
    /// ([`OAuth2Source::adopt_rotation`]).
    rotated: std::sync::RwLock<RotatedSlot>,
}

/// Where a refresh-token client keeps the refresh token the server rotated in.
type RotatedSlot = Arc<tokio::sync::Mutex<Option<SecretBytes>>>;

impl std::fmt::Debug for OAuth2Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Source")
            .field("token_url", &self.config.token_url)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

/// The reply to a token request: success and error members together (RFC 6749 §5.1, §5.2).
#[derive(Deserialize)]
struct TokenReply<'a> {
    #[serde(borrow, default)]
    access_token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    token_type: Option<Cow<'a, str>>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(borrow, default)]
    refresh_token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
}

/// Wipes a string that serde had to copy (it held escapes).
fn wipe_cow(value: Option<Cow<'_, str>>) {
    if let Some(Cow::Owned(mut owned)) = value {
        owned.zeroize();
    }
}

impl OAuth2Source {
    /// Builds the HTTP client; `others` is filled once every source exists.
    pub fn build(
        config: &OAuth2Config,
        others: super::SharedSources,
    ) -> Result<OAuth2Source, BuildError> {
        Ok(OAuth2Source {
            client: https_client(config.ca_file.as_deref())?,
            config: config.clone(),
            others,
            rotated: std::sync::RwLock::new(Arc::default()),
        })
    }

    /// After a reload: when `previous` is the same refresh-token client (same `token_url`,
    /// `client_id` and `refresh_token`), this source shares its rotated refresh token — the same
    /// slot, so a request still in flight on the old source and the first on this one never
    /// spend one refresh token twice. Called before this source serves anything.
    pub fn adopt_rotation(&self, previous: &OAuth2Source) {
        let same_client = matches!(self.config.grant, Grant::RefreshToken(_))
            && self.config.grant == previous.config.grant
            && self.config.token_url == previous.config.token_url
            && self.config.client_id == previous.config.client_id;
        if same_client {
            let slot = previous.rotated_slot();
            *self.rotated.write().unwrap_or_else(|p| p.into_inner()) = slot;
        }
    }

    fn rotated_slot(&self) -> RotatedSlot {
        self.rotated
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Requests a token for the profile `request` names.
    pub async fn fetch(&self, request: &SecretRequest) -> Result<Fetched, SourceError> {
        let Some(profile) = self.config.tokens.get(request.name.id()) else {
            return Err(SourceError::NotFound);
        };
        let secret = self.read_credential_secret().await?;
        let token = match &self.config.grant {
            Grant::ClientCredentials => {
                let body = form_body(&[
                    ("grant_type", b"client_credentials".as_slice()),
                    ("scope", opt_bytes(&profile.scope)),
                    ("audience", opt_bytes(&profile.audience)),
                ])?;
                self.request(body, &secret).await?.0
            }
            Grant::RefreshToken(configured) => {
                // SECURITY: held across the request: a rotated refresh token is spent once.
                let slot = self.rotated_slot();
                let mut rotated = slot.lock().await;
                let current = match rotated.as_ref() {
                    Some(token) => SecretBytes::from_slice(token.as_slice())?,
                    None => self.read_other(configured).await?,
                };
                let body = form_body(&[
                    ("grant_type", b"refresh_token".as_slice()),
                    ("refresh_token", current.as_slice()),
                    ("scope", opt_bytes(&profile.scope)),
                    ("audience", opt_bytes(&profile.audience)),
                ])?;
                drop(current);
                let (token, next) = self.request(body, &secret).await?;
                if let Some(next) = next {
                    tracing::debug!(
                        token_url = %self.config.token_url,
                        "the token endpoint rotated the refresh token; the new one is used next"
                    );
                    *rotated = Some(next);
                }
                token
            }
        };
        Ok(Fetched::New(token))
    }

    async fn read_credential_secret(&self) -> Result<SecretBytes, SourceError> {
        match &self.config.client_secret {
            ClientSecret::Source(name) => self.read_other(name).await,
            ClientSecret::File(path) => read_secret_file(path),
        }
    }

    /// Reads `name` from its source directly (no cache, no caller's ACL), without a final
    /// newline. A credential that is missing is the agent's own failure (its configuration),
    /// not the caller's "no such secret".
    async fn read_other(&self, name: &SecretName) -> Result<SecretBytes, SourceError> {
        match super::fetch_from_other(&self.others, name.clone()).await {
            Ok(value) => trimmed_credential(value),
            Err(SourceError::NotFound) => Err(SourceError::Denied {
                detail: format!("the credential {name} does not exist"),
            }),
            Err(err) => Err(err),
        }
    }

    /// POSTs `body` to the token endpoint with client_secret_basic; returns the access token
    /// and a rotated refresh token, if the server sent one.
    async fn request(
        &self,
        body: Bytes,
        client_secret: &SecretBytes,
    ) -> Result<(Secret, Option<SecretBytes>), SourceError> {
        let mut auth = basic_auth(&self.config.client_id, client_secret.as_slice())?;
        // SECURITY: a short-lived heap copy for this one request, hidden from Debug output.
        let mut auth_value = HeaderValue::from_bytes(auth.as_slice()).map_err(|_| {
            SourceError::Invalid("the client credentials are not a valid header value".to_owned())
        })?;
        auth.as_mut_slice().zeroize();
        auth_value.set_sensitive(true);
        let request = Request::builder()
            .method(Method::POST)
            .uri(&self.config.token_url)
            .header(AUTHORIZATION, auth_value)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(Full::new(body))
            .map_err(|e| SourceError::Invalid(format!("cannot build a token request: {e}")))?;
        let sent_at = SystemTime::now();
        let url = &self.config.token_url;
        let response =
            self.client
                .request(request)
                .await
                .map_err(|e| SourceError::Unavailable {
                    detail: format!("cannot reach the token endpoint {url}: {}", error_chain(&e)),
                })?;
        let status = response.status();
        let what = format!("the token endpoint {url}");
        let reply = read_body_limited(response.into_body(), MAX_TOKEN_REPLY, &what).await?;
        parse_reply(
            status.as_u16(),
            reply.as_slice(),
            sent_at,
            self.config.refresh_skew,
        )
    }
}

fn opt_bytes(value: &Option<String>) -> &[u8] {
    value.as_deref().map_or(&[][..], str::as_bytes)
}

/// What a token endpoint answered, mapped: a token (and maybe a rotated refresh token), or an
/// error by code. Nothing of the body reaches an error's detail.
fn parse_reply(
    status: u16,
    body: &[u8],
    sent_at: SystemTime,
    skew: Duration,
) -> Result<(Secret, Option<SecretBytes>), SourceError> {
    let parsed = serde_json::from_slice::<TokenReply<'_>>(body);
    if !(200..300).contains(&status) {
        let code = parsed
            .ok()
            .and_then(|r| {
                wipe_cow(r.access_token);
                wipe_cow(r.refresh_token);
                r.error
            })
            .map(|c| c.into_owned());
        return Err(match (status, code.as_deref()) {
            (_, Some("temporarily_unavailable" | "server_error")) | (429 | 500..=599, _) => {
                SourceError::Unavailable {
                    detail: format!("the token endpoint answered {status}"),
                }
            }
            (_, Some(code)) => SourceError::TokenRefused(OAuthError::parse(code)),
            (400 | 401 | 403, None) => SourceError::TokenRefused(OAuthError::Other),
            (_, None) => SourceError::BadReply {
                detail: format!("the token endpoint answered {status} without an OAuth2 error"),
            },
        });
    }
    let bad = |detail: &str| SourceError::BadReply {
        detail: format!("the token endpoint's reply {detail}"),
    };
    let reply = parsed.map_err(|_| bad("is not a JSON object"))?;
    let TokenReply {
        access_token,
        token_type,
        expires_in,
        refresh_token,
        error,
    } = reply;
    // From here on, every early return wipes what serde copied.
    let fail = |detail: &str, a: Option<Cow<'_, str>>, r: Option<Cow<'_, str>>| {
        wipe_cow(a);
        wipe_cow(r);
        Err(bad(detail))
    };
    if error.is_some() {
        return fail("has an error member", access_token, refresh_token);
    }
    let Some(token) = access_token.as_deref().filter(|t| !t.is_empty()) else {
        return fail("has no access_token", access_token, refresh_token);
    };
    // RFC 6750 §2.1: b64token characters only, so the token can go in a header.
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
    {
        return fail(
            "has an access_token that is not a bearer token (b64token)",
            access_token,
            refresh_token,
        );
    }
    if !token_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
    {
        return fail(
            "has a token_type other than Bearer",
            access_token,
            refresh_token,
        );
    }
    let expires_in = match expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => {
            let secs = value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()));
            match secs {
                Some(secs) if secs <= 366 * 24 * 3600 => Some(Duration::from_secs(secs)),
                _ => return fail("has an unusable expires_in", access_token, refresh_token),
            }
        }
    };
    let next = match refresh_token.as_deref() {
        Some(next) if !next.is_empty() => Some(SecretBytes::from_slice(next.as_bytes())?),
        _ => None,
    };
    let value = SecretBytes::from_slice(token.as_bytes());
    wipe_cow(access_token);
    wipe_cow(refresh_token);
    let lifetime = expires_in.map(|valid_for| Lifetime {
        // `valid_for` is at most a year (checked above); an overflow would mean "expired now".
        expires_at: sent_at.checked_add(valid_for).unwrap_or(sent_at),
        serve_for: serve_for(valid_for, skew),
        valid_for,
    });
    let mut secret = Secret::new(value?, None);
    secret.lifetime = lifetime;
    Ok((secret, next))
}

/// How long a token valid for `valid_for` is served: until `skew` before its end; when it
/// lives no longer than the skew, half its life (at least a second, at most all of it).
fn serve_for(valid_for: Duration, skew: Duration) -> Duration {
    if valid_for > skew {
        valid_for.saturating_sub(skew)
    } else {
        valid_for
            .checked_div(2)
            .unwrap_or(valid_for)
            .max(Duration::from_secs(1))
            .min(valid_for)
    }
}

/// `name=value&…` (application/x-www-form-urlencoded) in secure memory; empty values left out.
fn form_body(fields: &[(&str, &[u8])]) -> Result<Bytes, SourceError> {
    let mut out = SecretBuf::with_capacity(256)?;
    for (name, value) in fields.iter().filter(|(_, v)| !v.is_empty()) {
        if !out.is_empty() {
            out.extend_from_slice(b"&")?;
        }
        push_form_encoded(&mut out, name.as_bytes())?;
        out.extend_from_slice(b"=")?;
        push_form_encoded(&mut out, value)?;
    }
    Ok(Bytes::from_owner(out.finish()?))
}

/// Appends `bytes` form-urlencoded: unreserved characters as they are, the rest as `%XX`.
fn push_form_encoded(out: &mut SecretBuf, bytes: &[u8]) -> Result<(), SourceError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.extend_from_slice(&[b])?;
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])?;
        }
    }
    Ok(())
}

/// `Basic base64(urlencode(client_id) ":" urlencode(secret))` (RFC 6749 §2.3.1) in secure
/// memory.
fn basic_auth(client_id: &str, secret: &[u8]) -> Result<SecretBytes, SourceError> {
    let mut pair = SecretBuf::with_capacity(
        client_id
            .len()
            .saturating_add(secret.len())
            .saturating_mul(3)
            .saturating_add(1),
    )?;
    push_form_encoded(&mut pair, client_id.as_bytes())?;
    pair.extend_from_slice(b":")?;
    push_form_encoded(&mut pair, secret)?;
    let mut out =
        SecretBuf::with_capacity(pair.len().div_ceil(3).saturating_mul(4).saturating_add(16))?;
    out.extend_from_slice(b"Basic ")?;
    push_base64(&mut out, pair.as_slice())?;
    Ok(out.finish()?)
}

/// A credential without its final newline; an empty one is refused.
fn trimmed_credential(value: SecretBytes) -> Result<SecretBytes, SourceError> {
    super::trim_trailing_whitespace(value)?.ok_or_else(|| SourceError::BadReply {
        detail: "an OAuth2 client credential is empty".to_owned(),
    })
}

/// Reads the client secret file, checked again on the open descriptor.
fn read_secret_file(path: &Path) -> Result<SecretBytes, SourceError> {
    use std::io::Read;
    let unavailable = |reason: String| SourceError::Unavailable {
        detail: format!("client_secret_file {}: {reason}", path.display()),
    };
    let mut file = std::fs::File::open(path).map_err(|e| unavailable(e.to_string()))?;
    let meta = file.metadata().map_err(|e| unavailable(e.to_string()))?;
    crate::credfile::check_metadata(path, &meta)
        .map_err(|reason| SourceError::Denied { detail: reason })?;
    let mut buf = SecretBytes::zeroed(4096)?;
    let mut len = 0;
    loop {
        let n = file
            .read(&mut buf.as_mut_slice()[len..])
            .map_err(|e| unavailable(e.to_string()))?;
        if n == 0 {
            break;
        }
        len = len.saturating_add(n);
        if len == buf.len() {
            return Err(unavailable("is larger than 4095 bytes".to_owned()));
        }
    }
    trimmed_credential(buf.truncated(len)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<OAuth2Config, Invalid> {
        let text = format!(
            "token_url = \"https://login.example/oauth2/token\"\nclient_id = \"app\"\n{extra}"
        );
        let raw: RawOAuth2Source = toml::from_str(&text).map_err(|e| Invalid {
            key: "parse".into(),
            reason: e.to_string(),
        })?;
        raw.validate(&|p| p.to_path_buf())
    }

    const CC: &str = "client_secret = \"vault/oauth/app\"\ngrant = \"client_credentials\"\n[tokens.api]\nscope = \"api:read api:write\"\naudience = \"https://api.example\"\n";

    #[test]
    fn config_table() {
        let cfg = parse(CC).unwrap();
        assert_eq!(cfg.grant, Grant::ClientCredentials);
        assert_eq!(cfg.refresh_skew, Duration::from_secs(60));
        assert_eq!(
            cfg.tokens["api"].audience.as_deref(),
            Some("https://api.example")
        );
        let rt = "client_secret = \"files/s\"\ngrant = \"refresh_token\"\nrefresh_token = \"files/rt\"\nrefresh_skew_secs = 5\n[tokens.default]\n";
        let cfg = parse(rt).unwrap();
        assert!(matches!(cfg.grant, Grant::RefreshToken(n) if n.to_string() == "files/rt"));
        assert_eq!(cfg.refresh_skew, Duration::from_secs(5));
        for (text, key) in [
            (
                "grant = \"client_credentials\"\n[tokens.a]\n",
                "client_secret",
            ),
            (
                "client_secret = \"a/b\"\nclient_secret_file = \"/x\"\ngrant = \"client_credentials\"\n[tokens.a]\n",
                "client_secret",
            ),
            (
                "client_secret = \"nosource\"\ngrant = \"client_credentials\"\n[tokens.a]\n",
                "client_secret",
            ),
            (
                "client_secret_file = \"/nonexistent/secret\"\ngrant = \"client_credentials\"\n[tokens.a]\n",
                "client_secret_file",
            ),
            (
                "client_secret = \"a/b\"\ngrant = \"password\"\n[tokens.a]\n",
                "grant",
            ),
            (
                "client_secret = \"a/b\"\ngrant = \"refresh_token\"\n[tokens.a]\n",
                "refresh_token",
            ),
            (
                "client_secret = \"a/b\"\ngrant = \"client_credentials\"\nrefresh_token = \"a/c\"\n[tokens.a]\n",
                "refresh_token",
            ),
            (
                "client_secret = \"a/b\"\ngrant = \"client_credentials\"\n",
                "tokens",
            ),
            (
                "client_secret = \"a/b\"\ngrant = \"client_credentials\"\n[tokens.\"a b\"]\n",
                "tokens.a b",
            ),
            (
                "client_secret = \"a/b\"\ngrant = \"client_credentials\"\n[tokens.a]\nscope = \"x\\ny\"\n",
                "tokens.a.scope",
            ),
            (
                "client_secret = \"a/b\"\ngrant = \"client_credentials\"\nrefresh_skew_secs = 3601\n[tokens.a]\n",
                "refresh_skew_secs",
            ),
            (
                "client_secret = \"a/b\"\ngrant = \"client_credentials\"\n[tokens.a]\nresource = \"x\"\n",
                "parse",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().key, key, "{text}");
        }
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let raw = |url: &str, allow: bool| RawOAuth2Source {
            token_url: url.to_owned(),
            client_id: "app".to_owned(),
            client_secret: Some("a/b".to_owned()),
            client_secret_file: None,
            grant: "client_credentials".to_owned(),
            refresh_token: None,
            refresh_skew_secs: None,
            ca_file: None,
            allow_plain_http: allow,
            tokens: BTreeMap::from([("a".to_owned(), RawTokenProfile::default())]),
            fetch_timeout_secs: None,
            max_concurrent_fetches: None,
        };
        let resolve = |p: &Path| p.to_path_buf();
        assert!(
            raw("http://127.0.0.1:9/token", false)
                .validate(&resolve)
                .is_ok()
        );
        assert!(
            raw("http://localhost/token", false)
                .validate(&resolve)
                .is_ok()
        );
        let err = raw("http://login.example/token", false)
            .validate(&resolve)
            .unwrap_err();
        assert_eq!(err.key, "token_url");
        assert!(
            raw("http://login.example/token", true)
                .validate(&resolve)
                .is_ok()
        );
        assert!(
            raw("ftp://login.example/token", false)
                .validate(&resolve)
                .is_err()
        );
    }

    fn reply(status: u16, body: &str) -> Result<(Secret, Option<SecretBytes>), SourceError> {
        parse_reply(
            status,
            body.as_bytes(),
            SystemTime::UNIX_EPOCH,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn replies_table() {
        let (secret, next) = reply(
            200,
            r#"{"access_token":"abc.DEF-1","token_type":"Bearer","expires_in":3600}"#,
        )
        .unwrap();
        assert_eq!(secret.value.as_slice(), b"abc.DEF-1");
        assert!(next.is_none());
        let lifetime = secret.lifetime.unwrap();
        assert_eq!(lifetime.serve_for, Duration::from_secs(3540));
        assert_eq!(lifetime.valid_for, Duration::from_secs(3600));
        assert_eq!(
            lifetime.expires_at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(3600)
        );
        let (secret, next) = reply(
            200,
            r#"{"access_token":"a\/b","token_type":"bearer","expires_in":"30","refresh_token":"r2"}"#,
        )
        .unwrap();
        assert_eq!(secret.value.as_slice(), b"a/b");
        assert_eq!(next.unwrap().as_slice(), b"r2");
        assert_eq!(secret.lifetime.unwrap().serve_for, Duration::from_secs(15));
        let (secret, _) = reply(200, r#"{"access_token":"a","token_type":"Bearer"}"#).unwrap();
        assert!(secret.lifetime.is_none());
        for (status, body, want) in [
            (200, "not json", "BadReply"),
            (200, r#"{"token_type":"Bearer"}"#, "BadReply"),
            (
                200,
                r#"{"access_token":"a","token_type":"mac"}"#,
                "BadReply",
            ),
            (200, r#"{"access_token":"a"}"#, "BadReply"),
            (
                200,
                r#"{"access_token":"a b","token_type":"Bearer"}"#,
                "BadReply",
            ),
            (
                200,
                r#"{"access_token":"a","token_type":"Bearer","expires_in":-1}"#,
                "BadReply",
            ),
            (200, "[1,2]", "BadReply"),
            (
                401,
                r#"{"error":"invalid_client","error_description":"SECRET-TEXT"}"#,
                "invalid_client",
            ),
            (400, r#"{"error":"invalid_grant"}"#, "invalid_grant"),
            (400, r#"{"error":"made_up_code"}"#, "other"),
            (401, "<html>SECRET-TEXT</html>", "other"),
            (400, r#"{"error":"temporarily_unavailable"}"#, "Unavailable"),
            (503, "SECRET-TEXT", "Unavailable"),
            (429, "", "Unavailable"),
            (302, "", "BadReply"),
        ] {
            let err = reply(status, body).map(|_| ()).unwrap_err();
            let got = match &err {
                SourceError::TokenRefused(code) => code.as_str(),
                SourceError::BadReply { .. } => "BadReply",
                SourceError::Unavailable { .. } => "Unavailable",
                other => panic!("{other:?}"),
            };
            assert_eq!(got, want, "{status} {body}");
            assert!(!err.to_string().contains("SECRET-TEXT"), "{err}");
        }
    }

    /// Serves one raw HTTP reply per connection on loopback (a stand-in token endpoint for the
    /// limits a real server will not produce); returns its token URL.
    async fn one_reply_server(replies: Vec<Vec<u8>>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for reply in replies {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Head and the short form body arrive together or soon after.
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let _ = stream.write_all(&reply).await;
                let _ = stream.shutdown().await;
            }
        });
        format!("http://127.0.0.1:{port}/token")
    }

    #[tokio::test]
    async fn huge_and_unusable_replies_are_errors_not_crashes() {
        let ok = |body: &[u8]| {
            let mut reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            reply.extend_from_slice(body);
            reply
        };
        let huge = format!(
            r#"{{"access_token":"{}","token_type":"Bearer"}}"#,
            "a".repeat(MAX_TOKEN_REPLY)
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (ok(huge.as_bytes()), "larger than"),
            (ok(b"<html>not json</html>"), "not a JSON object"),
            (
                ok(br#"{"access_token":"t","token_type":"N_A"}"#),
                "other than Bearer",
            ),
            (ok(br#"{"token_type":"Bearer"}"#), "no access_token"),
        ];
        let url = one_reply_server(cases.iter().map(|(r, _)| r.clone()).collect()).await;
        let config = parse("client_secret = \"a/b\"\ngrant = \"client_credentials\"\n[tokens.a]\n")
            .map(|c| OAuth2Config {
                token_url: url,
                ..c
            })
            .unwrap();
        let source = OAuth2Source::build(&config, crate::source::SharedSources::default()).unwrap();
        let secret = SecretBytes::from_slice(b"s").unwrap();
        for (_, want) in &cases {
            let body = form_body(&[("grant_type", b"client_credentials".as_slice())]).unwrap();
            let err = source.request(body, &secret).await.map(|_| ()).unwrap_err();
            assert!(
                matches!(&err, SourceError::BadReply { detail } if detail.contains(want)),
                "{want}: {err:?}"
            );
        }
    }

    #[test]
    fn form_and_basic_auth_encoding() {
        let body = form_body(&[
            ("grant_type", b"client_credentials".as_slice()),
            ("scope", b"a:b c"),
            ("audience", b""),
        ])
        .unwrap();
        assert_eq!(&body[..], b"grant_type=client_credentials&scope=a%3Ab%20c");
        // RFC 6749 §2.3.1: each part form-encoded, then base64 of "id:secret".
        let auth = basic_auth("my app", b"p:w").unwrap();
        assert_eq!(auth.as_slice(), b"Basic bXklMjBhcHA6cCUzQXc=");
    }

    #[test]
    fn serve_for_keeps_a_margin() {
        let s = |v, k| serve_for(Duration::from_secs(v), Duration::from_secs(k)).as_secs();
        assert_eq!(s(3600, 60), 3540);
        assert_eq!(s(60, 60), 30);
        assert_eq!(s(1, 60), 1);
        assert_eq!(s(0, 60), 0);
        assert_eq!(s(10, 0), 10);
    }
}
