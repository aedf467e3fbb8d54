//! The node agent: joins the cluster, heartbeats, long-polls its
//! assignments and the cluster's endpoints, and runs its replicas in the
//! [`Runtime`].
//!
//! Edge autonomy: the node's last assignments and last endpoints are kept
//! on disk ([`disk`]) next to the compile cache. A node serves its
//! last assignments from the moment it starts, whether or not the
//! controller answers; the control loop (register, heartbeat, long-polls)
//! retries with back-off in the background and converges once it does.
//!
//! Replica states reported with heartbeats: `Pending` (artifact not yet
//! here), `Starting` (compiling and probing), `Ready` (a probe instance was
//! created under the app's quota), `Failed` with a reason (the component
//! cannot be loaded or instantiated here; retrying would fail the same way).
//!
//! The agent runs three loops, one job each, in their own modules:
//!
//! - `control`: register, heartbeat, long-poll assignments and endpoints.
//! - `converge`: make the runtime run the assignments (which revision serves).
//! - `health`: judge what serves (health checks, first-requests verdict).
//! - `runs`: carry out the job runs placed here and report them.
//! - `workers`: run worker replicas continuously, restarting them with back-off.
//! - `cron`: fire the node-local schedules by this node's clock, also offline.
//!
//! And: [`disk`] (the state directory: assignments, endpoints, static file
//! trees), `fetch` (components and files by digest; freeing the disk no
//! assignment needs), [`router`] (serve locally or forward to a peer, hold
//! requests for a sleeping app), `wake` (wake a sleeping app: locally from
//! its copy here, and through the controller), `api` (the node's own API
//! at `Host: _skiff`: logs and metrics).

mod api;
mod control;
mod converge;
mod cron;
pub mod disk;
mod fetch;
mod gates;
mod health;
mod pull;
pub mod router;
mod runs;
mod wake;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_sdk::api::{Assignments, Endpoints, ReplicaState, ReplicaStatus};
use skiff_sdk::{Client, Digest};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use self::disk::StateDir;
use self::health::Judged;
use self::router::NodeRouter;
use crate::Preloaded;
use crate::ingress::Limits;

/// Default heartbeat interval: three fit in the controller's default grace.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

const ASSIGNMENTS_FILE: &str = "assignments.json";
const ENDPOINTS_FILE: &str = "endpoints.json";
/// The credential last issued to this node (owner-only): presented when it
/// registers again, to prove it is the node that holds its name.
const CREDENTIAL_FILE: &str = "credential.json";

/// Everything a node needs to start: `skiff node`'s flags map onto it, and
/// `skiff up` builds one per local node.
#[derive(Clone)]
pub struct NodeConfig {
    /// Node name (its identity across restarts; a DNS label).
    pub name: String,
    /// Labels for node selectors (`zone` is used for spreading).
    pub labels: BTreeMap<String, String>,
    /// Memory offered to replicas, in bytes.
    pub memory_bytes: u64,
    /// The ingress address other nodes forward to, `host:port` (default:
    /// the address the listener is bound to).
    pub advertise: Option<String>,
    /// The controller's API URL.
    pub controller: String,
    /// The node join token.
    pub join_token: String,
    /// State directory: identity, last assignments and endpoints, static
    /// file trees and the compile cache.
    pub data_dir: PathBuf,
    /// Apps are reached as `Host: <app>.<domain>`.
    pub domain: String,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Largest request body accepted, in bytes.
    pub max_body: u64,
    /// Disk the compile cache may keep for components no replica here
    /// needs any more (those assigned are always kept).
    pub cache_bytes: u64,
    /// Whether instances come from the pooling allocator (off for hosts
    /// with little address space).
    pub pooling: bool,
    /// What one client may make the ingress hold.
    pub limits: Limits,
    /// Registries (`host[:port]`) reached over plain HTTP although not on
    /// a loopback address.
    pub insecure_registries: Vec<String>,
}

impl std::fmt::Debug for NodeConfig {
    // The join token is a secret: never in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("memory_bytes", &self.memory_bytes)
            .field("advertise", &self.advertise)
            .field("controller", &self.controller)
            .field("data_dir", &self.data_dir)
            .field("domain", &self.domain)
            .field("heartbeat", &self.heartbeat)
            .field("max_body", &self.max_body)
            .field("cache_bytes", &self.cache_bytes)
            .field("pooling", &self.pooling)
            .field("limits", &self.limits)
            .field("insecure_registries", &self.insecure_registries)
            .finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// A node `name` offering `memory_bytes`, joining `controller` with
    /// `join_token`, keeping its state in `data_dir`; every other setting
    /// at its default.
    pub fn new(
        name: impl Into<String>,
        memory_bytes: u64,
        controller: impl Into<String>,
        join_token: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            labels: BTreeMap::new(),
            memory_bytes,
            advertise: None,
            controller: controller.into(),
            join_token: join_token.into(),
            data_dir: data_dir.into(),
            domain: crate::DEFAULT_DOMAIN.to_owned(),
            heartbeat: DEFAULT_HEARTBEAT,
            max_body: crate::DEFAULT_MAX_REQUEST_BODY,
            cache_bytes: DEFAULT_CACHE_BYTES,
            pooling: true,
            limits: Limits::default(),
            insecure_registries: Vec::new(),
        }
    }
}

/// Default [`NodeConfig::cache_bytes`]: room for the previous revisions of
/// a few dozen apps, so a rollback usually finds its component compiled.
pub const DEFAULT_CACHE_BYTES: u64 = 1 << 30;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node name is not a DNS label.
    #[error("invalid node name {name:?}")]
    Name {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: skiff_sdk::api::NameError,
    },
    /// The controller URL is not usable.
    #[error("invalid controller URL")]
    Controller(#[source] skiff_sdk::ClientError),
    /// The state directory could not be created or read.
    #[error("using the state directory {}", path.display())]
    State {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The runtime could not be built.
    #[error("building the runtime")]
    Runtime(#[source] crate::RuntimeError),
    /// The listener's address could not be read.
    #[error("reading the ingress address")]
    Listener(#[source] std::io::Error),
}

/// A started node: its agent and ingress run until the shutdown token
/// given to [`Node::start`] is cancelled.
pub struct Node {
    /// The ingress address.
    pub addr: std::net::SocketAddr,
    /// Which instance allocator the runtime uses.
    pub allocator: crate::engine::Allocator,
    /// Replicas Ready from the stored assignments before the ingress opened.
    pub resumed: usize,
    tasks: tokio_util::task::TaskTracker,
}

impl Node {
    /// Starts a node on `listener`: builds the runtime, resumes the stored
    /// assignments (so a restarted node serves from its first request),
    /// then serves the ingress and runs the agent until `shutdown`.
    pub async fn start(
        config: NodeConfig,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<Self, NodeError> {
        skiff_sdk::api::validate_name(&config.name).map_err(|source| NodeError::Name {
            name: config.name.clone(),
            source,
        })?;
        let client = Client::new(&config.controller).map_err(NodeError::Controller)?;
        let state_error = |source| NodeError::State {
            path: config.data_dir.clone(),
            source,
        };
        let state = StateDir::open(&config.data_dir).map_err(state_error)?;
        let mut runtime_config = crate::RuntimeConfig::new(state.cache_dir());
        runtime_config.domain = config.domain.clone();
        runtime_config.max_request_body = config.max_body;
        runtime_config.engine.pooling = config.pooling;
        // Instances draw from the memory the node declares (see `budget`).
        runtime_config.memory_budget = config.memory_bytes;
        let runtime = crate::Runtime::new(runtime_config).map_err(NodeError::Runtime)?;
        let router = NodeRouter::new(runtime.clone(), &config.name, &config.domain);
        let addr = listener.local_addr().map_err(NodeError::Listener)?;
        let ingress = config.advertise.clone().unwrap_or_else(|| addr.to_string());
        let limits = config.limits;
        let agent = Agent::new(config.clone(), ingress, client, state, router.clone())
            .map_err(state_error)?;
        let resumed = agent.resume().await;
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(agent.run(shutdown.clone()));
        tasks.spawn(async move {
            if let Err(error) =
                crate::ingress::run(listener, router, limits, shutdown.clone()).await
            {
                tracing::error!(%error, "the ingress failed");
            }
            shutdown.cancel();
        });
        tasks.close();
        Ok(Self {
            addr,
            allocator: runtime.allocator().clone(),
            resumed,
            tasks,
        })
    }

    /// Waits until the node has stopped (after the shutdown token was
    /// cancelled and in-flight requests finished).
    pub async fn wait(&self) {
        self.tasks.wait().await;
    }
}

/// The agent of one node.
pub struct Agent {
    config: NodeConfig,
    /// The ingress address other nodes forward to, as registered.
    ingress: String,
    client: Client,
    state: StateDir,
    router: Arc<NodeRouter>,
    /// The authenticated client once registered.
    session: Mutex<Option<Client>>,
    /// Replica states as reported.
    replicas: Mutex<Reported>,
    /// Wakes the heartbeat loop early when a replica state changed.
    report: Notify,
    assignments: watch::Sender<Option<Arc<Assignments>>>,
    /// The apps to converge at the next change of `assignments` (the
    /// others are as they were: a change to one app of 10,000 converges
    /// one).
    unconverged: Mutex<converge::Unconverged>,
    /// The replica ids each app was last converged with.
    converged: Mutex<HashMap<String, Vec<String>>>,
    /// Wakes the prune loop (it prunes at most once per `PRUNE_EVERY`).
    prune_wanted: Notify,
    /// Components kept loaded while assigned, or why they cannot load.
    loaded: Mutex<HashMap<Digest, Result<Arc<Preloaded>, String>>>,
    /// What is judged of each serving app: its health and, for a newly
    /// started revision, its first requests.
    judged: Mutex<HashMap<String, Judged>>,
    /// The last assignment here of each app that may sleep (`scale.min =
    /// 0`): what a held request wakes locally.
    dormant: Mutex<HashMap<String, skiff_sdk::api::Assignment>>,
    /// Apps served from their copy here while the controller has not
    /// placed a replica (see `wake`).
    local: Mutex<HashMap<String, wake::LocalActivation>>,
    /// Job runs placed here, and their reports not yet sent (see `runs`).
    runs: Mutex<runs::Runs>,
    /// Wakes the run reporter.
    runs_report: Notify,
    /// Worker replicas supervised here (see `workers`).
    workers: Mutex<workers::Workers>,
    /// Cancelled when the node shuts down: stops runs and workers.
    stopping: CancellationToken,
    /// Clients of the registries apps come from (see `pull`).
    registries: pull::Registries,
    /// Health gates running in the background, per app (see `gates`).
    gates: Mutex<gates::Gates>,
    /// Wakes the converge loop when a gate has its verdict.
    gate_done: Notify,
    /// This agent, for the tasks it spawns.
    me: std::sync::Weak<Agent>,
    /// The node-local schedules it fires (see `cron`), as stored.
    schedules: watch::Sender<Arc<Vec<skiff_sdk::api::NodeSchedule>>>,
}

impl Agent {
    /// An agent for `router`'s runtime, resuming the assignments and
    /// endpoints last stored in `state`.
    pub fn new(
        config: NodeConfig,
        ingress: String,
        client: Client,
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
        let schedules: Vec<skiff_sdk::api::NodeSchedule> = state
            .read_or_set_aside(cron::SCHEDULES_FILE)?
            .unwrap_or_default();
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            schedules: watch::channel(Arc::new(schedules)).0,
            stopping: CancellationToken::new(),
            workers: Mutex::new(workers::Workers::default()),
            config,
            ingress,
            client,
            state,
            router,
            session: Mutex::new(None),
            replicas: Mutex::new(Reported::default()),
            report: Notify::new(),
            assignments: watch::channel(last.map(Arc::new)).0,
            unconverged: Mutex::new(converge::Unconverged::everything()),
            converged: Mutex::new(HashMap::new()),
            prune_wanted: Notify::new(),
            loaded: Mutex::new(HashMap::new()),
            judged: Mutex::new(HashMap::new()),
            dormant: Mutex::new(HashMap::new()),
            local: Mutex::new(HashMap::new()),
            runs: Mutex::new(runs::Runs::default()),
            runs_report: Notify::new(),
            registries: pull::Registries::default(),
            gates: Mutex::new(gates::Gates::default()),
            gate_done: Notify::new(),
        }))
    }

    /// Replica states as this node reports them (local activations are
    /// not the controller's replicas).
    pub fn replica_states(&self) -> Vec<ReplicaStatus> {
        lock(&self.replicas)
            .by_id
            .values()
            .filter(|r| !r.id.starts_with(wake::LOCAL_PREFIX))
            .cloned()
            .collect()
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

    /// Runs the converge, control and judge loops until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let stop_work = async {
            shutdown.cancelled().await;
            self.stopping.cancel();
        };
        tokio::join!(
            stop_work,
            self.converge_loop(&shutdown),
            self.cron_loop(&shutdown),
            self.prune_loop(&shutdown),
            self.control_loop(&shutdown),
            self.judge_loop(&shutdown),
            self.wake_loop(&shutdown)
        );
    }

    /// Converges `apps` again (all of them: `None`) at once.
    pub(super) fn reconverge(&self, apps: Option<&[&str]>) {
        // Marked and sent together: the converge loop takes both together.
        let mut unconverged = lock(&self.unconverged);
        match apps {
            Some(apps) => unconverged.mark(apps.iter().copied()),
            None => unconverged.mark_all(),
        }
        self.assignments.send_modify(|_| {});
    }

    pub(super) fn state_of(&self, id: &str) -> Option<ReplicaState> {
        lock(&self.replicas).by_id.get(id).map(|r| r.state)
    }

    pub(super) fn set_state(&self, id: &str, state: ReplicaState, reason: Option<String>) {
        let status = ReplicaStatus {
            id: id.to_owned(),
            state,
            reason,
        };
        let changed = lock(&self.replicas).set(status);
        if changed {
            tracing::info!(replica = %id, ?state, "replica state");
            self.report.notify_one();
        }
    }
}

/// The replica states a node reports, with their digest and the ids
/// changed since a heartbeat last took them, all kept up to date as states
/// change: a heartbeat after one change among 10,000 replicas costs one.
/// Local activations (see `wake`) are not the controller's replicas: they
/// are neither in the digest nor reported.
#[derive(Debug, Default)]
pub(super) struct Reported {
    by_id: BTreeMap<String, ReplicaStatus>,
    digest: skiff_sdk::api::ReplicaDigest,
    changed: std::collections::HashSet<String>,
}

impl Reported {
    /// Records a state; whether it changed.
    fn set(&mut self, status: ReplicaStatus) -> bool {
        if self.by_id.get(&status.id) == Some(&status) {
            return false;
        }
        if !status.id.starts_with(wake::LOCAL_PREFIX) {
            self.digest
                .add(&status.id, status.state, status.reason.as_deref());
            self.changed.insert(status.id.clone());
        }
        if let Some(old) = self.by_id.insert(status.id.clone(), status) {
            self.forget_share(&old);
        }
        true
    }

    /// Forgets a replica; whether it was known.
    pub(super) fn remove(&mut self, id: &str) -> bool {
        match self.by_id.remove(id) {
            Some(old) => {
                self.forget_share(&old);
                self.changed.remove(id);
                true
            }
            None => false,
        }
    }

    fn forget_share(&mut self, old: &ReplicaStatus) {
        if !old.id.starts_with(wake::LOCAL_PREFIX) {
            self.digest
                .remove(&old.id, old.state, old.reason.as_deref());
        }
    }

    /// The ids known here.
    pub(super) fn ids(&self) -> impl Iterator<Item = &String> {
        self.by_id.keys()
    }

    /// Every reported state and the digest; nothing is left changed.
    pub(super) fn take_all(&mut self) -> (Vec<ReplicaStatus>, String) {
        self.changed.clear();
        let all = self
            .by_id
            .values()
            .filter(|r| !r.id.starts_with(wake::LOCAL_PREFIX))
            .cloned()
            .collect();
        (all, self.digest.hex())
    }

    /// The states changed since last taken (their ids, to give back if
    /// the report is lost) and the digest.
    pub(super) fn take_changed(&mut self) -> (Vec<ReplicaStatus>, Vec<String>, String) {
        let ids: Vec<String> = self.changed.drain().collect();
        let states = ids
            .iter()
            .filter_map(|id| self.by_id.get(id).cloned())
            .collect();
        (states, ids, self.digest.hex())
    }

    /// Marks `ids` changed again (their report was lost).
    pub(super) fn give_back(&mut self, ids: Vec<String>) {
        self.changed
            .extend(ids.into_iter().filter(|id| self.by_id.contains_key(id)));
    }
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
