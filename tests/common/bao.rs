//! A real OpenBao server (Vault's API) for the Vault tests: started on a free loopback port
//! from the pinned venv, configured through its HTTP API with the root token, killed on drop.
//! A dev server by default; [`Bao::start_persistent`] runs one with Raft storage on disk that the
//! harness initialises and unseals itself, so a restart keeps its data and tokens.
//!
//! [`Bao::setup`] enables what the agent needs and nothing more: KV v2 at `secret/` (the dev
//! default), transit with key `app-key`, AppRole and JWT auth, and the policy `agent` that may
//! read `secret/data/app/*` and decrypt with `app-key` only. Its role ids and secret ids are
//! fixed, so a restarted server (dev storage is in memory) can be set up identically.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use super::{ChildGuard, free_port, venv_bin, wait_until};

/// The dev server's root token.
pub const ROOT: &str = "root";
/// Fixed AppRole credentials of the `agent` role.
pub const ROLE_ID: &str = "agent-role-id-3f9a";
pub const SECRET_ID: &str = "agent-secret-id-SHOULD-NOT-BE-LOGGED-81b2";
/// The policy the agent gets: read app secrets, decrypt with app-key.
pub const AGENT_POLICY: &str = r#"
path "secret/data/app/*" { capabilities = ["read"] }
path "transit/decrypt/app-key" { capabilities = ["update"] }
"#;

/// A running server: a dev server, or one with persistent storage.
pub struct Bao {
    pub port: u16,
    child: Option<ChildGuard>,
    /// With `-dev-tls`: where the server wrote `vault-ca.pem`.
    tls_dir: Option<PathBuf>,
    /// Not dev mode: the config file (Raft storage on disk) and the unseal key.
    persistent: Option<(PathBuf, String)>,
}

impl Bao {
    /// Starts a dev server on a free port and waits until it is healthy.
    pub fn start() -> Bao {
        let mut bao = Bao {
            port: free_port(),
            child: None,
            tls_dir: None,
            persistent: None,
        };
        bao.launch();
        bao
    }

    /// Starts a server that is not in dev mode: Raft storage in `dir/bao-data`, initialised (one
    /// unseal key) and unsealed through the HTTP API, with a token `root` like the dev server's
    /// and KV v2 at `secret/`. Its state survives [`Bao::stop`] and [`Bao::restart`], which
    /// unseals it again.
    pub fn start_persistent(dir: &Path) -> Bao {
        let port = free_port();
        let cluster = free_port();
        let data = dir.join("bao-data");
        std::fs::create_dir_all(&data).unwrap();
        let config = dir.join("bao.hcl");
        std::fs::write(
            &config,
            format!(
                r#"storage "raft" {{
  path = "{data}"
  node_id = "node1"
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster}"
"#,
                data = data.display()
            ),
        )
        .unwrap();
        let mut bao = Bao {
            port,
            child: None,
            tls_dir: None,
            persistent: Some((config, String::new())),
        };
        bao.launch();
        let (status, init) = bao
            .try_api(
                None,
                "PUT",
                "sys/init",
                Some(json!({ "secret_shares": 1, "secret_threshold": 1 })),
            )
            .unwrap();
        assert_eq!(status, 200, "bao init: {init}");
        let key = init["keys_base64"][0].as_str().unwrap().to_owned();
        let initial_root = init["root_token"].as_str().unwrap().to_owned();
        if let Some((_, unseal_key)) = &mut bao.persistent {
            *unseal_key = key;
        }
        bao.unseal();
        let (status, created) = bao
            .try_api(
                Some(&initial_root),
                "POST",
                "auth/token/create",
                Some(json!({ "id": ROOT, "policies": ["root"], "no_parent": true })),
            )
            .unwrap();
        assert_eq!(status, 200, "root token: {created}");
        bao.api(
            "POST",
            "sys/mounts/secret",
            Some(json!({ "type": "kv", "options": { "version": "2" } })),
        );
        bao
    }

    /// Unseals a persistent server and waits until it is active.
    fn unseal(&self) {
        let Some((_, key)) = &self.persistent else {
            return;
        };
        let (status, reply) = self
            .try_api(None, "PUT", "sys/unseal", Some(json!({ "key": key })))
            .unwrap();
        assert_eq!(status, 200, "bao unseal: {reply}");
        let active = wait_until(Duration::from_secs(30), || {
            matches!(self.try_api(None, "GET", "sys/health", None), Ok((200, _)))
        });
        assert!(active, "bao not active after unseal on port {}", self.port);
    }

    /// Starts a `-dev-tls` server (its own CA, written to `cert_dir/vault-ca.pem`). Set it up
    /// with [`Bao::cli`]: the plain-HTTP helpers do not speak TLS.
    pub fn start_tls(cert_dir: &Path) -> Bao {
        let mut bao = Bao {
            port: free_port(),
            child: None,
            tls_dir: Some(cert_dir.to_path_buf()),
            persistent: None,
        };
        bao.launch();
        bao
    }

    /// The CA bundle of a TLS server.
    pub fn ca_file(&self) -> PathBuf {
        self.tls_dir.as_ref().unwrap().join("vault-ca.pem")
    }

    /// Runs the `bao` CLI against this server with the root token.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut command = super::command(venv_bin("bao"));
        command
            .args(args)
            .env("VAULT_ADDR", self.address())
            .env("VAULT_TOKEN", ROOT);
        if self.tls_dir.is_some() {
            command.env("VAULT_CACERT", self.ca_file());
        }
        command.output().unwrap()
    }

    fn launch(&mut self) {
        // A dev server also listens on PORT+1 (its cluster port), which a free-port pick does
        // not reserve: when another process holds it, the server exits at once. Then it is
        // started again on another port (a persistent server's ports are in its config).
        let attempts = if self.persistent.is_none() { 3 } else { 1 };
        let mut log = String::new();
        for _ in 0..attempts {
            match self.launch_once() {
                Ok(()) => return,
                Err(text) => log = text,
            }
            if self.persistent.is_none() {
                self.port = free_port();
            }
        }
        panic!(
            "bao server not healthy on port {}; its log:\n{log}",
            self.port
        );
    }

    /// Starts the server once and waits until it is healthy; else the end of its log.
    fn launch_once(&mut self) -> Result<(), String> {
        let args = match (&self.persistent, &self.tls_dir) {
            (Some((config, _)), _) => {
                vec!["server".to_owned(), format!("-config={}", config.display())]
            }
            (None, tls_dir) => {
                let mut args = vec![
                    "server".to_owned(),
                    "-dev".to_owned(),
                    format!("-dev-root-token-id={ROOT}"),
                    format!("-dev-listen-address=127.0.0.1:{}", self.port),
                ];
                if let Some(dir) = tls_dir {
                    args.push("-dev-tls".to_owned());
                    args.push(format!("-dev-tls-cert-dir={}", dir.display()));
                }
                args
            }
        };
        let log = tempfile::NamedTempFile::new().expect("bao log file");
        let child = super::command(venv_bin("bao"))
            .args(&args)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("bao log file"))
            .spawn()
            .expect("start bao");
        self.child = Some(ChildGuard(child));
        let mut exited = false;
        let healthy = wait_until(Duration::from_secs(30), || {
            if let Some(ChildGuard(child)) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                exited = true;
                return true;
            }
            if self.persistent.is_some() {
                // Sealed (and at first uninitialised), it still answers health.
                self.try_api(None, "GET", "sys/health", None).is_ok()
            } else if self.tls_dir.is_some() {
                self.ca_file().exists() && self.cli(&["status"]).status.success()
            } else {
                matches!(self.try_api(None, "GET", "sys/health", None), Ok((200, _)))
            }
        });
        if healthy && !exited {
            return Ok(());
        }
        self.child = None;
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        Err(tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }

    /// Kills the server (a dev server's in-memory storage is lost).
    pub fn stop(&mut self) {
        self.child = None;
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_err()),
            "bao still listening after kill"
        );
    }

    /// Starts the server again on the same port: a dev server empty (run `setup` again), a
    /// persistent one with its state, unsealed.
    pub fn restart(&mut self) {
        self.launch();
        self.unseal();
    }

    /// `http://127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        let scheme = if self.tls_dir.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A root-token API call that must succeed; returns the JSON body (or Null).
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self
            .try_api(Some(ROOT), method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {value}"
        );
        value
    }

    /// A root-token API call in `namespace` (`X-Vault-Namespace`) that must succeed.
    pub fn api_in(&self, namespace: &str, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self
            .try_api_in(Some(namespace), Some(ROOT), method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(
            (200..300).contains(&status),
            "{namespace}: {method} {path}: {status} {value}"
        );
        value
    }

    /// One HTTP/1.1 call to `/v1/{path}`; returns the status and the JSON body (or Null).
    pub fn try_api(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> std::io::Result<(u16, Value)> {
        self.try_api_in(None, token, method, path, body)
    }

    fn try_api_in(
        &self,
        namespace: Option<&str>,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> std::io::Result<(u16, Value)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        // Generous: `sys/init` on raft storage (key generation, fsyncs) took over 10 s on a
        // loaded 2-core machine.
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!(
            "{method} /v1/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(token) = token {
            head.push_str(&format!("X-Vault-Token: {token}\r\n"));
        }
        if let Some(ns) = namespace {
            head.push_str(&format!("X-Vault-Namespace: {ns}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let resp = super::parse_response(&raw)
            .ok_or_else(|| std::io::Error::other("unparseable reply from bao"))?;
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(&resp.body)
        } else {
            resp.body.clone()
        };
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((resp.status, value))
    }

    /// Writes a KV v2 secret at `secret/{path}`; returns the new version.
    pub fn kv_put(&self, path: &str, data: Value) -> u64 {
        let reply = self.api(
            "POST",
            &format!("secret/data/{path}"),
            Some(json!({ "data": data })),
        );
        reply["data"]["version"].as_u64().unwrap()
    }

    /// Enables transit, AppRole and JWT (with `jwt_pubkey_pem`), writes the `agent` policy, the
    /// `agent` AppRole role (fixed ids; `token_ttl`/`token_max_ttl` in seconds) and the `agent`
    /// JWT role (issuer `credagent-test`, audience `vault`), and the transit key `app-key`.
    pub fn setup(&self, token_ttl: u64, token_max_ttl: u64, jwt_pubkey_pem: Option<&str>) {
        self.api(
            "PUT",
            "sys/policies/acl/agent",
            Some(json!({ "policy": AGENT_POLICY })),
        );
        self.api(
            "POST",
            "sys/mounts/transit",
            Some(json!({ "type": "transit" })),
        );
        self.api("POST", "transit/keys/app-key", Some(json!({})));
        self.api("POST", "transit/keys/other-key", Some(json!({})));
        self.api(
            "POST",
            "sys/auth/approle",
            Some(json!({ "type": "approle" })),
        );
        self.api(
            "POST",
            "auth/approle/role/agent",
            Some(json!({
                "token_policies": ["agent"],
                "token_ttl": token_ttl,
                "token_max_ttl": token_max_ttl,
            })),
        );
        self.api(
            "POST",
            "auth/approle/role/agent/role-id",
            Some(json!({ "role_id": ROLE_ID })),
        );
        self.api(
            "POST",
            "auth/approle/role/agent/custom-secret-id",
            Some(json!({ "secret_id": SECRET_ID })),
        );
        if let Some(pem) = jwt_pubkey_pem {
            self.api("POST", "sys/auth/jwt", Some(json!({ "type": "jwt" })));
            self.api(
                "POST",
                "auth/jwt/config",
                Some(json!({
                    "jwt_validation_pubkeys": [pem],
                    "bound_issuer": "credagent-test",
                })),
            );
            self.api(
                "POST",
                "auth/jwt/role/agent",
                Some(json!({
                    "role_type": "jwt",
                    "user_claim": "sub",
                    "bound_audiences": ["vault"],
                    "token_policies": ["agent"],
                    "token_ttl": token_ttl,
                    "token_max_ttl": token_max_ttl,
                })),
            );
        }
    }

    /// Revokes every token created by a login on `mount_prefix` (e.g. "approle"): the agent's.
    pub fn revoke_login_tokens(&self, display_prefix: &str) -> usize {
        let list = self.api("LIST", "auth/token/accessors", None);
        let mut revoked = 0;
        for accessor in list["data"]["keys"].as_array().unwrap() {
            let info = self.api(
                "POST",
                "auth/token/lookup-accessor",
                Some(json!({ "accessor": accessor })),
            );
            let display = info["data"]["display_name"].as_str().unwrap_or_default();
            if display.starts_with(display_prefix) {
                self.api(
                    "POST",
                    "auth/token/revoke-accessor",
                    Some(json!({ "accessor": accessor })),
                );
                revoked += 1;
            }
        }
        revoked
    }
}

fn dechunk(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..pos]).unwrap().trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = pos + 2;
        out.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
    out
}

/// An RSA key pair and a signed JWT (RS256, `iss=credagent-test`, `aud=vault`, `sub=agent`),
/// made by the venv's python `cryptography`. Returns (public key PEM, JWT).
pub fn jwt_pair(dir: &Path) -> (String, String) {
    let script = r#"
import base64, json, sys, time
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
pub = key.public_key().public_bytes(serialization.Encoding.PEM,
    serialization.PublicFormat.SubjectPublicKeyInfo).decode()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
head = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"iss": "credagent-test", "aud": "vault", "sub": "agent",
    "iat": now, "nbf": now - 5, "exp": now + 3600}).encode())
sig = key.sign(f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
print(json.dumps({"pub": pub, "jwt": f"{head}.{claims}.{b64(sig)}"}))
"#;
    let out = python(dir, script, &[]);
    let v: Value = serde_json::from_str(&out).unwrap();
    (
        v["pub"].as_str().unwrap().to_owned(),
        v["jwt"].as_str().unwrap().to_owned(),
    )
}

/// AES-256-GCM of `plaintext` under the base64 `key`; returns (nonce b64, ciphertext+tag b64).
pub fn aes_gcm_seal(dir: &Path, key_b64: &str, plaintext: &str) -> (String, String) {
    let script = r#"
import base64, json, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key = base64.b64decode(sys.argv[1])
nonce = os.urandom(12)
ct = AESGCM(key).encrypt(nonce, sys.argv[2].encode(), None)
print(json.dumps({"nonce": base64.b64encode(nonce).decode(), "ct": base64.b64encode(ct).decode()}))
"#;
    let out = python(dir, script, &[key_b64, plaintext]);
    let v: Value = serde_json::from_str(&out).unwrap();
    (
        v["nonce"].as_str().unwrap().to_owned(),
        v["ct"].as_str().unwrap().to_owned(),
    )
}

fn python(dir: &Path, script: &str, args: &[&str]) -> String {
    let path = dir.join("helper.py");
    std::fs::write(&path, script).unwrap();
    let out = super::command(venv_bin("python"))
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python helper failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
