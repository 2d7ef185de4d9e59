//! The `?wait=` burst: N connections each hold a change wait on one secret (the rotation
//! waiters of a busy host). Measures the agent's RSS idle, while they wait and some seconds after
//! they have all been answered and closed, and the fan-out of a rotation: from the API flush that
//! follows a change of the secret to each waiter's complete response with the new value.
//!
//! The client is this thread's current-thread runtime, one task per connection, reading raw
//! HTTP/1.1; its own CPU time over the fan-out is reported beside the wall time, so a client that
//! set the pace would show. The agent runs unpinned (one worker per CPU, as deployed: each worker
//! thread gets its own malloc arena).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::agent::{self, Agent, CacheSettings, Scratch};
use crate::error::BenchError;
use crate::load::{self, Percentiles};
use crate::procfs;

const PATH: &str = "/v1/secrets/files/watched";
const OLD: [u8; 64] = [b'o'; 64];
const NEW: [u8; 64] = [b'n'; 64];

/// What the burst measured.
#[derive(Debug, Clone)]
pub struct Burst {
    /// Waiting connections.
    pub conns: usize,
    /// VmRSS after the first read, before the burst.
    pub rss_idle: u64,
    /// VmRSS while every connection waits.
    pub rss_waiting: u64,
    /// VmRSS 100 ms after the last connection closed.
    pub rss_closed: u64,
    /// VmRSS `settle` after that.
    pub rss_after: u64,
    /// How long after the close `rss_after` was read.
    pub settle: Duration,
    /// The fan-out of the flush.
    pub fanout: Fanout,
}

impl Burst {
    /// RSS per waiting connection, in bytes.
    pub fn per_conn(&self) -> f64 {
        self.rss_waiting.saturating_sub(self.rss_idle) as f64 / self.conns.max(1) as f64
    }

    /// RSS `settle` after the close, above the idle figure (negative: below), in bytes.
    pub fn after_above_idle(&self) -> f64 {
        self.rss_after as f64 - self.rss_idle as f64
    }
}

/// From the flush request to each waiter's complete response.
#[derive(Debug, Clone)]
pub struct Fanout {
    /// Waiters answered `200` with the new value.
    pub ok: usize,
    /// Waiters answered anything else (status, or an old value).
    pub wrong: usize,
    /// Flush → complete response, over the waiters answered.
    pub latency: Percentiles,
    /// Flush → the last waiter's complete response.
    pub max: Duration,
    /// The client's CPU time (this thread) from the flush to the last response.
    pub client_cpu: Duration,
    /// The agent's CPU time (all threads) over the same span: the flush and every waiter's
    /// answer (the connections stay open until the last one is answered).
    pub agent_cpu: Duration,
}

/// `conns` connections wait on one secret; the secret changes and an admin flushes the cache;
/// then every connection closes and RSS is read again `settle` later.
pub async fn run(
    bin: &Path,
    conns: usize,
    settle: Duration,
    wait_secs: u64,
) -> Result<Burst, BenchError> {
    let scratch = Scratch::new("burst")?;
    scratch.secret("watched", &OLD)?;
    // The client is root, an operator (agent::config gives operators room for it); the accept
    // loop's limit is `max_connections` plus that.
    let server = format!("max_connections = {}\n", conns.saturating_add(64));
    let config = agent::config_with_server(scratch.path(), CacheSettings::default(), &server, "");
    let agent = Agent::start(bin, &scratch, &config, None).await?;
    let pid = agent.pid();
    let mut first = load::Conn::connect(agent.socket())
        .await
        .map_err(BenchError::io("connect for the first read"))?;
    let status = first
        .request(&load::get_request(PATH))
        .await
        .map_err(BenchError::io("first read of the watched secret"))?;
    let etag = first.header("etag").map(str::to_owned);
    drop(first);
    let Some(etag) = etag.filter(|_| status == 200) else {
        return Err(BenchError::Server(format!(
            "watched secret: status {status} or no ETag"
        )));
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = procfs::status_bytes(pid, "VmRSS")?;

    let request = Arc::new(
        format!(
            "GET {PATH}?wait={wait_secs} HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: {etag}\r\n\r\n"
        )
        .into_bytes(),
    );
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut conn = connect(agent.socket()).await?;
        conn.send(&request)
            .await
            .map_err(BenchError::io("send a wait request"))?;
        tasks.push(tokio::spawn(async move {
            let status = conn.response().await;
            let done = Instant::now();
            let new = conn.body() == NEW;
            // Kept open until every waiter is answered, as a watcher that waits again would.
            (matches!(status, Ok(200)) && new, done, conn)
        }));
    }
    quiesce(pid).await?;
    // A waiter re-reads at most once a second (`broker/wait.rs`, MIN_RECHECK): a rotation
    // comes long after the waits began, not within a second of them.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rss_waiting = procfs::status_bytes(pid, "VmRSS")?;
    let early = tasks.iter().filter(|t| t.is_finished()).count();
    if early > 0 {
        return Err(BenchError::Load(format!(
            "{early} wait request(s) answered before the flush; log:\n{}",
            agent.log_text()
        )));
    }

    // The rotation: the value changes, then an admin flushes the cache (docs/api.md).
    scratch.secret("watched", &NEW)?;
    let cpu0 = thread_cpu();
    let agent_cpu0 = procfs::cpu_time(pid)?;
    let flushed_at = Instant::now();
    let (status, body) = flush(agent.socket()).await?;
    if status != 200 {
        return Err(BenchError::Server(format!(
            "POST /v1/cache/flush answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let mut latencies = Vec::with_capacity(conns);
    let mut wrong = 0;
    let mut open = Vec::with_capacity(conns);
    for task in tasks {
        let (ok, done, conn) = task
            .await
            .map_err(|e| BenchError::Load(format!("wait task failed: {e}")))?;
        if ok {
            latencies.push(
                u64::try_from(done.duration_since(flushed_at).as_nanos()).unwrap_or(u64::MAX),
            );
        } else {
            wrong += 1;
        }
        open.push(conn);
    }
    let client_cpu = thread_cpu().saturating_sub(cpu0);
    let agent_cpu = procfs::cpu_time(pid)?.saturating_sub(agent_cpu0);
    let max = Duration::from_nanos(latencies.iter().copied().max().unwrap_or(0));
    let ok = latencies.len();
    drop(open);
    // Give the agent a moment to see every close.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rss_closed = procfs::status_bytes(pid, "VmRSS")?;
    tokio::time::sleep(settle).await;
    let rss_after = procfs::status_bytes(pid, "VmRSS")?;
    Ok(Burst {
        conns,
        rss_idle,
        rss_waiting,
        rss_closed,
        rss_after,
        settle,
        fanout: Fanout {
            ok,
            wrong,
            latency: Percentiles::from_nanos(latencies),
            max,
            client_cpu,
            agent_cpu,
        },
    })
}

/// Connects, retrying while the listen backlog is full (a non-blocking Unix `connect` then
/// fails with `EAGAIN`).
async fn connect(socket: &Path) -> Result<load::Conn, BenchError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match load::Conn::connect(socket).await {
            Ok(conn) => return Ok(conn),
            Err(err)
                if err.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(err) => return Err(BenchError::io("connect a waiter")(err)),
        }
    }
}

/// Waits until the agent has taken in every request: its CPU time stops growing (under 2 ms
/// per 250 ms), at most 30 s.
async fn quiesce(pid: u32) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut before = procfs::cpu_time(pid)?;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = procfs::cpu_time(pid)?;
        if now.saturating_sub(before) < Duration::from_millis(2) || Instant::now() > deadline {
            return Ok(());
        }
        before = now;
    }
}

/// `POST /v1/cache/flush` with an empty body (flush all).
async fn flush(socket: &Path) -> Result<(u16, Vec<u8>), BenchError> {
    let mut conn = load::Conn::connect(socket)
        .await
        .map_err(BenchError::io("connect for the flush"))?;
    let status = conn
        .request(b"POST /v1/cache/flush HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        .await
        .map_err(BenchError::io("POST /v1/cache/flush"))?;
    Ok((status, conn.body().to_vec()))
}

/// This thread's CPU time (user + system).
fn thread_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_THREAD).map_or(Duration::ZERO, |u| {
        let tv = |t: nix::sys::time::TimeVal| {
            Duration::new(
                u64::try_from(t.tv_sec()).unwrap_or(0),
                u32::try_from(t.tv_usec()).unwrap_or(0).saturating_mul(1000),
            )
        };
        tv(u.user_time()) + tv(u.system_time())
    })
}
