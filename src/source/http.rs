//! The Vault HTTP API, thinly: one `call` that sends a request (token and namespace headers,
//! optional JSON body) and reads the reply straight into secure memory, plus the status-to-error
//! map every Vault call shares.
//!
//! It replaces the vaultrs crate for every call (most carry a token or a secret): vaultrs keeps
//! its token in a plain `String` (in a `Debug`-printable settings struct), reads replies into
//! unwiped `Vec`s and deserializes values into owned `String`s. Here the token is turned into a header value (marked
//! sensitive) only for the duration of one request, and replies land in a [`SecretBuf`]. What
//! this module cannot control: hyper's and rustls's own I/O buffers, which hold the bytes briefly
//! and are not wiped (the README says so). It does not know KV, transit or auth: callers build
//! the paths and parse the replies.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use zeroize::Zeroize;

use crate::secure_mem::{MAX_SECRET_LEN, SecretBuf, SecretBytes};
use crate::source::error::SourceError;

/// A Vault server: address, namespace and an HTTP(S) client.
pub struct VaultHttp {
    base: String,
    namespace: Option<HeaderValue>,
    client: HttpClient,
}

/// The client type [`https_client`] builds.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

impl std::fmt::Debug for VaultHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultHttp")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A reply whose status was a success.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body, in secure memory.
    pub body: SecretBytes,
}

/// Why a Vault client could not be set up (before any request).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// rustls refused the protocol versions.
    #[error("TLS set-up: {0}")]
    Tls(rustls::Error),
    /// The configured CA bundle is unusable.
    #[error("ca_file {path}: {reason}")]
    CaFile {
        /// The bundle.
        path: std::path::PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The system's CA certificates could not be loaded.
    #[error("cannot load the system's CA certificates: {0}")]
    SystemRoots(std::io::Error),
    /// The namespace cannot be sent as a header.
    #[error("namespace is not a valid header value")]
    Namespace,
}

impl VaultHttp {
    /// A client for `address` (`http://` or `https://`, no trailing slash). With `ca_file`, only
    /// that bundle is trusted; without it, the system's roots.
    pub fn new(
        address: &str,
        namespace: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<Self, SetupError> {
        let client = https_client(ca_file)?;
        let namespace = match namespace {
            Some(ns) => Some(HeaderValue::from_str(ns).map_err(|_| SetupError::Namespace)?),
            None => None,
        };
        Ok(VaultHttp {
            base: address.trim_end_matches('/').to_owned(),
            namespace,
            client,
        })
    }

    /// The server address, for messages.
    pub fn address(&self) -> &str {
        &self.base
    }

    /// `METHOD /v1/{path}` with an optional token and JSON body. A success status gives the
    /// body; anything else is mapped by [`status_error`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&SecretBytes>,
        body: Option<Bytes>,
    ) -> Result<Reply, SourceError> {
        let uri = format!("{}/v1/{}", self.base, path);
        let mut request = Request::builder().method(method).uri(&uri);
        if let Some(token) = token {
            // SECURITY: a short-lived heap copy for this one request, hidden from Debug output.
            let mut value =
                HeaderValue::from_bytes(token.as_slice()).map_err(|_| SourceError::BadReply {
                    detail: "the Vault token is not a valid header value".to_owned(),
                })?;
            value.set_sensitive(true);
            request = request.header("X-Vault-Token", value);
        }
        if let Some(ns) = &self.namespace {
            request = request.header("X-Vault-Namespace", ns.clone());
        }
        let has_body = body.is_some();
        if has_body {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| SourceError::Invalid(format!("cannot build a Vault request: {e}")))?;
        let response =
            self.client
                .request(request)
                .await
                .map_err(|e| SourceError::Unavailable {
                    detail: format!("cannot reach Vault at {}: {}", self.base, error_chain(&e)),
                })?;
        let status = response.status();
        let body = read_body_limited(
            response.into_body(),
            MAX_SECRET_LEN,
            &format!("Vault at {}", self.base),
        )
        .await?;
        if status.is_success() {
            Ok(Reply { status, body })
        } else {
            Err(status_error(status, body.as_slice()))
        }
    }
}

/// The HTTP(S) client every small HTTP source shares (Vault, the OAuth2 token endpoint): rustls
/// with aws-lc, HTTP/1.1. With `ca_file`, only that bundle is trusted; without it, the system's
/// roots.
pub fn https_client(ca_file: Option<&Path>) -> Result<HttpClient, SetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SetupError::Tls)?;
    let tls = match ca_file {
        Some(path) => {
            let ca_err = |reason: String| SetupError::CaFile {
                path: path.to_path_buf(),
                reason,
            };
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))?;
            for cert in certs {
                let cert = cert.map_err(|e| ca_err(e.to_string()))?;
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_err("no certificates found".to_owned()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .with_native_roots()
            .map_err(SetupError::SystemRoots)?
            .with_no_client_auth(),
    };
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Reads a reply body straight into secure memory, at most `limit` bytes (`what` names the
/// server in messages); received chunks are wiped when no one else holds them.
pub async fn read_body_limited(
    mut body: hyper::body::Incoming,
    limit: usize,
    what: &str,
) -> Result<SecretBytes, SourceError> {
    let mut out = SecretBuf::with_capacity(512)?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| SourceError::Unavailable {
            detail: format!("reading a reply from {what}: {e}"),
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len().saturating_add(data.len()) > limit {
                wipe_if_unique(data);
                return Err(SourceError::BadReply {
                    detail: format!("the reply from {what} is larger than {limit} bytes"),
                });
            }
            out.extend_from_slice(&data)?;
            wipe_if_unique(data);
        }
    }
    Ok(out.finish()?)
}

/// Wipes a received chunk when this is its only reference (hyper may still share the buffer).
fn wipe_if_unique(data: Bytes) {
    if let Ok(mut owned) = data.try_into_mut() {
        owned.as_mut().zeroize();
    }
}

/// An error and its causes, on one line (for log details).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Vault's error reply: `{"errors": ["…"]}`.
#[derive(Deserialize)]
struct ErrorReply {
    #[serde(default)]
    errors: Vec<String>,
}

/// Maps an unsuccessful status. Vault's error messages name what failed (paths, "permission
/// denied"), never secret values; they are kept short for the log.
pub fn status_error(status: StatusCode, body: &[u8]) -> SourceError {
    let mut detail = serde_json::from_slice::<ErrorReply>(body)
        .map(|r| r.errors.join("; "))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if detail.len() > 200 {
        let mut cut = 200;
        while !detail.is_char_boundary(cut) {
            // Index 0 is a char boundary: the loop stops there at the latest.
            cut = cut.saturating_sub(1);
        }
        detail.truncate(cut);
    }
    let detail = format!("Vault answered {}: {detail}", status.as_u16());
    match status.as_u16() {
        404 => SourceError::NotFound,
        401 | 403 => SourceError::Denied { detail },
        429 | 500..=599 | 412 => SourceError::Unavailable { detail },
        _ => SourceError::BadReply { detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        let denied = br#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#;
        assert_eq!(
            status_error(StatusCode::NOT_FOUND, b"{\"errors\":[]}"),
            SourceError::NotFound
        );
        assert!(matches!(
            status_error(StatusCode::FORBIDDEN, denied),
            SourceError::Denied { detail } if detail.contains("permission denied")
        ));
        assert!(matches!(
            status_error(
                StatusCode::SERVICE_UNAVAILABLE,
                br#"{"errors":["Vault is sealed"]}"#
            ),
            SourceError::Unavailable { .. }
        ));
        assert!(
            status_error(StatusCode::INTERNAL_SERVER_ERROR, b"garbage").is_transient(),
            "5xx is transient"
        );
        assert!(matches!(
            status_error(StatusCode::BAD_REQUEST, br#"{"errors":["bad"]}"#),
            SourceError::BadReply { .. }
        ));
    }
}
