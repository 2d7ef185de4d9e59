//! `[sources.NAME]` with `type = "vault-lease"`: the raw TOML shape (the source keys and its
//! `[sources.NAME.profiles.P]` tables) and its validation into [`LeaseConfig`]. Pure: it never
//! contacts Vault, and it does not check that `vault` names a Vault source (the config does,
//! once every source is known).

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::Method;
use serde::Deserialize;

use super::config::check_mount;
use crate::name::validate_id;
// The one validation error with a relative key (`profiles.app.path`).
use crate::source::section::Invalid;

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid::new(key, reason)
}

/// Default `renew_at_percent`: renew at about 2/3 of the lease, as Vault Agent does.
const DEFAULT_RENEW_AT_PERCENT: u8 = 67;
/// Default `min_remaining_secs`: a replaced credential still has five minutes to be switched.
const DEFAULT_MIN_REMAINING_SECS: u64 = 300;
/// Default `revoke_grace_secs`: how long a replaced credential keeps working.
const DEFAULT_REVOKE_GRACE_SECS: u64 = 30;
/// Longest `min_remaining_secs` / `revoke_grace_secs` accepted (a day).
const MAX_SECS: u64 = 24 * 3600;

/// `[sources.NAME]` with `type = "vault-lease"`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLeaseSource {
    /// The Vault source whose connection and login this source uses.
    pub vault: String,
    /// Named leases: `[sources.NAME.profiles.P]`.
    #[serde(default)]
    pub profiles: BTreeMap<String, RawProfile>,
    /// Revoke the agent's leases on SIGTERM (default true).
    pub revoke_on_shutdown: Option<bool>,
    /// How long a replaced lease keeps working before it is revoked (default 30).
    pub revoke_grace_secs: Option<u64>,
}

/// `[sources.NAME.profiles.P]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// The engine endpoint: `database/creds/app`, `pki/issue/web`.
    pub path: String,
    /// `"GET"` (default) or `"POST"`.
    pub method: Option<String>,
    /// Request parameters: the JSON body of a POST, the query of a GET.
    #[serde(default)]
    pub params: toml::Table,
    /// Renew at this percentage of the lease (default 67).
    pub renew_at_percent: Option<u8>,
    /// A lease is replaced while it still has this long to live (default 300).
    pub min_remaining_secs: Option<u64>,
    /// One lease per caller identity instead of one shared lease (default false).
    pub per_caller: Option<bool>,
}

/// A validated `vault-lease` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The Vault source it logs in through.
    pub vault: String,
    /// Profiles by name (each a valid secret id).
    pub profiles: BTreeMap<String, ProfileConfig>,
    /// Revoke on SIGTERM.
    pub revoke_on_shutdown: bool,
    /// How long a replaced lease keeps working.
    pub revoke_grace: Duration,
}

/// A validated profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileConfig {
    /// Engine path below `/v1/`.
    pub path: String,
    /// GET or POST.
    pub method: Method,
    /// Parameters as a JSON object (empty when none).
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Renewal point, 1–99 % of the lease.
    pub renew_at_percent: u8,
    /// Time left at which a lease is replaced.
    pub min_remaining: Duration,
    /// One lease per caller identity (uid, units) instead of one shared lease.
    pub per_caller: bool,
}

impl RawLeaseSource {
    /// Validates the source keys and each profile.
    pub fn build(&self) -> Result<LeaseConfig, Invalid> {
        validate_id(&self.vault)
            .map_err(|_| invalid("vault", "must name a configured source of type \"vault\""))?;
        if self.profiles.is_empty() {
            return Err(invalid(
                "profiles",
                "at least one [sources.NAME.profiles.P] table is required",
            ));
        }
        let mut profiles = BTreeMap::new();
        for (name, raw) in &self.profiles {
            if name.contains('/') || validate_id(name).is_err() {
                return Err(invalid(
                    "profiles",
                    format!("{name:?} is not a profile name (a secret id without '/')"),
                ));
            }
            profiles.insert(name.clone(), raw.build(name)?);
        }
        let revoke_grace_secs = self.revoke_grace_secs.unwrap_or(DEFAULT_REVOKE_GRACE_SECS);
        if revoke_grace_secs > MAX_SECS {
            return Err(invalid(
                "revoke_grace_secs",
                format!("must be at most {MAX_SECS} seconds"),
            ));
        }
        Ok(LeaseConfig {
            vault: self.vault.clone(),
            profiles,
            revoke_on_shutdown: self.revoke_on_shutdown.unwrap_or(true),
            revoke_grace: Duration::from_secs(revoke_grace_secs),
        })
    }
}

impl RawProfile {
    fn build(&self, name: &str) -> Result<ProfileConfig, Invalid> {
        let key = |k: &str| format!("profiles.{name}.{k}");
        let path = check_mount("path", &self.path).map_err(|e| invalid(key("path"), e.reason))?;
        let method = match self.method.as_deref() {
            None | Some("GET") => Method::GET,
            Some("POST") => Method::POST,
            Some(other) => {
                return Err(invalid(
                    key("method"),
                    format!("{other:?} is not \"GET\" or \"POST\""),
                ));
            }
        };
        let params = match serde_json::to_value(&self.params) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return Err(invalid(key("params"), "must be a table of values")),
        };
        let renew_at_percent = self.renew_at_percent.unwrap_or(DEFAULT_RENEW_AT_PERCENT);
        if !(1..=99).contains(&renew_at_percent) {
            return Err(invalid(key("renew_at_percent"), "must be between 1 and 99"));
        }
        let min_remaining_secs = self
            .min_remaining_secs
            .unwrap_or(DEFAULT_MIN_REMAINING_SECS);
        if min_remaining_secs > MAX_SECS {
            return Err(invalid(
                key("min_remaining_secs"),
                format!("must be at most {MAX_SECS} seconds"),
            ));
        }
        Ok(ProfileConfig {
            path,
            method,
            params,
            renew_at_percent,
            min_remaining: Duration::from_secs(min_remaining_secs),
            per_caller: self.per_caller.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LeaseConfig, Invalid> {
        let raw: RawLeaseSource = toml::from_str(text).unwrap();
        raw.build()
    }

    const OK: &str = r#"
vault = "bao"
[profiles.app]
path = "database/creds/app"
"#;

    #[test]
    fn defaults() {
        let cfg = parse(OK).unwrap();
        assert_eq!(cfg.vault, "bao");
        assert!(cfg.revoke_on_shutdown);
        assert_eq!(cfg.revoke_grace, Duration::from_secs(30));
        let app = &cfg.profiles["app"];
        assert_eq!(app.method, Method::GET);
        assert_eq!(app.renew_at_percent, 67);
        assert_eq!(app.min_remaining, Duration::from_secs(300));
        assert!(app.params.is_empty());
        assert!(!app.per_caller);
    }

    #[test]
    fn a_post_profile_keeps_its_params() {
        let cfg = parse(
            r#"
vault = "bao"
revoke_on_shutdown = false
revoke_grace_secs = 5
[profiles.web]
path = "pki/issue/web"
method = "POST"
params = { common_name = "web.internal", ttl = "1h" }
renew_at_percent = 50
min_remaining_secs = 60
per_caller = true
"#,
        )
        .unwrap();
        let web = &cfg.profiles["web"];
        assert_eq!(web.method, Method::POST);
        assert_eq!(web.params["common_name"], "web.internal");
        assert_eq!(web.min_remaining, Duration::from_secs(60));
        assert!(web.per_caller);
        assert!(!cfg.revoke_on_shutdown);
        assert_eq!(cfg.revoke_grace, Duration::from_secs(5));
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases: &[(&str, &str)] = &[
            ("vault = \"bao\"\n", "profiles"),
            (
                "vault = \"\"\n[profiles.a]\npath = \"db/creds/a\"\n",
                "vault",
            ),
            (
                "vault = \"b\"\n[profiles.a]\npath = \"../x\"\n",
                "profiles.a.path",
            ),
            (
                "vault = \"b\"\n[profiles.a]\npath = \"db//x\"\n",
                "profiles.a.path",
            ),
            (
                "vault = \"b\"\n[profiles.a]\npath = \"p\"\nmethod = \"PUT\"\n",
                "profiles.a.method",
            ),
            (
                "vault = \"b\"\n[profiles.a]\npath = \"p\"\nrenew_at_percent = 0\n",
                "profiles.a.renew_at_percent",
            ),
            (
                "vault = \"b\"\n[profiles.a]\npath = \"p\"\nrenew_at_percent = 100\n",
                "profiles.a.renew_at_percent",
            ),
            (
                "vault = \"b\"\n[profiles.a]\npath = \"p\"\nmin_remaining_secs = 999999\n",
                "profiles.a.min_remaining_secs",
            ),
            (
                "vault = \"b\"\nrevoke_grace_secs = 999999\n[profiles.a]\npath = \"p\"\n",
                "revoke_grace_secs",
            ),
            (
                "vault = \"b\"\n[profiles.\"a b\"]\npath = \"p\"\n",
                "profiles",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.key, *key, "{text}");
        }
        assert!(toml::from_str::<RawLeaseSource>("vault = \"b\"\nttl = 1\n").is_err());
    }
}
