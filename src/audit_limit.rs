//! The per-uid limit on denied and error audit lines, and the lines that say what was left out.
//!
//! Owns only the decision "write this line or count it" and the summary and drop-marker lines;
//! the queue and the writer thread stay in `audit.rs`. Allowed reads and admin actions never
//! come here: they are always written.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::timefmt::rfc3339;

/// Denied or error lines one uid may have written per [`WINDOW`]; the rest are counted.
pub(crate) const BURST: u32 = 100;
/// The window of [`BURST`].
pub(crate) const WINDOW: Duration = Duration::from_secs(10);
/// Uids tracked at once; past it, further uids share one window under [`OVERFLOW_UID`].
const MAX_UIDS: usize = 1024;
/// The uid a summary names for lines of uids past [`MAX_UIDS`]: `(uid_t)-1` is no one's uid.
const OVERFLOW_UID: u32 = u32::MAX;

/// SECURITY: every denied request writes a line, so one local caller could write thousands a
/// second; a sink with a rate limit of its own (journald's, per unit) would then drop lines of
/// every caller, the audit line of a real read among them, and nothing would say so. Denied and
/// error lines are limited per uid here instead, and one summary line counts what was left out.
#[derive(Debug, Default)]
pub(crate) struct AuditLimiter {
    windows: Mutex<HashMap<u32, Window>>,
    /// Some window holds suppressed lines that no summary has counted yet.
    pending: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    /// When the first suppressed line of this window was refused.
    since: SystemTime,
    written: u32,
    suppressed: u64,
}

/// `{"action":"suppressed","uid":…,"count":…,"since":…}`: lines of `uid` left out since `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Suppressed {
    pub(crate) uid: u32,
    pub(crate) count: u64,
    pub(crate) since: SystemTime,
}

impl AuditLimiter {
    /// Whether a denied or error line of `uid` is written now (else it is counted for a summary).
    pub(crate) fn admit(&self, uid: u32, now: Instant) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= MAX_UIDS && !windows.contains_key(&uid) {
            windows.retain(|_, w| w.suppressed > 0 || now.duration_since(w.started) < WINDOW);
        }
        let key = if windows.len() >= MAX_UIDS && !windows.contains_key(&uid) {
            OVERFLOW_UID
        } else {
            uid
        };
        let window = windows.entry(key).or_insert(Window {
            started: now,
            since: SystemTime::now(),
            written: 0,
            suppressed: 0,
        });
        if now.duration_since(window.started) >= WINDOW && window.suppressed == 0 {
            window.started = now;
            window.written = 0;
        }
        if window.written < BURST {
            window.written = window.written.saturating_add(1);
            return true;
        }
        if window.suppressed == 0 {
            window.since = SystemTime::now();
        }
        window.suppressed = window.suppressed.saturating_add(1);
        self.pending.store(true, Ordering::Release);
        false
    }

    /// Whether a summary may be due (cheap: no lock).
    pub(crate) fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// The summaries of windows that have ended with lines left out; those windows start over.
    /// With `all`, every window's summary now (at a stop).
    pub(crate) fn due(&self, now: Instant, all: bool) -> Vec<Suppressed> {
        if !self.pending() {
            return Vec::new();
        }
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        let mut still_pending = false;
        windows.retain(|&uid, w| {
            if w.suppressed == 0 {
                return now.duration_since(w.started) < WINDOW;
            }
            if !all && now.duration_since(w.started) < WINDOW {
                still_pending = true;
                return true;
            }
            due.push(Suppressed {
                uid,
                count: w.suppressed,
                since: w.since,
            });
            // A new window with a new burst: a flooding uid gets at most BURST lines and one
            // summary per window.
            *w = Window {
                started: now,
                since: w.since,
                written: 0,
                suppressed: 0,
            };
            true
        });
        self.pending.store(still_pending, Ordering::Release);
        due
    }

    /// How long until the earliest pending window ends (for the writer's sleep).
    pub(crate) fn next_due(&self, now: Instant) -> Option<Duration> {
        if !self.pending() {
            return None;
        }
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows
            .values()
            .filter(|w| w.suppressed > 0)
            .map(|w| WINDOW.saturating_sub(now.duration_since(w.started)))
            .min()
    }
}

impl Suppressed {
    /// Appends the summary as one JSON line.
    pub(crate) fn push_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"action\":\"suppressed\",\"uid\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.uid).as_bytes());
        out.extend_from_slice(b",\"count\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.count).as_bytes());
        out.extend_from_slice(b",\"since\":\"");
        out.extend_from_slice(rfc3339(self.since).as_bytes());
        out.extend_from_slice(b"\"}\n");
    }
}

/// Appends `{"action":"dropped","count":…,"since":…}`: `count` lines were lost (queue full, sink
/// error) since `since`; written first once the sink takes lines again.
pub(crate) fn push_dropped_line(out: &mut Vec<u8>, count: u64, since: SystemTime) {
    out.extend_from_slice(b"{\"action\":\"dropped\",\"count\":");
    out.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
    out.extend_from_slice(b",\"since\":\"");
    out.extend_from_slice(rfc3339(since).as_bytes());
    out.extend_from_slice(b"\"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_past_its_burst_is_counted_and_summarised_once_its_window_ends() {
        let limiter = AuditLimiter::default();
        let start = Instant::now();
        for _ in 0..BURST {
            assert!(limiter.admit(7, start));
        }
        assert!(!limiter.admit(7, start));
        assert!(!limiter.admit(7, start));
        // Another uid is not touched.
        assert!(limiter.admit(8, start));
        assert!(limiter.due(start, false).is_empty(), "window not over yet");
        assert_eq!(limiter.next_due(start), Some(WINDOW));
        let later = start + WINDOW;
        let due = limiter.due(later, false);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].uid, due[0].count), (7, 2));
        assert!(!limiter.pending());
        // A new window, a new burst.
        assert!(limiter.admit(7, later));
    }

    #[test]
    fn at_a_stop_every_pending_summary_is_due() {
        let limiter = AuditLimiter::default();
        let start = Instant::now();
        for _ in 0..=BURST {
            limiter.admit(1, start);
        }
        assert_eq!(limiter.due(start, true).len(), 1);
    }

    #[test]
    fn the_summary_and_drop_lines_are_json_with_the_contract_keys() {
        let mut out = Vec::new();
        Suppressed {
            uid: 65534,
            count: 3,
            since: SystemTime::UNIX_EPOCH,
        }
        .push_line(&mut out);
        push_dropped_line(&mut out, 5, SystemTime::UNIX_EPOCH);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["action"], "suppressed");
        assert_eq!(lines[0]["uid"], 65534);
        assert_eq!(lines[0]["count"], 3);
        assert!(
            lines[0]["since"]
                .as_str()
                .unwrap()
                .starts_with("1970-01-01T00:00:00")
        );
        assert_eq!(
            (&lines[1]["action"], &lines[1]["count"]),
            (&"dropped".into(), &5.into())
        );
    }

    #[test]
    fn uids_past_the_map_bound_share_one_window() {
        let limiter = AuditLimiter::default();
        let now = Instant::now();
        for uid in 0..MAX_UIDS as u32 {
            limiter.admit(uid, now);
        }
        for _ in 0..BURST {
            assert!(limiter.admit(1_000_000, now));
        }
        assert!(!limiter.admit(2_000_000, now), "shares the overflow window");
        assert!(limiter.windows.lock().unwrap().len() <= MAX_UIDS + 1);
    }
}
