//! The OAuth2 source (`type = "oauth2"`): access tokens from a token endpoint, one per named
//! profile (`[sources.NAME.tokens.ID]` with `scope` and `audience`), refreshed by the agent once
//! for all its callers.
//!
//! It owns its config section (`config`), the token request (`token`: (RFC 6749 §4.4
//! `client_credentials` or §6 `refresh_token`, client authentication `client_secret_basic`)),
//! reading the reply into secure memory, and the refresh token the server rotates. The client
//! secret and the configured refresh token are read from other configured sources (or the secret
//! from a credential file) at each token request, directly from that source: not through the
//! cache, and not under any caller's ACL — the agent reads them for itself, as it reads its own
//! Vault or AWS credentials.
//!
//! The token's lifetime (`expires_in`) becomes the cached value's [`Lifetime`](crate::source::secret::Lifetime): the cache holds
//! it until `expires_in - refresh_skew_secs` and never serves it, not even stale, past
//! `expires_in`. A refresh token returned by the server replaces the configured one for the rest
//! of the process (in locked memory, kept across a reload of the same client); a restart goes
//! back to the configured one. A
//! refresh-token source sends one token request at a time, so two profiles never spend the same
//! refresh token.
//!
//! An error reply is reported by its OAuth2 code ([`OAuthError`]), never by its body or
//! description; nothing the server sends back is logged.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request};
use zeroize::Zeroize;

pub mod config;
pub mod token;

pub use config::{ClientSecret, Grant, OAuth2Config, RawOAuth2Source, check_id};
use token::{basic_auth, form_body, opt_bytes, parse_reply};

use super::http::{HttpClient, SetupError, error_chain, https_client, read_body_limited};
use crate::name::SecretName;
use crate::secure_mem::SecretBytes;
use crate::source::error::SourceError;
use crate::source::secret::{Fetched, SecretRequest, Selector};

/// Largest token endpoint reply read (a JWT access token with many claims is a few KiB).
pub const MAX_TOKEN_REPLY: usize = 64 * 1024;

/// Tokens have no versions.
pub fn check_selector(selector: &Selector) -> Result<(), &'static str> {
    if selector.is_empty() {
        Ok(())
    } else {
        Err("OAuth2 tokens have no versions")
    }
}

pub use crate::source::error::OAuthError;

/// Why the source could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("token endpoint client: {0}")]
pub struct BuildError(#[from] SetupError);

/// Sends token requests for one configured client.
pub struct OAuth2Source {
    client: HttpClient,
    config: OAuth2Config,
    /// Every source but transit ones, filled once all are built.
    others: crate::source::secret::Others,
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

impl OAuth2Source {
    /// Builds the HTTP client; `others` is filled once every source exists.
    pub fn build(
        config: &OAuth2Config,
        others: crate::source::secret::Others,
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
                self.request(body, &secret).await?.0?
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
                    // SECURITY: the server has spent the old one: a reply whose access token is
                    // refused must not lose the grant for good.
                    if let Err(err) = &token {
                        tracing::warn!(token_url = %self.config.token_url, error = %err, "the token endpoint's reply was refused, but it rotated the refresh token; the new one is kept and used next");
                    } else {
                        tracing::debug!(
                            token_url = %self.config.token_url,
                            "the token endpoint rotated the refresh token; the new one is used next"
                        );
                    }
                    *rotated = Some(next);
                }
                token?
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
        match self.others.read_other(name.clone()).await {
            Ok(value) => trimmed_credential(value),
            Err(SourceError::NotFound) => Err(SourceError::Denied {
                detail: format!("the credential {name} does not exist"),
            }),
            Err(err) => Err(err),
        }
    }

    /// POSTs `body` to the token endpoint with client_secret_basic; returns the access token
    /// (or why it is refused) and a rotated refresh token, if the server sent one.
    async fn request(
        &self,
        body: Bytes,
        client_secret: &SecretBytes,
    ) -> Result<token::TokenAndRotation, SourceError> {
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

/// A credential without its final newline; an empty one is refused.
fn trimmed_credential(value: SecretBytes) -> Result<SecretBytes, SourceError> {
    crate::source::secret::trim_trailing_whitespace(value)?.ok_or_else(|| SourceError::BadReply {
        detail: "an OAuth2 client credential is empty".to_owned(),
    })
}

/// Reads the client secret file (checked again on the open descriptor).
fn read_secret_file(path: &Path) -> Result<SecretBytes, SourceError> {
    use crate::source::credfile::{self, CredFileError};
    let unavailable = |reason: String| SourceError::Unavailable {
        detail: format!("client_secret_file {}: {reason}", path.display()),
    };
    let value = credfile::read(path, 4095).map_err(|err| match err {
        CredFileError::Refused(reason) => SourceError::Denied { detail: reason },
        CredFileError::Memory(err) => SourceError::from(err),
        other => unavailable(other.to_string()),
    })?;
    trimmed_credential(value)
}

#[cfg(test)]
mod tests {
    use super::config::parse;
    use super::*;

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
            let err = source
                .request(body, &secret)
                .await
                .and_then(|(token, _)| token)
                .map(|_| ())
                .unwrap_err();
            assert!(
                matches!(&err, SourceError::BadReply { detail } if detail.contains(want)),
                "{want}: {err:?}"
            );
        }
    }
}
