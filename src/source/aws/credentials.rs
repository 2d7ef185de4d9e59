//! The `aws-credentials` source: STS `AssumeRole` for a role profile, answered as the AWS SDKs'
//! `credential_process` JSON (`{"Version":1,"AccessKeyId","SecretAccessKey","SessionToken",
//! "Expiration"}`) built in locked memory.
//!
//! The base identity is the one every AWS source has (`super::auth::build`, checked with
//! `GetCallerIdentity` at start); each profile's STS client signs with it. Which session a
//! caller gets is decided before the cache is asked: [`CredentialsSource::session_key`] expands
//! the profile's templates with the caller's fields, and that key is part of the cache key, so
//! the cache's single flight is per (profile, session name) and a caller is never served another
//! caller's session. The session's life becomes the value's [`Lifetime`]: renewed after
//! `refresh_at_percent` of it, never served with less than `min_remaining_secs` left.
//!
//! It does not decide access (the ACL did, on `NAME/PROFILE`) and does not log keys.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::SharedCredentialsProvider;
use zeroize::Zeroize;

use super::auth::{self as aws_auth, AuthError, NetSettings, map_sdk_error};
use super::credentials_config::{CallerFields, CredentialsConfig, RoleProfile};
use crate::jsonval::push_json_string;
use crate::peer::PeerIdentity;
use crate::secure_mem::{SecretBuf, SecretBytes};
use crate::source::error::SourceError;
use crate::source::secret::{CallerScope, Fetched, Lifetime, Secret, SecretRequest, Selector};
use crate::timefmt::rfc3339;

/// Separates the session name from the source identity in a session key (neither holds it).
const KEY_SEPARATOR: char = '/';

/// Why an `aws-credentials` source could not start.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The base identity failed (key files, `GetCallerIdentity`).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The start-up `AssumeRole` of a profile failed (wrong external id, no trust, no role).
    #[error("{key}: cannot assume {role_arn}: {cause}")]
    Profile {
        /// `sources.NAME.roles.PROFILE`.
        key: String,
        /// The role.
        role_arn: String,
        /// What kind of failure.
        cause: SourceError,
    },
}

impl CredentialsError {
    /// Whether starting again later may succeed (STS unreachable or throttled).
    pub fn retry_may_help(&self) -> bool {
        match self {
            CredentialsError::Auth(err) => err.retry_may_help(),
            CredentialsError::Profile { cause, .. } => cause.is_transient(),
        }
    }
}

struct Profile {
    config: RoleProfile,
    sts: aws_sdk_sts::Client,
}

/// Role profiles and the STS clients that assume them.
pub struct CredentialsSource {
    profiles: BTreeMap<String, Profile>,
    refresh_at_percent: u8,
    min_remaining: Duration,
    operation_timeout: Duration,
}

impl std::fmt::Debug for CredentialsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsSource")
            .field("profiles", &self.profiles.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One session's keys as `credential_process` JSON, and when it expires.
struct Session {
    json: SecretBytes,
    expiration: SystemTime,
}

impl CredentialsSource {
    /// Checks the base identity, builds each profile's STS client, and assumes each role once
    /// (with the session name expanded for the agent itself), so a wrong external id or a
    /// missing trust stops the start.
    pub async fn build(
        config: &CredentialsConfig,
        fetch_timeout: Duration,
    ) -> Result<CredentialsSource, CredentialsError> {
        let net = NetSettings {
            operation_timeout: fetch_timeout,
        };
        let base: SharedCredentialsProvider = aws_auth::build(&config.aws.auth, net).await?;
        let mut profiles = BTreeMap::new();
        for (name, profile) in &config.profiles {
            let endpoint = profile
                .sts_endpoint
                .as_deref()
                .or(config.aws.endpoint_url.as_deref());
            let sdk = aws_auth::sdk_config(base.clone(), &profile.sts_region, endpoint, net).await;
            profiles.insert(
                name.clone(),
                Profile {
                    config: profile.clone(),
                    sts: aws_sdk_sts::Client::new(&sdk),
                },
            );
        }
        let source = CredentialsSource {
            profiles,
            refresh_at_percent: config.refresh_at_percent,
            min_remaining: config.min_remaining,
            operation_timeout: fetch_timeout,
        };
        let agent = CallerFields {
            uid: nix::unistd::geteuid().as_raw(),
            user: None,
            unit: None,
        };
        for profile in source.profiles.values() {
            let (name, identity) = expand(&profile.config, &agent);
            let checked = source.assume(profile, &name, identity.as_deref()).await;
            if let Err(cause) = checked {
                return Err(CredentialsError::Profile {
                    key: profile.config.key.clone(),
                    role_arn: profile.config.role_arn.clone(),
                    cause,
                });
            }
            tracing::info!(profile = %profile.config.key, role = %profile.config.role_arn, "role can be assumed");
        }
        Ok(source)
    }

    /// Ids are configured profile names.
    pub fn check_id(&self, id: &str) -> Result<(), &'static str> {
        if self.profiles.contains_key(id) {
            Ok(())
        } else {
            Err("no such role profile in this source")
        }
    }

    /// The session `peer` gets of profile `id`: its session name (and source identity), the
    /// request's [`CallerScope::AwsSession`]; `None` for an unknown profile.
    pub fn session_key(&self, id: &str, peer: &PeerIdentity) -> Option<String> {
        let profile = self.profiles.get(id)?;
        // The user name is looked up only when a template asks for it.
        let user = profile
            .needs_user()
            .then(|| nix::unistd::User::from_uid(peer.uid.into()).ok().flatten())
            .flatten()
            .map(|u| u.name);
        let fields = CallerFields {
            uid: peer.uid,
            user: user.as_deref(),
            unit: peer.unit.as_deref(),
        };
        let (name, identity) = expand(&profile.config, &fields);
        Some(match identity {
            Some(identity) => format!("{name}{KEY_SEPARATOR}{identity}"),
            None => name,
        })
    }

    /// Assumes the profile's role for the session the request names.
    pub async fn fetch(&self, request: &SecretRequest) -> Result<Fetched, SourceError> {
        let profile = self
            .profiles
            .get(request.name.id())
            .ok_or_else(|| SourceError::Invalid("no such role profile".to_owned()))?;
        let Some(CallerScope::AwsSession(key)) = request.selector.caller.as_deref() else {
            return Err(SourceError::Invalid(
                "role credentials are vended to a caller only".to_owned(),
            ));
        };
        let (name, identity) = match key.split_once(KEY_SEPARATOR) {
            Some((name, identity)) => (name, Some(identity)),
            None => (key.as_str(), None),
        };
        let started = SystemTime::now();
        let session = self.assume(profile, name, identity).await?;
        let valid = session
            .expiration
            .duration_since(started)
            .unwrap_or_default();
        let serve_for = valid.saturating_sub(self.min_remaining);
        if serve_for.is_zero() {
            return Err(SourceError::BadReply {
                detail: format!(
                    "AssumeRole returned a session valid for {} s, not more than \
                     min_remaining_secs",
                    valid.as_secs()
                ),
            });
        }
        let refresh_after = valid
            .checked_mul(u32::from(self.refresh_at_percent))
            .and_then(|d| d.checked_div(100))
            .unwrap_or(serve_for)
            .min(serve_for);
        let mut secret = Secret::new(session.json, None);
        secret.lifetime = Some(Lifetime {
            expires_at: session.expiration,
            serve_for,
            // SECURITY: never served (not even stale) with less than min_remaining_secs left:
            // the SDKs that refresh 15 minutes before expiry would otherwise call on every
            // request.
            valid_for: serve_for,
            refresh_after: Some(refresh_after),
        });
        Ok(Fetched::New(secret))
    }

    async fn assume(
        &self,
        profile: &Profile,
        session_name: &str,
        source_identity: Option<&str>,
    ) -> Result<Session, SourceError> {
        let config = &profile.config;
        let duration = i32::try_from(config.duration.as_secs()).unwrap_or(3600);
        let mut call = profile
            .sts
            .assume_role()
            .role_arn(&config.role_arn)
            .role_session_name(session_name)
            .duration_seconds(duration)
            .set_external_id(config.external_id.clone())
            .set_source_identity(source_identity.map(str::to_owned))
            .set_policy(config.policy.clone());
        for arn in &config.policy_arns {
            call = call.policy_arns(
                aws_sdk_sts::types::PolicyDescriptorType::builder()
                    .arn(arn)
                    .build(),
            );
        }
        let out = call
            .send()
            .await
            .map_err(|e| map_sdk_error("AssumeRole", e, self.operation_timeout))?;
        let Some(mut keys) = out.credentials else {
            return Err(SourceError::BadReply {
                detail: "AssumeRole returned no Credentials".to_owned(),
            });
        };
        let expiration = SystemTime::try_from(keys.expiration).map_err(|_| SourceError::BadReply {
            detail: "AssumeRole returned an Expiration out of range".to_owned(),
        });
        let json = expiration.and_then(|expiration| {
            credential_process_json(
                &keys.access_key_id,
                &keys.secret_access_key,
                &keys.session_token,
                expiration,
                account_of(&config.role_arn),
            )
            .map_err(SourceError::from)
            .map(|json| Session { json, expiration })
        });
        // The SDK's copies are wiped once the locked copy exists (or failed to).
        keys.access_key_id.zeroize();
        keys.secret_access_key.zeroize();
        keys.session_token.zeroize();
        json
    }
}

impl Profile {
    fn needs_user(&self) -> bool {
        self.config.session_name.uses_user()
            || self
                .config
                .source_identity
                .as_ref()
                .is_some_and(|t| t.uses_user())
    }
}

fn expand(profile: &RoleProfile, fields: &CallerFields<'_>) -> (String, Option<String>) {
    (
        profile.session_name.expand(fields),
        profile.source_identity.as_ref().map(|t| t.expand(fields)),
    )
}

/// The account of a role ARN (`arn:aws:iam::ACCOUNT:role/NAME`), which the role's sessions
/// belong to.
fn account_of(role_arn: &str) -> Option<&str> {
    role_arn
        .split(':')
        .nth(4)
        .filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
}

/// `{"Version":1,"AccessKeyId","SecretAccessKey","SessionToken","Expiration","AccountId"}` in
/// locked memory (`AccountId` when known: botocore and the Rust SDK read it).
fn credential_process_json(
    access_key_id: &str,
    secret_access_key: &str,
    session_token: &str,
    expiration: SystemTime,
    account_id: Option<&str>,
) -> Result<SecretBytes, crate::secure_mem::MemError> {
    let capacity = access_key_id
        .len()
        .saturating_add(secret_access_key.len())
        .saturating_add(session_token.len())
        .saturating_add(160);
    let mut out = SecretBuf::with_capacity(capacity)?;
    out.extend_from_slice(b"{\"Version\":1,\"AccessKeyId\":")?;
    push_json_string(&mut out, access_key_id)?;
    out.extend_from_slice(b",\"SecretAccessKey\":")?;
    push_json_string(&mut out, secret_access_key)?;
    out.extend_from_slice(b",\"SessionToken\":")?;
    push_json_string(&mut out, session_token)?;
    out.extend_from_slice(b",\"Expiration\":")?;
    push_json_string(&mut out, &rfc3339(expiration))?;
    if let Some(account_id) = account_id {
        out.extend_from_slice(b",\"AccountId\":")?;
        push_json_string(&mut out, account_id)?;
    }
    out.extend_from_slice(b"}")?;
    out.finish()
}

/// Selectors: none (the broker adds the caller's session itself).
pub fn check_selector(selector: &Selector) -> Result<(), &'static str> {
    if selector.is_empty() {
        Ok(())
    } else {
        Err("role credentials have no versions")
    }
}

/// The session name of a session key, for the audit line.
pub fn session_name_of(key: &str) -> &str {
    key.split_once(KEY_SEPARATOR).map_or(key, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_process_json_is_what_the_sdks_parse() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let json = credential_process_json("ASIAX", "se\"cret", "tok", at, Some("210987654321"));
        let v: serde_json::Value = serde_json::from_slice(json.unwrap().as_slice()).unwrap();
        assert_eq!(v["Version"], 1);
        assert_eq!(v["AccessKeyId"], "ASIAX");
        assert_eq!(v["SecretAccessKey"], "se\"cret");
        assert_eq!(v["SessionToken"], "tok");
        assert_eq!(v["Expiration"], "2027-01-15T08:00:00.000Z");
        assert_eq!(v["AccountId"], "210987654321");
        let json = credential_process_json("ASIAX", "s", "tok", at, None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(json.as_slice()).unwrap();
        assert!(v.get("AccountId").is_none(), "{v}");
        assert_eq!(
            account_of("arn:aws:iam::210987654321:role/reader"),
            Some("210987654321")
        );
        assert_eq!(account_of("arn:aws:iam::21098765432:role/short"), None);
    }

    #[test]
    fn selectors_are_refused_and_the_session_name_is_split_off() {
        assert!(check_selector(&Selector::default()).is_ok());
        let versioned = Selector {
            version: Some(1),
            ..Selector::default()
        };
        assert!(check_selector(&versioned).is_err());
        assert_eq!(session_name_of("app-1000/id-1000"), "app-1000");
        assert_eq!(session_name_of("app-1000"), "app-1000");
    }
}
