//! A small IMDSv2 endpoint standing in for EC2's instance metadata service (moto's omits the
//! token-TTL response header the SDK requires). Honest protocol: `PUT /latest/api/token` needs
//! `X-aws-ec2-metadata-token-ttl-seconds` and answers with a token and that header; every GET
//! without a valid `X-aws-ec2-metadata-token` is 401. Credentials are minted by moto's STS
//! (AssumeRole of `instance-role` by the `imds-minter` user), each advertised as expiring
//! `lifetime` after it is served; the stand-in records every credential it hands out.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::moto::{ACCOUNT_A, Moto};

/// The instance profile's role name.
pub const ROLE: &str = "instance-role";

/// A credential the stand-in served.
#[derive(Debug, Clone)]
pub struct Served {
    pub access_key_id: String,
    pub secret: String,
    pub token: String,
    pub expires: SystemTime,
}

#[derive(Default)]
struct State {
    tokens: HashSet<String>,
    /// Pre-minted credentials (minting runs Python, slower than the SDK's 1 s IMDS timeout).
    ready: Vec<(String, String, String)>,
    served: Vec<Served>,
    unauthorized: usize,
}

pub struct Imds {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl Imds {
    /// Starts the stand-in; credentials come from `moto` and claim `lifetime`.
    pub fn start(moto: &Moto, lifetime: Duration) -> Imds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (key, secret) = moto.key("minter");
        let minter = Minter {
            url: moto.url.clone(),
            key,
            secret,
        };
        // Mint ahead, so a request never waits for Python (the SDK's IMDS timeouts are 1 s).
        for _ in 0..3 {
            let creds = minter.mint();
            state.lock().unwrap().ready.push(creds);
        }
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, minter) = (st.clone(), minter.clone());
                std::thread::spawn(move || serve(conn, &st, &minter, lifetime));
            }
        });
        Imds {
            url: format!("http://127.0.0.1:{port}"),
            state,
            stop,
            port,
        }
    }

    /// Every credential served so far.
    pub fn served(&self) -> Vec<Served> {
        self.state.lock().unwrap().served.clone()
    }

    /// Requests refused for a missing or unknown token.
    pub fn unauthorized(&self) -> usize {
        self.state.lock().unwrap().unauthorized
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[derive(Clone)]
struct Minter {
    url: String,
    key: String,
    secret: String,
}

impl Minter {
    fn mint(&self) -> (String, String, String) {
        let moto = MotoScript { url: &self.url };
        let out = moto.run(&[
            "assume",
            &self.key,
            &self.secret,
            &format!("arn:aws:iam::{ACCOUNT_A}:role/{ROLE}"),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (
            v["key"].as_str().unwrap().to_owned(),
            v["secret"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }
}

struct MotoScript<'a> {
    url: &'a str,
}

impl MotoScript<'_> {
    fn run(&self, args: &[&str]) -> String {
        let out = super::command(super::venv_bin("python"))
            .arg(super::repo_root().join("tests/fixtures/moto_setup.py"))
            .arg(self.url)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn serve(conn: TcpStream, state: &Arc<Mutex<State>>, minter: &Minter, lifetime: Duration) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (status, extra, body) = route(&method, &path, &get, state, minter, lifetime);
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
}

fn route(
    method: &str,
    path: &str,
    get: &dyn Fn(&str) -> Option<String>,
    state: &Arc<Mutex<State>>,
    minter: &Minter,
    lifetime: Duration,
) -> (&'static str, String, String) {
    if method == "PUT" && path == "/latest/api/token" {
        let Some(ttl) = get("x-aws-ec2-metadata-token-ttl-seconds") else {
            return ("400 Bad Request", String::new(), String::new());
        };
        let token = format!("token-{}", fastish_random());
        state.lock().unwrap().tokens.insert(token.clone());
        return (
            "200 OK",
            format!("x-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\n"),
            token,
        );
    }
    let authorized =
        get("x-aws-ec2-metadata-token").is_some_and(|t| state.lock().unwrap().tokens.contains(&t));
    if !authorized {
        state.lock().unwrap().unauthorized += 1;
        return ("401 Unauthorized", String::new(), String::new());
    }
    match (method, path) {
        ("GET", "/latest/meta-data/iam/security-credentials/") => {
            ("200 OK", String::new(), ROLE.to_owned())
        }
        ("GET", p) if p == format!("/latest/meta-data/iam/security-credentials/{ROLE}") => {
            // Refill in the background, then take the oldest ready credential.
            let (st, m) = (state.clone(), minter.clone());
            std::thread::spawn(move || {
                let creds = m.mint();
                st.lock().unwrap().ready.push(creds);
            });
            let (key, secret, token) = loop {
                let mut guard = state.lock().unwrap();
                if !guard.ready.is_empty() {
                    break guard.ready.remove(0);
                }
                drop(guard);
                std::thread::sleep(Duration::from_millis(20));
            };
            let expires = SystemTime::now() + lifetime;
            state.lock().unwrap().served.push(Served {
                access_key_id: key.clone(),
                secret: secret.clone(),
                token: token.clone(),
                expires,
            });
            let body = serde_json::json!({
                "Code": "Success",
                "LastUpdated": credagent::timefmt::rfc3339(SystemTime::now()),
                "Type": "AWS-HMAC",
                "AccessKeyId": key,
                "SecretAccessKey": secret,
                "Token": token,
                "Expiration": credagent::timefmt::rfc3339(expires),
            });
            ("200 OK", String::new(), body.to_string())
        }
        _ => ("404 Not Found", String::new(), String::new()),
    }
}

fn fastish_random() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
