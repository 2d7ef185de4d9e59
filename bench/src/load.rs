//! The load generator: a minimal keep-alive HTTP/1.1 client over a Unix socket (a fixed request
//! written, the response head scanned for status and Content-Length) and a closed-loop run of N
//! connections with a warm-up, a measured window, latencies and the CPU time of both sides.
//!
//! It is deliberately cheaper per request than hyper's client so that, pinned to its own core,
//! it is not the bottleneck; the report shows its CPU use so that can be checked. It does not
//! speak chunked encoding (neither server under test sends it). The types every load generator
//! shares (the target, the timing, the outcome) live here.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

use crate::error::BenchError;
use crate::procfs;

/// A server under test.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Its socket.
    pub socket: &'a Path,
    /// Its pid.
    pub pid: u32,
    /// The path that returns the 64-byte value.
    pub path: &'a str,
}

/// Timing of each run.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Rounds (≥ 3 for the report's medians to mean anything).
    pub rounds: usize,
    /// Warm-up before each measured window.
    pub warmup: Duration,
    /// Measured window of each run.
    pub measure: Duration,
}

/// One keep-alive connection.
#[derive(Debug)]
pub struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    head: usize,
    body: std::ops::Range<usize>,
}

impl Conn {
    /// Connects to `socket`.
    pub async fn connect(socket: &Path) -> std::io::Result<Conn> {
        Ok(Conn {
            stream: UnixStream::connect(socket).await?,
            buf: Vec::with_capacity(4096),
            head: 0,
            body: 0..0,
        })
    }

    /// Sends `request` (a complete HTTP/1.1 request) and reads one response; returns its status.
    pub async fn request(&mut self, request: &[u8]) -> std::io::Result<u16> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        let mut scanned = 0;
        let head_end = loop {
            if let Some(pos) = find_head_end(&self.buf, scanned) {
                break pos;
            }
            scanned = self.buf.len().saturating_sub(3);
            self.read_more().await?;
        };
        let (status, len) = parse_head(&self.buf[..head_end]).ok_or_else(|| {
            std::io::Error::other(format!(
                "bad response head: {:?}",
                String::from_utf8_lossy(&self.buf[..head_end])
            ))
        })?;
        let total = head_end + 4 + len;
        while self.buf.len() < total {
            self.read_more().await?;
        }
        self.head = head_end;
        self.body = head_end + 4..total;
        Ok(status)
    }

    /// Sends `request` without reading the response (see [`Conn::response`]).
    pub async fn send(&mut self, request: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(request).await
    }

    /// Reads the response to a request sent with [`Conn::send`]; returns its status.
    pub async fn response(&mut self) -> std::io::Result<u16> {
        self.request(&[]).await
    }

    /// The value of header `name` in the last response.
    pub fn header(&self, name: &str) -> Option<&str> {
        let head = std::str::from_utf8(&self.buf[..self.head]).ok()?;
        head.split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// The body of the last response.
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }

    async fn read_more(&mut self) -> std::io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// A GET request for `path`, keep-alive.
pub fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// One GET on a fresh connection: status and body.
pub async fn get_once(socket: &Path, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut conn = Conn::connect(socket).await?;
    let status = conn.request(&get_request(path)).await?;
    Ok((status, conn.body().to_vec()))
}

fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + from)
}

/// Status code and Content-Length of a response head (without the final blank line).
fn parse_head(head: &[u8]) -> Option<(u16, usize)> {
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let len = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })?;
    Some((status, len))
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    /// Server socket.
    pub socket: &'a Path,
    /// Request path.
    pub path: &'a str,
    /// Keep-alive connections, each with one request in flight.
    pub conns: usize,
    /// Load before measuring.
    pub warmup: Duration,
    /// Measured window.
    pub measure: Duration,
    /// The server process, for its CPU time.
    pub server_pid: u32,
}

/// What one run measured (requests completed inside the measured window only).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Requests completed with status 200.
    pub ok: u64,
    /// Length of the measured window.
    pub window: Duration,
    /// Latency percentiles.
    pub latency: Percentiles,
    /// Server CPU time used during the window.
    pub server_cpu: Duration,
    /// Load-generator CPU time used during the window.
    pub client_cpu: Duration,
}

impl Outcome {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }

    /// Server CPU microseconds per request.
    pub fn server_us_per_req(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.ok.max(1) as f64
    }

    /// Server CPU use as a fraction of one core.
    pub fn server_util(&self) -> f64 {
        self.server_cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    /// Load-generator CPU use as a fraction of one core.
    pub fn client_util(&self) -> f64 {
        self.client_cpu.as_secs_f64() / self.window.as_secs_f64()
    }
}

/// p50, p99 and p99.9 latency.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
}

impl Percentiles {
    /// From unsorted samples in nanoseconds.
    pub fn from_nanos(mut samples: Vec<u64>) -> Percentiles {
        samples.sort_unstable();
        let at = |q: f64| {
            if samples.is_empty() {
                return Duration::ZERO;
            }
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            Duration::from_nanos(samples[rank - 1])
        };
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
        }
    }
}

struct TaskResult {
    ok: u64,
    failed: u64,
    latencies: Vec<u64>,
    error: Option<String>,
}

/// Runs `spec.conns` closed-loop connections; fails if any request in the window failed.
pub async fn run(spec: &Spec<'_>) -> Result<Outcome, BenchError> {
    let request = std::sync::Arc::new(get_request(spec.path));
    let mut conns = Vec::with_capacity(spec.conns);
    for _ in 0..spec.conns {
        conns.push(
            Conn::connect(spec.socket)
                .await
                .map_err(BenchError::io(format!("connect {}", spec.socket.display())))?,
        );
    }
    let start = Instant::now();
    let measure_start = start + spec.warmup;
    let end = measure_start + spec.measure;
    let mut tasks = Vec::with_capacity(spec.conns);
    for mut conn in conns {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut result = TaskResult {
                ok: 0,
                failed: 0,
                latencies: Vec::with_capacity(4096),
                error: None,
            };
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let status = conn.request(&request).await;
                let t1 = Instant::now();
                let counted = t1 >= measure_start && t1 <= end;
                match status {
                    Ok(200) if counted => {
                        result.ok += 1;
                        result
                            .latencies
                            .push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
                    }
                    Ok(200) => {}
                    Ok(other) => {
                        result.failed += 1;
                        result.error = Some(format!("status {other}"));
                    }
                    Err(err) => {
                        result.failed += 1;
                        result.error = Some(err.to_string());
                        break;
                    }
                }
            }
            result
        }));
    }
    tokio::time::sleep_until(measure_start).await;
    let server0 = procfs::cpu_time(spec.server_pid)?;
    let client0 = procfs::cpu_time(std::process::id())?;
    let window_start = Instant::now();
    tokio::time::sleep_until(end).await;
    let server1 = procfs::cpu_time(spec.server_pid)?;
    let client1 = procfs::cpu_time(std::process::id())?;
    let window = window_start.elapsed();
    let mut ok = 0;
    let mut failed = 0;
    let mut error = None;
    let mut latencies = Vec::new();
    for task in tasks {
        let result = task
            .await
            .map_err(|e| BenchError::Load(format!("load task failed: {e}")))?;
        ok += result.ok;
        failed += result.failed;
        error = error.or(result.error);
        latencies.extend(result.latencies);
    }
    if failed > 0 || ok == 0 {
        return Err(BenchError::Load(format!(
            "{} at {} connections: {ok} ok, {failed} failed (last error: {})",
            spec.socket.display(),
            spec.conns,
            error.unwrap_or_else(|| "none".to_owned())
        )));
    }
    Ok(Outcome {
        ok,
        window,
        latency: Percentiles::from_nanos(latencies),
        server_cpu: server1.saturating_sub(server0),
        client_cpu: client1.saturating_sub(client0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: 64";
        assert_eq!(parse_head(head), Some((200, 64)));
        assert_eq!(parse_head(b"HTTP/1.1 404 Not Found\r\nx: y"), None);
        assert_eq!(find_head_end(b"ab\r\n\r\nrest", 0), Some(2));
        assert_eq!(find_head_end(b"ab\r\n\r\nrest", 3), None);
    }

    #[test]
    fn percentiles() {
        let p = Percentiles::from_nanos((1..=1000).rev().collect());
        assert_eq!(p.p50, Duration::from_nanos(500));
        assert_eq!(p.p99, Duration::from_nanos(990));
        assert_eq!(p.p999, Duration::from_nanos(999));
    }
}
