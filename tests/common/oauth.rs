//! A real OAuth2 server for the oauth2 tests: `oidc-provider` (npm, pinned in
//! `tests/fixtures/oidc/package-lock.json`, installed by `scripts/install-test-deps.sh`) run by
//! `tests/fixtures/oidc/server.mjs` on a free loopback port, killed on drop.
//!
//! Its clients: `cc-client` (client_credentials, scopes `api:read api:write`) and `rt-client`
//! (refresh_token, rotating), both client_secret_basic; [`OidcServer::refresh_token`] is the
//! refresh token the script minted at start. [`OidcServer::count`] asks the server how many token
//! requests it answered, so tests count on the server's side.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use super::{ChildGuard, free_port, repo_root, wait_until};

pub const CC_CLIENT: &str = "cc-client";
pub const CC_SECRET: &str = "cc-secret-0123456789abcdef";
pub const RT_CLIENT: &str = "rt-client";
pub const RT_SECRET: &str = "rt-secret-0123456789abcdef";

/// A running oidc-provider.
pub struct OidcServer {
    pub port: u16,
    /// The refresh token minted for `rt-client` at start.
    pub refresh_token: String,
    _child: ChildGuard,
}

fn fixture_dir() -> PathBuf {
    repo_root().join("tests/fixtures/oidc")
}

fn node() -> PathBuf {
    let node = ["/usr/bin/node", "/usr/local/bin/node"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    node.unwrap_or_else(|| {
        panic!("node is missing: run scripts/install-test-deps.sh (it installs Debian's nodejs)")
    })
}

impl OidcServer {
    /// Starts the server with access tokens valid for `token_ttl_secs`; `dir` receives its log
    /// and the minted refresh token.
    pub fn start(dir: &Path, token_ttl_secs: u64) -> OidcServer {
        let modules = fixture_dir().join("node_modules/oidc-provider");
        assert!(
            modules.exists(),
            "{} is missing: run scripts/install-test-deps.sh (it runs npm ci there)",
            modules.display()
        );
        let port = free_port();
        let out = dir.join("oidc-minted.json");
        let log = std::fs::File::create(dir.join("oidc.log")).unwrap();
        let child = super::command(node())
            .arg(fixture_dir().join("server.mjs"))
            .arg(port.to_string())
            .arg(token_ttl_secs.to_string())
            .arg(&out)
            .current_dir(fixture_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn node");
        let child = ChildGuard(child);
        // "ready" is printed once this server listens, after it wrote the minted token: a port
        // that merely accepts may belong to another process that took it first.
        let ready = wait_until(Duration::from_secs(20), || {
            std::fs::read_to_string(dir.join("oidc.log")).is_ok_and(|log| log.contains("ready"))
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            ready,
            "oidc-provider did not listen on {port}; log:\n{}",
            std::fs::read_to_string(dir.join("oidc.log")).unwrap_or_default()
        );
        let minted: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        OidcServer {
            port,
            refresh_token: minted["refresh_token"].as_str().unwrap().to_owned(),
            _child: child,
        }
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// `{"success":N,"error":M,"requests":[…]}` as the server counted them.
    pub fn counts(&self) -> Value {
        let (status, body) = self.http("GET /count", None, b"");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Token requests answered with a token.
    pub fn successes(&self) -> u64 {
        self.counts()["success"].as_u64().unwrap()
    }

    /// Token requests refused.
    pub fn errors(&self) -> u64 {
        self.counts()["error"].as_u64().unwrap()
    }

    /// A token request of the test's own: (status, body).
    pub fn token_request(&self, client: &str, secret: &str, form: &str) -> (u16, String) {
        self.http("POST /token", Some((client, secret)), form.as_bytes())
    }

    fn http(&self, line: &str, basic: Option<(&str, &str)>, body: &[u8]) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = format!(
            "{line} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        if let Some((user, password)) = basic {
            head.push_str(&format!(
                "Authorization: Basic {}\r\nContent-Type: application/x-www-form-urlencoded\r\n",
                base64(format!("{user}:{password}").as_bytes())
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let response = super::parse_response(&raw).expect("HTTP response");
        let text = String::from_utf8_lossy(&response.body).into_owned();
        // Chunked bodies (the provider's JSON) keep their framing: take the JSON part.
        let text = match (text.find('{'), text.rfind('}')) {
            (Some(a), Some(b)) if a <= b => text[a..=b].to_owned(),
            _ => text,
        };
        (response.status, text)
    }
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
