//! The Vault (and OpenBao) sources: KV v2 reads (`kv`) and transit decryption (`transit`),
//! over one login session (`auth`) built from one config section (`config`).
//!
//! Nothing here caches or checks access; the HTTPS client is `crate::source::http`'s.

pub mod auth;
pub mod config;
pub mod kv;
// vault-lease: leased secrets (database credentials, certificates) over a Vault source's session.
mod kv_check;
pub mod lease;
pub mod lease_config;
pub mod lease_metrics;
mod lease_reply;
mod lease_slot;
mod renew;
pub mod transit;

pub use config::{RawVaultSource, VaultConfig};
pub use kv::{VaultSource, transit_name};
