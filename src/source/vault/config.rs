//! `[sources.NAME]` with `type = "vault"`: the raw TOML shape and its validation into
//! [`VaultConfig`]. Pure apart from checking that the files it names exist; it never contacts
//! Vault (the source logs in when it is built).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::name::validate_id;
use crate::source::section::Invalid;

/// `[sources.NAME]` with `type = "vault"`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVaultSource {
    /// `https://vault.internal:8200` (or `http://` on loopback).
    pub address: String,
    /// Vault Enterprise / OpenBao namespace (`X-Vault-Namespace`).
    pub namespace: Option<String>,
    /// PEM bundle trusted for the server's certificate (instead of the system roots).
    pub ca_file: Option<PathBuf>,
    /// KV v2 mount.
    #[serde(default = "default_kv_mount")]
    pub kv_mount: String,
    /// How the agent logs in.
    pub auth: RawVaultAuth,
    /// Transit mount; without it there is no `NAME-transit` source.
    pub transit_mount: Option<String>,
    /// Named transit ciphertexts (`vault:v1:…` or a data-key envelope).
    #[serde(default)]
    pub ciphertexts: BTreeMap<String, String>,
    /// Accept `http://` to a host other than loopback (for tests only; logged at start).
    #[serde(default)]
    pub allow_plain_http: bool,
}

fn default_kv_mount() -> String {
    "secret".to_owned()
}

/// `auth = { method = "…", … }`, as written.
#[derive(Debug, Deserialize)]
#[serde(tag = "method", deny_unknown_fields)]
pub enum RawVaultAuth {
    /// A token read from a file (re-read when Vault says the token is invalid).
    #[serde(rename = "token")]
    Token {
        /// File holding the token.
        token_file: PathBuf,
    },
    /// AppRole: role_id and secret_id from files.
    #[serde(rename = "approle")]
    AppRole {
        /// File holding the role_id.
        role_id_file: PathBuf,
        /// File holding the secret_id.
        secret_id_file: PathBuf,
        /// Auth mount (default `approle`).
        mount: Option<String>,
    },
    /// JWT or Kubernetes auth: a role and a JWT read from a file at every login.
    #[serde(rename = "jwt")]
    Jwt {
        /// The Vault role.
        role: String,
        /// File holding the JWT (e.g. a projected service-account token).
        jwt_file: PathBuf,
        /// Auth mount (default `jwt`; `kubernetes` for Vault's Kubernetes method).
        mount: Option<String>,
    },
}

/// A validated Vault source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// Server address without a trailing slash.
    pub address: String,
    /// Namespace header, if any.
    pub namespace: Option<String>,
    /// Trusted CA bundle, if any.
    pub ca_file: Option<PathBuf>,
    /// KV v2 mount.
    pub kv_mount: String,
    /// Login method.
    pub auth: VaultAuthConfig,
    /// Transit mount, when transit is enabled.
    pub transit_mount: Option<String>,
    /// Named ciphertexts.
    pub ciphertexts: BTreeMap<String, String>,
    /// `http://` to a host other than loopback was allowed (for tests only).
    pub allow_plain_http: bool,
}

/// A validated login method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuthConfig {
    /// Token from a file.
    Token {
        /// File holding the token.
        token_file: PathBuf,
    },
    /// AppRole.
    AppRole {
        /// Auth mount.
        mount: String,
        /// File holding the role_id.
        role_id_file: PathBuf,
        /// File holding the secret_id.
        secret_id_file: PathBuf,
    },
    /// JWT / Kubernetes.
    Jwt {
        /// Auth mount.
        mount: String,
        /// Vault role.
        role: String,
        /// File holding the JWT.
        jwt_file: PathBuf,
    },
}

impl VaultAuthConfig {
    /// The method name as in the config.
    pub fn method(&self) -> &'static str {
        match self {
            VaultAuthConfig::Token { .. } => "token",
            VaultAuthConfig::AppRole { .. } => "approle",
            VaultAuthConfig::Jwt { .. } => "jwt",
        }
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid::new(key, reason)
}

/// Checks a mount path: segments of letters, digits, `-`, `_`, `.`, no empty or dot segments.
pub(crate) fn check_mount(key: &'static str, mount: &str) -> Result<String, Invalid> {
    let ok = !mount.is_empty()
        && mount.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if ok {
        Ok(mount.to_owned())
    } else {
        Err(invalid(
            key,
            format!("{mount:?} is not a mount path (letters, digits, '-', '_', '.', '/')"),
        ))
    }
}

fn check_file(
    key: &'static str,
    path: &Path,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<PathBuf, Invalid> {
    let path = resolve(path);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(path),
        Ok(_) => Err(invalid(key, format!("{} is not a file", path.display()))),
        Err(e) => Err(invalid(key, format!("{}: {e}", path.display()))),
    }
}

/// A file holding the agent's Vault credential (token, role_id, secret_id, JWT): it must be
/// private to the agent (`crate::source::credfile`).
fn check_credential_file(
    key: &'static str,
    path: &Path,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<PathBuf, Invalid> {
    let path = resolve(path);
    crate::source::credfile::check(&path).map_err(|reason| invalid(key, reason))?;
    Ok(path)
}

impl RawVaultSource {
    /// Validates; `resolve` makes relative paths relative to the config file.
    pub fn build(&self, resolve: &dyn Fn(&Path) -> PathBuf) -> Result<VaultConfig, Invalid> {
        let address = self.address.trim_end_matches('/');
        let uri: hyper::Uri = address
            .parse()
            .map_err(|_| invalid("address", format!("{address:?} is not a URL")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https"))
            || uri.host().is_none()
            || !matches!(uri.path(), "" | "/")
            || uri.query().is_some()
        {
            return Err(invalid(
                "address",
                format!("{address:?} must be http(s)://HOST[:PORT] with no path"),
            ));
        }
        crate::source::section::check_plain_http(address, self.allow_plain_http)
            .map_err(|reason| invalid("address", reason))?;
        if let Some(ns) = &self.namespace {
            check_mount("namespace", ns)?;
        }
        let ca_file = match &self.ca_file {
            Some(path) => Some(check_file("ca_file", path, resolve)?),
            None => None,
        };
        let kv_mount = check_mount("kv_mount", &self.kv_mount)?;
        let auth = match &self.auth {
            RawVaultAuth::Token { token_file } => VaultAuthConfig::Token {
                token_file: check_credential_file("auth.token_file", token_file, resolve)?,
            },
            RawVaultAuth::AppRole {
                role_id_file,
                secret_id_file,
                mount,
            } => VaultAuthConfig::AppRole {
                mount: check_mount("auth.mount", mount.as_deref().unwrap_or("approle"))?,
                role_id_file: check_credential_file("auth.role_id_file", role_id_file, resolve)?,
                secret_id_file: check_credential_file(
                    "auth.secret_id_file",
                    secret_id_file,
                    resolve,
                )?,
            },
            RawVaultAuth::Jwt {
                role,
                jwt_file,
                mount,
            } => {
                if role.is_empty() || role.len() > 256 || role.chars().any(char::is_control) {
                    return Err(invalid("auth.role", "must be a Vault role name"));
                }
                VaultAuthConfig::Jwt {
                    mount: check_mount("auth.mount", mount.as_deref().unwrap_or("jwt"))?,
                    role: role.clone(),
                    jwt_file: check_credential_file("auth.jwt_file", jwt_file, resolve)?,
                }
            }
        };
        let transit_mount = match &self.transit_mount {
            Some(m) => Some(check_mount("transit_mount", m)?),
            None => None,
        };
        if !self.ciphertexts.is_empty() && transit_mount.is_none() {
            return Err(invalid("ciphertexts", "needs transit_mount"));
        }
        for (name, text) in &self.ciphertexts {
            if validate_id(name).is_err() || name.contains('/') {
                return Err(invalid(
                    "ciphertexts",
                    format!("{name:?} is not a valid name (letters, digits, _+=.@-:)"),
                ));
            }
            if !(text.starts_with("vault:") || text.trim_start().starts_with('{')) {
                return Err(invalid(
                    "ciphertexts",
                    format!("{name:?} is neither \"vault:v…\" nor a data-key envelope"),
                ));
            }
        }
        Ok(VaultConfig {
            address: address.to_owned(),
            namespace: self.namespace.clone(),
            ca_file,
            kv_mount,
            auth,
            transit_mount,
            ciphertexts: self.ciphertexts.clone(),
            allow_plain_http: self.allow_plain_http,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A credential file only the agent (this test) can read.
    fn private_file(dir: &Path) -> PathBuf {
        let file = dir.join("f");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        file
    }

    fn raw(text: &str) -> RawVaultSource {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn validation_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = private_file(dir.path());
        let f = file.display();
        let resolve = |p: &Path| p.to_path_buf();
        let ok = format!(
            "address = \"http://127.0.0.1:8200\"\nauth = {{ method = \"approle\", role_id_file = \"{f}\", secret_id_file = \"{f}\" }}\n"
        );
        let built = raw(&ok).build(&resolve).unwrap();
        assert_eq!(built.kv_mount, "secret");
        assert!(
            matches!(&built.auth, VaultAuthConfig::AppRole { mount, .. } if mount == "approle")
        );
        let cases: &[(String, &str)] = &[
            (ok.replace("http://127.0.0.1:8200", "ftp://x"), "address"),
            (
                ok.replace("http://127.0.0.1:8200", "http://vault.internal:8200"),
                "address",
            ),
            (
                ok.replace("http://127.0.0.1:8200", "http://10.0.0.5:8200"),
                "address",
            ),
            (
                ok.replace("http://127.0.0.1:8200", "http://x/v1"),
                "address",
            ),
            (format!("{ok}kv_mount = \"../x\"\n"), "kv_mount"),
            (format!("{ok}ca_file = \"/nonexistent/ca\"\n"), "ca_file"),
            (
                ok.replace(
                    &format!("role_id_file = \"{f}\""),
                    "role_id_file = \"/no/such\"",
                ),
                "auth.role_id_file",
            ),
            (
                ok.replace(
                    &format!("secret_id_file = \"{f}\""),
                    "secret_id_file = \"/no/such\"",
                ),
                "auth.secret_id_file",
            ),
            (
                format!("{ok}[ciphertexts]\na = \"vault:v1:xx\"\n"),
                "ciphertexts",
            ),
            (
                format!("{ok}transit_mount = \"transit\"\n[ciphertexts]\na = \"plain\"\n"),
                "ciphertexts",
            ),
            (
                format!(
                    "address = \"http://127.0.0.1\"\nauth = {{ method = \"jwt\", role = \"\", jwt_file = \"{f}\" }}\n"
                ),
                "auth.role",
            ),
            (
                "address = \"http://127.0.0.1\"\nauth = { method = \"token\", token_file = \"/no/such\" }\n"
                    .to_owned(),
                "auth.token_file",
            ),
        ];
        for (text, key) in cases {
            match raw(text).build(&resolve) {
                Err(e) => assert_eq!(e.key, *key, "{text}"),
                Ok(_) => panic!("expected {key} to be invalid in:\n{text}"),
            }
        }
    }

    #[test]
    fn config_errors_name_the_full_key_and_transit_globs_resolve() {
        use crate::config::{ConfigError, parse};
        let dir = tempfile::tempdir().unwrap();
        let file = private_file(dir.path());
        let text = |role_id: &str, transit: &str, glob: &str| {
            format!(
                "[server]\nsocket = \"/tmp/x.sock\"\n[sources.vault]\ntype = \"vault\"\naddress = \"http://127.0.0.1:8200\"\n{transit}auth = {{ method = \"approle\", role_id_file = \"{role_id}\", secret_id_file = \"{f}\" }}\n[[allow]]\npeer = {{ uid = 1 }}\nsecrets = [\"{glob}\"]\n",
                f = file.display()
            )
        };
        let f = file.display().to_string();
        let on = "transit_mount = \"transit\"\n";
        assert!(parse(&text(&f, on, "vault-transit/*"), Path::new("t.toml")).is_ok());
        assert!(parse(&text(&f, "", "vault/app/*"), Path::new("t.toml")).is_ok());
        let cases = [
            (
                text("/no/such", on, "vault/*"),
                "sources.vault.auth.role_id_file",
            ),
            (text(&f, "", "vault-transit/*"), "allow[0].secrets[0]"),
        ];
        for (config, key) in cases {
            match parse(&config, Path::new("t.toml")) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("expected {key}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_keys_and_methods_are_refused() {
        assert!(
            toml::from_str::<RawVaultSource>(
                "address = \"http://x\"\nauth = { method = \"token\", token_file = \"f\", extra = 1 }\n"
            )
            .is_err()
        );
        assert!(
            toml::from_str::<RawVaultSource>(
                "address = \"http://x\"\nauth = { method = \"ldap\" }\n"
            )
            .is_err()
        );
        assert!(
            toml::from_str::<RawVaultSource>(
                "address = \"http://x\"\nauth = { method = \"token\", token_file = \"f\" }\nkv = 1\n"
            )
            .is_err()
        );
    }

    #[test]
    fn plain_http_off_the_host_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let f = private_file(dir.path());
        let text = |address: &str, extra: &str| {
            format!(
                "address = \"{address}\"\n{extra}auth = {{ method = \"token\", token_file = \"{}\" }}\n",
                f.display()
            )
        };
        let resolve = |p: &Path| p.to_path_buf();
        for ok in [
            "https://vault.internal:8200",
            "http://127.0.0.1:8200",
            "http://127.1.2.3",
            "http://localhost:8200",
            "http://[::1]:8200",
        ] {
            assert!(raw(&text(ok, "")).build(&resolve).is_ok(), "{ok}");
        }
        let err = raw(&text("http://vault.internal:8200", ""))
            .build(&resolve)
            .unwrap_err();
        assert_eq!(err.key, "address");
        assert_eq!(
            err.reason,
            "\"http://vault.internal:8200\" is plain http to a host other than loopback (tokens \
             and secret values would cross the network in clear text); use https://, or set \
             allow_plain_http = true (for tests only)"
        );
        let allowed = raw(&text(
            "http://vault.internal:8200",
            "allow_plain_http = true\n",
        ))
        .build(&resolve)
        .unwrap();
        assert!(allowed.allow_plain_http);
    }

    #[test]
    fn credential_files_must_be_private_but_the_ca_bundle_need_not_be() {
        let dir = tempfile::tempdir().unwrap();
        let f = private_file(dir.path());
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = dir.path().join("open");
        std::fs::write(&open, "x").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o640)).unwrap();
        let resolve = |p: &Path| p.to_path_buf();
        let auth = |a: &str, b: &str| {
            format!(
                "address = \"http://127.0.0.1\"\nca_file = \"{}\"\nauth = {{ method = \"approle\", role_id_file = \"{}\", secret_id_file = \"{}\" }}\n",
                ca.display(),
                a,
                b
            )
        };
        let (f, open) = (f.display().to_string(), open.display().to_string());
        assert!(raw(&auth(&f, &f)).build(&resolve).is_ok());
        for (text, key) in [
            (auth(&open, &f), "auth.role_id_file"),
            (auth(&f, &open), "auth.secret_id_file"),
            (
                format!(
                    "address = \"http://127.0.0.1\"\nauth = {{ method = \"token\", token_file = \"{open}\" }}\n"
                ),
                "auth.token_file",
            ),
            (
                format!(
                    "address = \"http://127.0.0.1\"\nauth = {{ method = \"jwt\", role = \"r\", jwt_file = \"{open}\" }}\n"
                ),
                "auth.jwt_file",
            ),
        ] {
            let err = raw(&text).build(&resolve).unwrap_err();
            assert_eq!(err.key, key);
            assert!(
                err.reason.starts_with(&format!("{open} has mode 0640")),
                "{}",
                err.reason
            );
        }
    }
}
