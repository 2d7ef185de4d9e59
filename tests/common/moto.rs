//! A real moto server for the AWS tests: started on a free loopback port, seeded (so a restart
//! re-creates the same keys, ARNs and version ids), set up by `tests/fixtures/moto_setup.py`
//! (IAM users, roles, secrets in two accounts) which then turns signature and IAM checking ON.
//! Killed on drop. The recorder API counts the calls the agent made.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{CANARY, ChildGuard, TestDir, free_port, repo_root, venv_bin};

/// Account of the test users and most secrets.
pub const ACCOUNT_A: &str = "123456789012";
/// The other account (cross-account tests).
pub const ACCOUNT_B: &str = "210987654321";
/// Seed for moto's random ids (same keys after a restart).
const SEED: u32 = 4242;

pub struct Moto {
    pub port: u16,
    pub url: String,
    dir: PathBuf,
    child: Option<ChildGuard>,
    /// The JSON printed by the set-up script: users' keys and ARNs.
    pub setup: serde_json::Value,
}

impl Moto {
    /// Starts and sets up moto; auth checking is on when this returns.
    pub fn start(dir: &TestDir) -> Moto {
        let port = free_port();
        let mut moto = Moto {
            port,
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.path().to_path_buf(),
            child: None,
            setup: serde_json::Value::Null,
        };
        moto.spawn();
        moto.setup = moto.run_setup();
        moto
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("moto.log"))
            .unwrap();
        let child = super::command(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .env(
                "MOTO_RECORDER_FILEPATH",
                self.dir.join("moto-recording.jsonl"),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(ChildGuard(child));
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(self.port, "GET", "/moto-api/", &[], b"")
            .map(|r| r.0)
            .ok()
            != Some(200)
        {
            assert!(
                Instant::now() < deadline,
                "moto did not start in 30 s; log:\n{}",
                std::fs::read_to_string(self.dir.join("moto.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (status, _) = http(
            self.port,
            "POST",
            &format!("/moto-api/seed?a={SEED}"),
            &[],
            b"",
        )
        .unwrap();
        assert_eq!(status, 200, "seeding moto");
    }

    fn run_setup(&self) -> serde_json::Value {
        let out = self.script(&["setup", CANARY]);
        serde_json::from_str(&out).unwrap()
    }

    /// Runs the set-up script with `args`; returns its stdout.
    pub fn script(&self, args: &[&str]) -> String {
        let out = super::command(venv_bin("python"))
            .arg(repo_root().join("tests/fixtures/moto_setup.py"))
            .arg(&self.url)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "moto_setup.py {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Sends `signal` to the server (SIGSTOP makes it hang: connections open, no answers).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().unwrap().0.id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
    }

    /// Kills the server (the port stays reserved for `restart`).
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Starts the server again on the same port with the same state (same seed, same set-up).
    ///
    /// Every request moto answers draws from its seeded generator (request ids), so a request
    /// that reaches it between the seed and the end of the set-up — an agent retrying on its own
    /// schedule — shifts the keys it makes. Such a set-up is thrown away and made again on a
    /// fresh server, a few times at most.
    pub fn restart(&mut self) {
        let mut again = serde_json::Value::Null;
        for _ in 0..5 {
            self.spawn();
            again = self.run_setup();
            if again == self.setup {
                return;
            }
            self.stop();
        }
        assert_eq!(
            again, self.setup,
            "moto restart must re-create the same keys"
        );
    }

    /// `(access key id, secret access key)` of a set-up user.
    pub fn key(&self, user: &str) -> (String, String) {
        let u = &self.setup[user];
        (
            u["key"].as_str().unwrap().to_owned(),
            u["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Writes a user's key to two mode-0600 files in `dir`; returns their paths.
    pub fn key_files(&self, dir: &Path, user: &str) -> (PathBuf, PathBuf) {
        let (id, secret) = self.key(user);
        let id_path = dir.join(format!("{user}.key-id"));
        let secret_path = dir.join(format!("{user}.secret-key"));
        for (path, text) in [(&id_path, id), (&secret_path, secret)] {
            std::fs::write(path, format!("{text}\n")).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        (id_path, secret_path)
    }

    /// Puts a new AWSCURRENT version of `name` (as the admin user); returns its VersionId.
    pub fn put_value(&self, name: &str, value: &str) -> String {
        let (key, secret) = self.key("admin");
        let out = self.script(&["put", &key, &secret, name, value]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["version_id"].as_str().unwrap().to_owned()
    }

    /// Creates the secret `name` with `value` (as the admin user).
    pub fn create_secret(&self, name: &str, value: &str) {
        let (key, secret) = self.key("admin");
        self.script(&["create", &key, &secret, name, value]);
    }

    /// Creates `count` secrets `{prefix}0`… whose values are their names (as the admin user).
    pub fn create_secrets(&self, prefix: &str, count: usize) {
        let (key, secret) = self.key("admin");
        self.script(&["create-many", &key, &secret, prefix, &count.to_string()]);
    }

    /// Creates `count` SecureString parameters `{prefix}0`… whose values are their names.
    pub fn create_params(&self, prefix: &str, count: usize) {
        let (key, secret) = self.key("admin");
        self.script(&[
            "create-many-params",
            &key,
            &secret,
            prefix,
            &count.to_string(),
        ]);
    }

    /// Schedules the deletion of secret `name` (a read then fails as for a deleted secret).
    pub fn delete_secret(&self, name: &str) {
        let (key, secret) = self.key("admin");
        self.script(&["delete", &key, &secret, name]);
    }

    /// Overwrites the SSM parameter `name` (SecureString, as the admin user); returns its version.
    pub fn put_param(&self, name: &str, value: &str) -> u64 {
        let (key, secret) = self.key("admin");
        let out = self.script(&["put-param", &key, &secret, name, value]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["version"].as_u64().unwrap()
    }

    /// A `[sources.NAME]` section of `kind` signing as `user` with key files written to `dir`.
    pub fn source_section(
        &self,
        dir: &Path,
        name: &str,
        kind: &str,
        user: &str,
        extra: &str,
    ) -> String {
        let (id, secret) = self.key_files(dir, user);
        format!(
            r#"[sources.{name}]
type = "{kind}"
region = "eu-west-1"
endpoint_url = "{url}"
auth = "access-key"
access_key_id_file = "{id}"
secret_access_key_file = "{secret}"
{extra}
"#,
            url = self.url,
            id = id.display(),
            secret = secret.display()
        )
    }

    /// An `[sources.SOURCE.assume_role]` section for role `ext-reader` (account A), whose trust
    /// policy asks for external id `ext-7d1f` and trusts user `hopper`: STS at this server as
    /// `localhost`, signed for region us-east-2.
    pub fn ext_reader_role(&self, source: &str, external_id: &str) -> String {
        format!(
            r#"
[sources.{source}.assume_role]
role_arn = "arn:aws:iam::{ACCOUNT_A}:role/ext-reader"
external_id = "{external_id}"
session_name = "credagent-test-{{hostname}}"
duration_secs = 900
sts_endpoint = "http://localhost:{port}"
sts_region = "us-east-2"
"#,
            port = self.port
        )
    }

    /// Asserts that every call in `calls` (at least one) was signed with temporary credentials
    /// (an assumed role's `ASIA…` key id), and that neither its session token nor `user`'s
    /// secret key is in `log`.
    pub fn assert_signed_by_assumed_role(
        &self,
        calls: &[serde_json::Value],
        user: &str,
        log: &str,
    ) {
        assert!(!calls.is_empty(), "no call recorded");
        for call in calls {
            let auth = header(call, "Authorization").unwrap();
            assert!(auth.contains("Credential=ASIA"), "{auth}");
            let token = header(call, "X-Amz-Security-Token").unwrap();
            assert!(!log.contains(token), "a session token reached the log");
        }
        assert!(
            !log.contains(&self.key(user).1),
            "{user}'s secret key reached the log"
        );
    }

    /// Starts an agent on `template`, whose source `source` assumes a role with the wrong
    /// external id as `user`, and asserts it is refused for good (77, which the unit's
    /// `RestartPreventExitStatus=` does not restart), naming the source and its `assume_role`,
    /// with no secret key of `user` in its output.
    pub fn assert_wrong_external_id_refused(
        &self,
        dir: &TestDir,
        template: &str,
        source: &str,
        user: &str,
    ) {
        let (code, log) = super::start_fails(dir, template);
        assert_eq!(code, Some(77), "{log}");
        assert!(log.contains(&format!("source \"{source}\"")), "{log}");
        assert!(
            log.contains(&format!("sources.{source}.assume_role")),
            "{log}"
        );
        assert!(!log.contains(&self.key(user).1), "{log}");
    }

    /// Clears the recording and starts recording requests.
    pub fn start_recording(&self) {
        for path in [
            "/moto-api/recorder/reset-recording",
            "/moto-api/recorder/start-recording",
        ] {
            let (status, _) = http(self.port, "POST", path, &[], b"").unwrap();
            assert_eq!(status, 200, "{path}");
        }
    }

    /// The recorded requests (headers, method, url, body).
    pub fn recording(&self) -> Vec<serde_json::Value> {
        let (status, body) = http(
            self.port,
            "GET",
            "/moto-api/recorder/download-recording",
            &[],
            b"",
        )
        .unwrap();
        assert_eq!(status, 200);
        String::from_utf8(body)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Recorded calls of `target` (`X-Amz-Target`, e.g. `secretsmanager.GetSecretValue`).
    pub fn calls(&self, target: &str) -> usize {
        self.recording()
            .iter()
            .filter(|r| header(r, "X-Amz-Target") == Some(target))
            .count()
    }

    /// Recorded calls of `target` naming `secret_id`.
    pub fn calls_for(&self, target: &str, secret_id: &str) -> usize {
        let needle = format!("\"SecretId\": \"{secret_id}\"");
        let compact = format!("\"SecretId\":\"{secret_id}\"");
        self.recording()
            .iter()
            .filter(|r| header(r, "X-Amz-Target") == Some(target))
            .filter(|r| {
                let b = body(r);
                b.contains(&needle) || b.contains(&compact)
            })
            .count()
    }

    /// Recorded STS calls of `action` (form-encoded `Action=…`).
    pub fn sts_calls(&self, action: &str) -> Vec<serde_json::Value> {
        self.recording()
            .into_iter()
            .filter(|r| body(r).starts_with(&format!("Action={action}&")))
            .collect()
    }
}

/// An access-key source `name` for `user`, key files written to `dir`.
pub fn key_source(dir: &Path, moto: &Moto, name: &str, user: &str, extra: &str) -> String {
    moto.source_section(dir, name, "aws-secretsmanager", user, extra)
}

/// The body of a recorded request as text (the recorder base64-encodes most bodies).
pub fn body(record: &serde_json::Value) -> String {
    let raw = record["body"].as_str().unwrap_or_default();
    if record["body_encoded"].as_bool() != Some(true) {
        return raw.to_owned();
    }
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in raw.bytes().filter(|&c| c != b'=') {
        let v = alphabet.iter().position(|&a| a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A header of a recorded request (case-insensitive name).
pub fn header<'a>(record: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    record["headers"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; `(status, body)`.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let resp = super::parse_response(&raw)
        .ok_or_else(|| std::io::Error::other("unparseable HTTP response"))?;
    Ok((resp.status, resp.body))
}
