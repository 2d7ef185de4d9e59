//! The agent-only measurements: a burst of concurrent misses, requests across expiries with
//! refresh-ahead, memory (idle and with many cached secrets) and start-up time. Each starts its
//! own agent so one measurement cannot warm another.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::{self, Agent, CacheSettings, Scratch};
use crate::error::BenchError;
use crate::load;

const FETCHES_FILES: &str = "credagent_source_fetches_total{source=\"files\"}";

/// A burst of concurrent requests for one uncached secret.
#[derive(Debug, Clone)]
pub struct Misses {
    /// Requests in the burst.
    pub requests: usize,
    /// Of which answered 200 with the right value.
    pub ok: usize,
    /// Source fetches the agent counted for the burst.
    pub fetches: u64,
    /// Requests the agent counted as misses (waited for a fetch).
    pub waited: u64,
    /// Wall time of the burst.
    pub wall: Duration,
}

/// 200 connections opened first, then one request each, released together.
pub async fn misses(
    agent: &Agent,
    path: &str,
    fetches_metric: &str,
    expected: &[u8],
    requests: usize,
) -> Result<Misses, BenchError> {
    let fetches0 = agent.metric(fetches_metric).await?;
    let misses0 = agent.metric("credagent_cache_misses_total").await?;
    let mut conns = Vec::with_capacity(requests);
    for _ in 0..requests {
        conns.push(
            load::Conn::connect(agent.socket())
                .await
                .map_err(BenchError::io("connect for the miss burst"))?,
        );
    }
    let request = Arc::new(load::get_request(path));
    let gate = Arc::new(tokio::sync::Barrier::new(requests));
    let expected = Arc::new(expected.to_vec());
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(requests);
    for mut conn in conns {
        let (request, gate, expected) = (request.clone(), gate.clone(), expected.clone());
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            matches!(conn.request(&request).await, Ok(200)) && conn.body() == expected.as_slice()
        }));
    }
    let mut ok = 0;
    for task in tasks {
        if task
            .await
            .map_err(|e| BenchError::Load(format!("miss task failed: {e}")))?
        {
            ok += 1;
        }
    }
    let wall = started.elapsed();
    Ok(Misses {
        requests,
        ok,
        fetches: (agent.metric(fetches_metric).await? - fetches0) as u64,
        waited: (agent.metric("credagent_cache_misses_total").await? - misses0) as u64,
        wall,
    })
}

/// The miss burst against the file source.
pub async fn file_misses(bin: &Path, core: Option<usize>) -> Result<Misses, BenchError> {
    let scratch = Scratch::new("misses")?;
    let value = [b'm'; 256];
    scratch.secret("cold", &value)?;
    let config = agent::config(scratch.path(), CacheSettings::default(), "");
    let agent = Agent::start(bin, &scratch, &config, core).await?;
    misses(&agent, "/v1/secrets/files/cold", FETCHES_FILES, &value, 200).await
}

/// Steady load across several expiries of a short TTL.
#[derive(Debug, Clone)]
pub struct Expiry {
    /// TTL used.
    pub ttl_secs: u64,
    /// refresh-ahead used.
    pub refresh_ahead_secs: u64,
    /// Load duration.
    pub duration: Duration,
    /// Requests served.
    pub requests: u64,
    /// Requests that waited on a refresh (target 0).
    pub refresh_waits: u64,
    /// Background refreshes started ahead of expiry.
    pub refresh_ahead: u64,
    /// p99.9 latency during the run.
    pub p999: Duration,
}

/// 16 connections for `duration` on a secret with `ttl_secs = 2`, `refresh_ahead_secs = 1`.
pub async fn expiry(
    bin: &Path,
    core: Option<usize>,
    duration: Duration,
) -> Result<Expiry, BenchError> {
    let scratch = Scratch::new("expiry")?;
    scratch.secret("short", &[b'e'; 64])?;
    let settings = CacheSettings {
        ttl_secs: 2,
        refresh_ahead_secs: 1,
    };
    let config = agent::config(scratch.path(), settings, "");
    let agent = Agent::start(bin, &scratch, &config, core).await?;
    let path = "/v1/secrets/files/short";
    let (status, _) = load::get_once(agent.socket(), path)
        .await
        .map_err(BenchError::io("first read of the short-TTL secret"))?;
    if status != 200 {
        return Err(BenchError::Server(format!(
            "short-TTL secret: status {status}"
        )));
    }
    let waits0 = agent.metric("credagent_cache_refresh_waits_total").await?;
    let ahead0 = agent.metric("credagent_cache_refresh_ahead_total").await?;
    let outcome = load::run(&load::Spec {
        socket: agent.socket(),
        path,
        conns: 16,
        warmup: Duration::ZERO,
        measure: duration,
        server_pid: agent.pid(),
    })
    .await?;
    Ok(Expiry {
        ttl_secs: settings.ttl_secs,
        refresh_ahead_secs: settings.refresh_ahead_secs,
        duration,
        requests: outcome.ok,
        refresh_waits: (agent.metric("credagent_cache_refresh_waits_total").await? - waits0) as u64,
        refresh_ahead: (agent.metric("credagent_cache_refresh_ahead_total").await? - ahead0) as u64,
        p999: outcome.latency.p999,
    })
}

/// Resident and locked memory.
#[derive(Debug, Clone)]
pub struct Memory {
    /// VmRSS right after start, before any request.
    pub rss_idle: u64,
    /// Secrets cached for the second figure.
    pub secrets: usize,
    /// Size of each.
    pub secret_len: usize,
    /// VmRSS with them cached.
    pub rss_full: u64,
    /// VmLck with them cached.
    pub vmlck: u64,
    /// The agent's own `credagent_locked_bytes`.
    pub locked_metric: u64,
    /// `credagent_cache_entries` afterwards.
    pub entries: u64,
}

/// Idle RSS, then RSS and locked bytes after reading `secrets` distinct 256-byte secrets once.
pub async fn memory(bin: &Path, core: Option<usize>, secrets: usize) -> Result<Memory, BenchError> {
    const LEN: usize = 256;
    let scratch = Scratch::new("memory")?;
    for i in 0..secrets {
        let mut value = format!("value-{i:08}-").into_bytes();
        value.resize(LEN, b'v');
        scratch.secret(&format!("s{i:05}"), &value)?;
    }
    let config = agent::config(scratch.path(), CacheSettings::default(), "");
    let agent = Agent::start(bin, &scratch, &config, core).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_idle = crate::procfs::status_bytes(agent.pid(), "VmRSS")?;
    let workers = 16;
    let socket = agent.socket().to_path_buf();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let socket = socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = load::Conn::connect(&socket).await?;
            let mut failed = 0usize;
            for i in (w..secrets).step_by(workers) {
                let status = conn
                    .request(&load::get_request(&format!("/v1/secrets/files/s{i:05}")))
                    .await?;
                if status != 200 || conn.body().len() != LEN {
                    failed += 1;
                }
            }
            Ok::<_, std::io::Error>(failed)
        }));
    }
    for task in tasks {
        let failed = task
            .await
            .map_err(|e| BenchError::Load(format!("memory fill task failed: {e}")))?
            .map_err(BenchError::io("fill the cache"))?;
        if failed > 0 {
            return Err(BenchError::Load(format!(
                "{failed} reads failed while filling the cache"
            )));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(Memory {
        rss_idle,
        secrets,
        secret_len: LEN,
        rss_full: crate::procfs::status_bytes(agent.pid(), "VmRSS")?,
        vmlck: crate::procfs::status_bytes(agent.pid(), "VmLck")?,
        locked_metric: agent.metric("credagent_locked_bytes").await? as u64,
        entries: agent.metric("credagent_cache_entries").await? as u64,
    })
}

/// Start-up time with the file source.
#[derive(Debug, Clone)]
pub struct Start {
    /// Starts measured.
    pub runs: usize,
    /// Median time from exec to the socket accepting a connection.
    pub accepting: Duration,
    /// Median time from exec to the first 200 from `/v1/health`.
    pub ready: Duration,
    /// Slowest ready time.
    pub ready_max: Duration,
}

/// Starts the agent `runs` times on a file-source config.
pub async fn start(bin: &Path, core: Option<usize>, runs: usize) -> Result<Start, BenchError> {
    let mut accepting = Vec::new();
    let mut ready = Vec::new();
    for _ in 0..runs {
        let scratch = Scratch::new("start")?;
        scratch.secret("one", b"value")?;
        let config = agent::config(scratch.path(), CacheSettings::default(), "");
        let agent = Agent::start(bin, &scratch, &config, core).await?;
        accepting.push(agent.accepting_after);
        ready.push(agent.ready_after);
    }
    accepting.sort();
    ready.sort();
    Ok(Start {
        runs,
        accepting: accepting[runs / 2],
        ready: ready[runs / 2],
        ready_max: ready[runs - 1],
    })
}
