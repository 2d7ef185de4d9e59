//! The systemd credentials socket's one request: a credential PID 1 loads for the unit it
//! starts, decided from the unit the kernel places the connector in, audited like a read.

use std::sync::Arc;

use super::audited::Audited;
use super::error::BrokerError;
use super::fetch::{Target, cached_fetch};
use super::lookup::{check_ciphertext_location, reloaded_since, validate};
use super::reply::{Reply, text_kind};
use super::request::CredentialRequest;
use crate::acl;
use crate::peer::PeerIdentity;
use crate::rate_limited;
use crate::source::{SecretRequest, Selector};
use crate::state::{AppState, Runtime};

/// Loads credential `request.id` for the unit PID 1 is starting.
///
/// SECURITY: anyone can bind an abstract address naming any unit; only uid 0 speaks for PID 1,
/// and PID 1 connects from a process already in the consuming unit's cgroup, so the unit the
/// kernel places the connector in must be the unit the address names. Only rules that name a
/// unit take part (`acl::decide_credential`).
pub async fn credential(
    state: &AppState,
    peer: &Arc<PeerIdentity>,
    request: &CredentialRequest,
) -> Result<Reply, BrokerError> {
    let mut audited = Audited::new(state, peer, "credential");
    audited.event.secret = Some(format!("credential:{}", request.id).into());
    // Decided again under the new config when a reload happened while it was fetched.
    let result = async {
        loop {
            let runtime = state.current_runtime();
            audited.event.decision = "deny";
            if let Some(reply) =
                credential_once(state, peer, request, &runtime, &mut audited).await?
            {
                return Ok(reply);
            }
        }
    }
    .await;
    audited.finish(result)
}

/// One decision and look-up of a credential under `runtime`; `None` when a reload happened
/// while it was fetched.
async fn credential_once(
    state: &AppState,
    peer: &Arc<PeerIdentity>,
    request: &CredentialRequest,
    runtime: &Runtime,
    audited: &mut Audited<'_>,
) -> Result<Option<Reply>, BrokerError> {
    let request_id = audited.request_id();
    if peer.uid != 0 {
        return Err(BrokerError::NotRoot);
    }
    if peer.unit.as_deref() != Some(request.unit.as_str()) {
        rate_limited!(info, %request_id, claimed = %request.unit, actual = ?peer.unit, "credentials socket: the connecting process is not in the unit its address names");
        return Err(BrokerError::UnitMismatch);
    }
    let name = runtime
        .config
        .credentials
        .get(&request.id)
        .cloned()
        .ok_or(BrokerError::NotFound)?;
    audited.event.secret = Some(name.joined());
    if state.shutting_down() {
        return Err(BrokerError::ShuttingDown);
    }
    if !acl::decide_credential(&runtime.rules, peer, name.source(), name.id()).allowed() {
        return Err(BrokerError::Forbidden);
    }
    audited.event.decision = "allow";
    let selector = Selector::default();
    let entry = validate(runtime, &name, &selector)?;
    if let Err(denied) = check_ciphertext_location(entry, &name, |location| {
        acl::decide_credential(&runtime.rules, peer, location.source(), location.id())
    }) {
        audited.event.decision = "deny";
        return Err(denied);
    }
    let secret_request = SecretRequest { name, selector };
    // aws-credentials: the connecting unit's own session.
    let secret_request = entry
        .source
        .scoped(&secret_request, peer)
        .unwrap_or(secret_request);
    let target = Target {
        state,
        request_id,
        uid: peer.uid,
        entry,
        generation: runtime.generation,
        request: &secret_request,
    };
    let (secret, served, _) = cached_fetch(&target, false).await;
    audited.event.cache = Some(served.as_str());
    if reloaded_since(state, runtime) {
        return Ok(None);
    }
    let secret = secret?;
    Ok(Some(Reply::new(
        secret.value.shared(),
        text_kind(secret.is_text()),
    )))
}
