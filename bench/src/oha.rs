//! The broker issue's own way of measuring, inside the bench: oha, an independent HTTP load
//! generator (`cargo install oha --locked`), against the agent and the floor, unpinned, 1 and 16
//! connections, runs interleaved per round. The issue's targets (CPU per request at one
//! connection, req/s at sixteen) were set against figures measured this way; the bench's own
//! client, lighter than oha, keeps the server saturated at sixteen connections and measures
//! something else (see docs/performance.md).
//!
//! oha runs as a child process: a warm-up run, then the measured run with JSON output, whose
//! `200` count and total time give req/s; the server's CPU comes from `/proc/PID/stat` around
//! the measured run, oha's own from `getrusage(RUSAGE_CHILDREN)`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::BenchError;
use crate::load::{Outcome, Percentiles, Target, Timing};
use crate::procfs;

/// Connection counts measured (the issue's two).
pub const CONNS: [usize; 2] = [1, 16];

/// oha: `$OHA` if set, else the first `oha` on `PATH`.
pub fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("OHA") {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("oha"))
        .find(|p| procfs::is_executable(p))
}

/// One warm-up and one measured oha run against `target`.
pub fn run(
    oha: &Path,
    target: Target<'_>,
    conns: usize,
    timing: Timing,
) -> Result<Outcome, BenchError> {
    oha_once(oha, target, conns, timing.warmup, "quiet")?;
    let server_before = procfs::cpu_time(target.pid)?;
    let client_before = children_cpu()?;
    let json = oha_once(oha, target, conns, timing.measure, "json")?;
    let server_cpu = procfs::cpu_time(target.pid)?.saturating_sub(server_before);
    let client_cpu = children_cpu()?.saturating_sub(client_before);
    let parsed = parse(&json)?;
    if parsed.ok == 0 {
        return Err(BenchError::Load(format!(
            "oha saw no 200 from {} at {conns} connection(s)",
            target.socket.display()
        )));
    }
    Ok(Outcome {
        ok: parsed.ok,
        window: parsed.total,
        latency: parsed.latency,
        server_cpu,
        client_cpu,
    })
}

/// Runs oha for `duration` and returns what it printed.
fn oha_once(
    oha: &Path,
    target: Target<'_>,
    conns: usize,
    duration: Duration,
    format: &str,
) -> Result<Vec<u8>, BenchError> {
    let output = Command::new(oha)
        .arg("-c")
        .arg(conns.to_string())
        .arg("-z")
        .arg(format!("{}ms", duration.as_millis().max(1)))
        .args(["--no-tui", "--output-format", format, "--unix-socket"])
        .arg(target.socket)
        .arg(format!("http://localhost{}", target.path))
        .stdin(Stdio::null())
        .output()
        .map_err(BenchError::io(format!("run {}", oha.display())))?;
    if !output.status.success() {
        return Err(BenchError::Load(format!(
            "{} exited with {}: {}",
            oha.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}

/// CPU time of this process's waited-for children (oha's runs).
fn children_cpu() -> Result<Duration, BenchError> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map_err(|e| BenchError::io("getrusage")(e.into()))?;
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::new(
            u64::try_from(t.tv_sec()).unwrap_or(0),
            u32::try_from(t.tv_usec()).unwrap_or(0).saturating_mul(1000),
        )
    };
    Ok(tv(usage.user_time()) + tv(usage.system_time()))
}

/// What the bench takes from oha's JSON report.
#[derive(Debug, PartialEq)]
struct Parsed {
    ok: u64,
    total: Duration,
    latency: Percentiles,
}

/// Reads oha's JSON report: `200` responses, the run's total time, latency percentiles. Any
/// error but the requests cut off by the deadline fails the run (a broken server is not a fast
/// one).
fn parse(json: &[u8]) -> Result<Parsed, BenchError> {
    let bad = |what: &str| BenchError::Load(format!("oha's JSON report: {what}"));
    let report: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
    let secs = |v: &serde_json::Value| {
        v.as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
    };
    let total = secs(&report["summary"]["total"]).ok_or_else(|| bad("no summary.total"))?;
    let mut ok = 0;
    if let Some(codes) = report["statusCodeDistribution"].as_object() {
        for (code, count) in codes {
            let count = count
                .as_u64()
                .ok_or_else(|| bad("a status count is not a number"))?;
            if code == "200" {
                ok = count;
            } else if count > 0 {
                return Err(bad(&format!("{count} response(s) with status {code}")));
            }
        }
    }
    if let Some(errors) = report["errorDistribution"].as_object() {
        for (error, count) in errors {
            if !error.contains("deadline") && count.as_u64() != Some(0) {
                return Err(bad(&format!("errors: {error} ({count})")));
            }
        }
    }
    let percentiles = &report["latencyPercentiles"];
    let at = |key: &str| secs(&percentiles[key]).unwrap_or_default();
    Ok(Parsed {
        ok,
        total,
        latency: Percentiles {
            p50: at("p50"),
            p99: at("p99"),
            p999: at("p99.9"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_gives_the_200s_the_total_time_and_the_percentiles() {
        let json = br#"{"summary":{"total":2.5,"requestsPerSec":400.0},
            "latencyPercentiles":{"p50":0.00003,"p99":0.0001,"p99.9":0.0008},
            "statusCodeDistribution":{"200":1000},
            "errorDistribution":{"aborted due to deadline":3}}"#;
        assert_eq!(
            parse(json).ok(),
            Some(Parsed {
                ok: 1000,
                total: Duration::from_millis(2500),
                latency: Percentiles {
                    p50: Duration::from_micros(30),
                    p99: Duration::from_micros(100),
                    p999: Duration::from_micros(800),
                },
            })
        );
    }

    #[test]
    fn another_status_or_a_connection_error_fails_the_run() {
        let other_status = br#"{"summary":{"total":1.0},"statusCodeDistribution":{"200":5,"403":1},"errorDistribution":{}}"#;
        assert!(parse(other_status).is_err());
        let refused = br#"{"summary":{"total":1.0},"statusCodeDistribution":{"200":5},"errorDistribution":{"connection refused":2}}"#;
        assert!(parse(refused).is_err());
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"summary":{}}"#).is_err());
    }
}
