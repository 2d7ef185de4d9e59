//! Backend calls of the Secrets Manager and Parameter Store sources, by operation
//! (`credagent_backend_calls_total{source,call}`), so batching shows in the metrics: a batch of
//! 20 reads is one `BatchGetSecretValue`, where unbatched it was 20 `GetSecretValue`s.
//!
//! It owns the counters and their rendering; the sources count their own calls. Counters
//! belong to a built source, so a reload (which builds new sources) starts them again at zero.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// One source's calls, by operation.
#[derive(Debug)]
pub(crate) struct CallCounts {
    calls: Vec<(&'static str, AtomicU64)>,
}

impl CallCounts {
    /// Counters for `operations`, each at zero.
    pub(crate) fn new(operations: &[&'static str]) -> Self {
        CallCounts {
            calls: operations
                .iter()
                .map(|&op| (op, AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Counts one call of `operation` (one of those given to [`CallCounts::new`]).
    pub(crate) fn count(&self, operation: &'static str) {
        if let Some((_, n)) = self.calls.iter().find(|(op, _)| *op == operation) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Appends `credagent_backend_calls_total` for every source that counts its calls (by name).
pub(crate) fn render<'a>(
    sources: impl Iterator<Item = (&'a str, &'a CallCounts)>,
    out: &mut String,
) {
    out.push_str(
        "# HELP credagent_backend_calls_total Backend calls of each AWS secret source, by \
         operation.\n# TYPE credagent_backend_calls_total counter\n",
    );
    for (name, counts) in sources {
        for (call, n) in &counts.calls {
            let _ = writeln!(
                out,
                "credagent_backend_calls_total{{source=\"{name}\",call=\"{call}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_operation_and_ignores_unknown_ones() {
        let counts = CallCounts::new(&["A", "B"]);
        counts.count("A");
        counts.count("A");
        counts.count("C");
        let load: Vec<u64> = counts
            .calls
            .iter()
            .map(|(_, n)| n.load(Ordering::Relaxed))
            .collect();
        assert_eq!(load, vec![2, 0]);
    }
}
