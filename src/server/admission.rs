//! Who may hold a connection: the counts behind the server's fairness between local users.
//!
//! Two pools. Operators (uid 0 and admin peers) hold at most `server.max_operator_connections`
//! connections, counted apart; every other caller holds at most `max_connections_per_uid` per
//! uid and all of them together at most `max_connections`. Neither pool can take the other's
//! slots: a root process flooding the socket leaves other users their reads, and a user
//! flooding it leaves operators their health, flush and metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::config::ServerConfig;

/// At most this many refused connections linger at once; past that they are answered and
/// closed at once.
const MAX_LINGERING: usize = 64;

/// Connection counts per pool and per uid.
#[derive(Debug)]
pub(super) struct Admission {
    max_general: usize,
    per_uid: usize,
    max_operator: usize,
    counts: Mutex<Counts>,
    /// Refused connections draining their request, outside every connection slot.
    lingering: Arc<Semaphore>,
}

#[derive(Debug, Default)]
struct Counts {
    general: usize,
    operators: usize,
    by_uid: HashMap<u32, usize>,
}

/// A connection's place in [`Admission`]; gives it back on drop.
#[derive(Debug)]
pub(super) struct Admitted {
    admission: Arc<Admission>,
    /// `None` for an operator (counted in its own pool, not per uid).
    uid: Option<u32>,
}

impl Admission {
    pub(super) fn new(config: &ServerConfig) -> Self {
        Admission {
            max_general: config.max_connections.get(),
            per_uid: config.max_connections_per_uid.get(),
            max_operator: config.max_operator_connections.get(),
            counts: Mutex::new(Counts::default()),
            lingering: Arc::new(Semaphore::new(MAX_LINGERING)),
        }
    }

    /// The permits of refused connections that linger to read their request.
    pub(super) fn lingering(&self) -> &Arc<Semaphore> {
        &self.lingering
    }

    /// Admits a connection from `uid` (an operator's into the operators' pool), or refuses it.
    pub(super) fn admit(self: &Arc<Self>, uid: u32, operator: bool) -> Option<Admitted> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if operator {
            // SECURITY: operators have slots of their own, and no more.
            if counts.operators >= self.max_operator {
                return None;
            }
            counts.operators = counts.operators.saturating_add(1);
            return Some(Admitted {
                admission: self.clone(),
                uid: None,
            });
        }
        let held = counts.by_uid.get(&uid).copied().unwrap_or(0);
        if held >= self.per_uid || counts.general >= self.max_general {
            return None;
        }
        counts.general = counts.general.saturating_add(1);
        counts.by_uid.insert(uid, held.saturating_add(1));
        Some(Admitted {
            admission: self.clone(),
            uid: Some(uid),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(uid) = self.uid else {
            counts.operators = counts.operators.saturating_sub(1);
            return;
        };
        counts.general = counts.general.saturating_sub(1);
        if let Some(held) = counts.by_uid.get_mut(&uid) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.by_uid.remove(&uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(general: usize, per_uid: usize, operators: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_general: general,
            per_uid,
            max_operator: operators,
            counts: Mutex::new(Counts::default()),
            lingering: Arc::new(Semaphore::new(MAX_LINGERING)),
        })
    }

    #[test]
    fn operators_and_other_callers_each_keep_their_own_slots() {
        let a = admission(4, 2, 3);
        let ops: Vec<_> = (0..3).map(|_| a.admit(0, true).unwrap()).collect();
        assert!(a.admit(0, true).is_none(), "an operator past its cap");
        // Operators holding every one of their slots leave the general pool whole.
        let users: Vec<_> = [1, 1, 2, 2]
            .iter()
            .map(|&uid| a.admit(uid, false).unwrap())
            .collect();
        assert!(a.admit(1, false).is_none(), "uid 1 past its share");
        assert!(a.admit(3, false).is_none(), "the general pool is full");
        // And a full general pool leaves operators theirs.
        drop(ops);
        let _op = a.admit(0, true).unwrap();
        drop(users);
        assert!(a.admit(1, false).is_some());
    }
}
