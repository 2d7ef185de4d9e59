//! Shared agent state: what every request handler reads, and what a reload swaps.
//!
//! The [`Runtime`] (rules and sources of one config generation) is swapped whole by a reload; a
//! request borrows the current one without a lock or a reference-count write
//! ([`AppState::current_runtime`]). The cache, metrics and audit outlive reloads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::acl::Rule;
use crate::audit::Audit;
use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::readiness::{Progress, Readiness};
use crate::source::{SourceEntry, Sources};

/// Numbers config generations (a reload starts a new one; a source coming up late does not).
static GENERATION: AtomicU64 = AtomicU64::new(1);

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
    /// Sources still retrying their start-up check: each name they answer to -> the
    /// configured source (a Vault source's transit side waits with it).
    pub starting: BTreeMap<String, String>,
    /// Which config generation this is (the same after a late source came up).
    pub generation: u64,
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
            starting: BTreeMap::new(),
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The same generation with `names` (configured sources) still starting.
    pub fn with_starting<'a>(mut self, names: impl IntoIterator<Item = &'a String>) -> Self {
        for name in names {
            if let Some(cfg) = self.config.sources.get(name) {
                for served in crate::source::build::served_names(name, cfg) {
                    self.starting.insert(served, name.clone());
                }
            }
        }
        self
    }

    /// This generation with the configured source `name` up, answering as `entries`.
    pub fn with_source_up(&self, name: &str, entries: Vec<(String, Arc<SourceEntry>)>) -> Self {
        let mut sources = self.sources.clone();
        sources.extend(entries);
        let mut starting = self.starting.clone();
        starting.retain(|_, configured| configured != name);
        Runtime {
            config: self.config.clone(),
            rules: self.rules.clone(),
            sources,
            exe_rules: self.exe_rules.clone(),
            starting,
            generation: self.generation,
        }
    }

    /// How many configured sources are still retrying their start-up check.
    pub fn sources_starting(&self) -> usize {
        self.starting
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }
}

impl Progress for Runtime {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn prefetch_total(&self) -> usize {
        self.config.prefetch.secrets.len()
    }

    fn sources_starting(&self) -> usize {
        Runtime::sources_starting(self)
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    runtime: arc_swap::ArcSwap<Runtime>,
    /// Held by a change of `runtime`, so two changes cannot lose each other's work.
    changing: Mutex<()>,
    /// The secret cache.
    pub cache: Arc<Cache>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Audit writer.
    pub audit: Audit,
    /// What `/v1/ready` reports.
    pub readiness: Readiness,
    /// Container-credentials tokens (`exec --aws`, issue 29).
    pub aws_tokens: crate::server::aws_token::Tokens,
    shutting_down: AtomicBool,
    shutdown: tokio::sync::watch::Sender<bool>,
    next_request: AtomicU64,
}

impl AppState {
    /// State for a first config generation.
    pub fn new(runtime: Runtime, cache: Arc<Cache>, metrics: Arc<Metrics>, audit: Audit) -> Self {
        cache.advance(runtime.generation);
        AppState {
            runtime: arc_swap::ArcSwap::from_pointee(runtime),
            changing: Mutex::new(()),
            cache,
            metrics,
            audit,
            readiness: Readiness::default(),
            aws_tokens: crate::server::aws_token::Tokens::default(),
            shutting_down: AtomicBool::new(false),
            shutdown: tokio::sync::watch::channel(false).0,
            next_request: AtomicU64::new(1),
        }
    }

    /// The current config generation, to keep.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// The current config generation, for one request: no lock, and no write to the shared
    /// reference count while no reload happens (hold it for a request, not for ever).
    pub fn current_runtime(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.runtime.load()
    }

    /// Installs a new config generation, then empties the cache of the old one
    /// ([`Cache::advance`]); returns how many values were dropped.
    ///
    /// SECURITY: in this order, a reader that finds the cache empty decides under the new rules
    /// and fetches through the new sources, and a fetch still running under the old ones never
    /// stores its value. Waiting reads wake, and are decided again.
    pub fn replace_runtime(&self, runtime: Runtime) -> usize {
        let generation = runtime.generation;
        let changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        self.runtime.store(Arc::new(runtime));
        let flushed = self.cache.advance(generation);
        drop(changing);
        self.readiness.runtime_changed();
        flushed
    }

    /// Replaces the runtime with what `change` makes of it, unless it returns `None` (e.g. the
    /// runtime is of another generation by now); returns whether it did. Holds the change lock
    /// throughout, so two changes cannot lose each other's work.
    pub fn update_runtime(&self, change: impl FnOnce(&Runtime) -> Option<Runtime>) -> bool {
        let changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let Some(new) = change(&self.runtime.load()) else {
            return false;
        };
        self.runtime.store(Arc::new(new));
        drop(changing);
        self.readiness.runtime_changed();
        true
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
