//! Counters and the Prometheus text rendering behind `GET /v1/metrics`.
//!
//! Lock-free atomics on the request path; per-source counters are created once per source name.
//! Nothing here ever sees a secret: labels are status codes and source names.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Statuses counted under their own label; anything else is counted as "other".
const STATUSES: [u16; 14] = [
    200, 400, 403, 404, 405, 408, 413, 429, 431, 500, 502, 503, 504, 0,
];
/// Fetch latency histogram upper bounds, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Why a request was refused for the sake of other callers (`credagent_rejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The source's fetch slots and queue were full, or the queue wait ran out (`503`).
    SourceBusy,
    /// The caller's uid held its `max_fetches_per_uid` share of the source's fetches (`503`).
    SourceBusyUid,
    /// The caller's uid's in-flight responses held its `cache.max_locked_bytes_per_uid` (`503`).
    MemoryBudgetUid,
}

impl Rejection {
    const ALL: [Rejection; 3] = [
        Rejection::SourceBusy,
        Rejection::SourceBusyUid,
        Rejection::MemoryBudgetUid,
    ];

    /// The metric's `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::SourceBusy => "source_busy",
            Rejection::SourceBusyUid => "source_busy_uid",
            Rejection::MemoryBudgetUid => "memory_budget_uid",
        }
    }
}

/// Per-source counters.
#[derive(Debug, Default)]
pub struct SourceMetrics {
    /// Fetches started.
    pub fetches: AtomicU64,
    /// Fetches that failed.
    pub errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl SourceMetrics {
    /// Records one finished fetch.
    pub fn observe(&self, elapsed: Duration, ok: bool) {
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// All agent metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [AtomicU64; STATUSES.len()],
    /// Served from cache, fresh.
    pub cache_hits: AtomicU64,
    /// Had to wait for a source fetch (first fetch or coalesced with one).
    pub cache_misses: AtomicU64,
    /// Served a stale value because the source failed transiently.
    pub cache_stale: AtomicU64,
    /// Requests that waited on the refresh of an expired entry (refresh-ahead avoids these).
    pub cache_refresh_waits: AtomicU64,
    /// Background refreshes started before expiry.
    pub cache_refresh_ahead: AtomicU64,
    /// Requests answered 404 from a remembered "no such secret" (`cache.negative_ttl_secs`).
    pub cache_negative_hits: AtomicU64,
    /// Entries evicted because the cache was full.
    pub cache_evictions: AtomicU64,
    /// Audit lines dropped because the writer fell behind or a write failed.
    pub audit_dropped: AtomicU64,
    /// Connections answered `429 too_many_connections` and closed (no per-uid label: cardinality).
    pub connections_rejected: AtomicU64,
    /// Connections closed because a write made no progress within `write_timeout_secs`.
    pub write_timeouts: AtomicU64,
    /// `?wait=` reads ended early because their client hung up.
    pub waits_abandoned: AtomicU64,
    /// Container-credentials requests with a missing, unknown or expired token, or one presented
    /// from another uid's socket (`exec --aws`).
    pub aws_container_bad_tokens: AtomicU64,
    rejections: [AtomicU64; Rejection::ALL.len()],
    sources: Mutex<BTreeMap<String, Arc<SourceMetrics>>>,
}

impl Metrics {
    /// Counts one response.
    pub fn count_request(&self, status: u16) {
        let index = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len() - 1);
        self.requests[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one refusal for `reason`.
    pub fn reject(&self, reason: Rejection) {
        self.rejections[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of one source (created on first use).
    pub fn source(&self, name: &str) -> Arc<SourceMetrics> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up on every read: allocate the key only the first time.
        if let Some(metrics) = sources.get(name) {
            return metrics.clone();
        }
        sources.entry(name.to_owned()).or_default().clone()
    }

    /// Prometheus text exposition format.
    pub fn render(&self, entries: usize, locked_bytes: usize, mapped_bytes: usize) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP credagent_requests_total Responses by HTTP status.\n# TYPE credagent_requests_total counter\n");
        for (status, counter) in STATUSES.iter().zip(&self.requests) {
            let label = if *status == 0 {
                "other".to_owned()
            } else {
                status.to_string()
            };
            let _ = writeln!(
                out,
                "credagent_requests_total{{status=\"{label}\"}} {}",
                load(counter)
            );
        }
        let counters = [
            (
                "credagent_cache_hits_total",
                "Requests served fresh from the cache.",
                &self.cache_hits,
            ),
            (
                "credagent_cache_misses_total",
                "Requests that waited for a source fetch.",
                &self.cache_misses,
            ),
            (
                "credagent_cache_stale_total",
                "Requests served a stale value while the source failed.",
                &self.cache_stale,
            ),
            (
                "credagent_cache_refresh_waits_total",
                "Requests that waited on the refresh of an expired entry.",
                &self.cache_refresh_waits,
            ),
            (
                "credagent_cache_refresh_ahead_total",
                "Background refreshes started before expiry.",
                &self.cache_refresh_ahead,
            ),
            (
                "credagent_cache_negative_hits_total",
                "Requests answered 404 from a remembered \"no such secret\".",
                &self.cache_negative_hits,
            ),
            (
                "credagent_cache_evictions_total",
                "Entries evicted because the cache was full.",
                &self.cache_evictions,
            ),
            (
                "credagent_audit_dropped_total",
                "Audit lines dropped because the writer fell behind or a write failed.",
                &self.audit_dropped,
            ),
            (
                "credagent_connections_rejected_total",
                "Connections refused with 429 because the caller's uid held its share.",
                &self.connections_rejected,
            ),
            (
                "credagent_write_timeouts_total",
                "Connections closed because a write made no progress in time.",
                &self.write_timeouts,
            ),
            (
                "credagent_waits_abandoned_total",
                "Waiting reads ended early because their client hung up.",
                &self.waits_abandoned,
            ),
            (
                "credagent_aws_container_bad_tokens_total",
                "Container-credentials requests refused for their token (missing, unknown, expired, other uid).",
                &self.aws_container_bad_tokens,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                load(counter)
            );
        }
        out.push_str("# HELP credagent_rejections_total Requests refused so that one caller cannot starve others, by reason.\n# TYPE credagent_rejections_total counter\n");
        for (reason, counter) in Rejection::ALL.iter().zip(&self.rejections) {
            let _ = writeln!(
                out,
                "credagent_rejections_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                load(counter)
            );
        }
        let gauges = [
            (
                "credagent_cache_entries",
                "Secrets currently cached.",
                entries,
            ),
            (
                "credagent_locked_bytes",
                "Bytes of secret memory locked in RAM.",
                locked_bytes,
            ),
            (
                "credagent_secret_memory_bytes",
                "Bytes of secret memory mapped.",
                mapped_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP credagent_source_fetches_total Fetches from each source.\n# TYPE credagent_source_fetches_total counter\n");
        for (name, m) in sources.iter() {
            let _ = writeln!(
                out,
                "credagent_source_fetches_total{{source=\"{name}\"}} {}",
                load(&m.fetches)
            );
        }
        out.push_str("# HELP credagent_source_errors_total Failed fetches from each source.\n# TYPE credagent_source_errors_total counter\n");
        for (name, m) in sources.iter() {
            let _ = writeln!(
                out,
                "credagent_source_errors_total{{source=\"{name}\"}} {}",
                load(&m.errors)
            );
        }
        out.push_str("# HELP credagent_source_fetch_seconds Fetch latency.\n# TYPE credagent_source_fetch_seconds histogram\n");
        for (name, m) in sources.iter() {
            for (bound, bucket) in BUCKETS.iter().zip(&m.buckets) {
                let _ = writeln!(
                    out,
                    "credagent_source_fetch_seconds_bucket{{source=\"{name}\",le=\"{bound}\"}} {}",
                    load(bucket)
                );
            }
            let count = load(&m.count);
            let _ = writeln!(
                out,
                "credagent_source_fetch_seconds_bucket{{source=\"{name}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "credagent_source_fetch_seconds_sum{{source=\"{name}\"}} {}",
                load(&m.sum_micros) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "credagent_source_fetch_seconds_count{{source=\"{name}\"}} {count}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts() {
        let m = Metrics::default();
        m.count_request(200);
        m.count_request(200);
        m.count_request(418);
        m.source("files").fetches.fetch_add(3, Ordering::Relaxed);
        m.reject(Rejection::SourceBusyUid);
        m.source("files").observe(Duration::from_millis(2), true);
        let text = m.render(5, 4096, 8192);
        assert!(text.contains("credagent_requests_total{status=\"200\"} 2"));
        assert!(text.contains("credagent_requests_total{status=\"other\"} 1"));
        assert!(text.contains("credagent_source_fetches_total{source=\"files\"} 3"));
        assert!(
            text.contains("credagent_source_fetch_seconds_bucket{source=\"files\",le=\"0.005\"} 1")
        );
        assert!(text.contains("credagent_cache_entries 5"));
        assert!(text.contains("credagent_locked_bytes 4096"));
        assert!(text.contains("credagent_rejections_total{reason=\"source_busy_uid\"} 1"));
        assert!(text.contains("credagent_rejections_total{reason=\"source_busy\"} 0"));
        for (i, reason) in Rejection::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "ALL is in declaration order");
        }
    }
}
