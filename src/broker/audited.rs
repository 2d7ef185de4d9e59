//! The audited decision: one request's audit line, built when the request arrives and recorded
//! exactly once, by [`Audited::finish`], with the outcome's status and reason.

use std::sync::Arc;
use std::time::Duration;

use super::error::BrokerError;
use crate::audit::{AuditEvent, RequestId};
use crate::peer::PeerIdentity;
use crate::state::AppState;

/// An answer sent this long after its request arrived records the arrival as a second time.
const ANSWERED_LATER: Duration = Duration::from_secs(1);

/// One decision's audit line: built when the request arrives, recorded exactly once by
/// [`Audited::finish`].
pub(super) struct Audited<'a> {
    pub(super) state: &'a AppState,
    pub(super) event: AuditEvent,
}

impl<'a> Audited<'a> {
    pub(super) fn new(state: &'a AppState, peer: &Arc<PeerIdentity>, action: &'static str) -> Self {
        Audited {
            state,
            event: AuditEvent::new(state.next_request_id(), action, peer),
        }
    }

    pub(super) fn request_id(&self) -> RequestId {
        self.event.request_id
    }

    /// Records the outcome and hands it back.
    pub(super) fn finish<T>(self, result: Result<T, BrokerError>) -> Result<T, BrokerError> {
        self.finish_status(result, |_| 200)
    }

    /// As [`Audited::finish`], with the status of a success taken from it.
    pub(super) fn finish_status<T>(
        mut self,
        result: Result<T, BrokerError>,
        status: impl FnOnce(&T) -> u16,
    ) -> Result<T, BrokerError> {
        // The line records when the answer was sent; a read that waited keeps its arrival too.
        let now = std::time::SystemTime::now();
        if let Ok(waited) = now.duration_since(self.event.time)
            && waited >= ANSWERED_LATER
        {
            self.event.waited_ms = u32::try_from(waited.as_millis()).unwrap_or(u32::MAX);
        }
        self.event.time = now;
        match &result {
            Ok(value) => {
                debug_assert_eq!(self.event.decision, "allow");
                self.event.status = status(value);
            }
            // `decision` stays "deny" unless a rule admitted the caller before the failure.
            Err(err) => {
                self.event.status = err.status();
                self.event.reason = err.reason();
            }
        }
        self.state.audit.record(self.event);
        result
    }
}
