//! Runs the real agent binary for the bench: finds it next to the bench's own executable,
//! writes a deployed-like config (file source, ACL with this uid, audit to a file) into a
//! scratch directory, starts it pinned to the server core, waits until it answers, and reads
//! its `/v1/metrics`. It measures nothing itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::load;
use crate::procfs::{self, ChildGuard};

/// The agent binary: `--agent PATH`, else `credagent` next to this executable (same target
/// dir and profile).
pub fn locate(explicit: Option<PathBuf>) -> Result<PathBuf, BenchError> {
    let path = match explicit {
        Some(path) => path,
        None => std::env::current_exe()
            .map_err(BenchError::io("find the bench executable"))?
            .with_file_name("credagent"),
    };
    if procfs::is_executable(&path) {
        Ok(path)
    } else {
        Err(BenchError::AgentMissing(path))
    }
}

/// A scratch directory, removed on drop.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A fresh directory under the system temp dir.
    pub fn new(label: &str) -> Result<Scratch, BenchError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "credagent-bench-{}-{}-{label}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(path.join("secrets"))
            .map_err(BenchError::io(format!("create {}", path.display())))?;
        Ok(Scratch { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `secrets/{id}`.
    pub fn secret(&self, id: &str, value: &[u8]) -> Result<(), BenchError> {
        let path = self.path.join("secrets").join(id);
        std::fs::write(&path, value).map_err(BenchError::io(format!("write {}", path.display())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `[cache]` settings of a bench agent.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// `ttl_secs`.
    pub ttl_secs: u64,
    /// `refresh_ahead_secs`.
    pub refresh_ahead_secs: u64,
}

impl Default for CacheSettings {
    /// The agent's defaults.
    fn default() -> Self {
        CacheSettings {
            ttl_secs: 3600,
            refresh_ahead_secs: 60,
        }
    }
}

/// The config: as deployed (ACL for this uid only, audit lines to a file, memory locked where
/// allowed), plus `extra` TOML (more sources).
pub fn config(dir: &Path, cache: CacheSettings, extra: &str) -> String {
    config_with_server(dir, cache, "", extra)
}

/// As [`config`], with `server` TOML lines added to `[server]`.
pub fn config_with_server(dir: &Path, cache: CacheSettings, server: &str, extra: &str) -> String {
    let uid = nix::unistd::geteuid().as_raw();
    format!(
        r#"[server]
socket = "{dir}/agent.sock"
socket_mode = "0600"
# The load generator runs as root, an operator: its connections are the operators' pool, whose
# default of 16 would refuse the series' 64 connections and the burst's thousands.
max_operator_connections = 8192
{server}
[cache]
ttl_secs = {ttl}
refresh_ahead_secs = {ahead}
lock_memory = "best-effort"

[audit]
file = "{dir}/audit.log"

[sources.files]
type = "file"
dir = "{dir}/secrets"
# The load generator is one uid: it may use every fetch slot and the whole queue (8 + 4 x 8),
# as any caller could before per-uid shares.
max_fetches_per_uid = 40

[[allow]]
peer = {{ uid = {uid} }}
secrets = ["files/*"]
admin = true

{extra}
"#,
        dir = dir.display(),
        ttl = cache.ttl_secs,
        ahead = cache.refresh_ahead_secs,
    )
}

/// A running agent, killed on drop.
#[derive(Debug)]
pub struct Agent {
    child: ChildGuard,
    socket: PathBuf,
    log: PathBuf,
    /// From just before exec to the first accepted connection.
    pub accepting_after: Duration,
    /// From just before exec to the first `200` from `/v1/health`.
    pub ready_after: Duration,
}

impl Agent {
    /// Writes `config` into `scratch` and starts the agent on `core`.
    pub async fn start(
        bin: &Path,
        scratch: &Scratch,
        config: &str,
        core: Option<usize>,
    ) -> Result<Agent, BenchError> {
        Self::start_with_env(bin, scratch, config, core, &[]).await
    }

    /// As [`Agent::start`], with extra environment variables.
    pub async fn start_with_env(
        bin: &Path,
        scratch: &Scratch,
        config: &str,
        core: Option<usize>,
        env: &[(&str, &str)],
    ) -> Result<Agent, BenchError> {
        let dir = scratch.path();
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)
            .map_err(BenchError::io(format!("write {}", config_path.display())))?;
        let log = dir.join("agent.log");
        let log_file = std::fs::File::create(&log)
            .map_err(BenchError::io(format!("create {}", log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(BenchError::io("clone the log file handle"))?;
        let mut command = Command::new(bin);
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .env_remove("CREDAGENT_LOG")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        for (k, v) in env {
            command.env(k, v);
        }
        let socket = dir.join("agent.sock");
        let started = Instant::now();
        let child = procfs::spawn_pinned(command, core)?;
        let mut agent = Agent {
            child,
            socket,
            log,
            accepting_after: Duration::ZERO,
            ready_after: Duration::ZERO,
        };
        agent.wait_ready(started).await?;
        Ok(agent)
    }

    async fn wait_ready(&mut self, started: Instant) -> Result<(), BenchError> {
        let deadline = started + Duration::from_secs(20);
        let mut accepting = None;
        loop {
            if let Some(status) = self.child.exited() {
                return Err(BenchError::Server(format!(
                    "agent exited during start ({status}); log:\n{}",
                    self.log_text()
                )));
            }
            if let Ok(mut conn) = load::Conn::connect(&self.socket).await {
                let at = *accepting.get_or_insert_with(|| started.elapsed());
                if let Ok(200) = conn.request(&load::get_request("/v1/health")).await {
                    self.accepting_after = at;
                    self.ready_after = started.elapsed();
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(BenchError::Server(format!(
                    "agent not ready within 20 s; log:\n{}",
                    self.log_text()
                )));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of the first metrics line starting with `prefix` (e.g.
    /// `credagent_source_fetches_total{source="files"}`); 0 when the line is absent (a counter
    /// not created yet).
    pub async fn metric(&self, prefix: &str) -> Result<f64, BenchError> {
        let (status, body) = load::get_once(&self.socket, "/v1/metrics")
            .await
            .map_err(BenchError::io("GET /v1/metrics"))?;
        if status != 200 {
            return Err(BenchError::Server(format!(
                "/v1/metrics answered {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        let text = String::from_utf8_lossy(&body);
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(prefix)?.trim().parse().ok())
            .unwrap_or(0.0))
    }
}
