//! The side-by-side run: the agent serving a cached secret and the floor server serving a fixed
//! body, interleaved (agent, floor, agent, floor…) for every round and connection count, so
//! both see the same machine noise. Each run is a fresh set of keep-alive connections.
//!
//! The agent appends an audit line per request to one file for the whole bench; before each run
//! every dirty page is written back (`sync`), so that the writeback of one run's lines does not
//! land in the next run's window — the floor's (flattering the agent) or the agent's own.

use std::path::Path;

use crate::error::BenchError;
use crate::load::{self, Outcome, Target, Timing};

/// Connection counts measured.
pub const CONNS: [usize; 3] = [1, 16, 64];

/// One (round, connection count) pair of runs.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Round, from 1.
    pub round: usize,
    /// Keep-alive connections.
    pub conns: usize,
    /// The agent's run.
    pub agent: Outcome,
    /// The floor's run, right after.
    pub floor: Outcome,
}

impl Cell {
    /// agent req/s ÷ floor req/s.
    pub fn rps_ratio(&self) -> f64 {
        self.agent.rps() / self.floor.rps()
    }

    /// agent CPU per request ÷ floor CPU per request.
    pub fn cpu_ratio(&self) -> f64 {
        self.agent.server_us_per_req() / self.floor.server_us_per_req()
    }
}

/// What loads the servers.
#[derive(Debug, Clone, Copy)]
pub enum Generator<'a> {
    /// The bench's own client, at [`CONNS`].
    Own,
    /// oha at this path, at [`crate::oha::CONNS`]; call unpinned (oha inherits this thread's
    /// CPU affinity).
    Oha(&'a Path),
}

impl Generator<'_> {
    /// The connection counts it is run at.
    pub fn conns(&self) -> &'static [usize] {
        match self {
            Generator::Own => &CONNS,
            Generator::Oha(_) => &crate::oha::CONNS,
        }
    }

    async fn measure(
        &self,
        target: Target<'_>,
        conns: usize,
        timing: Timing,
    ) -> Result<Outcome, BenchError> {
        nix::unistd::sync();
        match self {
            Generator::Own => load::run(&spec(target, conns, timing)).await,
            Generator::Oha(oha) => crate::oha::run(oha, target, conns, timing),
        }
    }
}

/// Runs every round; `progress` is told about each finished cell.
pub async fn run(
    agent: Target<'_>,
    floor: Target<'_>,
    generator: Generator<'_>,
    timing: Timing,
    mut progress: impl FnMut(&Cell),
) -> Result<Vec<Cell>, BenchError> {
    let mut cells = Vec::new();
    for round in 1..=timing.rounds {
        for &conns in generator.conns() {
            let agent_outcome = generator.measure(agent, conns, timing).await?;
            let floor_outcome = generator.measure(floor, conns, timing).await?;
            let cell = Cell {
                round,
                conns,
                agent: agent_outcome,
                floor: floor_outcome,
            };
            progress(&cell);
            cells.push(cell);
        }
    }
    Ok(cells)
}

fn spec<'a>(target: Target<'a>, conns: usize, timing: Timing) -> load::Spec<'a> {
    load::Spec {
        socket: target.socket,
        path: target.path,
        conns,
        warmup: timing.warmup,
        measure: timing.measure,
        server_pid: target.pid,
    }
}

/// The median of `values` (NaN for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
