//! Renders the results as one Markdown document (printed and written to a file): the machine
//! and settings, the side-by-side table with per-round ratios and their medians, the agent-only
//! figures, and each target with met or missed. It measures nothing.

use std::fmt::Write as _;
use std::time::Duration;

use crate::burst::Burst;
use crate::checks::{Expiry, Memory, Misses, Start};
use crate::throughput::{CONNS, Cell, median};

/// The AWS miss burst: measured, or why not.
#[derive(Debug, Clone)]
pub enum AwsMisses {
    /// Measured against moto; `calls` is what moto recorded.
    Measured {
        /// The burst as the agent saw it.
        misses: Misses,
        /// GetSecretValue calls moto recorded.
        calls: u64,
        /// Cached `aws-credentials` reads against cached reads of a secret of their size, same
        /// agent.
        credentials: Vec<Compare>,
    },
    /// Not measured, with the reason.
    Skipped(String),
}

/// One round of the credentials comparison.
#[derive(Debug, Clone)]
pub struct Compare {
    /// Round.
    pub round: usize,
    /// Connections.
    pub conns: usize,
    /// Cached file-source secret reads.
    pub secret: crate::load::Outcome,
    /// Cached `aws-credentials` reads.
    pub credentials: crate::load::Outcome,
}

impl Compare {
    /// Credentials CPU per request ÷ the secret's.
    pub fn cpu_ratio(&self) -> f64 {
        self.credentials.server_us_per_req()
            / self.secret.server_us_per_req().max(f64::MIN_POSITIVE)
    }

    /// Credentials req/s ÷ the secret's.
    pub fn rps_ratio(&self) -> f64 {
        self.credentials.rps() / self.secret.rps().max(f64::MIN_POSITIVE)
    }
}

/// The side-by-side series driven by oha: measured, or why not.
#[derive(Debug, Clone)]
pub enum OhaSeries {
    /// Measured, unpinned, at [`crate::oha::CONNS`].
    Measured(Vec<Cell>),
    /// Not measured, with the reason.
    Skipped(String),
}

/// Everything one run produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// `key: value` lines about the machine and settings.
    pub meta: Vec<(String, String)>,
    /// Whether this was `--quick` (targets are not judged).
    pub quick: bool,
    /// The side-by-side cells, server and load generator pinned to cores of their own.
    pub cells: Vec<Cell>,
    /// The same, not pinned (as the agent is deployed).
    pub unpinned: Vec<Cell>,
    /// Unpinned again, loaded by oha (the broker issue's way of measuring).
    pub oha: OhaSeries,
    /// Audit lines the agent dropped during the side-by-side runs.
    pub audit_dropped: u64,
    /// File-source miss burst.
    pub misses: Misses,
    /// AWS miss burst.
    pub aws: AwsMisses,
    /// Expiry run.
    pub expiry: Expiry,
    /// Memory.
    pub memory: Memory,
    /// Start-up.
    pub start: Start,
    /// The `?wait=` burst: memory and fan-out.
    pub burst: Burst,
}

const MIB: f64 = 1024.0 * 1024.0;

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn lat(o: &crate::load::Outcome) -> String {
    format!(
        "{} / {} / {}",
        us(o.latency.p50),
        us(o.latency.p99),
        us(o.latency.p999)
    )
}

fn median_at(cells: &[Cell], conns: usize, f: impl Fn(&Cell) -> f64) -> f64 {
    median(cells.iter().filter(|c| c.conns == conns).map(f).collect())
}

/// One side-by-side table and its medians at each of `conns`.
fn cells_markdown(s: &mut String, cells: &[Cell], conns: &[usize]) {
    s.push_str("| conns | round | agent req/s | floor req/s | ratio | agent latency | floor latency | agent CPU µs/req | floor CPU µs/req | CPU ratio | server % a/f | client % a/f |\n");
    s.push_str("|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|---|\n");
    for c in cells {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {:.1} | {:.1} | {:.2} | {:.0}/{:.0} | {:.0}/{:.0} |",
            c.conns,
            c.round,
            c.agent.rps(),
            c.floor.rps(),
            c.rps_ratio(),
            lat(&c.agent),
            lat(&c.floor),
            c.agent.server_us_per_req(),
            c.floor.server_us_per_req(),
            c.cpu_ratio(),
            c.agent.server_util() * 100.0,
            c.floor.server_util() * 100.0,
            c.agent.client_util() * 100.0,
            c.floor.client_util() * 100.0,
        );
    }
    s.push_str(
        "\n| conns | median req/s ratio (agent/floor) | median CPU/req ratio |\n|---:|---:|---:|\n",
    );
    for &conns in conns {
        let _ = writeln!(
            s,
            "| {conns} | {:.2} | {:.2} |",
            median_at(cells, conns, Cell::rps_ratio),
            median_at(cells, conns, Cell::cpu_ratio)
        );
    }
}

/// The burst's two rows of the agent-only table.
pub fn burst_markdown(b: &Burst) -> String {
    let mut s = String::new();
    let f = &b.fanout;
    let _ = writeln!(
        s,
        "| `?wait=` burst ({} connections on one secret, agent unpinned) | RSS idle {:.1} MiB, while they wait {:.1} MiB ({:.1} KiB per connection), 100 ms after they close {:.1} MiB, {:.0} s later {:.1} MiB |",
        b.conns,
        b.rss_idle as f64 / MIB,
        b.rss_waiting as f64 / MIB,
        b.per_conn() / 1024.0,
        b.rss_closed as f64 / MIB,
        b.settle.as_secs_f64(),
        b.rss_after as f64 / MIB
    );
    let _ = writeln!(
        s,
        "| fan-out (same run: the secret changes, then `POST /v1/cache/flush`) | {} waiters answered the new value, {} otherwise; flush → complete response p50 {:.1} / p99 {:.1} / max {:.1} ms; meanwhile the agent's CPU {:.1} ms ({:.1} µs per waiter), the client's {:.1} ms |",
        f.ok,
        f.wrong,
        f.latency.p50.as_secs_f64() * 1e3,
        f.latency.p99.as_secs_f64() * 1e3,
        f.max.as_secs_f64() * 1e3,
        f.agent_cpu.as_secs_f64() * 1e3,
        f.agent_cpu.as_secs_f64() * 1e6 / b.conns.max(1) as f64,
        f.client_cpu.as_secs_f64() * 1e3
    );
    s
}

impl Report {
    fn median_at(&self, conns: usize, f: impl Fn(&Cell) -> f64) -> f64 {
        median_at(&self.cells, conns, f)
    }

    /// (description, measured, met) for each target of the issue.
    pub fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        let cpu16 = self.median_at(16, Cell::cpu_ratio);
        let mut out = Vec::new();
        // Each oha target's (median, met), in the order of the rows below.
        let oha = match &self.oha {
            OhaSeries::Measured(cells) => {
                let cpu1 = median_at(cells, 1, Cell::cpu_ratio);
                let rps16 = median_at(cells, 16, Cell::rps_ratio);
                Ok([(cpu1, cpu1 <= 1.3), (rps16, rps16 >= 0.9)])
            }
            OhaSeries::Skipped(why) => Err(format!("not measured: {why}")),
        };
        for (i, target) in [
            "CPU per request at 1 connection ≤ 1.3× the floor's",
            "cached read at 16 connections ≥ 0.9× the floor's req/s",
        ]
        .into_iter()
        .enumerate()
        {
            let (measured, met) = match &oha {
                Ok(judged) => (
                    format!("{:.2}× (median of rounds)", judged[i].0),
                    Some(judged[i].1),
                ),
                Err(why) => (why.clone(), None),
            };
            out.push((
                format!("oha, unpinned (the issue's method): {target}"),
                measured,
                met,
            ));
        }
        for (mode, cells) in [
            ("bench client, pinned", &self.cells),
            ("bench client, unpinned", &self.unpinned),
        ] {
            let cpu1 = median_at(cells, 1, Cell::cpu_ratio);
            let rps16 = median_at(cells, 16, Cell::rps_ratio);
            out.push((
                format!("{mode}: CPU per request at 1 connection ≤ 1.3× the floor's"),
                format!("{cpu1:.2}× (median of rounds)"),
                Some(cpu1 <= 1.3),
            ));
            out.push((
                format!("{mode}: cached read at 16 connections ≥ 0.9× the floor's req/s"),
                format!("{rps16:.2}× (median of rounds)"),
                Some(rps16 >= 0.9),
            ));
        }
        out.extend([
            (
                "bench client, pinned: CPU per request at 16 connections ≤ 1.25× the floor's (the first turn's target)".to_owned(),
                format!("{cpu16:.2}× (median of rounds)"),
                Some(cpu16 <= 1.25),
            ),
            (
                "exactly 1 upstream fetch per 200 concurrent misses (file source)".to_owned(),
                format!("{} fetch(es)", self.misses.fetches),
                Some(self.misses.fetches == 1 && self.misses.ok == self.misses.requests),
            ),
        ]);
        match &self.aws {
            AwsMisses::Measured {
                calls,
                misses,
                credentials,
            } => {
                out.push((
                    "exactly 1 upstream fetch per 200 concurrent misses (AWS source, moto)"
                        .to_owned(),
                    format!("{calls} GetSecretValue call(s) seen by moto"),
                    Some(*calls == 1 && misses.ok == misses.requests),
                ));
                let cpu = median(credentials.iter().map(Compare::cpu_ratio).collect());
                out.push((
                    "a cached aws-credentials read costs no more than a cached read of a secret of its size (CPU per request, ≤ 1.1× for the noise)".to_owned(),
                    format!("{cpu:.2}× (median over rounds and 1, 16 connections)"),
                    Some(cpu <= 1.1),
                ));
            }
            AwsMisses::Skipped(_) => {
                for target in [
                    "exactly 1 upstream fetch per 200 concurrent misses (AWS source, moto)",
                    "a cached aws-credentials read costs no more than a cached read of a secret of its size",
                ] {
                    out.push((
                        target.to_owned(),
                        "not measured (see above)".to_owned(),
                        None,
                    ));
                }
            }
        }
        let m = &self.memory;
        out.push((
            "0 requests wait on expiry".to_owned(),
            format!("{} waited", self.expiry.refresh_waits),
            Some(self.expiry.refresh_waits == 0),
        ));
        out.push((
            "RSS idle ≤ 8 MiB".to_owned(),
            format!("{:.1} MiB", m.rss_idle as f64 / MIB),
            Some(m.rss_idle as f64 <= 8.0 * MIB),
        ));
        out.push((
            "RSS with 10,000 cached secrets ≤ 40 MiB".to_owned(),
            format!("{:.1} MiB with {}", m.rss_full as f64 / MIB, m.secrets),
            (m.secrets == 10_000).then_some(m.rss_full as f64 <= 40.0 * MIB),
        ));
        out.push((
            "ready ≤ 10 ms after exec (file source)".to_owned(),
            format!(
                "{:.1} ms (median of {})",
                self.start.ready.as_secs_f64() * 1e3,
                self.start.runs
            ),
            Some(self.start.ready <= Duration::from_millis(10)),
        ));
        out.extend(self.burst_targets());
        if self.quick {
            for target in &mut out {
                target.2 = None;
            }
        }
        out
    }

    /// The targets of the `?wait=` burst (judged only at 4,000 connections).
    fn burst_targets(&self) -> Vec<(String, String, Option<bool>)> {
        let b = &self.burst;
        let full = b.conns == 4000;
        let f = &b.fanout;
        vec![
            (
                "RSS while 4,000 connections wait ≤ 8 KiB per connection (before: about 15 KiB)"
                    .to_owned(),
                format!("{:.1} KiB per connection with {}", b.per_conn() / 1024.0, b.conns),
                full.then_some(b.per_conn() <= 8.0 * 1024.0),
            ),
            (
                "RSS 10 s after 4,000 waiting connections close within 4 MiB of idle (before: 86 MiB against 6)".to_owned(),
                format!(
                    "{:+.1} MiB ({:.1} MiB {:.0} s after, idle {:.1} MiB)",
                    b.after_above_idle() / MIB,
                    b.rss_after as f64 / MIB,
                    b.settle.as_secs_f64(),
                    b.rss_idle as f64 / MIB
                ),
                full.then_some(b.after_above_idle() <= 4.0 * MIB && b.settle >= Duration::from_secs(10)),
            ),
            (
                "4,000 waiters on one secret all have the new value within 100 ms of an API flush".to_owned(),
                format!(
                    "{} of {} within {:.1} ms (p50 {:.1}, p99 {:.1} ms)",
                    f.ok,
                    b.conns,
                    f.max.as_secs_f64() * 1e3,
                    f.latency.p50.as_secs_f64() * 1e3,
                    f.latency.p99.as_secs_f64() * 1e3
                ),
                full.then_some(f.ok == b.conns && f.max <= Duration::from_millis(100)),
            ),
        ]
    }

    /// The whole report as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## credagent bench{}\n",
            if self.quick { " (quick)" } else { "" }
        );
        for (k, v) in &self.meta {
            let _ = writeln!(s, "- {k}: {v}");
        }
        s.push_str("\n### Cached read: agent vs floor, interleaved per round\n\n");
        s.push_str("Latency p50 / p99 / p99.9 in µs; CPU is the server's, per request; client % is the load generator's use of its core (agent run / floor run).\n\n");
        s.push_str("#### Pinned: server and load generator on cores of their own\n\n");
        cells_markdown(&mut s, &self.cells, &CONNS);
        s.push_str("\n#### Unpinned: the scheduler places both, as the agent is deployed\n\n");
        cells_markdown(&mut s, &self.unpinned, &CONNS);
        s.push_str("\n#### oha, unpinned: the way the broker issue measured\n\n");
        match &self.oha {
            OhaSeries::Measured(cells) => {
                s.push_str("oha (an independent load generator) needs more CPU per request than the bench's client, so at 16 connections the two compete for the cores and the server is not saturated. Client % is oha's.\n\n");
                cells_markdown(&mut s, cells, &crate::oha::CONNS);
            }
            OhaSeries::Skipped(why) => {
                let _ = writeln!(s, "Not measured: {why}.");
            }
        }
        let _ = writeln!(
            s,
            "\nAudit lines dropped by the agent during these runs: {}\n",
            self.audit_dropped
        );
        s.push_str("### Agent only\n\n| measurement | result |\n|---|---|\n");
        let m = &self.misses;
        let _ = writeln!(
            s,
            "| misses, file source | {} concurrent requests for one uncached secret: {} ok, {} source fetch(es), {} request(s) counted as waiting on a fetch, {:.1} ms wall |",
            m.requests,
            m.ok,
            m.fetches,
            m.waited,
            m.wall.as_secs_f64() * 1e3
        );
        match &self.aws {
            AwsMisses::Measured {
                misses,
                calls,
                credentials,
            } => {
                let _ = writeln!(
                    s,
                    "| misses, AWS source (moto) | {} concurrent requests: {} ok, agent counted {} fetch(es), moto saw {calls} GetSecretValue call(s), {:.1} ms wall |",
                    misses.requests,
                    misses.ok,
                    misses.fetches,
                    misses.wall.as_secs_f64() * 1e3
                );
                for c in credentials {
                    let _ = writeln!(
                        s,
                        "| cached `aws-credentials` read ÷ cached read of a secret of its size, round {}, {} conn(s) | CPU per request {:.1} / {:.1} µs ({:.2}×), req/s {:.0} / {:.0} ({:.2}×), latency p50/p99/p99.9 {} / {} µs |",
                        c.round,
                        c.conns,
                        c.credentials.server_us_per_req(),
                        c.secret.server_us_per_req(),
                        c.cpu_ratio(),
                        c.credentials.rps(),
                        c.secret.rps(),
                        c.rps_ratio(),
                        lat(&c.credentials),
                        lat(&c.secret)
                    );
                }
            }
            AwsMisses::Skipped(why) => {
                let _ = writeln!(s, "| misses, AWS source (moto) | not measured: {why} |");
            }
        }
        let e = &self.expiry;
        let _ = writeln!(
            s,
            "| expiry | ttl {} s, refresh-ahead {} s, 16 connections for {:.1} s: {} requests, {} waited on a refresh, {} background refreshes, p99.9 {} µs |",
            e.ttl_secs,
            e.refresh_ahead_secs,
            e.duration.as_secs_f64(),
            e.requests,
            e.refresh_waits,
            e.refresh_ahead,
            us(e.p999)
        );
        let mem = &self.memory;
        let _ = writeln!(
            s,
            "| memory | RSS idle {:.1} MiB; with {} cached secrets of {} bytes: RSS {:.1} MiB, VmLck {:.1} MiB, credagent_locked_bytes {:.1} MiB, {} entries |",
            mem.rss_idle as f64 / MIB,
            mem.secrets,
            mem.secret_len,
            mem.rss_full as f64 / MIB,
            mem.vmlck as f64 / MIB,
            mem.locked_metric as f64 / MIB,
            mem.entries
        );
        let st = &self.start;
        let _ = writeln!(
            s,
            "| start (file source) | exec → socket accepting {:.1} ms, exec → /v1/health 200 {:.1} ms (median of {}, slowest {:.1} ms) |",
            st.accepting.as_secs_f64() * 1e3,
            st.ready.as_secs_f64() * 1e3,
            st.runs,
            st.ready_max.as_secs_f64() * 1e3
        );
        s.push_str(&burst_markdown(&self.burst));
        s.push_str("\n### Targets\n\n");
        s.push_str("The broker issue set its two throughput targets against figures measured with oha, unpinned (its text: about 2× the floor's CPU at 1 connection and about 0.95× its req/s at 16, for the first turn's build); the first two rows judge them that way. The bench's own client is lighter than oha and keeps the server saturated at 16 connections: the rows marked \"bench client\" hold the agent to the same ratios under that load, which no build has met. docs/performance.md gives the current figures on every series.\n\n");
        s.push_str("| target | measured | met |\n|---|---|---|\n");
        for (target, measured, met) in self.targets() {
            let met = match met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None if self.quick => "not judged (quick run)",
                None => "not judged",
            };
            let _ = writeln!(s, "| {target} | {measured} | {met} |");
        }
        s
    }
}
