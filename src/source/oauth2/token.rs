//! One token request and its reply: the form body and `client_secret_basic` header the request
//! carries, and the reply (RFC 6749 §5.1, §5.2) read into secure memory as an access token with
//! its lifetime and, when the server rotates it, the new refresh token. No I/O here.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Deserialize;
use zeroize::Zeroize;

use crate::jsonval::push_base64;
use crate::secure_mem::{SecretBuf, SecretBytes};
use crate::source::error::{OAuthError, SourceError};
use crate::source::secret::{Lifetime, Secret};

/// The reply to a token request: success and error members together (RFC 6749 §5.1, §5.2).
#[derive(Deserialize)]
pub(super) struct TokenReply<'a> {
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
pub(super) fn wipe_cow(value: Option<Cow<'_, str>>) {
    if let Some(Cow::Owned(mut owned)) = value {
        owned.zeroize();
    }
}

pub(super) fn opt_bytes(value: &Option<String>) -> &[u8] {
    value.as_deref().map_or(&[][..], str::as_bytes)
}

/// A 2xx reply: the access token or why it is refused, and a rotated refresh token, which is
/// kept either way.
pub(super) type TokenAndRotation = (Result<Secret, SourceError>, Option<SecretBytes>);

/// What a token endpoint answered, mapped: for a 2xx JSON object, a token (or why it is refused)
/// and maybe a rotated refresh token; else an error by code. Nothing of the body reaches an
/// error's detail.
pub(super) fn parse_reply(
    status: u16,
    body: &[u8],
    sent_at: SystemTime,
    skew: Duration,
) -> Result<TokenAndRotation, SourceError> {
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
    let next = match refresh_token.as_deref() {
        Some(next) if !next.is_empty() => SecretBytes::from_slice(next.as_bytes()).ok(),
        _ => None,
    };
    wipe_cow(refresh_token);
    let token = parse_token(
        access_token,
        token_type,
        expires_in,
        error.is_some(),
        sent_at,
        skew,
    );
    Ok((token, next))
}

/// The access token of a 2xx reply's members, checked.
fn parse_token(
    access_token: Option<Cow<'_, str>>,
    token_type: Option<Cow<'_, str>>,
    expires_in: Option<serde_json::Value>,
    has_error: bool,
    sent_at: SystemTime,
    skew: Duration,
) -> Result<Secret, SourceError> {
    let bad = |detail: &str| SourceError::BadReply {
        detail: format!("the token endpoint's reply {detail}"),
    };
    // From here on, every early return wipes what serde copied.
    let fail = |detail: &str, a: Option<Cow<'_, str>>| {
        wipe_cow(a);
        Err(bad(detail))
    };
    if has_error {
        return fail("has an error member", access_token);
    }
    let Some(token) = access_token.as_deref().filter(|t| !t.is_empty()) else {
        return fail("has no access_token", access_token);
    };
    // RFC 6750 §2.1: b64token characters only, so the token can go in a header.
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
    {
        return fail(
            "has an access_token that is not a bearer token (b64token)",
            access_token,
        );
    }
    if !token_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
    {
        return fail("has a token_type other than Bearer", access_token);
    }
    let expires_in = match expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => {
            let secs = value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()));
            match secs {
                Some(secs) if secs <= 366 * 24 * 3600 => Some(Duration::from_secs(secs)),
                _ => return fail("has an unusable expires_in", access_token),
            }
        }
    };
    let value = SecretBytes::from_slice(token.as_bytes());
    wipe_cow(access_token);
    let lifetime = expires_in.map(|valid_for| Lifetime {
        // `valid_for` is at most a year (checked above); an overflow would mean "expired now".
        expires_at: sent_at.checked_add(valid_for).unwrap_or(sent_at),
        serve_for: serve_for(valid_for, skew),
        valid_for,
        refresh_after: None,
    });
    let mut secret = Secret::new(value?, None);
    secret.lifetime = lifetime;
    Ok(secret)
}

/// How long a token valid for `valid_for` is served: until `skew` before its end; when it
/// lives no longer than the skew, half its life (at least a second, at most all of it).
pub(super) fn serve_for(valid_for: Duration, skew: Duration) -> Duration {
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
pub(super) fn form_body(fields: &[(&str, &[u8])]) -> Result<Bytes, SourceError> {
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
pub(super) fn push_form_encoded(out: &mut SecretBuf, bytes: &[u8]) -> Result<(), SourceError> {
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
pub(super) fn basic_auth(client_id: &str, secret: &[u8]) -> Result<SecretBytes, SourceError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Result<(Secret, Option<SecretBytes>), SourceError> {
        parse_reply(
            status,
            body.as_bytes(),
            SystemTime::UNIX_EPOCH,
            Duration::from_secs(60),
        )
        .and_then(|(token, next)| token.map(|token| (token, next)))
    }

    #[test]
    fn a_2xx_reply_whose_access_token_is_refused_still_gives_its_rotated_refresh_token() {
        let (token, next) = parse_reply(
            200,
            br#"{"access_token":"a","token_type":"mac","refresh_token":"r3"}"#,
            SystemTime::UNIX_EPOCH,
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(matches!(token, Err(SourceError::BadReply { .. })));
        assert_eq!(next.unwrap().as_slice(), b"r3");
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
