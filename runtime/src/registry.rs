//! The [`Runtime`] and its app registry: one wasmtime engine, the component
//! cache, and the deployed apps (deploy, remove, find, load, warm, logs,
//! counters). Serving a request with them is in `execute`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use skiff_sdk::{Digest, Quota, error_chain};
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::task::TaskTracker;
use wasmtime::Engine;
use wasmtime::component::Linker;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::RuntimeError;
use crate::cache::{CacheStats, ComponentCache};
use crate::engine::{Allocator, EngineOptions, EpochTicker, build_engine};
use crate::host::{Capabilities, HostState};
use crate::logs::{DEFAULT_LOG_LINES, LogBuffer, LogLine};
use crate::quota::Outcome;

/// Default largest request body: 16 MiB covers form posts and uploads to
/// typical edge handlers; bigger payloads belong in object storage.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 16 << 20;
/// Default time a request waits for a free instance slot before 503: long
/// enough to absorb a burst, short enough that clients retry elsewhere.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_millis(500);
/// A CPU-bound guest yields to the tokio scheduler after this much fuel
/// (~a millisecond of guest CPU), so it cannot starve other requests.
pub const FUEL_YIELD_INTERVAL: u64 = 1_000_000;
/// The default domain under which apps are reached: `<app>.localhost`.
pub const DEFAULT_DOMAIN: &str = "localhost";

/// How a [`Runtime`] is set up.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Engine and allocator settings.
    pub engine: EngineOptions,
    /// Directory of the component cache (sources and compiled artifacts).
    pub cache_dir: PathBuf,
    /// Apps are reached as `Host: <app>.<domain>`.
    pub domain: String,
    /// When exactly one app is deployed, serve it whatever the Host header
    /// says (`skiff serve`).
    pub single_app_any_host: bool,
    /// Largest request body accepted, in bytes.
    pub max_request_body: u64,
    /// How long a request waits for a free instance slot.
    pub queue_timeout: Duration,
    /// Lines of guest output kept per app.
    pub log_lines: usize,
    /// Linear memory all instances may use together, in bytes (a node's
    /// declared `--memory`); 0: no budget.
    pub memory_budget: u64,
}

impl RuntimeConfig {
    /// Defaults, with the cache at `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            engine: EngineOptions::default(),
            cache_dir: cache_dir.into(),
            domain: DEFAULT_DOMAIN.to_owned(),
            single_app_any_host: false,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            log_lines: DEFAULT_LOG_LINES,
            memory_budget: 0,
        }
    }
}

/// What to run for an app on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// The app's name, a DNS label; it is reached at `<name>.<domain>`.
    pub name: String,
    /// The component, already stored with [`Runtime::store_component`].
    pub digest: Digest,
    /// Resource limits for each request.
    pub quota: Quota,
    /// Environment variables the guest sees (and the only ones).
    pub env: Vec<(String, String)>,
    /// Outbound grants and static files; the default grants nothing.
    pub capabilities: Capabilities,
}

/// Requests of one app, counted by how they ended.
#[derive(Debug, Default)]
pub struct AppStats {
    counts: [AtomicU64; Outcome::ALL.len()],
    /// How long the requests that ran an instance took (arrival to the
    /// end of the guest's handler, queueing included).
    latency: Latency,
    /// Accesses (HTTP, sockets, files) refused by the app's grants.
    pub(crate) denied: Arc<AtomicU64>,
    /// The first-requests verdict window, while a node judges the app.
    pub(crate) probation: crate::verdict::Probation,
    /// What the app uses here (in flight, memory), for usage reports.
    pub(crate) usage: crate::budget::Usage,
}

impl AppStats {
    /// Requests that ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.counts[outcome.index()].load(Ordering::Relaxed)
    }

    /// Accesses (HTTP, sockets, files) refused because the app was not
    /// granted them.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    /// Requests in all.
    pub fn total(&self) -> u64 {
        Outcome::ALL.iter().map(|o| self.count(*o)).sum()
    }

    /// The app's first-requests verdict window.
    pub fn probation(&self) -> &crate::verdict::Probation {
        &self.probation
    }

    /// What the app uses on this node.
    pub fn usage(&self) -> &crate::budget::Usage {
        &self.usage
    }

    pub(crate) fn record(&self, outcome: Outcome) {
        self.counts[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The latency histogram of the requests that ran an instance.
    pub fn latency(&self) -> &Latency {
        &self.latency
    }
}

/// A latency histogram with fixed buckets, as Prometheus histograms are:
/// counts per upper bound, and the sum.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// Upper bounds of the latency buckets, in milliseconds (`+Inf` is the
/// count).
pub const LATENCY_BUCKETS_MS: [f64; 12] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
];

impl Latency {
    /// Counts one request that took `took`.
    pub fn observe(&self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        if let Some(i) = LATENCY_BUCKETS_MS.iter().position(|le| ms <= *le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Cumulative counts per bound of [`LATENCY_BUCKETS_MS`] (each counts
    /// the requests at most that long), then the count and the sum in
    /// microseconds.
    pub fn snapshot(&self) -> ([u64; LATENCY_BUCKETS_MS.len()], u64, u64) {
        let mut cumulative = [0; LATENCY_BUCKETS_MS.len()];
        let mut running = 0;
        for (out, bucket) in cumulative.iter_mut().zip(&self.buckets) {
            running += bucket.load(Ordering::Relaxed);
            *out = running;
        }
        (
            cumulative,
            self.count.load(Ordering::Relaxed),
            self.sum_us.load(Ordering::Relaxed),
        )
    }
}

/// A component loaded on first use (or by [`Runtime::warm`]) and shared by
/// every app that runs the same digest. A failure is kept too: the same
/// bytes will never load differently.
type Loaded = OnceCell<Result<ProxyPre<HostState>, Arc<RuntimeError>>>;

pub(crate) struct App {
    pub(crate) spec: Deployment,
    pub(crate) name: Arc<str>,
    pre: Arc<Loaded>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) stats: Arc<AppStats>,
    pub(crate) logs: Arc<LogBuffer>,
}

/// A deployed app as found by [`Runtime::find`].
pub struct AppRef(pub(crate) Arc<App>);

/// Keeps a component loaded (see [`Runtime::preload`]).
pub struct Preloaded {
    _cell: Arc<Loaded>,
}

/// How many removed apps' output a node keeps readable.
const PARKED_LOGS: usize = 64;

/// The node's wasm host. Cheap to share (`Arc`); every method is safe to
/// call concurrently.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) cache: ComponentCache,
    /// Command components (jobs) and their runs' output.
    pub(crate) commands: crate::command::Commands,
    pub(crate) apps: RwLock<HashMap<String, Arc<App>>>,
    /// The output of apps removed from this node, newest last (at most
    /// [`PARKED_LOGS`]): a revision that failed here, or that was rolled
    /// back, keeps its last lines readable, and a later revision of the
    /// same app continues the same buffer.
    parked_logs: Mutex<std::collections::VecDeque<Arc<LogBuffer>>>,
    /// Loaded components by digest; an entry lives as long as an app uses it.
    loaded: Mutex<HashMap<Digest, Weak<Loaded>>>,
    pub(crate) config: RuntimeConfig,
    allocator: Allocator,
    pub(crate) unrouted: AtomicU64,
    pub(crate) tasks: TaskTracker,
    /// Linear memory of all instances (see [`crate::budget`]).
    pub(crate) budget: Arc<crate::budget::MemoryBudget>,
    _ticker: EpochTicker,
}

impl Runtime {
    /// Builds the engine, starts the epoch ticker and opens the cache.
    pub fn new(config: RuntimeConfig) -> Result<Arc<Self>, RuntimeError> {
        let (engine, allocator) = build_engine(&config.engine)?;
        let mut linker = Linker::new(&engine);
        // All of WASI p2 plus wasi:http, like `wasmtime serve -S cli`: a
        // `#[wstd::http_server]` app is a command that also imports wasi:cli.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(RuntimeError::Engine)?;
        crate::host::guard_access(&mut linker).map_err(RuntimeError::Engine)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(RuntimeError::Engine)?;
        let cache = ComponentCache::open(engine.clone(), &config.cache_dir)?;
        let ticker = EpochTicker::start(engine.clone(), config.engine.epoch_tick)
            .map_err(RuntimeError::Ticker)?;
        let budget = Arc::new(crate::budget::MemoryBudget::new(config.memory_budget));
        Ok(Arc::new(Self {
            engine,
            linker,
            cache,
            commands: crate::command::Commands::default(),
            apps: RwLock::new(HashMap::new()),
            parked_logs: Mutex::new(std::collections::VecDeque::new()),
            loaded: Mutex::new(HashMap::new()),
            config,
            allocator,
            unrouted: AtomicU64::new(0),
            tasks: TaskTracker::new(),
            budget,
            _ticker: ticker,
        }))
    }

    /// Which instance allocator the engine uses.
    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    /// The component cache's counters.
    pub fn cache_stats(&self) -> &CacheStats {
        self.cache.stats()
    }

    /// Stores component bytes in the cache (without compiling) and returns
    /// their digest.
    pub fn store_component(&self, bytes: &[u8]) -> Result<Digest, RuntimeError> {
        self.cache.put(bytes)
    }

    /// Deploys or replaces an app. Nothing is compiled or instantiated here;
    /// that happens on [`Runtime::warm`] or the app's first request. In-flight
    /// requests of a replaced version finish on it.
    pub fn deploy(&self, spec: Deployment) -> Result<(), RuntimeError> {
        // The same spec again (every converge re-deploys what serves) is
        // a no-op, settled before anything touches the disk.
        if self.app(&spec.name).is_some_and(|old| old.spec == spec) {
            return Ok(());
        }
        let quota_err = |reason: String| RuntimeError::Quota {
            app: spec.name.clone(),
            reason,
        };
        spec.quota
            .validate()
            .map_err(|e| quota_err(e.to_string()))?;
        if spec.quota.memory_bytes > self.config.engine.max_instance_memory {
            return Err(quota_err(format!(
                "quota.memory_bytes {} exceeds this node's per-instance maximum {}",
                spec.quota.memory_bytes, self.config.engine.max_instance_memory
            )));
        }
        if !self.cache.contains(&spec.digest) {
            return Err(RuntimeError::UnknownComponent(spec.digest));
        }
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        let (stats, logs) = match apps.get(&spec.name) {
            Some(old) if old.spec == spec => return Ok(()),
            Some(old) => (old.stats.clone(), old.logs.clone()),
            None => (Arc::default(), self.log_buffer_for(&apps, &spec.name)),
        };
        let pre = self.loaded_cell(spec.digest);
        let app = App {
            name: spec.name.as_str().into(),
            permits: Arc::new(Semaphore::new(spec.quota.concurrency as usize)),
            pre,
            stats,
            logs,
            spec,
        };
        tracing::info!(app = %app.name, digest = %app.spec.digest, "app deployed");
        apps.insert(app.spec.name.clone(), Arc::new(app));
        Ok(())
    }

    /// The shared load cell of a digest (one per digest while anything
    /// holds it).
    fn loaded_cell(&self, digest: Digest) -> Arc<Loaded> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|_, cell| cell.strong_count() > 0);
        match loaded.get(&digest).and_then(Weak::upgrade) {
            Some(cell) => cell,
            None => {
                let cell = Arc::new(Loaded::new());
                loaded.insert(digest, Arc::downgrade(&cell));
                cell
            }
        }
    }

    /// Loads (compiling if needed) and pre-instantiates a stored component
    /// before any app uses it, so that deploying it later switches traffic
    /// without a cold start. The component stays loaded while the returned
    /// handle (or an app using it) lives.
    pub async fn preload(self: &Arc<Self>, digest: Digest) -> Result<Preloaded, RuntimeError> {
        if !self.cache.contains(&digest) {
            return Err(RuntimeError::UnknownComponent(digest));
        }
        let cell = self.loaded_cell(digest);
        let label = digest.to_string();
        cell.get_or_init(|| self.load(digest, &label))
            .await
            .clone()
            .map_err(|source| RuntimeError::AppUnavailable {
                app: label.clone(),
                source,
            })?;
        Ok(Preloaded { _cell: cell })
    }

    /// Whether a component is in the cache (stored, perhaps not compiled).
    pub fn has_component(&self, digest: &Digest) -> bool {
        self.cache.contains(digest)
    }

    /// Bounds the compile cache: see [`ComponentCache::prune`]. Blocking.
    pub fn prune_components(
        &self,
        keep: &std::collections::HashSet<Digest>,
        budget: u64,
    ) -> Result<crate::cache::Pruned, RuntimeError> {
        self.cache.prune(keep, budget)
    }

    /// The deployed app `name`, taken as it is now (a later removal or
    /// redeploy does not affect requests served with it).
    pub fn find(&self, name: &str) -> Option<AppRef> {
        self.app(name).map(AppRef)
    }

    /// Removes an app; its in-flight requests finish, and its output stays
    /// readable through [`Runtime::logs`] (see `parked_logs`).
    pub fn remove(&self, name: &str) -> bool {
        let removed = self
            .apps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let Some(app) = removed else {
            return false;
        };
        // A health-check candidate (`app@revision`) writes into its app's
        // buffer, which is parked with the app itself.
        if !name.contains('@') {
            let mut parked = self.parked_logs.lock().unwrap_or_else(|e| e.into_inner());
            parked.retain(|logs| logs.app() != name);
            if parked.len() >= PARKED_LOGS {
                parked.pop_front();
            }
            parked.push_back(app.logs.clone());
        }
        true
    }

    /// The log buffer a newly deployed `name` writes to: its app's (for a
    /// candidate `app@revision`), the one parked when the app was last
    /// removed here, or a new one.
    fn log_buffer_for(&self, apps: &HashMap<String, Arc<App>>, name: &str) -> Arc<LogBuffer> {
        let app = name.split('@').next().unwrap_or(name);
        if let Some(running) = apps.get(app) {
            return running.logs.clone();
        }
        let mut parked = self.parked_logs.lock().unwrap_or_else(|e| e.into_inner());
        let found = parked.iter().position(|logs| logs.app() == app);
        // A candidate only borrows the parked buffer; the app takes it back.
        let taken = found.and_then(|i| {
            if name == app {
                parked.remove(i)
            } else {
                parked.get(i).cloned()
            }
        });
        taken.unwrap_or_else(|| Arc::new(LogBuffer::new(app, self.config.log_lines)))
    }

    /// Names of the deployed apps.
    pub fn apps(&self) -> Vec<String> {
        self.apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn app(&self, name: &str) -> Option<Arc<App>> {
        self.apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Loads (compiling if needed) and pre-instantiates an app now, so that
    /// its first request does not pay for it. Errors say why the component
    /// cannot be served.
    pub async fn warm(self: &Arc<Self>, name: &str) -> Result<(), RuntimeError> {
        let app = self
            .app(name)
            .ok_or_else(|| RuntimeError::UnknownApp(name.to_owned()))?;
        self.ready(&app)
            .await
            .map(drop)
            .map_err(|source| RuntimeError::AppUnavailable {
                app: name.to_owned(),
                source,
            })
    }

    pub(crate) async fn ready(
        self: &Arc<Self>,
        app: &App,
    ) -> Result<ProxyPre<HostState>, Arc<RuntimeError>> {
        app.pre
            .get_or_init(|| self.load(app.spec.digest, &app.name))
            .await
            .clone()
    }

    async fn load(
        self: &Arc<Self>,
        digest: Digest,
        app: &str,
    ) -> Result<ProxyPre<HostState>, Arc<RuntimeError>> {
        let this = self.clone();
        let loaded = match tokio::task::spawn_blocking(move || this.cache.load(&digest)).await {
            Ok(Ok(component)) => self
                .linker
                .instantiate_pre(&component)
                .and_then(ProxyPre::new)
                .map_err(|source| RuntimeError::Link { digest, source }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RuntimeError::LoadInterrupted(digest)),
        };
        match loaded {
            Ok(pre) => {
                tracing::info!(%app, %digest, "component ready");
                Ok(pre)
            }
            Err(e) => {
                tracing::error!(%app, error = %error_chain(&e), "component cannot be loaded");
                Err(Arc::new(e))
            }
        }
    }

    /// Creates a fresh store and instance of an app, exactly as a request
    /// would, and drops them: a readiness probe that proves the component
    /// instantiates under its quota. Returns how long store creation plus
    /// instantiation took.
    pub async fn instantiate_once(self: &Arc<Self>, name: &str) -> Result<Duration, RuntimeError> {
        let app = self
            .app(name)
            .ok_or_else(|| RuntimeError::UnknownApp(name.to_owned()))?;
        let pre = self
            .ready(&app)
            .await
            .map_err(|source| RuntimeError::AppUnavailable {
                app: name.to_owned(),
                source,
            })?;
        let link_err = |source| RuntimeError::Link {
            digest: app.spec.digest,
            source,
        };
        let started = std::time::Instant::now();
        let mut store = self.new_store(&app, 0).map_err(link_err)?;
        pre.instantiate_async(&mut store).await.map_err(link_err)?;
        let elapsed = started.elapsed();
        // What a fresh instance takes is the first estimate of what the
        // app's requests need from the node's memory budget.
        app.stats.usage.instance_used(store.data().limiter.used());
        Ok(elapsed)
    }

    /// The use of every app that had requests since the last call (and,
    /// once, of those that just stopped): what a heartbeat reports.
    pub fn usage_report(&self) -> Vec<skiff_sdk::scale::AppUsage> {
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        apps.values()
            // Health-check candidates (`app@revision`) are not the app.
            .filter(|app| !app.name.contains('@'))
            .filter_map(|app| {
                let report = app.stats.usage.report()?;
                Some(skiff_sdk::scale::AppUsage {
                    app: app.name.to_string(),
                    in_flight: report.in_flight,
                    concurrency_milli: report.concurrency_milli,
                    requests: report.requests,
                    interval_ms: u64::try_from(report.interval.as_millis()).unwrap_or(u64::MAX),
                    memory_peak: report.memory_peak,
                    memory_avg: report.memory_avg,
                })
            })
            .collect()
    }

    /// The node's memory budget.
    pub fn budget(&self) -> &crate::budget::MemoryBudget {
        &self.budget
    }

    /// Instances of an app running right now.
    pub fn in_flight(&self, name: &str) -> Option<usize> {
        self.app(name).map(|a| {
            (a.spec.quota.concurrency as usize).saturating_sub(a.permits.available_permits())
        })
    }

    /// Counters of an app's requests by outcome.
    pub fn app_stats(&self, name: &str) -> Option<Arc<AppStats>> {
        self.app(name).map(|a| a.stats.clone())
    }

    /// Requests that matched no app.
    pub fn unrouted_requests(&self) -> u64 {
        self.unrouted.load(Ordering::Relaxed)
    }

    /// An app's captured guest output with sequence numbers from `since`.
    pub fn logs(&self, name: &str, since: u64) -> Option<Vec<LogLine>> {
        if let Some(app) = self.app(name) {
            return Some(app.logs.lines_since(since));
        }
        if let Some(run) = self.commands.logs_of(name) {
            return Some(run.lines_since(since));
        }
        let parked = self.parked_logs.lock().unwrap_or_else(|e| e.into_inner());
        parked
            .iter()
            .find(|logs| logs.app() == name)
            .map(|logs| logs.lines_since(since))
    }

    /// Waits for every in-flight guest call to finish (each is bounded by
    /// its app's timeout). Call after the ingress has stopped accepting.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}
