//! credagent: a per-host credential agent.
//!
//! # Architecture
//! ```text
//!  local process ──HTTP/1.1 over Unix socket──▶ server (accept loop, connection cap, drain)
//!  systemd LoadCredential= ──▶ server::creds      │ peer: SO_PEERCRED + pidfd-pinned /proc
//!                                    │            ▼
//!                                    │   route ─▶ handler (HTTP adapter)
//!                                    ▼            ▼
//!                                  broker: check the writer, acl::decide (pure, default deny),
//!                                          validate, cached fetch, render, one audit line
//!                                                 │                        (never a value)
//!                                                 ▼
//!                                  cache (mlocked SecretBytes, TTL, single-flight,
//!                                         refresh-ahead, stale-if-error, LRU)
//!                                                 │ miss / refresh
//!                                                 ▼
//!                                  source::Source ─▶ file, env, command, aws/, vault/, oauth2/
//!                                                   ◀── control file / flush API
//! ```
//! `run` wires these together; `main` only parses the command line and maps errors to exit
//! codes. `config` validates the file (each `[sources.NAME]` through `source::config`), and
//! `source::build` builds the sources from it. Beside the server, `startup` retries sources with
//! `startup_check = "retry"` and fetches `[prefetch]` secrets through the broker, and
//! `readiness` keeps what `/v1/ready` reports.
//! Leased secrets (`vault-lease`) are renewed and replaced by their source's own tasks; at
//! SIGTERM, after the drain, `run` has the sources revoke them (bounded by
//! `shutdown_timeout_secs`), and a reload retires the replaced sources' leases.
//! With `server.aws_container_listen`, a loopback TCP listener (`server::aws_container`) serves
//! aws-credentials profiles to the AWS SDKs' container provider (`exec --aws`): only a token the
//! Unix socket issued, presented from a socket the kernel says is the token's uid's
//! (`peer_tcp`), read through the broker as the token's caller.
//!
//! # Threat model
//! - **Local callers are untrusted.** Every request is checked against `[[allow]]` rules using
//!   identity from the kernel (uid/gid/pid at connect time; exe — a file, by device and inode —
//!   and systemd units read from a pidfd-pinned process, so a recycled pid cannot borrow another
//!   program's identity), and every byte of a request must have been written by the process that
//!   connected (`server::sender`), so a socket handed to another process carries no identity.
//!   Pid-derived attributes count only for a peer in the agent's own pid namespace (inside one
//!   of its own, a process may send credentials naming another of its pids).
//! - **Access holds over time.** Every answer is decided by the config in force when it is sent:
//!   a reload installs the new runtime and then empties the cache; a read that fetched or waited
//!   across it is admitted again (`revoked` when its rule is gone), and a fetch through an old
//!   source is never cached (`broker`, `cache`).
//! - **Nothing of the agent's leaks to a child.** Sockets passed by systemd are close-on-exec,
//!   and every command the agent or its clients start gets fds 0, 1 and 2 only; the socket file
//!   is never reachable with a wider mode than configured.
//!   Nothing a caller sends is trusted: names are validated before any source is asked, the file source
//!   cannot leave its directory, bodies and headers are size-capped, log lines a caller can
//!   trigger are rate-limited.
//! - **Secrets never reach disk.** Values live only in `secure_mem::SecretBytes`: mlocked (no
//!   swap), `MADV_DONTDUMP`, zeroized on drop; the process is not dumpable and has
//!   `RLIMIT_CORE=0`. Responses are written straight from that memory.
//! - **Secrets never reach logs.** Error bodies carry fixed messages; source errors carry no
//!   values; audit lines name secrets, never their contents; `Debug` of secret types prints only
//!   a length.
//! - **Out of scope:** root on the host (it can read process memory), and a caller that is
//!   allowed a secret (it can do what it likes with it).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod acl;
pub(crate) mod audit;
pub(crate) mod audit_limit;
pub(crate) mod backoff;
pub mod broker;
pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub(crate) mod control;
pub(crate) mod journald;
pub(crate) mod jsonval;
pub mod logging;
pub(crate) mod metrics;
pub mod name;
pub mod output;
pub mod peer;
pub mod peer_tcp;
#[cfg(test)]
mod properties;
pub mod ratelimit;
pub(crate) mod readiness;
pub(crate) mod secure_budget;
pub mod secure_mem;
pub mod server;
pub(crate) mod source;
pub(crate) mod startup;
pub(crate) mod state;
pub(crate) mod systemd;
pub(crate) mod template;
#[cfg(test)]
pub mod testutil;
pub mod timefmt;

use std::future::Future;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::cache::Cache;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::state::{AppState, Runtime};

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Secure memory could not be set up (e.g. mlock refused with `lock_memory = "required"`).
    #[error(transparent)]
    Memory(#[from] secure_mem::MemError),
    /// The socket could not be set up.
    #[error(transparent)]
    Server(#[from] server::ServerError),
    /// A source could not be constructed (e.g. its credentials were refused).
    #[error(transparent)]
    Source(#[from] source::build::BuildError),
    /// The audit sink could not be opened.
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
}

/// Runs the agent on `config` until `shutdown` resolves, then drains and returns.
///
/// Start-up order: harden memory, install the reload (SIGHUP) handler, open the audit sink, build sources (those with
/// `startup_check = "retry"` that fail are retried in the background), bind the socket (or take
/// it from systemd), set its owner and mode, start the control watcher, start the prefetches,
/// tell systemd READY, serve.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    secure_mem::set_budget(config.cache.max_locked_bytes);
    secure_mem::set_render_reserve(config.cache.render_reserve());
    broker::held::SHARES.set_limit(config.cache.max_locked_bytes_per_uid);
    secure_mem::init(config.cache.lock_memory)?;
    // Before anything is bound or spawned: a failure here leaves no socket file behind.
    let mut hangup = signal(SignalKind::hangup()).map_err(RunError::Signal)?;
    let metrics = Arc::new(Metrics::default());
    let audit = audit::Audit::spawn(&config.audit, metrics.clone()).await?;
    let idle = server::idle::IdleWatch::start().map_err(server::ServerError::IdleThread)?;
    let built = source::build::build_all(&config.sources).await?;
    let cache = Cache::new(config.cache, metrics.clone());
    cache.reclaim_for_budget();
    let (inherited, inherited_creds) = systemd::split_listeners(systemd::take_listeners());
    let listener = match inherited {
        Some(listener) => {
            tracing::info!("using the agent socket passed by systemd");
            server::Listener::inherited(listener, &config.server.socket)?
        }
        None => server::bind(&config.server)?,
    };
    let creds_listener = match (inherited_creds, &config.server.creds_socket) {
        (Some(listener), path) => {
            tracing::info!("using the credentials socket passed by systemd");
            let path = path.clone().unwrap_or_default();
            Some(server::Listener::inherited(listener, &path)?)
        }
        (None, Some(path)) => Some(server::creds::bind(&config.server, path)?),
        (None, None) => None,
    };
    // issue 29: bound before READY, so a taken port fails the start.
    let aws_container = config
        .server
        .aws_container_listen
        .map(server::aws_container::bind)
        .transpose()?;
    let server_config = config.server.clone();
    let control_file = config.control.clone();
    let runtime = Runtime::new(config, built.sources).with_starting(built.starting.keys());
    let generation = runtime.generation;
    let state = Arc::new(AppState::new(runtime, cache, metrics, audit));
    if let Some(path) = control_file {
        control::spawn_watcher(path, state.clone());
    }
    startup::spawn_source_retries(&state, generation, built.starting, &built.others);
    startup::spawn_prefetch(&state, generation, &state.runtime().config.prefetch);
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(server::serve(
        listener,
        state.clone(),
        server_config.clone(),
        idle,
        stop_rx.clone(),
    ));
    let creds_server = creds_listener.map(|listener| {
        tokio::spawn(server::creds::serve(
            listener,
            state.clone(),
            stop_rx.clone(),
        ))
    });
    let aws_container_server = aws_container.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            state.aws_tokens.set_listen(addr);
        }
        tokio::spawn(server::aws_container::serve(
            listener,
            state.clone(),
            stop_rx.clone(),
        ))
    });
    tracing::info!(socket = %server_config.socket.display(), "credagent ready");
    systemd::notify("READY=1");
    systemd::spawn_watchdog();

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = hangup.recv() => reload(&state).await,
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    systemd::notify("STOPPING=1");
    state.begin_shutdown();
    let _ = stop_tx.send(true);
    if let Err(err) = server.await {
        tracing::error!(error = %err, "server task failed");
    }
    if let Some(creds_server) = creds_server
        && let Err(err) = creds_server.await
    {
        tracing::error!(error = %err, "credentials server task failed");
    }
    if let Some(task) = aws_container_server
        && let Err(err) = task.await
    {
        tracing::error!(error = %err, "container-credentials server task failed");
    }
    // vault-lease: revoke the agent's leases (revoke_on_shutdown), bounded like the drain.
    source::shutdown_leases(&state.runtime().sources, server_config.shutdown_timeout).await;
    // Every decision made before the stop reaches the audit sink before the process exits.
    state.audit.flush(std::time::Duration::from_secs(2)).await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: re-read the config; a bad config is refused and the running one kept. Sources with
/// `startup_check = "retry"` that fail their check are retried as at start, and `[prefetch]`
/// warms the flushed cache again.
async fn reload(state: &Arc<AppState>) {
    systemd::notify_reloading();
    let current = state.runtime();
    let loaded = if current.config.path == std::path::Path::new(config::DEMO_PATH) {
        config::demo()
    } else {
        config::load(&current.config.path)
    };
    let outcome = match loaded {
        Err(err) => Err(err.to_string()),
        Ok(new) => match source::build::build_all(&new.sources).await {
            Err(err) => Err(err.to_string()),
            Ok(built) => {
                source::build::carry_over(&current.sources, &built.sources);
                if new.server != current.config.server {
                    tracing::warn!("[server] changes take effect at the next restart");
                }
                if new.control != current.config.control || new.audit != current.config.audit {
                    tracing::warn!("[control] and [audit] changes take effect at the next restart");
                }
                secure_mem::set_policy(new.cache.lock_memory);
                secure_mem::set_budget(new.cache.max_locked_bytes);
                secure_mem::set_render_reserve(new.cache.render_reserve());
                broker::held::SHARES.set_limit(new.cache.max_locked_bytes_per_uid);
                state.cache.set_settings(new.cache);
                let runtime = Runtime::new(new, built.sources).with_starting(built.starting.keys());
                let generation = runtime.generation;
                // Sources may now point elsewhere: the new runtime, then the flush (see there).
                let flushed = state.replace_runtime(runtime);
                // vault-lease: the old sources' leases are no longer used.
                source::retire_leases(&current.sources);
                startup::spawn_source_retries(state, generation, built.starting, &built.others);
                startup::spawn_prefetch(state, generation, &state.runtime().config.prefetch);
                Ok(flushed)
            }
        },
    };
    match outcome {
        Ok(flushed) => tracing::info!(flushed, "configuration reloaded"),
        Err(err) => {
            tracing::error!(error = %err, "reload refused; keeping the running configuration")
        }
    }
    systemd::notify("READY=1");
}
