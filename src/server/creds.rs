//! The systemd credentials socket: `LoadCredential=ID:/run/credagent/creds.sock` in any unit
//! makes PID 1 connect here from the abstract address `\0<random>/unit/<unit>/<ID>` and read to
//! EOF; the agent writes the secret and closes, and systemd puts it in `$CREDENTIALS_DIRECTORY`.
//!
//! The protocol has no error reply: an unknown id, a denied unit, a peer that is not uid 0 or not
//! in the unit its address names, or a failed fetch all close the connection with nothing
//! written (the unit then fails to start).
//! This module owns the address parser and the write; the broker (`broker::credential`) checks
//! the peer, decides, fetches and audits. It binds no sockets beyond delegating to
//! `server::bind`.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{UnixAddr, getpeername};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{Semaphore, watch};

use super::{Listener, ServerError, accept_until_shutdown};
use crate::broker::{self, CredentialRequest};
use crate::config::{ServerConfig, is_credential_id};
use crate::peer::{self, PeerIdentity};
use crate::rate_limited;
use crate::state::AppState;

/// PID 1 loads credentials one unit at a time; a handful of concurrent connections is plenty.
const MAX_CONNECTIONS: usize = 64;
/// A whole exchange (lookup and write) must finish within this time.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a peer address is not a credential request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The peer did not bind an abstract address.
    #[error("peer address is not abstract")]
    NotAbstract,
    /// The address is not `<random>/unit/<unit>/<id>`.
    #[error("peer address is not <random>/unit/<unit>/<id>")]
    Malformed,
}

/// Parses the abstract address (without its leading NUL) PID 1 binds before connecting:
/// `<random>/unit/<unit>/<id>`.
pub fn parse_address(name: &[u8]) -> Result<CredentialRequest, AddressError> {
    let text = std::str::from_utf8(name).map_err(|_| AddressError::Malformed)?;
    let mut parts = text.split('/');
    let (Some(random), Some("unit"), Some(unit), Some(id), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(AddressError::Malformed);
    };
    // A unit name is `name.type` in printable ASCII; the id follows systemd's credential rules.
    let unit_ok = !unit.is_empty()
        && unit.len() <= 255
        && unit.contains('.')
        && unit.bytes().all(|b| b.is_ascii_graphic());
    if random.is_empty() || !unit_ok || !is_credential_id(id) {
        return Err(AddressError::Malformed);
    }
    Ok(CredentialRequest {
        unit: unit.to_owned(),
        id: id.to_owned(),
    })
}

/// Binds the credentials socket itself (no socket activation): mode 0600, since only root
/// (PID 1) ever needs to connect.
pub fn bind(server: &ServerConfig, path: &std::path::Path) -> Result<Listener, ServerError> {
    let config = ServerConfig {
        socket: path.to_path_buf(),
        socket_mode: 0o600,
        socket_group: None,
        ..server.clone()
    };
    super::bind(&config)
}

/// Serves credential requests until `shutdown` turns true; removes the socket file it created.
pub async fn serve(listener: Listener, state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    accept_until_shutdown(
        listener,
        &limit,
        &mut shutdown,
        "credentials socket",
        move |stream| {
            let accepted = peer::AcceptTime::now();
            let state = state.clone();
            async move {
                if tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, accepted, &state))
                    .await
                    .is_err()
                {
                    rate_limited!(warn, "credentials socket: exchange timed out");
                }
            }
        },
    )
    .await;
}

/// One connection: parse the address, ask the broker, write the value or nothing, close (by
/// dropping the stream). The broker decides and audits.
async fn exchange(mut stream: UnixStream, accepted: peer::AcceptTime, state: &AppState) {
    // PID 1's executable says nothing about the unit: no exe rule is checked here.
    let peer = match peer::identify(&stream, accepted, &[]) {
        Ok(peer) => Arc::new(PeerIdentity {
            exe: None,
            exe_matches: Vec::new(),
            ..peer
        }),
        Err(err) => {
            tracing::warn!(error = %err, "credentials socket: no peer credentials");
            return;
        }
    };
    let address = getpeername::<UnixAddr>(stream.as_raw_fd())
        .ok()
        .and_then(|addr| addr.as_abstract().map(<[u8]>::to_vec))
        .ok_or(AddressError::NotAbstract)
        .and_then(|name| parse_address(&name));
    let request = match address {
        Ok(request) => request,
        Err(err) => {
            rate_limited!(info, uid = peer.uid, pid = ?peer.pid, error = %err, "credentials socket: not a credential request");
            return;
        }
    };
    if let Ok(reply) = broker::credential(state, &peer, &request).await {
        // A failed write is the reader's loss: the broker already audited the decision.
        let _ = stream.write_all(&reply.body).await;
        let _ = stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_table() {
        let ok = |unit: &str, id: &str| {
            Ok(CredentialRequest {
                unit: unit.to_owned(),
                id: id.to_owned(),
            })
        };
        let cases: &[(&[u8], Result<CredentialRequest, AddressError>)] = &[
            (
                b"9a1f03c2b7d4e5f6/unit/web.service/db-password",
                ok("web.service", "db-password"),
            ),
            (b"x/unit/a@1.service/tls.key", ok("a@1.service", "tls.key")),
            (b"", Err(AddressError::Malformed)),
            (b"/unit/web.service/x", Err(AddressError::Malformed)),
            (b"r/units/web.service/x", Err(AddressError::Malformed)),
            (b"r/unit/web.service", Err(AddressError::Malformed)),
            (b"r/unit/web.service/", Err(AddressError::Malformed)),
            (b"r/unit//x", Err(AddressError::Malformed)),
            (b"r/unit/web/x", Err(AddressError::Malformed)),
            (b"r/unit/web.service/a/b", Err(AddressError::Malformed)),
            (b"r/unit/web.service/..", Err(AddressError::Malformed)),
            (b"r/unit/web service/x", Err(AddressError::Malformed)),
            (b"r/unit/web.service/x\n", Err(AddressError::Malformed)),
            (b"r/unit/web.service/\xff", Err(AddressError::Malformed)),
            (b"\0\0\0", Err(AddressError::Malformed)),
            (b"////", Err(AddressError::Malformed)),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_address(input), want, "{:?}", input.escape_ascii());
        }
    }

    #[test]
    fn parser_never_panics_on_arbitrary_bytes() {
        // A deterministic sweep of short byte strings built from the interesting alphabet.
        let alphabet: &[u8] = b"/u.n\0\xffit";
        let mut input = Vec::new();
        for n in 0..6u32 {
            let count = alphabet.len().pow(n);
            for mut k in 0..count {
                input.clear();
                for _ in 0..n {
                    input.push(alphabet[k % alphabet.len()]);
                    k /= alphabet.len();
                }
                let _ = parse_address(&input);
            }
        }
        let long = [b'a'; 4096];
        assert!(parse_address(&long).is_err());
    }
}
