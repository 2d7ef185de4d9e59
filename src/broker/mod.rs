//! The request policy, protocol-neutral: validate → decide → cached fetch → one audit record.
//!
//! Every front end (the HTTP handler, the systemd credentials socket) calls exactly one function
//! here per request and maps the [`BrokerError`] it may get to its own protocol. This module
//! alone:
//! - validates what the name's syntax cannot: the source exists, takes the selector, and could
//!   ever serve the id (each source's own rules) — all before the cache is asked, so a malformed
//!   id creates no cache slot, no fetch and no source error;
//! - decides access (`acl`), including the location a transit read takes its ciphertext from;
//! - runs the cached fetch under one timeout, metrics and logging policy;
//! - writes exactly one audit record per decision, never a value;
//! - tags each value it serves with an ETag (a keyed hash of the served bytes under a
//!   per-process random key, so it tells nothing of the value), answers `NotModified` to a
//!   caller that holds the current one, and holds a waiting read until the served bytes differ
//!   or its deadline passes (the cache says when a key may have changed);
//! - decides every answer under the config in force when it is sent: a read that fetched or
//!   waited across a reload is admitted again under the new runtime and looked up through its
//!   sources (`revoked` when its rule is gone), and the cache stores only fetches of the
//!   generation in force.
//!
//! The pieces it composes have files of their own: `request.rs` (what front ends ask),
//! `error.rs` ([`BrokerError`]), `audited.rs` (the one audit record), `lookup.rs` (the source a
//! name leads to), `fetch.rs` (the cached fetch), `reply.rs` (render and ETag), `wait.rs` (the
//! change wait), `held.rs` (each uid's locked-memory share); two entry points have files of their
//! own: `prefetch.rs` and `credential.rs` (the systemd credentials socket).
//!
//! It knows nothing of HTTP: the only protocol numbers here are the statuses the audit trail
//! records ([`BrokerError::status`]), which every front end's audit lines share.
#![deny(clippy::arithmetic_side_effects)]

mod audited;
mod credential;
mod error;
mod fetch;
pub(crate) mod held;
mod lookup;
mod prefetch;
mod reply;
mod request;
mod wait;

use std::sync::Arc;

use crate::acl;
use crate::audit::RequestId;
use crate::name::Glob;
use crate::rate_limited;
use crate::secure_mem::{locked_bytes, mapped_bytes};
use crate::source::{CallerScope, SecretRequest, SourceEntry};
use crate::state::{AppState, Runtime};
use audited::Audited;
pub use credential::credential;
pub use error::BrokerError;
use fetch::Target;
use lookup::{check_ciphertext_location, reloaded_since, validate};
pub use prefetch::{prefetch, prefetch_batch};
pub use reply::{Reply, ReplyKind};
use reply::{View, current};
pub use request::{Caller, CredentialRequest, Format, ReadRequest};
pub use wait::Hangup;

/// SECURITY: bytes of the request came from a process other than the one whose identity the
/// connection carries: refuse before anything else, whatever was asked.
fn check_sender(caller: Caller<'_>, request_id: RequestId) -> Result<(), BrokerError> {
    if caller.sender_is_connector {
        return Ok(());
    }
    rate_limited!(warn, %request_id, uid = caller.peer.uid, pid = ?caller.peer.pid, "request written by a process other than the connector");
    Err(BrokerError::PeerChanged)
}

/// A request a front end could not even parse, from a caller whose connection carried another
/// process's bytes: refused and audited as `peer_changed` (the front end closes the connection).
pub fn refuse_changed_peer(state: &AppState, caller: Caller<'_>) -> BrokerError {
    let audited = Audited::new(state, caller.peer, "request");
    let request_id = audited.request_id();
    let refused = check_sender(caller, request_id).err();
    let err = refused.clone().unwrap_or(BrokerError::PeerChanged);
    let _ = audited.finish::<()>(Err(err.clone()));
    err
}

/// `GET /v1/health` and the like: any caller, no decision to audit — unless the request was
/// not the connector's.
pub fn health(state: &AppState, caller: Caller<'_>) -> Result<(), BrokerError> {
    if caller.sender_is_connector {
        return Ok(());
    }
    Err(refuse_changed_peer(state, caller))
}

/// `GET /v1/ready`: any caller, no decision to audit (as [`health`]); counts only. A draining
/// agent takes no more work, so it is not ready (while [`health`] still says it is alive).
pub fn ready(
    state: &AppState,
    caller: Caller<'_>,
) -> Result<crate::readiness::Report, BrokerError> {
    health(state, caller)?;
    if state.shutting_down() {
        return Err(BrokerError::ShuttingDown);
    }
    Ok(state.readiness.report(&state.runtime()))
}

/// Reads a secret for `caller`: at once, or — with `wait` and an `if_none_match` that is still
/// current — once the served bytes differ, else `not_modified` at the deadline. One audit line
/// whatever the wait (`"action":"refresh"` for a forced re-fetch).
///
/// SECURITY: every answer is decided by the config in force when it is sent: a reload while the
/// read fetched or waited makes it take the new runtime and pass admission again; a caller the
/// new rules no longer admit gets [`BrokerError::Revoked`], never the value.
pub async fn read(
    state: &AppState,
    caller: Caller<'_>,
    request: &ReadRequest,
) -> Result<Reply, BrokerError> {
    read_watched(state, caller, request, &wait::NeverHangsUp).await
}

/// [`read`], whose wait (with `?wait=`) also ends when `hangup` says the client is gone:
/// [`BrokerError::ClientGone`], audited, counted in `credagent_waits_abandoned_total`.
pub async fn read_watched(
    state: &AppState,
    caller: Caller<'_>,
    request: &ReadRequest,
    hangup: &dyn Hangup,
) -> Result<Reply, BrokerError> {
    // Every local that lives across the await is stored in this future, which hyper moves on
    // every request: the request is borrowed, and the checks are a plain function.
    let action = if request.refresh { "refresh" } else { "read" };
    let mut audited = Audited::new(state, caller.peer, action);
    audited.event.secret = Some(request.secret.name.joined());
    let view = View {
        field: request.field.as_deref(),
        format: request.format,
        if_none_match: request.if_none_match.as_deref(),
    };
    let result = match request.wait {
        // The common read: no clock, no subscription, and a small future.
        None => read_now(state, caller, request, &view, &mut audited).await,
        // Boxed: its timers and subscription would otherwise size every read's future.
        Some(wait) => {
            let waiting = WaitRead {
                request,
                view: &view,
                wait,
                hangup,
            };
            Box::pin(wait_read(state, caller, waiting, &mut audited)).await
        }
    };
    if let (Ok(reply), Some(aws)) = (&result, audited.event.aws.as_mut()) {
        aws.expires_at = reply.expires_at;
    }
    if let Ok(reply) = &result {
        audited.event.refresh = reply.refresh;
        audited.event.expires_in = reply.expires_at.and_then(|at| {
            let left = at.duration_since(audited.event.time).ok()?;
            std::num::NonZeroU32::new(u32::try_from(left.as_secs()).unwrap_or(u32::MAX))
        });
    }
    audited.finish_status(result, |reply| if reply.not_modified { 304 } else { 200 })
}

/// A read answered now, under the runtime that is current when it is answered.
async fn read_now(
    state: &AppState,
    caller: Caller<'_>,
    request: &ReadRequest,
    view: &View<'_>,
    audited: &mut Audited<'_>,
) -> Result<Reply, BrokerError> {
    let mut admitted_before = false;
    loop {
        let read = ReadOnce {
            state,
            caller,
            secret: &request.secret,
            view,
        };
        if let Some(reply) = read
            .run(request.refresh, audited, &mut admitted_before)
            .await?
        {
            return Ok(reply);
        }
    }
}

/// A `?wait=` read (re-fetched first when `request.refresh`): the value once the served bytes
/// differ from the caller's tag, else `not_modified` at the deadline (or at shutdown) ([`wait`]); each
/// wake taking the runtime in force and admitting the read again ([`admit_again`]).
async fn wait_read(
    state: &AppState,
    caller: Caller<'_>,
    waiting: WaitRead<'_>,
    audited: &mut Audited<'_>,
) -> Result<Reply, BrokerError> {
    let WaitRead {
        request,
        view,
        wait,
        hangup,
    } = waiting;
    let secret = &request.secret;
    let mut waiter = wait::Waiter::new(state, secret, wait, request.refresh, hangup);
    let mut admitted_before = false;
    loop {
        let force = waiter.start_read();
        let read = ReadOnce {
            state,
            caller,
            secret,
            view,
        };
        let Some(reply) = read.run(force, audited, &mut admitted_before).await? else {
            continue;
        };
        if !reply.not_modified {
            return Ok(reply);
        }
        match waiter.sleep().await {
            Ok(true) => {}
            Ok(false) => return Ok(reply),
            Err(gone) => {
                state
                    .metrics
                    .waits_abandoned
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(gone);
            }
        }
    }
}

/// What a `?wait=` read waits with.
struct WaitRead<'a> {
    request: &'a ReadRequest,
    view: &'a View<'a>,
    wait: std::time::Duration,
    hangup: &'a dyn Hangup,
}

/// One look-up of a read under the runtime in force.
struct ReadOnce<'a> {
    state: &'a AppState,
    caller: Caller<'a>,
    secret: &'a SecretRequest,
    view: &'a View<'a>,
}

impl ReadOnce<'_> {
    /// Admits the read (again, after an earlier admission: [`admit_again`]), looks it up (first
    /// re-fetched when `force`) and renders it; `None` when a reload happened meanwhile, so it
    /// is to be decided again under the new runtime.
    async fn run(
        &self,
        force: bool,
        audited: &mut Audited<'_>,
        admitted_before: &mut bool,
    ) -> Result<Option<Reply>, BrokerError> {
        let state = self.state;
        // Held for this one look-up, never across a wait.
        let runtime = state.current_runtime();
        let entry = admit_again(
            state,
            &runtime,
            self.caller,
            self.secret,
            audited,
            *admitted_before,
        )?;
        *admitted_before = true;
        // aws-credentials, a `per_caller` lease profile: the caller's own session or lease
        // joins the cache key (under this runtime's source: a reload may have changed it).
        let bound = entry.source.scoped(self.secret, self.caller.peer);
        audited.event.aws =
            bound
                .as_ref()
                .and_then(|bound| match bound.selector.caller.as_deref() {
                    Some(CallerScope::AwsSession(key)) => {
                        Some(Box::new(crate::audit::AwsSession {
                            name: crate::source::aws::credentials::session_name_of(key).into(),
                            expires_at: None,
                        }))
                    }
                    _ => None,
                });
        let target = Target {
            state,
            request_id: audited.request_id(),
            uid: self.caller.peer.uid,
            entry,
            generation: runtime.generation,
            request: bound.as_ref().unwrap_or(self.secret),
        };
        let (reply, served) = current(&target, self.view, force).await;
        audited.event.cache = Some(served.as_str());
        if reloaded_since(state, &runtime) {
            return Ok(None);
        }
        reply.map(Some)
    }
}

/// [`admit_read`], for a read that may have been admitted under an earlier config: a refusal of
/// the rules then is a revocation.
fn admit_again<'r>(
    state: &AppState,
    runtime: &'r Runtime,
    caller: Caller<'_>,
    secret: &SecretRequest,
    audited: &mut Audited<'_>,
    admitted_before: bool,
) -> Result<&'r Arc<SourceEntry>, BrokerError> {
    admit_read(state, runtime, caller, secret, audited).map_err(|err| match err {
        BrokerError::Forbidden if admitted_before => {
            rate_limited!(info, request_id = %audited.request_id(), secret = %secret.name, "a reload revoked a read's access before it was answered");
            BrokerError::Revoked
        }
        other => other,
    })
}

/// The checks of a read before the cache, in order: the sender, the drain, the access
/// decision (`audited` says `allow` from here), the name against its source, and a transit
/// read's ciphertext location (a denial there is audited as `deny`). Returns the source.
fn admit_read<'r>(
    state: &AppState,
    runtime: &'r Runtime,
    caller: Caller<'_>,
    secret: &SecretRequest,
    audited: &mut Audited<'_>,
) -> Result<&'r Arc<SourceEntry>, BrokerError> {
    let SecretRequest { name, selector } = secret;
    // Run again for a read decided anew after a reload: nothing of the last decision stays.
    audited.event.decision = "deny";
    check_sender(caller, audited.request_id())?;
    if state.shutting_down() {
        return Err(BrokerError::ShuttingDown);
    }
    // SECURITY: the decision comes before any validation that could tell a denied caller
    // whether a source or id exists.
    let peer = caller.peer;
    if !acl::decide(&runtime.rules, peer, name.source(), name.id()).allowed() {
        return Err(BrokerError::Forbidden);
    }
    audited.event.decision = "allow";
    let entry = validate(runtime, name, selector)?;
    if let Err(denied) = check_ciphertext_location(entry, name, |location| {
        acl::decide(&runtime.rules, peer, location.source(), location.id())
    }) {
        audited.event.decision = "deny";
        return Err(denied);
    }
    Ok(entry)
}

/// Flushes cached values matching `pattern` (all for `None`) for an admin caller. `pattern` is
/// what the front end parsed from the request: an error there is reported only to admins.
pub fn flush(
    state: &AppState,
    caller: Caller<'_>,
    pattern: Result<Option<Glob>, &'static str>,
) -> Result<usize, BrokerError> {
    admit_flush(state, caller)?.flush(caller, pattern.map_err(BrokerError::BadFlush))
}

/// Admits a cache flush before its body is read. SECURITY: a caller that may not flush is
/// refused (and audited) before a front end waits for or buffers any body, so announcing a
/// body and never sending it cannot hold a connection open.
pub fn admit_flush<'a>(
    state: &'a AppState,
    caller: Caller<'_>,
) -> Result<FlushTicket<'a>, BrokerError> {
    let mut audited = Audited::new(state, caller.peer, "flush");
    match admit_admin(state, caller, &mut audited) {
        Ok(()) => Ok(FlushTicket {
            audited: Some(audited),
        }),
        Err(err) => audited.finish(Err(err)),
    }
}

/// An admitted flush waiting for its pattern; its audit line is written by
/// [`FlushTicket::flush`], or when it is dropped unused (a front end that gave up on the body:
/// the connection went away, the agent stopped).
pub struct FlushTicket<'a> {
    /// `None` once the line is written.
    audited: Option<Audited<'a>>,
}

impl std::fmt::Debug for FlushTicket<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushTicket")
            .field(
                "request_id",
                &self.audited.as_ref().map(Audited::request_id),
            )
            .finish()
    }
}

impl Drop for FlushTicket<'_> {
    fn drop(&mut self) {
        if let Some(audited) = self.audited.take() {
            let _ = audited.finish::<()>(Err(BrokerError::BadFlush(
                "the request was abandoned before its body arrived",
            )));
        }
    }
}

impl FlushTicket<'_> {
    /// Flushes what `pattern` names (all when `None`), or records why the body could not give
    /// one. `caller` is asked again: the body was read after the head, and its bytes too must be
    /// the connector's.
    pub fn flush(
        mut self,
        caller: Caller<'_>,
        pattern: Result<Option<Glob>, BrokerError>,
    ) -> Result<usize, BrokerError> {
        // INVARIANT: `Some` until this call or the drop takes it; both consume the ticket.
        let Some(mut audited) = self.audited.take() else {
            return Err(BrokerError::BadFlush("the flush was already recorded"));
        };
        let state = audited.state;
        let request_id = audited.request_id();
        let result = (|| {
            if let Err(err) = check_sender(caller, request_id) {
                audited.event.decision = "deny";
                return Err(err);
            }
            let pattern = pattern?;
            audited.event.secret = Some(pattern.as_ref().map_or("*", |g| g.as_str()).into());
            // vault-lease: a flushed profile gets a new lease at its next read (marked before
            // the cache flush wakes the waiters, so their re-read gets it).
            crate::source::flush_leases(&state.runtime().sources, pattern.as_ref());
            let flushed = state.cache.flush(pattern.as_ref());
            tracing::info!(%request_id, pattern = ?pattern.as_ref().map(|g| g.as_str()), flushed, "cache flushed by API");
            Ok(flushed)
        })();
        audited.finish(result)
    }
}

/// The gate of every admin operation: the connector's own bytes, not draining, an admin rule.
fn admit_admin(
    state: &AppState,
    caller: Caller<'_>,
    audited: &mut Audited<'_>,
) -> Result<(), BrokerError> {
    check_sender(caller, audited.request_id())?;
    if state.shutting_down() {
        return Err(BrokerError::ShuttingDown);
    }
    if !acl::decide_admin(&state.runtime().rules, caller.peer).allowed() {
        return Err(BrokerError::Forbidden);
    }
    audited.event.decision = "allow";
    Ok(())
}

/// The Prometheus text for an admin caller.
pub fn metrics(state: &AppState, caller: Caller<'_>) -> Result<String, BrokerError> {
    let mut audited = Audited::new(state, caller.peer, "metrics");
    let result = (|| {
        admit_admin(state, caller, &mut audited)?;
        let mut text = state
            .metrics
            .render(state.cache.len(), locked_bytes(), mapped_bytes());
        // vault-lease: counters and seconds left per profile.
        crate::source::vault::lease_metrics::render(&state.runtime().sources, &mut text);
        let sources = &state.runtime().sources;
        let counted = sources
            .iter()
            .filter_map(|(name, entry)| Some((name.as_str(), entry.source.call_counts()?)));
        crate::source::aws::calls::render(counted, &mut text);
        Ok(text)
    })();
    audited.finish(result)
}

#[cfg(test)]
mod tests {
    use super::reply::{etag, render};
    use super::*;
    use crate::audit::Audit;
    use crate::audit::AuditEvent;
    use crate::cache::Cache;
    use crate::cache::Refresh;
    use crate::metrics::Metrics;
    use crate::name::SecretName;
    use crate::peer::PeerIdentity;
    use crate::secure_mem::SecretBytes;
    use crate::source::Sources;
    use crate::source::{Secret, SourceError};
    use crate::source::{Selector, Source};
    use crate::testutil::FakeSource;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    const RULES: &str = r#"
[[allow]]
peer = { uid = 1000 }
secrets = ["fake/*"]

[[allow]]
peer = { uid = 2000 }
secrets = ["*"]

[[allow]]
peer = { unit = "web.service" }
secrets = ["fake/ok/*"]

[[allow]]
peer = { uid = 0 }
admin = true

[credentials]
db = "fake/ok/db"
gone = "fake/missing"
"#;

    struct Fixture {
        state: AppState,
        fake: Arc<SourceEntry>,
        audit: crate::audit::Captured,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let text = format!(
                "[server]\nsocket = \"/tmp/unused.sock\"\n\n[sources.fake]\ntype = \"file\"\ndir = \"{}\"\n\n[cache]\nlock_memory = \"best-effort\"\n{RULES}",
                dir.path().display()
            );
            let config = crate::config::parse(&text, &dir.path().join("config.toml")).unwrap();
            let fake = Arc::new(SourceEntry {
                source: Source::Fake(FakeSource::default()),
                ttl: std::time::Duration::from_secs(60),
                fetch_timeout: std::time::Duration::from_secs(5),
                limit: crate::source::FetchLimit::new(std::num::NonZeroUsize::new(8).unwrap()),
                shares: crate::source::share::UidShares::new(
                    std::num::NonZeroUsize::new(4).unwrap(),
                ),
            });
            let sources = Sources::from([("fake".to_owned(), fake.clone())]);
            let metrics = Arc::new(Metrics::default());
            let (audit, rx) = Audit::capture(metrics.clone());
            let cache = Cache::new(config.cache, metrics.clone());
            let state = AppState::new(Runtime::new(config, sources), cache, metrics, audit);
            Fixture {
                state,
                fake,
                audit: rx,
                _dir: dir,
            }
        }

        fn fetches(&self) -> usize {
            match &self.fake.source {
                Source::Fake(fake) => fake.fetches.load(Ordering::Relaxed),
                _ => unreachable!(),
            }
        }

        /// The audit lines written so far.
        fn lines(&mut self) -> Vec<AuditEvent> {
            let mut out = Vec::new();
            while let Some(event) = self.audit.try_recv() {
                out.push(event);
            }
            out
        }
    }

    /// An admitted flush whose body never comes still leaves exactly one audit line.
    #[test]
    fn an_abandoned_flush_is_audited_once() {
        let mut fx = Fixture::new();
        let admin = peer(0, None);
        let caller = Caller {
            peer: &admin,
            sender_is_connector: true,
        };
        let ticket = admit_flush(&fx.state, caller).unwrap();
        assert!(
            fx.audit.try_recv().is_none(),
            "no line before the flush ends"
        );
        drop(ticket);
        let lines = fx.lines();
        assert_eq!(lines.len(), 1);
        assert_eq!(
            (lines[0].action, lines[0].decision, lines[0].status),
            ("flush", "allow", 400)
        );
    }

    fn peer(uid: u32, unit: Option<&str>) -> Arc<PeerIdentity> {
        Arc::new(PeerIdentity {
            uid,
            gid: uid,
            pid: Some(4242),
            unit: unit.map(str::to_owned),
            ..PeerIdentity::default()
        })
    }

    fn read_request(name: &str, selector: Selector, field: Option<&str>) -> ReadRequest {
        let (source, id) = name.split_once('/').unwrap();
        ReadRequest {
            secret: SecretRequest {
                name: SecretName::new(source, id).unwrap(),
                selector,
            },
            field: field.map(str::to_owned),
            ..ReadRequest::plain(SecretName::new(source, id).unwrap())
        }
    }

    /// Each row: who reads what, what the broker answers, what the audit line says, and whether
    /// the source was asked.
    #[tokio::test]
    async fn read_table() {
        let numbered = Selector {
            version: Some(3),
            ..Selector::default()
        };
        type Row = (
            u32,
            bool,
            &'static str,
            Selector,
            Option<&'static str>,
            Result<&'static [u8], BrokerError>,
            &'static str,
            Option<&'static str>,
            bool,
        );
        let rows: Vec<Row> = vec![
            // uid, sender ok, name, selector, field, answer, decision, reason, fetched
            (
                1000,
                true,
                "fake/ok/a",
                Selector::default(),
                None,
                Ok(b"ok/a"),
                "allow",
                None,
                true,
            ),
            (
                1000,
                true,
                "fake/json/a",
                Selector::default(),
                Some("user"),
                Ok(b"app"),
                "allow",
                None,
                true,
            ),
            (
                1000,
                true,
                "fake/ok/b",
                Selector::default(),
                Some("user"),
                Err(BrokerError::NotJson),
                "allow",
                None,
                true,
            ),
            (
                1000,
                true,
                "fake/json/b",
                Selector::default(),
                Some("nope"),
                Err(BrokerError::FieldNotFound),
                "allow",
                None,
                true,
            ),
            (
                1000,
                true,
                "fake/missing",
                Selector::default(),
                None,
                Err(BrokerError::NotFound),
                "allow",
                None,
                true,
            ),
            (
                1000,
                true,
                "fake/down/a",
                Selector::default(),
                None,
                Err(BrokerError::UpstreamUnavailable),
                "allow",
                None,
                true,
            ),
            // Validation happens before the cache: no fetch, no slot.
            (
                1000,
                true,
                "fake/bad-id",
                Selector::default(),
                None,
                Err(BrokerError::InvalidId("fake ids do not start with \"bad\"")),
                "allow",
                None,
                false,
            ),
            (
                1000,
                true,
                "fake/ok/c",
                numbered.clone(),
                None,
                Err(BrokerError::BadSelector(
                    "the fake source has no numbered versions",
                )),
                "allow",
                None,
                false,
            ),
            // A denied caller learns nothing: not whether the source or the id exists.
            (
                3000,
                true,
                "fake/ok/a",
                Selector::default(),
                None,
                Err(BrokerError::Forbidden),
                "deny",
                None,
                false,
            ),
            (
                1000,
                true,
                "other/ok/a",
                Selector::default(),
                None,
                Err(BrokerError::Forbidden),
                "deny",
                None,
                false,
            ),
            (
                3000,
                true,
                "fake/bad-id",
                Selector::default(),
                None,
                Err(BrokerError::Forbidden),
                "deny",
                None,
                false,
            ),
            // An allowed caller of a source that does not exist.
            (
                2000,
                true,
                "other/ok/a",
                Selector::default(),
                None,
                Err(BrokerError::NotFound),
                "allow",
                None,
                false,
            ),
            // Bytes from another process: refused before anything else.
            (
                1000,
                false,
                "fake/ok/a",
                Selector::default(),
                None,
                Err(BrokerError::PeerChanged),
                "deny",
                Some("peer_changed"),
                false,
            ),
        ];
        for (uid, sender_ok, name, selector, field, want, decision, reason, fetched) in rows {
            let mut fx = Fixture::new();
            let peer = peer(uid, None);
            let caller = Caller {
                peer: &peer,
                sender_is_connector: sender_ok,
            };
            let got = read(&fx.state, caller, &read_request(name, selector, field)).await;
            let what = format!("uid {uid} {name} {field:?}");
            match (&got, &want) {
                (Ok(reply), Ok(body)) => assert_eq!(&reply.body[..], *body, "{what}"),
                (Err(got), Err(want)) => assert_eq!(got, want, "{what}"),
                _ => panic!("{what}: got {got:?}, want {want:?}"),
            }
            assert_eq!(fx.fetches() > 0, fetched, "{what}: fetched");
            let lines = fx.lines();
            assert_eq!(lines.len(), 1, "{what}: one audit line per decision");
            let line = &lines[0];
            assert_eq!(line.action, "read", "{what}");
            assert_eq!(line.secret.as_deref(), Some(name), "{what}");
            assert_eq!(line.decision, decision, "{what}");
            assert_eq!(line.reason, reason, "{what}");
            let status = want.as_ref().map_or_else(BrokerError::status, |_| 200);
            assert_eq!(line.status, status, "{what}");
            if !fetched {
                assert_eq!(fx.state.cache.len(), 0, "{what}: no cache slot");
            }
        }
    }

    #[tokio::test]
    async fn second_read_is_a_cache_hit_and_shutdown_refuses() {
        let mut fx = Fixture::new();
        let peer = peer(1000, None);
        let caller = Caller {
            peer: &peer,
            sender_is_connector: true,
        };
        for _ in 0..2 {
            let reply = read(
                &fx.state,
                caller,
                &read_request("fake/ok/a", Selector::default(), None),
            )
            .await
            .unwrap();
            assert_eq!(reply.kind, ReplyKind::Text);
        }
        assert_eq!(fx.fetches(), 1);
        let caches: Vec<_> = fx.lines().iter().map(|l| l.cache).collect();
        assert_eq!(caches, vec![Some("miss"), Some("hit")]);

        fx.state.begin_shutdown();
        let got = read(
            &fx.state,
            caller,
            &read_request("fake/ok/a", Selector::default(), None),
        )
        .await;
        assert_eq!(got.unwrap_err(), BrokerError::ShuttingDown);
        assert_eq!(fx.lines()[0].status, 503);
    }

    #[tokio::test(start_paused = true)]
    async fn etag_conditional_wait_and_refresh_are_one_audit_line_each() {
        let mut fx = Fixture::new();
        let peer = peer(1000, None);
        let caller = Caller {
            peer: &peer,
            sender_is_connector: true,
        };
        let plain = || read_request("fake/ok/a", Selector::default(), None);
        let first = read(&fx.state, caller, &plain()).await.unwrap();
        let etag = String::from_utf8(first.etag.clone().unwrap().to_vec()).unwrap();
        assert_eq!(etag.len(), 34);
        // Same bytes, same tag; the tag held: 304 at once without wait, at the deadline with it.
        let held = ReadRequest {
            if_none_match: Some(etag.clone()),
            ..plain()
        };
        let reply = read(&fx.state, caller, &held.clone()).await.unwrap();
        assert!(reply.not_modified && reply.body.is_empty());
        let started = tokio::time::Instant::now();
        let waiting = ReadRequest {
            wait: Some(Duration::from_secs(5)),
            ..held
        };
        let reply = read(&fx.state, caller, &waiting.clone()).await.unwrap();
        assert!(reply.not_modified);
        assert!(started.elapsed() >= Duration::from_secs(5));
        // Another tag: the value at once.
        let other = ReadRequest {
            if_none_match: Some("\"0000\"".to_owned()),
            ..waiting
        };
        let reply = read(&fx.state, caller, &other).await.unwrap();
        assert_eq!(
            (&reply.body[..], reply.etag.as_deref()),
            (&b"ok/a"[..], Some(etag.as_bytes()))
        );
        // A forced re-fetch, then a throttled one.
        let refresh = ReadRequest {
            refresh: true,
            ..plain()
        };
        let fetches = fx.fetches();
        let reply = read(&fx.state, caller, &refresh.clone()).await.unwrap();
        assert_eq!(reply.refresh, Some(Refresh::Done));
        let reply = read(&fx.state, caller, &refresh).await.unwrap();
        assert_eq!(reply.refresh, Some(Refresh::Throttled));
        assert_eq!(fx.fetches(), fetches + 1);
        let lines: Vec<_> = fx.lines().iter().map(|l| (l.action, l.status)).collect();
        assert_eq!(
            lines,
            vec![
                ("read", 200),
                ("read", 304),
                ("read", 304),
                ("read", 200),
                ("refresh", 200),
                ("refresh", 200)
            ]
        );
    }

    /// A client that hangs up at this instant (and stays gone).
    struct HangsUpAt(tokio::time::Instant);

    impl Hangup for HangsUpAt {
        fn hung_up(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(tokio::time::sleep_until(self.0))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_whose_client_hangs_up_ends_then_audited_client_gone() {
        let mut fx = Fixture::new();
        let peer = peer(1000, None);
        let caller = Caller {
            peer: &peer,
            sender_is_connector: true,
        };
        let plain = read_request("fake/ok/a", Selector::default(), None);
        let first = read(&fx.state, caller, &plain).await.unwrap();
        let etag = String::from_utf8(first.etag.clone().unwrap().to_vec()).unwrap();
        let waiting = ReadRequest {
            if_none_match: Some(etag),
            wait: Some(Duration::from_secs(300)),
            ..plain
        };
        let started = tokio::time::Instant::now();
        let got = read_watched(
            &fx.state,
            caller,
            &waiting,
            &HangsUpAt(started + Duration::from_secs(2)),
        )
        .await;
        assert_eq!(got.unwrap_err(), BrokerError::ClientGone);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        let lines = fx.lines();
        let line = &lines[1];
        assert_eq!(
            (line.status, line.reason, line.decision),
            (499, Some("client_gone"), "allow")
        );
        assert_eq!(
            fx.state
                .metrics
                .waits_abandoned
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn credential_table() {
        // uid, unit, unit claimed, credential id, answer, audit reason
        type Row<'a> = (
            u32,
            Option<&'a str>,
            &'a str,
            &'a str,
            Result<&'a [u8], BrokerError>,
            Option<&'a str>,
        );
        let rows: &[Row<'_>] = &[
            (
                0,
                Some("web.service"),
                "web.service",
                "db",
                Ok(b"ok/db"),
                None,
            ),
            (
                1000,
                Some("web.service"),
                "web.service",
                "db",
                Err(BrokerError::NotRoot),
                Some("not_root"),
            ),
            (
                0,
                Some("other.service"),
                "web.service",
                "db",
                Err(BrokerError::UnitMismatch),
                Some("unit_mismatch"),
            ),
            (
                0,
                None,
                "web.service",
                "db",
                Err(BrokerError::UnitMismatch),
                Some("unit_mismatch"),
            ),
            (
                0,
                Some("web.service"),
                "web.service",
                "nope",
                Err(BrokerError::NotFound),
                None,
            ),
            // Mapped, but no unit rule admits web.service for fake/missing.
            (
                0,
                Some("web.service"),
                "web.service",
                "gone",
                Err(BrokerError::Forbidden),
                None,
            ),
            // The uid-0 admin rule names no unit: it hands out no credentials.
            (
                0,
                Some("db.service"),
                "db.service",
                "db",
                Err(BrokerError::Forbidden),
                None,
            ),
        ];
        for (uid, unit, claimed, id, want, reason) in rows {
            let mut fx = Fixture::new();
            let peer = peer(*uid, *unit);
            let request = CredentialRequest {
                unit: (*claimed).to_owned(),
                id: (*id).to_owned(),
            };
            let got = credential(&fx.state, &peer, &request).await;
            let what = format!("uid {uid} in {unit:?} claiming {claimed} for {id}");
            match (&got, want) {
                (Ok(reply), Ok(body)) => assert_eq!(&reply.body[..], *body, "{what}"),
                (Err(got), Err(want)) => assert_eq!(got, want, "{what}"),
                _ => panic!("{what}: got {got:?}, want {want:?}"),
            }
            let lines = fx.lines();
            assert_eq!(lines.len(), 1, "{what}");
            assert_eq!(lines[0].action, "credential", "{what}");
            assert_eq!(lines[0].reason, *reason, "{what}");
            assert_eq!(lines[0].decision == "allow", want.is_ok(), "{what}");
        }
    }

    #[tokio::test]
    async fn admin_operations_table() {
        let mut fx = Fixture::new();
        let (admin, user) = (peer(0, None), peer(1000, None));
        fn as_caller(peer: &Arc<PeerIdentity>) -> Caller<'_> {
            Caller {
                peer,
                sender_is_connector: true,
            }
        }
        assert_eq!(
            flush(&fx.state, as_caller(&user), Ok(None)),
            Err(BrokerError::Forbidden)
        );
        // A bad pattern is reported only to an admin; a non-admin learns nothing of the body.
        assert_eq!(
            flush(&fx.state, as_caller(&user), Err("invalid pattern")),
            Err(BrokerError::Forbidden)
        );
        assert_eq!(
            flush(&fx.state, as_caller(&admin), Err("invalid pattern")),
            Err(BrokerError::BadFlush("invalid pattern"))
        );
        assert_eq!(flush(&fx.state, as_caller(&admin), Ok(None)), Ok(0));
        assert!(metrics(&fx.state, as_caller(&user)).is_err());
        assert!(
            metrics(&fx.state, as_caller(&admin))
                .unwrap()
                .contains("credagent_")
        );
        let decisions: Vec<_> = fx
            .lines()
            .iter()
            .map(|l| (l.action, l.decision, l.status))
            .collect();
        assert_eq!(
            decisions,
            vec![
                ("flush", "deny", 403),
                ("flush", "deny", 403),
                ("flush", "allow", 400),
                ("flush", "allow", 200),
                ("metrics", "deny", 403),
                ("metrics", "allow", 200),
            ]
        );
    }

    /// A source still starting answers `SourceStarting` (audited, 503) to an allowed caller and
    /// counts against readiness; once up it serves, and readiness, once reached, stays.
    #[tokio::test]
    async fn a_starting_source_answers_source_starting_until_up_and_readiness_latches() {
        let mut fx = Fixture::new();
        let config = fx.state.runtime().config.clone();
        let starting =
            Runtime::new(config.clone(), Sources::new()).with_starting(["fake".to_owned()].iter());
        let generation = starting.generation;
        fx.state.replace_runtime(starting);
        let peer = peer(1000, None);
        let caller = Caller {
            peer: &peer,
            sender_is_connector: true,
        };
        let plain = || read_request("fake/ok/a", Selector::default(), None);
        assert_eq!(
            read(&fx.state, caller, &plain()).await.unwrap_err(),
            BrokerError::SourceStarting
        );
        let name = SecretName::new("fake", "ok/a").unwrap();
        assert_eq!(
            prefetch(&fx.state, &name).await,
            Err(BrokerError::SourceStarting)
        );
        // A denied caller learns nothing, not even that the source is starting.
        let stranger = self::peer(3000, None);
        let denied = Caller {
            peer: &stranger,
            sender_is_connector: true,
        };
        assert_eq!(
            read(&fx.state, denied, &plain()).await.unwrap_err(),
            BrokerError::Forbidden
        );
        let report = ready(&fx.state, caller).unwrap();
        assert_eq!(
            (
                report.ready,
                report.sources_starting,
                report.prefetch_pending
            ),
            (false, 1, 0)
        );

        let fake = fx.fake.clone();
        assert!(fx.state.update_runtime(|current| {
            (current.generation == generation)
                .then(|| current.with_source_up("fake", vec![("fake".to_owned(), fake)]))
        }));
        // The prefetch fills the cache without an audit line; the read is a hit.
        prefetch(&fx.state, &name).await.unwrap();
        assert_eq!(fx.fetches(), 1);
        assert_eq!(
            read(&fx.state, caller, &plain()).await.unwrap().body,
            &b"ok/a"[..]
        );
        assert!(ready(&fx.state, caller).unwrap().ready);
        // Latched: a new generation with a starting source does not make it unready.
        fx.state.replace_runtime(
            Runtime::new(config, Sources::new()).with_starting(["fake".to_owned()].iter()),
        );
        assert!(ready(&fx.state, caller).unwrap().ready);
        let lines: Vec<_> = fx
            .lines()
            .iter()
            .map(|l| (l.decision, l.status, l.cache))
            .collect();
        assert_eq!(
            lines,
            vec![
                ("allow", 503, None),
                ("deny", 403, None),
                ("allow", 200, Some("hit"))
            ]
        );
    }

    /// The tag covers the served bytes: a re-fetch of the same value changes the JSON
    /// document's `fetched_at`, hence its tag, and leaves the raw value's tag alone.
    #[test]
    fn a_new_fetched_at_changes_the_json_etag_and_not_the_raw_one() {
        let name = SecretName::new("fake", "ok/a").unwrap();
        let fetched = |secs: u64| {
            let mut secret = Secret::new(
                SecretBytes::from_slice(b"same value").unwrap(),
                Some("v1".to_owned()),
            );
            secret.fetched_at = std::time::UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))
                .unwrap();
            Arc::new(secret)
        };
        let metrics = crate::metrics::Metrics::default();
        let holder = reply::Holder {
            uid: 0,
            metrics: &metrics,
        };
        let tag = |secs: u64, format: Format| {
            etag(
                &render(&name, fetched(secs), None, format, &holder)
                    .unwrap()
                    .body,
            )
        };
        assert_eq!(tag(1_000, Format::Raw), tag(2_000, Format::Raw));
        assert_ne!(tag(1_000, Format::Json), tag(2_000, Format::Json));
        assert_eq!(tag(1_000, Format::Json), tag(1_000, Format::Json));
    }

    #[test]
    fn source_errors_map_without_detail() {
        let err = SourceError::Denied {
            detail: "User arn:aws:iam::1:user/x is not authorized".into(),
        };
        let mapped = BrokerError::from(&err);
        assert_eq!(mapped, BrokerError::UpstreamDenied);
        assert!(!mapped.to_string().contains("arn:"));
        assert_eq!(
            BrokerError::from(&SourceError::NotFound),
            BrokerError::NotFound
        );
        assert_eq!(
            BrokerError::from(&SourceError::Timeout(std::time::Duration::from_secs(1))).status(),
            504
        );
    }
}
