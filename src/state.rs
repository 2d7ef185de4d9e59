//! Shared agent state: what every request handler reads, and what a reload swaps.
//!
//! The [`Runtime`] (rules and sources of one config generation) sits behind a lock that requests
//! only hold long enough to clone an `Arc`; the cache, metrics and audit outlive reloads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::acl::Rule;
use crate::audit::Audit;
use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::source::Sources;

/// One config generation: rules and live sources.
#[derive(Debug)]
pub struct Runtime {
    /// The config it was built from.
    pub config: Config,
    /// Access rules.
    pub rules: Vec<Rule>,
    /// Sources by name.
    pub sources: Sources,
    /// The distinct `exe` paths the rules name (each connection is checked against these).
    pub exe_rules: Vec<std::path::PathBuf>,
}

impl Runtime {
    /// A generation of `config` with its live `sources`.
    pub fn new(config: Config, sources: Sources) -> Self {
        let rules = config.rules.clone();
        let mut exe_rules: Vec<_> = rules.iter().filter_map(|r| r.peer.exe.clone()).collect();
        exe_rules.sort();
        exe_rules.dedup();
        Runtime {
            config,
            rules,
            sources,
            exe_rules,
        }
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    runtime: RwLock<Arc<Runtime>>,
    /// The secret cache.
    pub cache: Arc<Cache>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Audit writer.
    pub audit: Audit,
    shutting_down: AtomicBool,
    shutdown: tokio::sync::watch::Sender<bool>,
    next_request: AtomicU64,
}

impl AppState {
    /// State for a first config generation.
    pub fn new(runtime: Runtime, cache: Arc<Cache>, metrics: Arc<Metrics>, audit: Audit) -> Self {
        AppState {
            runtime: RwLock::new(Arc::new(runtime)),
            cache,
            metrics,
            audit,
            shutting_down: AtomicBool::new(false),
            shutdown: tokio::sync::watch::channel(false).0,
            next_request: AtomicU64::new(1),
        }
    }

    /// The current config generation.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs a new config generation.
    pub fn replace_runtime(&self, runtime: Runtime) {
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(runtime);
    }

    /// A fresh request id.
    pub fn next_request_id(&self) -> crate::audit::RequestId {
        crate::audit::RequestId(self.next_request.fetch_add(1, Ordering::Relaxed))
    }

    /// Marks the agent as draining: new secret requests get 503.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
    }

    /// Resolves once the agent begins to drain (waiting reads answer then).
    pub fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }

    /// Whether the agent is draining.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
