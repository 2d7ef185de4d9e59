//! The miss burst against the AWS Secrets Manager source, served by moto from the pinned test
//! venv; moto's request recorder counts the GetSecretValue calls that reached it. Then, on the
//! same agent, a cached `aws-credentials` read (one AssumeRole at moto, then served from the
//! cache) against a cached read of a file-source secret of the same size, interleaved. Skipped, with the reason in the
//! report, when moto is not installed or this agent build has no AWS source.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent::{self, Agent, CacheSettings, Scratch};
use crate::checks;
use crate::error::BenchError;
use crate::procfs::ChildGuard;
use crate::report::{AwsMisses, Compare};
use crate::{floor, load};

/// The source section; `{port}` is moto's port. Kept in one place so it follows the AWS
/// source's documented keys.
const SOURCE: &str = r#"[sources.aws]
type = "aws-secretsmanager"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:{port}"
auth = "default-chain"

[sources.roles]
type = "aws-credentials"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:{port}"
auth = "default-chain"

[sources.roles.roles.reader]
role_arn = "arn:aws:iam::123456789012:role/reader"
session_name = "bench"

[[allow]]
peer = { uid = {uid} }
secrets = ["aws/*", "roles/reader"]
"#;

/// The cached credentials read.
pub const CREDENTIALS_PATH: &str = "/v1/secrets/roles/reader";

const ENV: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
    // No instance-metadata lookups from the bench.
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("CREDAGENT_TEST_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"),
        PathBuf::from,
    );
    venv.join("bin").join(name)
}

/// Runs the burst, or says why it could not.
pub async fn misses(
    bin: &Path,
    core: Option<usize>,
    timing: load::Timing,
) -> Result<AwsMisses, BenchError> {
    let moto = venv_bin("moto_server");
    if !moto.exists() {
        return Ok(AwsMisses::Skipped(format!(
            "{} is not installed (scripts/install-test-deps.sh installs it)",
            moto.display()
        )));
    }
    let scratch = Scratch::new("aws")?;
    scratch.secret("bench", floor::BODY)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(BenchError::io("pick a free port"))?
        .port();
    let config = agent::config(
        scratch.path(),
        CacheSettings::default(),
        &SOURCE
            .replace("{port}", &port.to_string())
            .replace("{uid}", &nix::unistd::geteuid().as_raw().to_string()),
    );
    let config_path = scratch.path().join("check.toml");
    std::fs::write(&config_path, &config).map_err(BenchError::io("write the AWS config"))?;
    let check = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&config_path)
        .output()
        .map_err(BenchError::io("run credagent check-config"))?;
    if !check.status.success() {
        let stderr = String::from_utf8_lossy(&check.stderr);
        // The agent prints the parser's lines joined by " | "; the last one says why (e.g.
        // "unknown variant `aws-secretsmanager`").
        let why = stderr.trim().rsplit(" | ").next().unwrap_or("");
        return Ok(AwsMisses::Skipped(format!(
            "this agent rejects the AWS source config: {}",
            why.trim().replace('|', "/")
        )));
    }
    let _moto = start_moto(&moto, port, scratch.path())?;
    let value = [b'a'; 256];
    let body = format!(
        r#"{{"Name":"bench-cold","SecretString":"{}"}}"#,
        String::from_utf8_lossy(&value)
    );
    let (status, reply) = call(
        port,
        "POST",
        "/",
        Some(("secretsmanager.CreateSecret", &body)),
    )?;
    if status != 200 {
        return Err(BenchError::Server(format!(
            "moto CreateSecret: {status} {reply}"
        )));
    }
    for step in ["reset-recording", "start-recording"] {
        call(port, "POST", &format!("/moto-api/recorder/{step}"), None)?;
    }
    let agent = Agent::start_with_env(bin, &scratch, &config, core, &ENV).await?;
    let burst = checks::misses(
        &agent,
        "/v1/secrets/aws/bench-cold",
        "credagent_source_fetches_total{source=\"aws\"}",
        &value,
        200,
    )
    .await?;
    call(port, "POST", "/moto-api/recorder/stop-recording", None)?;
    let (_, recording) = call(port, "GET", "/moto-api/recorder/download-recording", None)?;
    let calls = recording
        .lines()
        .filter(|l| l.contains("GetSecretValue"))
        .count() as u64;
    let credentials = credentials(&agent, &scratch, timing).await?;
    Ok(AwsMisses::Measured {
        misses: burst,
        calls,
        credentials,
    })
}

/// The file secret the credentials read is compared with: as long as the credentials answer, so
/// the comparison is of the reads and not of the answers' sizes.
const SAME_SIZE: &str = "same-size";
const SAME_SIZE_PATH: &str = "/v1/secrets/files/same-size";

/// Cached credentials reads against cached reads of a file secret of the same size on one
/// agent, interleaved per round at each of [`CREDENTIAL_CONNS`].
async fn credentials(
    agent: &Agent,
    scratch: &Scratch,
    timing: load::Timing,
) -> Result<Vec<Compare>, BenchError> {
    let (status, body) = load::get_once(agent.socket(), CREDENTIALS_PATH)
        .await
        .map_err(BenchError::io("first credentials read"))?;
    if status != 200 || !body.starts_with(br#"{"Version":1"#) {
        return Err(BenchError::Server(format!(
            "{CREDENTIALS_PATH} answered {status}; log:\n{}",
            agent.log_text()
        )));
    }
    scratch.secret(SAME_SIZE, &vec![b's'; body.len()])?;
    let mut out = Vec::new();
    for round in 1..=timing.rounds {
        for &conns in &CREDENTIAL_CONNS {
            let spec = |path| load::Spec {
                socket: agent.socket(),
                path,
                conns,
                warmup: timing.warmup,
                measure: timing.measure,
                server_pid: agent.pid(),
            };
            let secret = load::run(&spec(SAME_SIZE_PATH)).await?;
            let credentials = load::run(&spec(CREDENTIALS_PATH)).await?;
            out.push(Compare {
                round,
                conns,
                secret,
                credentials,
            });
        }
    }
    Ok(out)
}

/// Connection counts of the credentials comparison.
pub const CREDENTIAL_CONNS: [usize; 2] = [1, 16];

fn start_moto(moto: &Path, port: u16, dir: &Path) -> Result<ChildGuard, BenchError> {
    let mut command = Command::new(moto);
    // moto's recorder writes `moto_recording` into its working directory.
    command
        .current_dir(dir)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = ChildGuard {
        child: command
            .spawn()
            .map_err(BenchError::io("start moto_server"))?,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(BenchError::Server(
                "moto_server not listening within 20 s".to_owned(),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// One HTTP/1.1 request to moto (`Connection: close`); `target` is an `X-Amz-Target` and a
/// JSON body. moto checks no signature by default; the Authorization header only names the
/// service.
fn call(
    port: u16,
    method: &str,
    path: &str,
    target: Option<(&str, &str)>,
) -> Result<(u16, String), BenchError> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).map_err(BenchError::io("connect to moto"))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    let body = match target {
        Some((target, body)) => {
            request.push_str(&format!(
                "X-Amz-Target: {target}\r\nContent-Type: application/x-amz-json-1.1\r\n\
                 Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=0\r\n"
            ));
            body
        }
        None => "",
    };
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream
        .write_all(request.as_bytes())
        .map_err(BenchError::io("write to moto"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(BenchError::io("read from moto"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}
