//! The Prometheus text of the `vault-lease` sources: lease issue/renew/revoke counters and the
//! seconds left of each profile's lease, labelled by source and profile only (never a lease id
//! or a value). Appended to `GET /v1/metrics` by the broker.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::source::{Source, Sources};

/// Appends the lease metrics of every `vault-lease` source in `sources` to `out`.
pub fn render(sources: &Sources, out: &mut String) {
    let mut rows = Vec::new();
    for (name, entry) in sources {
        if let Source::VaultLease(lease) = &entry.source {
            for (profile, counts, left) in lease.profile_metrics() {
                rows.push((
                    name.as_str(),
                    profile.to_owned(),
                    [
                        counts.issued.load(Ordering::Relaxed),
                        counts.renewed.load(Ordering::Relaxed),
                        counts.revoked.load(Ordering::Relaxed),
                    ],
                    left,
                ));
            }
        }
    }
    if rows.is_empty() {
        return;
    }
    let counters = [
        (
            "credagent_lease_issued_total",
            "Leases obtained per profile.",
        ),
        (
            "credagent_lease_renewed_total",
            "Lease renewals per profile.",
        ),
        (
            "credagent_lease_revoked_total",
            "Leases revoked per profile.",
        ),
    ];
    for (i, (metric, help)) in counters.iter().enumerate() {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
        for (source, profile, values, _) in &rows {
            let value = values.get(i).copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "{metric}{{source=\"{source}\",profile=\"{profile}\"}} {value}"
            );
        }
    }
    let metric = "credagent_lease_seconds_left";
    let _ = writeln!(
        out,
        "# HELP {metric} Seconds until the current lease of each profile expires.\n# TYPE {metric} gauge"
    );
    for (source, profile, _, left) in &rows {
        if let Some(left) = left {
            let _ = writeln!(
                out,
                "{metric}{{source=\"{source}\",profile=\"{profile}\"}} {left}"
            );
        }
    }
}
