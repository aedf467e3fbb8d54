//! The node agent: joins the cluster, heartbeats, watches its assignments
//! and the cluster's endpoints, and runs its replicas in the [`Runtime`].
//!
//! Edge autonomy: the node's last assignments and last endpoints are kept
//! on disk ([`disk`]) next to the compile cache. A node serves its
//! last assignments from the moment it starts, whether or not the
//! controller answers; the control loop (register, heartbeat, watches)
//! retries with back-off in the background and converges once it does.
//!
//! Replica states reported with heartbeats: `Pending` (artifact not yet
//! here), `Starting` (compiling and probing), `Ready` (a probe instance was
//! created under the app's quota), `Failed` with a reason (the component
//! cannot be loaded or instantiated here; retrying would fail the same way).
//!
//! Modules: [`disk`] (the state directory: assignments, endpoints, static
//! file trees), `fetch` (components and files by digest; freeing the disk
//! no assignment needs), [`router`] (serve locally or forward to a peer).

pub mod disk;
mod fetch;
pub mod router;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_sdk::api::{
    Assignment, Assignments, Endpoints, Heartbeat, NodeCapacity, RegisterNode, ReplicaState,
    ReplicaStatus,
};
use skiff_sdk::capability::OutboundRules;
use skiff_sdk::{Client, ClientError, Digest};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use self::disk::StateDir;
use self::fetch::Load;
use self::router::NodeRouter;
use crate::runtime::error_chain;
use crate::verdict::Verdict;
use crate::{AppSpec, Capabilities, Preloaded, Runtime};

/// Default heartbeat interval: three fit in the controller's default grace.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Longest wait of one watch call (the controller caps it at 60 s).
const WATCH_WAIT: Duration = Duration::from_secs(30);
/// First and longest back-off after a failed call to the controller.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often replicas whose artifact could not be fetched are retried.
const PENDING_RETRY: Duration = Duration::from_secs(2);

const ASSIGNMENTS_FILE: &str = "assignments.json";
const ENDPOINTS_FILE: &str = "endpoints.json";
/// The credential last issued to this node (owner-only): presented when it
/// registers again, to prove it is the node that holds its name.
const CREDENTIAL_FILE: &str = "credential.json";

/// What a node offers and how it is reached.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Node name (its identity across restarts).
    pub name: String,
    /// Labels for node selectors (`zone` is used for spreading).
    pub labels: BTreeMap<String, String>,
    /// Memory offered to replicas, in bytes.
    pub memory_bytes: u64,
    /// The ingress address other nodes forward to, `host:port`.
    pub ingress: String,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Disk the compile cache may keep for components no replica here
    /// needs any more (those assigned are always kept).
    pub cache_bytes: u64,
}

/// Default [`NodeConfig::cache_bytes`].
pub const DEFAULT_CACHE_BYTES: u64 = 1 << 30;

/// The agent of one node.
pub struct Agent {
    config: NodeConfig,
    client: Client,
    join_token: String,
    state: StateDir,
    router: Arc<NodeRouter>,
    /// The authenticated client once registered.
    session: Mutex<Option<Client>>,
    /// Replica states as reported.
    replicas: Mutex<BTreeMap<String, ReplicaStatus>>,
    /// Wakes the heartbeat loop early when a replica state changed.
    report: Notify,
    assignments: watch::Sender<Option<Assignments>>,
    /// Components kept loaded while assigned, or why they cannot load.
    loaded: Mutex<HashMap<Digest, Result<Arc<Preloaded>, String>>>,
    /// What is watched of each serving app: its health and, for a newly
    /// started revision, its first requests.
    watched: Mutex<HashMap<String, Watched>>,
    /// The assignments version the disk was last pruned for.
    pruned: Mutex<Option<u64>>,
}

/// A serving app under watch.
struct Watched {
    revision: u64,
    health: Option<(skiff_sdk::api::HealthCheck, tokio::time::Instant, u32)>,
    /// Whether its first requests are being judged ([`crate::verdict`]).
    judging: bool,
}
/// How often the watch loop looks.
const WATCH_TICK: Duration = Duration::from_millis(100);

impl Agent {
    /// An agent for `router`'s runtime, resuming the assignments and
    /// endpoints last stored in `state`.
    pub fn new(
        config: NodeConfig,
        client: Client,
        join_token: String,
        state: StateDir,
        router: Arc<NodeRouter>,
    ) -> std::io::Result<Arc<Self>> {
        let last: Option<Assignments> = state.read_or_set_aside(ASSIGNMENTS_FILE)?;
        if let Some(endpoints) = state.read_or_set_aside::<Endpoints>(ENDPOINTS_FILE)? {
            router.set_endpoints(&endpoints);
        }
        if let Some(a) = &last {
            tracing::info!(
                replicas = a.replicas.len(),
                version = a.version,
                "resuming the last assignments from disk"
            );
        }
        Ok(Arc::new(Self {
            config,
            client,
            join_token,
            state,
            router,
            session: Mutex::new(None),
            replicas: Mutex::new(BTreeMap::new()),
            report: Notify::new(),
            assignments: watch::channel(last).0,
            loaded: Mutex::new(HashMap::new()),
            watched: Mutex::new(HashMap::new()),
            pruned: Mutex::new(None),
        }))
    }

    /// Replica states as this node reports them.
    pub fn replica_states(&self) -> Vec<ReplicaStatus> {
        lock(&self.replicas).values().cloned().collect()
    }

    /// Starts the replicas of the assignments stored on disk (before the
    /// ingress opens, so a restarted node serves them from its first
    /// request); returns how many are Ready.
    pub async fn resume(&self) -> usize {
        let last = self.assignments.borrow().clone();
        if let Some(assignments) = last {
            self.converge(&assignments).await;
        }
        self.replica_states()
            .iter()
            .filter(|r| r.state == ReplicaState::Ready)
            .count()
    }

    /// Runs the converge loop and the control loop until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::join!(
            self.converge_loop(&shutdown),
            self.control_loop(&shutdown),
            self.watch_loop(&shutdown)
        );
    }

    // ---- watch: health of serving apps, first requests of new revisions ----

    async fn watch_loop(&self, shutdown: &CancellationToken) {
        let runtime = self.router.runtime().clone();
        loop {
            if sleep_or_shutdown(WATCH_TICK, shutdown).await {
                return;
            }
            let due: Vec<(String, u64, skiff_sdk::api::HealthCheck)> = {
                let now = tokio::time::Instant::now();
                lock(&self.watched)
                    .iter()
                    .filter_map(|(app, w)| {
                        let (check, next, _) = w.health.as_ref()?;
                        (now >= *next).then(|| (app.clone(), w.revision, check.clone()))
                    })
                    .collect()
            };
            for (app, revision, check) in due {
                let passed = health_once(&runtime, &app, &app, &check).await;
                let failing = {
                    let mut watched = lock(&self.watched);
                    let Some(w) = watched.get_mut(&app).filter(|w| w.revision == revision) else {
                        continue;
                    };
                    let Some((_, next, failures)) = w.health.as_mut() else {
                        continue;
                    };
                    *next = tokio::time::Instant::now() + Duration::from_millis(check.interval_ms);
                    *failures = match &passed {
                        Ok(()) => 0,
                        Err(_) => *failures + 1,
                    };
                    (*failures >= check.failure_threshold).then(|| passed.clone().err())
                };
                if let Some(why) = failing {
                    self.fail_app(
                        &runtime,
                        &app,
                        revision,
                        format!("health check failing: {}", why.unwrap_or_default()),
                    );
                }
            }
            let judging: Vec<(String, u64)> = lock(&self.watched)
                .iter()
                .filter(|(_, w)| w.judging)
                .map(|(app, w)| (app.clone(), w.revision))
                .collect();
            for (app, revision) in judging {
                let Some(stats) = runtime.app_stats(&app) else {
                    continue;
                };
                let verdict = stats.probation().verdict();
                if verdict == Verdict::Judging {
                    continue;
                }
                stats.probation().stop();
                if let Some(w) = lock(&self.watched).get_mut(&app) {
                    w.judging = false;
                }
                if let Verdict::Failed { broken, counted } = verdict {
                    self.fail_app(&runtime, &app, revision, format!(
                        "the app failed {broken} of its first {counted} requests here (trapped or returned an error, for more than one client)"
                    ));
                }
            }
        }
    }

    /// Stops serving `app` here and reports its replicas at `revision`
    /// Failed; requests for it go to peers.
    fn fail_app(&self, runtime: &Arc<Runtime>, app: &str, revision: u64, why: String) {
        tracing::warn!(%app, revision, reason = %why, "replica failed while serving");
        lock(&self.watched).remove(app);
        runtime.remove(app);
        let ids: Vec<String> = self
            .assignments
            .borrow()
            .iter()
            .flat_map(|a| a.replicas.iter())
            .filter(|a| a.app == app && a.revision == revision)
            .map(|a| a.id.clone())
            .collect();
        for id in ids {
            self.set_state(&id, ReplicaState::Failed, Some(why.clone()));
        }
        // Converge again: an older revision assigned here serves instead.
        self.assignments.send_modify(|_| {});
    }

    // ---- control: register, heartbeat, watch -------------------------------

    async fn control_loop(self: &Arc<Self>, shutdown: &CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let client = match self.register().await {
                Ok(client) => client,
                Err(error) => {
                    backoff.failed("registering with the controller", &error);
                    if sleep_or_shutdown(backoff.delay(), shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.succeeded("registered with the controller");
            *lock(&self.session) = Some(client.clone());
            // Artifacts that could not be fetched before can be now.
            self.assignments.send_modify(|_| {});
            let why = tokio::select! {
                why = self.heartbeats(&client) => why,
                why = self.watch_assignments(&client) => why,
                why = self.watch_endpoints(&client) => why,
                () = shutdown.cancelled() => return,
            };
            tracing::warn!(error = %error_chain(&why), "the controller no longer knows this node's credential; registering again");
            *lock(&self.session) = None;
        }
    }

    async fn register(&self) -> Result<Client, ClientError> {
        let joiner = self.client.clone().with_token(&self.join_token);
        let credential = self
            .state
            .read_or_set_aside::<String>(CREDENTIAL_FILE)
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "the stored credential is unreadable; registering without it (the name is free again once the grace has passed)");
                None
            });
        let registration = joiner
            .register_node(&RegisterNode {
                name: self.config.name.clone(),
                labels: self.config.labels.clone(),
                capacity: NodeCapacity {
                    memory_bytes: self.config.memory_bytes,
                },
                ingress: self.config.ingress.clone(),
                logs_key: Some(self.router.logs_key().to_owned()),
                credential,
            })
            .await?;
        // Every start registers again (updating the advertised address,
        // labels and capacity); the name is the identity that keeps the
        // node's replicas, and the stored credential proves it is ours.
        if let Err(error) = self.state.write(CREDENTIAL_FILE, &registration.credential) {
            tracing::warn!(%error, "could not store the node's credential");
        }
        Ok(self.client.clone().with_token(&registration.credential))
    }

    async fn heartbeats(&self, client: &Client) -> ClientError {
        let mut backoff = Backoff::default();
        loop {
            let heartbeat = Heartbeat {
                replicas: self.replica_states(),
                logs_key: Some(self.router.logs_key().to_owned()),
            };
            match client.heartbeat(&self.config.name, &heartbeat).await {
                Ok(()) => backoff.succeeded("heartbeats reach the controller again"),
                Err(e) if needs_registration(&e) => return e,
                Err(e) => backoff.failed("sending a heartbeat", &e),
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.heartbeat) => {}
                () = self.report.notified() => {}
            }
        }
    }

    async fn watch_assignments(&self, client: &Client) -> ClientError {
        let mut backoff = Backoff::default();
        let mut after = None;
        loop {
            match client
                .assignments(&self.config.name, after, WATCH_WAIT)
                .await
            {
                Ok(assignments) => {
                    backoff.succeeded("watching assignments again");
                    if after == Some(assignments.version) {
                        continue;
                    }
                    after = Some(assignments.version);
                    if let Err(error) = self.state.write(ASSIGNMENTS_FILE, &assignments) {
                        tracing::warn!(%error, "could not store the assignments");
                    }
                    self.assignments.send_replace(Some(assignments));
                }
                Err(e) if needs_registration(&e) => return e,
                Err(e) => {
                    backoff.failed("watching assignments", &e);
                    tokio::time::sleep(backoff.delay()).await;
                }
            }
        }
    }

    async fn watch_endpoints(&self, client: &Client) -> ClientError {
        let mut backoff = Backoff::default();
        let mut tag: Option<String> = None;
        loop {
            match client.endpoints(tag.as_deref(), WATCH_WAIT).await {
                Ok(Some((new_tag, endpoints))) => {
                    backoff.succeeded("watching endpoints again");
                    self.router.set_endpoints(&endpoints);
                    if let Err(error) = self.state.write(ENDPOINTS_FILE, &endpoints) {
                        tracing::warn!(%error, "could not store the endpoints");
                    }
                    tag = Some(new_tag);
                }
                Ok(None) => backoff.succeeded("watching endpoints again"),
                Err(e) if needs_registration(&e) => return e,
                Err(e) => {
                    backoff.failed("watching endpoints", &e);
                    tokio::time::sleep(backoff.delay()).await;
                }
            }
        }
    }

    // ---- converge: make the runtime run the assignments --------------------

    async fn converge_loop(self: &Arc<Self>, shutdown: &CancellationToken) {
        let mut rx = self.assignments.subscribe();
        loop {
            let current = rx.borrow_and_update().clone();
            let pending = match &current {
                Some(assignments) => self.converge(assignments).await,
                None => false,
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(PENDING_RETRY), if pending => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Brings the runtime in line with `assignments`; returns whether some
    /// replica still waits for its artifact.
    async fn converge(&self, assignments: &Assignments) -> bool {
        let runtime = self.router.runtime().clone();
        let mut by_app: BTreeMap<&str, Vec<&Assignment>> = BTreeMap::new();
        for a in &assignments.replicas {
            by_app.entry(a.app.as_str()).or_default().push(a);
        }

        // Forget what is no longer assigned.
        for app in runtime.apps() {
            if !by_app.contains_key(app.as_str()) {
                runtime.remove(&app);
                lock(&self.watched).remove(&app);
                tracing::info!(%app, "app no longer assigned here: removed");
            }
        }
        lock(&self.replicas).retain(|id, _| assignments.replicas.iter().any(|a| &a.id == id));
        lock(&self.loaded).retain(|digest, _| {
            assignments
                .replicas
                .iter()
                .any(|a| &a.spec.artifact == digest)
        });

        let mut pending = false;
        for (app, replicas) in by_app {
            pending |= self.converge_app(&runtime, app, &replicas).await;
        }
        // Once these assignments are all here, free what none of them needs.
        if !pending && lock(&self.pruned).replace(assignments.version) != Some(assignments.version)
        {
            self.prune(runtime, assignments).await;
        }
        pending
    }

    async fn converge_app(
        &self,
        runtime: &Arc<Runtime>,
        app: &str,
        replicas: &[&Assignment],
    ) -> bool {
        let mut pending = false;
        // Load every revision's component; the newest that loads serves.
        let mut loadable: Vec<&Assignment> = Vec::new();
        for a in replicas {
            let load = match self.load(runtime, &a.spec.artifact).await {
                Load::Ready => self.mount_files(&a.spec.files).await,
                other => other,
            };
            match load {
                Load::Ready => loadable.push(a),
                Load::Missing(why) => {
                    pending = true;
                    self.set_state(&a.id, ReplicaState::Pending, Some(why));
                }
                Load::Failed(why) => self.set_state(&a.id, ReplicaState::Failed, Some(why)),
            }
        }
        // A replica that failed stays failed (its revision will fail the
        // same way here); the newest revision that starts serves, and the
        // replicas of older ones are served by it.
        loadable.retain(|a| self.state_of(&a.id) != Some(ReplicaState::Failed));
        let mut revisions: Vec<u64> = loadable.iter().map(|a| a.revision).collect();
        revisions.sort_unstable();
        revisions.dedup();
        for &revision in revisions.iter().rev() {
            let serving: Vec<&Assignment> = loadable
                .iter()
                .copied()
                .filter(|a| a.revision == revision)
                .collect();
            let up_to: Vec<&Assignment> = loadable
                .iter()
                .copied()
                .filter(|a| a.revision <= revision)
                .collect();
            let started = if serving
                .iter()
                .all(|a| self.state_of(&a.id) == Some(ReplicaState::Ready))
            {
                // Already serving (re-deploying the same spec is a no-op).
                runtime
                    .deploy(self.app_spec(app, serving[0], serving.len()))
                    .map_err(|e| error_chain(&e))
            } else {
                for a in &serving {
                    self.set_state(&a.id, ReplicaState::Starting, None);
                }
                self.start_revision(runtime, app, &serving).await
            };
            match started {
                Ok(()) => {
                    for a in &up_to {
                        self.set_state(&a.id, ReplicaState::Ready, None);
                    }
                    self.watch(runtime, app, serving[0]);
                    return pending;
                }
                Err(why) => {
                    tracing::warn!(%app, revision, error = %why, "replica failed to start");
                    for a in &serving {
                        self.set_state(&a.id, ReplicaState::Failed, Some(why.clone()));
                    }
                }
            }
        }
        runtime.remove(app);
        lock(&self.watched).remove(app);
        pending
    }

    /// Watches the revision `a` now serving `app`: its health check, and
    /// (when it just took over) its first requests.
    fn watch(&self, runtime: &Arc<Runtime>, app: &str, a: &Assignment) {
        let mut watched = lock(&self.watched);
        if watched.get(app).is_some_and(|w| w.revision == a.revision) {
            return;
        }
        let judging = match runtime.app_stats(app) {
            Some(stats) => {
                stats.probation().start();
                true
            }
            None => false,
        };
        watched.insert(
            app.to_owned(),
            Watched {
                revision: a.revision,
                health: a.spec.health.clone().map(|h| {
                    let next = tokio::time::Instant::now() + Duration::from_millis(h.interval_ms);
                    (h, next, 0)
                }),
                judging,
            },
        );
    }

    /// Starts a revision and switches the app's traffic to it only once it
    /// proved itself: instantiated under its quota and, when it has a
    /// health check, answering 2xx on it. Until then the previous revision
    /// (if any) keeps serving; a candidate with a health check is tried
    /// under a name no request can route to.
    async fn start_revision(
        &self,
        runtime: &Arc<Runtime>,
        app: &str,
        serving: &[&Assignment],
    ) -> Result<(), String> {
        let first = serving[0];
        let spec = self.app_spec(app, first, serving.len());
        if let Some(health) = &first.spec.health {
            let candidate = format!("{app}@{}", first.revision);
            runtime
                .deploy(AppSpec {
                    name: candidate.clone(),
                    ..spec.clone()
                })
                .map_err(|e| error_chain(&e))?;
            let checked = async {
                runtime
                    .instantiate_once(&candidate)
                    .await
                    .map_err(|e| error_chain(&e))?;
                health_gate(runtime, &candidate, app, health).await
            }
            .await;
            runtime.remove(&candidate);
            checked?;
        }
        runtime.deploy(spec).map_err(|e| error_chain(&e))?;
        runtime
            .instantiate_once(app)
            .await
            .map(drop)
            .map_err(|e| error_chain(&e))
    }

    fn app_spec(&self, app: &str, a: &Assignment, replicas: usize) -> AppSpec {
        let files = (!a.spec.files.is_empty()).then(|| self.state.mount_dir(&a.spec.files));
        app_spec(app, a, replicas, files)
    }

    fn state_of(&self, id: &str) -> Option<ReplicaState> {
        lock(&self.replicas).get(id).map(|r| r.state)
    }

    fn set_state(&self, id: &str, state: ReplicaState, reason: Option<String>) {
        let status = ReplicaStatus {
            id: id.to_owned(),
            state,
            reason,
        };
        let changed = lock(&self.replicas).insert(id.to_owned(), status.clone()) != Some(status);
        if changed {
            tracing::info!(replica = %id, ?state, "replica state");
            self.report.notify_one();
        }
    }
}

/// The runtime spec of `app` running `a`'s revision with `replicas`
/// replicas' worth of concurrency, its files laid out in `files`.
fn app_spec(app: &str, a: &Assignment, replicas: usize, files: Option<PathBuf>) -> AppSpec {
    let mut quota = a.spec.quota;
    // Each replica brings its own concurrency slots (and reservation).
    quota.concurrency = quota
        .concurrency
        .saturating_mul(u32::try_from(replicas).unwrap_or(u32::MAX));
    AppSpec {
        name: app.to_owned(),
        digest: a.spec.artifact,
        quota,
        env: a.spec.env.clone().into_iter().collect(),
        capabilities: Capabilities {
            // The controller validated the entries; one that does not
            // parse here grants nothing rather than everything.
            outbound: Arc::new(
                OutboundRules::parse(&a.spec.allowed_outbound_hosts).unwrap_or_else(|(i, e)| {
                    tracing::warn!(%app, entry = i, error = %e, "outbound grant ignored");
                    OutboundRules::default()
                }),
            ),
            files,
        },
    }
}

/// Passes once `GET health.path` answers 2xx; fails after
/// `failure_threshold` answers that are not, `interval_ms` apart.
async fn health_gate(
    runtime: &Arc<Runtime>,
    candidate: &str,
    app: &str,
    health: &skiff_sdk::api::HealthCheck,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..health.failure_threshold.max(1) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(health.interval_ms)).await;
        }
        match health_once(runtime, candidate, app, health).await {
            Ok(()) => return Ok(()),
            Err(why) => last = why,
        }
    }
    Err(format!(
        "{last} {} time(s) in a row",
        health.failure_threshold
    ))
}

/// One `GET health.path` to the deployed app `name` (reached as `host`):
/// Ok on 2xx, else what it answered.
async fn health_once(
    runtime: &Arc<Runtime>,
    name: &str,
    host: &str,
    health: &skiff_sdk::api::HealthCheck,
) -> Result<(), String> {
    use http_body_util::BodyExt as _;
    let body = http_body_util::Empty::<bytes::Bytes>::new()
        .map_err(|never| -> hyper::Error { match never {} });
    let req = http::Request::get(health.path.as_str())
        .header(http::header::HOST, host)
        .body(body)
        .map_err(|_| format!("health path {:?} is not a valid request path", health.path))?;
    let response = runtime
        .handle_app(name, req)
        .await
        .map_err(|_| "the app was removed while being checked".to_owned())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "health check GET {} answered {}",
            health.path,
            response.status()
        ))
    }
}

/// A 401 (credential unknown: the controller's state was reset), 403 or
/// 404 (the node was deleted) means: register again.
fn needs_registration(e: &ClientError) -> bool {
    e.status()
        .is_some_and(|s| matches!(s.as_u16(), 401 | 403 | 404))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = shutdown.cancelled() => true,
    }
}

/// Exponential back-off that logs a failure once per outage, not per try.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn failed(&mut self, doing: &str, error: &ClientError) {
        if self.failures == 0 {
            tracing::warn!(error = %error_chain(error), "{doing} failed; retrying with back-off (serving continues)");
        } else {
            tracing::debug!(error = %error_chain(error), "{doing} failed again");
        }
        self.failures = self.failures.saturating_add(1);
    }

    fn succeeded(&mut self, what: &str) {
        if self.failures > 0 {
            tracing::info!("{what}");
        }
        self.failures = 0;
    }

    fn delay(&self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(8);
        (BACKOFF_MIN * 2u32.pow(exp)).min(BACKOFF_MAX)
    }
}
