//! The [`Runtime`]: one wasmtime engine, the component cache, the deployed
//! apps, and the per-request path from an HTTP request to a fresh instance.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use skiff_sdk::{Digest, Quota};
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::task::TaskTracker;
use wasmtime::component::Linker;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::RuntimeError;
use crate::body::{GuestBody, LimitedBody, error_response};
use crate::cache::{CacheStats, ComponentCache};
use crate::engine::{Allocator, EngineOptions, EpochTicker, build_engine};
use crate::host::{Capabilities, HostState};
use crate::logs::{DEFAULT_LOG_LINES, LogBuffer, LogLine};
use crate::quota::{Limiter, Outcome, classify};
use crate::routing::app_name_for_host;

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
        }
    }
}

/// What to run for an app on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppSpec {
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
    /// Accesses (HTTP, sockets, files) refused by the app's grants.
    denied: Arc<AtomicU64>,
    /// The first-requests verdict window, while a node judges the app.
    probation: crate::verdict::Probation,
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

    fn record(&self, outcome: Outcome) {
        self.counts[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// A component loaded on first use (or by [`Runtime::warm`]) and shared by
/// every app that runs the same digest. A failure is kept too: the same
/// bytes will never load differently.
type Loaded = OnceCell<Result<ProxyPre<HostState>, Arc<RuntimeError>>>;

struct App {
    spec: AppSpec,
    name: Arc<str>,
    pre: Arc<Loaded>,
    permits: Arc<Semaphore>,
    stats: Arc<AppStats>,
    logs: Arc<LogBuffer>,
}

/// A deployed app as found by [`Runtime::find`].
pub struct AppRef(Arc<App>);

/// Keeps a component loaded (see [`Runtime::preload`]).
pub struct Preloaded {
    _cell: Arc<Loaded>,
}

/// How many removed apps' output a node keeps readable.
const PARKED_LOGS: usize = 64;

/// What the guest did with its response-outparam.
const SET_NONE: u8 = 0;
const SET_OK: u8 = 1;
const SET_ERR: u8 = 2;

/// The node's wasm host. Cheap to share (`Arc`); every method is safe to
/// call concurrently.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: ComponentCache,
    apps: RwLock<HashMap<String, Arc<App>>>,
    /// The output of apps removed from this node, newest last (at most
    /// [`PARKED_LOGS`]): a revision that failed here, or that was rolled
    /// back, keeps its last lines readable, and a later revision of the
    /// same app continues the same buffer.
    parked_logs: Mutex<std::collections::VecDeque<Arc<LogBuffer>>>,
    /// Loaded components by digest; an entry lives as long as an app uses it.
    loaded: Mutex<HashMap<Digest, Weak<Loaded>>>,
    config: RuntimeConfig,
    allocator: Allocator,
    unrouted: AtomicU64,
    tasks: TaskTracker,
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
        Ok(Arc::new(Self {
            engine,
            linker,
            cache,
            apps: RwLock::new(HashMap::new()),
            parked_logs: Mutex::new(std::collections::VecDeque::new()),
            loaded: Mutex::new(HashMap::new()),
            config,
            allocator,
            unrouted: AtomicU64::new(0),
            tasks: TaskTracker::new(),
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
    pub fn deploy(&self, spec: AppSpec) -> Result<(), RuntimeError> {
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

    async fn ready(self: &Arc<Self>, app: &App) -> Result<ProxyPre<HostState>, Arc<RuntimeError>> {
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
        let mut store = self.new_store(&app).map_err(link_err)?;
        pre.instantiate_async(&mut store).await.map_err(link_err)?;
        Ok(started.elapsed())
    }

    /// A store for one request of `app`, with every quota applied.
    fn new_store(&self, app: &App) -> wasmtime::Result<Store<HostState>> {
        let quota = app.spec.quota;
        let limiter = Limiter::new(quota.memory_bytes);
        let mut store = Store::new(
            &self.engine,
            HostState::new(
                &app.name,
                &app.spec.env,
                &app.spec.capabilities,
                &app.logs,
                &app.stats.denied,
                limiter,
            )?,
        );
        store.limiter(|state| &mut state.limiter);
        let tick = self.config.engine.epoch_tick.as_millis().max(1) as u64;
        store.set_epoch_deadline(quota.timeout_ms.div_ceil(tick) + 1);
        store.epoch_deadline_trap();
        store.set_fuel(quota.fuel)?;
        store.fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL))?;
        Ok(store)
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
        let parked = self.parked_logs.lock().unwrap_or_else(|e| e.into_inner());
        parked
            .iter()
            .find(|logs| logs.app() == name)
            .map(|logs| logs.lines_since(since))
    }

    /// Prometheus text exposition of the per-app request counters.
    pub fn render_metrics(&self) -> String {
        let mut out = String::from(
            "# HELP skiff_requests_total Requests served, by app and outcome.\n# TYPE skiff_requests_total counter\n",
        );
        let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<_> = apps.keys().collect();
        names.sort();
        for name in names {
            for outcome in Outcome::ALL {
                let n = apps[name].stats.count(outcome);
                out.push_str(&format!(
                    "skiff_requests_total{{app=\"{name}\",reason=\"{}\"}} {n}\n",
                    outcome.reason()
                ));
            }
        }
        out.push_str(&format!(
            "# HELP skiff_unrouted_requests_total Requests for no deployed app.\n# TYPE skiff_unrouted_requests_total counter\nskiff_unrouted_requests_total {}\n",
            self.unrouted_requests()
        ));
        out
    }

    /// Waits for every in-flight guest call to finish (each is bounded by
    /// its app's timeout). Call after the ingress has stopped accepting.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Serves one HTTP request: route by host, apply the app's quotas, run a
    /// fresh instance, stream its response. Never fails: every problem is an
    /// HTTP response with a reason (see [`Outcome`]).
    pub async fn handle<B>(self: &Arc<Self>, req: Request<B>) -> Response<HyperOutgoingBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let Ok(host) = crate::routing::request_host(&req) else {
            return crate::body::duplicate_host();
        };
        let app = {
            let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
            let by_host = host
                .and_then(|h| app_name_for_host(h, &self.config.domain))
                .and_then(|n| apps.get(n.as_ref()));
            match by_host {
                Some(app) => Some(app.clone()),
                None if self.config.single_app_any_host && apps.len() == 1 => {
                    apps.values().next().cloned()
                }
                None => None,
            }
        };
        self.serve(app, req).await
    }

    /// Serves one request with the app `name`, whatever its Host header
    /// says (for callers that routed it themselves, e.g. by a custom host).
    /// Gives the request back when no such app is deployed (checked and
    /// taken in one step, so a concurrent removal cannot slip between).
    pub async fn handle_app<B>(
        self: &Arc<Self>,
        name: &str,
        req: Request<B>,
    ) -> Result<Response<HyperOutgoingBody>, Request<B>>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        match self.find(name) {
            Some(app) => Ok(self.handle_found(app, req).await),
            None => Err(req),
        }
    }

    /// Serves one request with an app found by [`Runtime::find`].
    pub async fn handle_found<B>(
        self: &Arc<Self>,
        app: AppRef,
        req: Request<B>,
    ) -> Response<HyperOutgoingBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        self.serve(Some(app.0), req).await
    }

    async fn serve<B>(
        self: &Arc<Self>,
        app: Option<Arc<App>>,
        req: Request<B>,
    ) -> Response<HyperOutgoingBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let Some(app) = app else {
            self.unrouted.fetch_add(1, Ordering::Relaxed);
            return error_response(Outcome::NotFound, None);
        };
        let outcome_response = |outcome: Outcome| {
            app.stats.record(outcome);
            error_response(outcome, Some(&app.name))
        };

        let declared_len = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_len.is_some_and(|n| n > self.config.max_request_body) {
            return outcome_response(Outcome::BodyTooLarge);
        }

        let permit = match app.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => match tokio::time::timeout(
                self.config.queue_timeout,
                app.permits.clone().acquire_owned(),
            )
            .await
            {
                Ok(Ok(permit)) => permit,
                _ => return outcome_response(Outcome::Overloaded),
            },
        };

        let pre = match self.ready(&app).await {
            Ok(pre) => pre,
            Err(_) => return outcome_response(Outcome::Unavailable),
        };

        let quota = app.spec.quota;
        let Ok(mut store) = self.new_store(&app) else {
            // Only possible if the engine was built without fuel: a bug.
            return outcome_response(Outcome::Unavailable);
        };

        // Requests straight from a client take part in the app's verdict;
        // health checks (no client) and forwarded ones (whose address is
        // the forwarding node's, not the client's) do not.
        let client = req
            .extensions()
            .get::<skiff_sdk::serve::ClientAddr>()
            .filter(|_| {
                !req.headers()
                    .contains_key(crate::node::router::FORWARDED_BY)
            })
            .map(|c| c.0);
        let exceeded = Arc::new(AtomicBool::new(false));
        let mut req =
            req.map(|b| LimitedBody::new(b, self.config.max_request_body, exceeded.clone()));
        if !req.headers().contains_key(http::header::HOST)
            && req.uri().authority().is_none()
            && let Ok(value) =
                http::HeaderValue::from_str(&format!("{}.{}", app.name, self.config.domain))
        {
            req.headers_mut().insert(http::header::HOST, value);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let set = Arc::new(AtomicU8::new(SET_NONE));
        let set_by_guest = set.clone();
        let resources = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .and_then(|req| {
                let out = store
                    .data_mut()
                    .http()
                    .new_response_outparam_from_callback(move |result| {
                        set_by_guest.store(
                            if result.is_ok() { SET_OK } else { SET_ERR },
                            Ordering::Relaxed,
                        );
                        let _ = tx.send(result);
                    })?;
                Ok((req, out))
            });
        let Ok((wasi_req, out)) = resources else {
            return outcome_response(Outcome::Unavailable);
        };

        let task_app = app.clone();
        let stopped = Arc::new(AtomicBool::new(false));
        let stopped_by_task = stopped.clone();
        let task = self.tasks.spawn(async move {
            let _permit = permit;
            let timeout = quota.timeout();
            let result = tokio::time::timeout(timeout, async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy.wasi_http_incoming_handler().call_handle(&mut store, wasi_req, out).await
            })
            .await;
            let memory_denied = store.data().limiter.denied();
            // Set before the instance (and the sender of its response body)
            // is dropped, so the body sees it when it ends.
            stopped_by_task.store(!matches!(result, Ok(Ok(()))), Ordering::Release);
            drop(store);
            let outcome = match result {
                Ok(Ok(())) => match set.load(Ordering::Relaxed) {
                    SET_OK => Outcome::Ok,
                    _ => Outcome::GuestError,
                },
                Ok(Err(error)) => {
                    let outcome = if exceeded.load(Ordering::Relaxed) {
                        Outcome::BodyTooLarge
                    } else {
                        classify(&error, memory_denied)
                    };
                    tracing::warn!(app = %task_app.name, reason = outcome.reason(), error = %format!("{error:?}"), "request failed");
                    outcome
                }
                Err(_elapsed) => {
                    tracing::warn!(app = %task_app.name, reason = "timeout", timeout_ms = quota.timeout_ms, "request failed");
                    Outcome::Timeout
                }
            };
            task_app.stats.record(outcome);
            if let Some(client) = client {
                task_app.stats.probation.record(client, outcome);
            }
            outcome
        });

        match rx.await {
            Ok(Ok(response)) => response
                .map(|body| http_body_util::BodyExt::boxed_unsync(GuestBody::new(body, stopped))),
            Ok(Err(_code)) => error_response(Outcome::GuestError, Some(&app.name)),
            Err(_) => {
                let outcome = task.await.unwrap_or(Outcome::Trap);
                error_response(
                    if outcome == Outcome::Ok {
                        Outcome::GuestError
                    } else {
                        outcome
                    },
                    Some(&app.name),
                )
            }
        }
    }
}

/// Formats an error with its whole `source` chain, `outer: inner: ...`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
