//! The tokens of the container-credentials listener (`exec --aws`): issued over the Unix socket
//! to a caller the rules let read an aws-credentials profile, each bound to that caller's
//! identity (as the kernel gave it at connect time) and the profile, kept in locked memory,
//! looked up in constant time, and forgotten when they expire. Also the per-uid count of bad
//! tokens that turns a guesser away. Who may get a token, and what the listener answers, are
//! not decided here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

// tokio's clock, so tests can pause and advance it.
use tokio::time::Instant;

use crate::name::SecretName;
use crate::peer::PeerIdentity;
use crate::secure_mem::{MemError, SecretBuf, SecretBytes};

/// How long a token is valid; `exec --aws` renews it at half of this.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(900);
/// Tokens one uid may hold at once (each `exec --aws` holds one, two while renewing).
const MAX_PER_UID: usize = 64;
/// Bad tokens one uid may present in [`BAD_WINDOW`] before its requests are refused unread.
pub(crate) const MAX_BAD: u32 = 10;
/// The window of [`MAX_BAD`].
const BAD_WINDOW: Duration = Duration::from_secs(60);
/// Random bytes in a token (written as hex).
const TOKEN_BYTES: usize = 32;

/// Why a token was not issued.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The uid holds the most live tokens one uid may hold (64).
    #[error("this uid holds too many container-credentials tokens")]
    TooMany,
    /// Randomness or locked memory failed.
    #[error("cannot make a token: {0}")]
    Make(String),
}

impl From<MemError> for TokenError {
    fn from(err: MemError) -> Self {
        TokenError::Make(err.to_string())
    }
}

/// One issued token.
#[derive(Debug)]
struct Issued {
    token: SecretBytes,
    owner: Arc<PeerIdentity>,
    profile: SecretName,
    expires: Instant,
}

/// What a valid token stands for.
#[derive(Debug, Clone)]
pub(crate) struct Holder {
    /// The identity of the caller the token was issued to.
    pub owner: Arc<PeerIdentity>,
    /// The aws-credentials profile it reads.
    pub profile: SecretName,
}

/// Every live token, the listener's address, and the bad-token counts.
#[derive(Debug, Default)]
pub struct Tokens {
    listen: OnceLock<SocketAddr>,
    live: Mutex<Vec<Issued>>,
    bad: Mutex<HashMap<u32, (Instant, u32)>>,
}

impl Tokens {
    /// Records the address the listener is bound to (once, at start).
    pub(crate) fn set_listen(&self, addr: SocketAddr) {
        let _ = self.listen.set(addr);
    }

    /// The listener's address; `None` when it is off.
    pub(crate) fn listen(&self) -> Option<SocketAddr> {
        self.listen.get().copied()
    }

    /// A new token for `owner` to read `profile`, valid for [`TOKEN_TTL`].
    pub(crate) fn issue(
        &self,
        owner: &Arc<PeerIdentity>,
        profile: &SecretName,
    ) -> Result<SecretBytes, TokenError> {
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|issued| issued.expires > now);
        if live.iter().filter(|i| i.owner.uid == owner.uid).count() >= MAX_PER_UID {
            return Err(TokenError::TooMany);
        }
        let token = random_token()?;
        let copy = SecretBytes::from_slice(token.as_slice())?;
        live.push(Issued {
            token,
            owner: owner.clone(),
            profile: profile.clone(),
            expires: now + TOKEN_TTL,
        });
        Ok(copy)
    }

    /// What `presented` stands for, if it is a live token.
    pub(crate) fn find(&self, presented: &[u8]) -> Option<Holder> {
        let now = Instant::now();
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        // SECURITY: every live token is compared, each in constant time, so the time taken
        // tells nothing of how much of a guess matched, or which token.
        for issued in live.iter() {
            if constant_time_eq(issued.token.as_slice(), presented) && issued.expires > now {
                found = Some(Holder {
                    owner: issued.owner.clone(),
                    profile: issued.profile.clone(),
                });
            }
        }
        found
    }

    /// Counts a bad token from `uid`.
    pub(crate) fn count_bad(&self, uid: u32) {
        let now = Instant::now();
        let mut bad = self.bad.lock().unwrap_or_else(|p| p.into_inner());
        // Forget old windows so the map holds only uids that are guessing now.
        bad.retain(|_, (start, _)| now.duration_since(*start) < BAD_WINDOW);
        let entry = bad.entry(uid).or_insert((now, 0));
        entry.1 = entry.1.saturating_add(1);
    }

    /// Whether `uid` presented [`MAX_BAD`] bad tokens in the current window.
    pub(crate) fn throttled(&self, uid: u32) -> bool {
        let now = Instant::now();
        let bad = self.bad.lock().unwrap_or_else(|p| p.into_inner());
        bad.get(&uid)
            .is_some_and(|(start, n)| now.duration_since(*start) < BAD_WINDOW && *n >= MAX_BAD)
    }
}

/// [`TOKEN_BYTES`] random bytes as lower-case hex, in locked memory.
fn random_token() -> Result<SecretBytes, TokenError> {
    let mut raw = SecretBytes::zeroed(TOKEN_BYTES)?;
    getrandom::fill(raw.as_mut_slice()).map_err(|e| TokenError::Make(e.to_string()))?;
    let mut hex = SecretBuf::with_capacity(TOKEN_BYTES * 2)?;
    for byte in raw.as_slice() {
        let pair = [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]];
        hex.extend_from_slice(&pair)?;
    }
    Ok(hex.finish()?)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Equal bytes, in time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: u32) -> Arc<PeerIdentity> {
        Arc::new(PeerIdentity {
            uid,
            ..PeerIdentity::default()
        })
    }

    #[test]
    fn an_issued_token_is_found_and_a_changed_one_is_not() {
        let tokens = Tokens::default();
        let name = SecretName::parse("aws/reader").unwrap();
        let token = tokens.issue(&owner(65534), &name).unwrap();
        assert_eq!(token.len(), 64);
        let holder = tokens.find(token.as_slice()).unwrap();
        assert_eq!(holder.owner.uid, 65534);
        assert_eq!(holder.profile, name);
        let mut other = token.as_slice().to_vec();
        other[0] ^= 1;
        assert!(tokens.find(&other).is_none());
        assert!(tokens.find(&token.as_slice()[..63]).is_none());
        assert!(tokens.find(b"").is_none());
        let second = tokens.issue(&owner(65534), &name).unwrap();
        assert_ne!(second.as_slice(), token.as_slice());
    }

    #[test]
    fn a_uid_holds_a_bounded_number_of_tokens() {
        let tokens = Tokens::default();
        let name = SecretName::parse("aws/reader").unwrap();
        for _ in 0..MAX_PER_UID {
            tokens.issue(&owner(7), &name).unwrap();
        }
        assert!(matches!(
            tokens.issue(&owner(7), &name),
            Err(TokenError::TooMany)
        ));
        assert!(tokens.issue(&owner(8), &name).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_expires_after_its_lifetime_and_a_throttle_after_its_window() {
        let tokens = Tokens::default();
        let name = SecretName::parse("aws/reader").unwrap();
        let token = tokens.issue(&owner(7), &name).unwrap();
        tokio::time::advance(TOKEN_TTL - Duration::from_secs(1)).await;
        assert!(tokens.find(token.as_slice()).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(tokens.find(token.as_slice()).is_none());
        // An expired token is dropped at the next issue and no longer counts.
        let fresh = tokens.issue(&owner(7), &name).unwrap();
        assert_eq!(tokens.live.lock().unwrap().len(), 1);
        assert!(tokens.find(fresh.as_slice()).is_some());
        for _ in 0..MAX_BAD {
            tokens.count_bad(7);
        }
        assert!(tokens.throttled(7));
        tokio::time::advance(BAD_WINDOW).await;
        assert!(!tokens.throttled(7));
        tokens.count_bad(7);
        assert!(!tokens.throttled(7));
    }

    #[test]
    fn bad_tokens_throttle_only_their_uid() {
        let tokens = Tokens::default();
        for _ in 0..MAX_BAD {
            assert!(!tokens.throttled(7));
            tokens.count_bad(7);
        }
        assert!(tokens.throttled(7));
        assert!(!tokens.throttled(8));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
