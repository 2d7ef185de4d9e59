//! The OAuth2 source's config section: `[sources.NAME]` with `type = "oauth2"` as written
//! ([`RawOAuth2Source`], its `[tokens.ID]` profiles) and validated ([`OAuth2Config`]). It
//! contacts nothing; the token endpoint is first asked at a read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::name::SecretName;
use crate::source::section::Invalid;

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

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid::new(key, reason)
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
        crate::source::section::check_plain_http(url, self.allow_plain_http)
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
                crate::source::credfile::check(&path)
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

/// The section `extra` completes, validated (for the tests of this source).
#[cfg(test)]
pub(super) fn parse(extra: &str) -> Result<OAuth2Config, Invalid> {
    let text =
        format!("token_url = \"https://login.example/oauth2/token\"\nclient_id = \"app\"\n{extra}");
    let raw: RawOAuth2Source = toml::from_str(&text).map_err(|e| Invalid {
        key: "parse".into(),
        reason: e.to_string(),
    })?;
    raw.validate(&|p| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
