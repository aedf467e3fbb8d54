//! The informer: this controller's in-memory picture of apps, nodes and
//! replicas, kept current by the store's own change notifications, so that
//! the reconciler and the watches work on what *changed* instead of
//! re-reading everything.
//!
//! It works like a kube-rs reflector: the store names what each committed
//! write touched ([`Store::take_changed`]: this controller's writes at once,
//! other controllers' through PostgreSQL `NOTIFY`), and the informer
//! re-reads exactly those apps (with their replicas) and nodes. Reads are
//! not one transaction with each other; a write racing a re-read names its
//! objects again, so the picture converges. The whole picture is rebuilt
//! page by page (the store's connection is never held for long) at start,
//! when this controller becomes leader, when notifications may have been
//! lost, and every full resync as a safety net.
//!
//! Alongside it, [`Leases`] keeps node heartbeats in memory (persisted in
//! batches) and turns them into readiness; a readiness change marks the
//! node dirty like a write does. [`Demand`] keeps what nodes report of
//! real use (for the autoscaler and the API) and which node asked to wake a
//! sleeping app.
//!
//! Consumers: the reconciler drains the [`Dirty`] set; watches wait for
//! [`Informer::version`] and check which nodes and apps were touched since
//! the version they hold.

mod assign;
mod demand;
mod endpoints;
mod failure;
mod leases;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use skiff_sdk::api::{App, AppSpec, Node, NodeState, Replica, ReplicaDigest, Revision};
use skiff_sdk::delta::EndpointsDelta;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

pub use assign::{ChangeLog, Sent, delta};
pub use demand::{Demand, REPORT_STALE_MS, Totals};
pub use endpoints::{ENDPOINT_DELTAS, Published};
pub use failure::{Detector, REWATCH_WINDOW, WatchGuard};
pub use leases::{LEASE_FLUSH, Leases};

use crate::store::{Changed, Store, StoreError};

/// Rows read per page while rebuilding.
const REBUILD_PAGE: u32 = 1_000;
/// How often node leases are checked for readiness changes (a node that
/// stops heartbeating becomes NotReady by time, not by a write).
pub const LEASE_CHECK: Duration = Duration::from_millis(100);

/// What changed since the reconciler last looked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Apps whose row or replicas changed.
    pub apps: BTreeSet<String>,
    /// Nodes whose row changed, or whose readiness changed.
    pub nodes: BTreeSet<String>,
    /// The picture was rebuilt: plan everything.
    pub everything: bool,
}

/// The in-memory picture. Readers hold the lock briefly.
#[derive(Debug, Default)]
pub struct Picture {
    /// Apps by name.
    pub apps: BTreeMap<String, Arc<App>>,
    /// Nodes by name (state and last heartbeat as stored; see
    /// [`Leases`] for the live ones).
    pub nodes: BTreeMap<String, Arc<Node>>,
    /// Replicas by id.
    pub replicas: HashMap<String, Arc<Replica>>,
    /// Replica ids by app.
    pub by_app: HashMap<String, BTreeSet<String>>,
    /// Replica ids by node.
    pub by_node: HashMap<String, BTreeSet<String>>,
    /// Specs of the revisions replicas run, by `(app, revision)`.
    pub specs: HashMap<(String, u64), Arc<AppSpec>>,
    /// Kept revisions of the apps still rolling out (their current
    /// revision is not yet the good one): how long the rollout has run and
    /// where a failure returns.
    pub histories: HashMap<String, Arc<Vec<Revision>>>,
    /// Each node's assignments version (as stored: it moves with every
    /// change to the node's replicas, on whichever controller).
    pub assign_versions: HashMap<String, u64>,
    /// Memory reserved on each node by the replicas assigned to it.
    pub allocated: HashMap<String, u64>,
    /// Apps with a `[scale]` section and replicas: the ones the autoscaler
    /// looks at besides those in demand (10,000 sleeping apps cost a tick
    /// nothing).
    awake_scaled: BTreeSet<String>,
    /// Apps placed on every matching node: planned whenever a node
    /// changes.
    every_node: BTreeSet<String>,
    /// Each node's replica digest over the states recorded here, kept up
    /// to date as replicas come and go (a heartbeat's drift check costs
    /// what it reports, not what the node holds).
    digests: HashMap<String, ReplicaDigest>,
    /// Bumped on every change to the picture.
    pub version: u64,
    /// The version at which each node (its row, its replicas, their specs)
    /// last changed.
    pub node_touched: HashMap<String, u64>,
    /// Nodes touched by the change being applied (to notify afterwards).
    touched: BTreeSet<String>,
    /// Which replicas changed on each node, by version.
    log: ChangeLog,
}

impl Picture {
    /// Adds or replaces an app.
    fn put_app(&mut self, app: Arc<App>) {
        if app.spec.scale.is_some() && app.spec.replicas > 0 {
            self.awake_scaled.insert(app.name.clone());
        } else {
            self.awake_scaled.remove(&app.name);
        }
        if app.spec.placement.every_node {
            self.every_node.insert(app.name.clone());
        } else {
            self.every_node.remove(&app.name);
        }
        self.apps.insert(app.name.clone(), app);
    }

    /// Forgets a deleted app.
    fn drop_app(&mut self, name: &str) {
        self.awake_scaled.remove(name);
        self.every_node.remove(name);
        self.apps.remove(name);
    }

    /// The digest of the states recorded for `node`'s replicas.
    pub fn replica_digest(&self, node: &str) -> ReplicaDigest {
        self.digests.get(node).copied().unwrap_or_default()
    }

    /// The apps placed on every matching node.
    pub fn every_node(&self) -> &BTreeSet<String> {
        &self.every_node
    }

    /// The apps with a `[scale]` section that have replicas.
    pub fn awake_scaled(&self) -> &BTreeSet<String> {
        &self.awake_scaled
    }

    /// What a replica reserves: its revision's quota.
    pub fn reservation(&self, replica: &Replica) -> u64 {
        self.specs
            .get(&(replica.app.clone(), replica.revision))
            .map(|s| s.quota.reservation_bytes())
            .unwrap_or(0)
    }

    /// The replicas of `app`.
    pub fn replicas_of<'a>(&'a self, app: &str) -> impl Iterator<Item = &'a Arc<Replica>> + 'a {
        self.by_app
            .get(app)
            .into_iter()
            .flatten()
            .filter_map(|id| self.replicas.get(id))
    }

    /// The replicas on `node`.
    pub fn replicas_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Arc<Replica>> + 'a {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.replicas.get(id))
    }

    fn insert_replica(&mut self, replica: Replica) {
        self.digests.entry(replica.node.clone()).or_default().add(
            &replica.id,
            replica.state,
            replica.reason.as_deref(),
        );
        let reservation = self.reservation(&replica);
        *self.allocated.entry(replica.node.clone()).or_default() += reservation;
        self.by_app
            .entry(replica.app.clone())
            .or_default()
            .insert(replica.id.clone());
        self.by_node
            .entry(replica.node.clone())
            .or_default()
            .insert(replica.id.clone());
        self.log.record(&replica.node, self.version, &replica.id);
        self.replicas.insert(replica.id.clone(), Arc::new(replica));
    }

    fn remove_replica(&mut self, id: &str) -> Option<Arc<Replica>> {
        let replica = self.replicas.remove(id)?;
        self.log.record(&replica.node, self.version, id);
        if let Some(digest) = self.digests.get_mut(&replica.node) {
            digest.remove(&replica.id, replica.state, replica.reason.as_deref());
        }
        let reservation = self.reservation(&replica);
        if let Some(n) = self.allocated.get_mut(&replica.node) {
            *n = n.saturating_sub(reservation);
        }
        for (index, key) in [
            (&mut self.by_app, &replica.app),
            (&mut self.by_node, &replica.node),
        ] {
            if let Some(ids) = index.get_mut(key) {
                ids.remove(id);
                if ids.is_empty() {
                    index.remove(key);
                }
            }
        }
        Some(replica)
    }

    fn touch_node(&mut self, node: &str) {
        self.node_touched.insert(node.to_owned(), self.version);
        self.touched.insert(node.to_owned());
    }
}

/// The informer of one controller. Cheap to share (`Arc`).
pub struct Informer {
    store: Arc<dyn Store>,
    picture: RwLock<Picture>,
    dirty: Mutex<Dirty>,
    version: watch::Sender<u64>,
    rebuild: Notify,
    rebuilt: std::sync::atomic::AtomicBool,
    leases: Arc<Leases>,
    detector: Arc<Detector>,
    demand: Arc<Demand>,
    /// Per node: bumped when the node (row, replicas) changes, for its
    /// assignments watch.
    node_watches: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// The endpoints as last published, and a counter of changes to them.
    endpoints: Mutex<Option<Arc<Published>>>,
    /// The last publications' changes: (tag before, the change), oldest
    /// first, for watchers that hold a recent version.
    endpoint_deltas: Mutex<std::collections::VecDeque<(String, Arc<EndpointsDelta>)>>,
    /// What the next publication recomputes.
    endpoints_touched: Mutex<endpoints::Touched>,
    endpoints_changed: watch::Sender<u64>,
    /// The picture version the endpoints were last computed at.
    published: watch::Sender<u64>,
    /// Someone waits on the next publication (a request held while its app
    /// wakes): publish without the usual pause.
    hurry: Notify,
    /// Apps whose next refresh a request waits on (a wake-up), and the
    /// signal that one was refreshed: the reconciler plans it at once.
    urgent: Mutex<std::collections::HashSet<String>>,
    urgent_ready: Notify,
    /// The store's write counter ([`Store::changes`]) the picture has
    /// caught up with.
    applied: watch::Sender<u64>,
}

impl std::fmt::Debug for Informer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer").finish_non_exhaustive()
    }
}

impl Informer {
    /// An empty informer over `store`; [`Informer::run`] fills it.
    pub fn new(store: Arc<dyn Store>, leases: Arc<Leases>) -> Arc<Self> {
        Arc::new(Self {
            store,
            picture: RwLock::default(),
            dirty: Mutex::default(),
            version: watch::channel(0).0,
            rebuild: Notify::new(),
            rebuilt: std::sync::atomic::AtomicBool::new(false),
            leases,
            detector: Arc::default(),
            demand: Arc::default(),
            node_watches: Mutex::default(),
            endpoints: Mutex::default(),
            endpoint_deltas: Mutex::default(),
            endpoints_touched: Mutex::default(),
            endpoints_changed: watch::channel(0).0,
            hurry: Notify::new(),
            urgent: Mutex::default(),
            urgent_ready: Notify::new(),
            published: watch::channel(0).0,
            applied: watch::channel(0).0,
        })
    }

    /// The node leases.
    pub fn leases(&self) -> &Arc<Leases> {
        &self.leases
    }

    /// A receiver bumped whenever `node`'s row or replicas change.
    pub fn node_changes(&self, node: &str) -> watch::Receiver<u64> {
        let mut watches = self.node_watches.lock().unwrap_or_else(|e| e.into_inner());
        watches
            .entry(node.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the watchers of `nodes` (of every node, with `None`).
    fn notify_nodes(&self, nodes: Option<&BTreeSet<String>>, version: u64) {
        let mut watches = self.node_watches.lock().unwrap_or_else(|e| e.into_inner());
        watches.retain(|_, sender| sender.receiver_count() > 0);
        match nodes {
            None => watches.values().for_each(|s| {
                s.send_replace(version);
            }),
            Some(nodes) => {
                for node in nodes {
                    if let Some(sender) = watches.get(node) {
                        sender.send_replace(version);
                    }
                }
            }
        }
    }

    /// The endpoints as last published (`None` before the first).
    pub fn endpoints(&self) -> Option<Arc<Published>> {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The picture version the endpoints were last computed at: bumped
    /// after every change once nodes can learn of it, so whoever acts on
    /// a change (the reconciler) acts after the endpoints show it.
    pub fn published(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Waits (at most `limit`) until the picture holds every write this
    /// controller has seen committed so far: read-your-writes for a reader
    /// of the picture. Returns whether it did.
    pub async fn caught_up(&self, limit: Duration) -> bool {
        let target = *self.store.changes().borrow();
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(limit, applied.wait_for(|v| *v >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A request is held until `app` gets a replica: the reconciler plans
    /// the app as soon as the picture has its change (not at the next
    /// publication of the endpoints), and that publication skips the usual
    /// pause.
    pub fn hurry(&self, app: &str) {
        self.urgent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(app.to_owned());
        self.hurry.notify_one();
    }

    /// Resolves when an app [`Informer::hurry`] named is in the picture.
    pub async fn urgent(&self) {
        self.urgent_ready.notified().await;
    }

    /// A receiver bumped whenever the published endpoints change.
    pub fn endpoints_changes(&self) -> watch::Receiver<u64> {
        self.endpoints_changed.subscribe()
    }

    /// The failure detector (run it with [`Detector::run`]).
    pub fn detector(&self) -> &Arc<Detector> {
        &self.detector
    }

    /// What apps use, as nodes report it, and wake-ups.
    pub fn demand(&self) -> &Arc<Demand> {
        &self.demand
    }

    /// The picture, read-locked.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Picture> {
        self.picture.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The picture's version, changed on every change to it (including a
    /// node's readiness).
    pub fn version(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Takes what changed since the last call.
    pub fn take_dirty(&self) -> Dirty {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether the picture was rebuilt since the last call.
    pub fn take_rebuilt(&self) -> bool {
        self.rebuilt
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Asks for a whole rebuild (e.g. on becoming leader); returns at once.
    pub fn request_rebuild(&self) {
        self.rebuild.notify_one();
    }

    /// Whether `node` is Ready by its lease, now.
    pub fn node_ready(&self, node: &str) -> bool {
        self.leases.is_ready(node)
    }

    /// A node as the API shows it, with its live lease.
    pub fn live_node(&self, node: &Node) -> Node {
        let mut node = node.clone();
        self.leases.overlay(&mut node);
        node
    }

    /// Gives `node` its live lease and what is placed on it (takes the
    /// picture's read lock: not to be called while holding it).
    pub fn present(&self, node: &mut Node) {
        self.leases.overlay(node);
        let picture = self.read();
        node.allocation = Some(skiff_sdk::api::NodeAllocation {
            replicas: picture
                .by_node
                .get(&node.name)
                .map_or(0, |r| u32::try_from(r.len()).unwrap_or(u32::MAX)),
            reserved_bytes: picture.allocated.get(&node.name).copied().unwrap_or(0),
        });
    }

    /// Keeps the picture current until `shutdown`: rebuilds at once, then
    /// applies changes as the store announces them, checks leases every
    /// [`LEASE_CHECK`], and rebuilds every `full_resync` or on request.
    pub async fn run(self: Arc<Self>, full_resync: Duration, shutdown: CancellationToken) {
        tokio::join!(
            self.follow(full_resync, &shutdown),
            self.publish_endpoints(&shutdown)
        );
    }

    async fn follow(&self, full_resync: Duration, shutdown: &CancellationToken) {
        let mut changes = self.store.changes();
        let mut next_rebuild = tokio::time::Instant::now();
        let mut lease_check = tokio::time::interval(LEASE_CHECK);
        lease_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if tokio::time::Instant::now() >= next_rebuild {
                match self.rebuild_now().await {
                    Ok(()) => next_rebuild = tokio::time::Instant::now() + full_resync,
                    Err(error) => {
                        tracing::warn!(error = %crate::error_chain(&error), "rebuilding the informer failed; retrying");
                        next_rebuild = tokio::time::Instant::now() + Duration::from_secs(1);
                    }
                }
            }
            // Every write counted up to here is in what is taken now.
            let generation = *changes.borrow_and_update();
            let changed = self.store.take_changed();
            if changed.everything {
                next_rebuild = tokio::time::Instant::now();
                continue;
            }
            if !changed.is_empty()
                && let Err(error) = self.refresh(changed.clone()).await
            {
                tracing::warn!(error = %crate::error_chain(&error), "refreshing the informer failed; rebuilding");
                next_rebuild = tokio::time::Instant::now();
                continue;
            }
            self.applied.send_replace(generation);
            tokio::select! {
                _ = changes.changed() => {}
                _ = lease_check.tick() => self.check_leases(),
                () = self.rebuild.notified() => next_rebuild = tokio::time::Instant::now(),
                () = tokio::time::sleep_until(next_rebuild) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Marks nodes whose readiness changed.
    fn check_leases(&self) {
        let flipped = self.leases.flipped();
        if flipped.is_empty() {
            return;
        }
        self.touch_endpoints([], true);
        let mut picture = self.picture.write().unwrap_or_else(|e| e.into_inner());
        picture.version += 1;
        for node in &flipped {
            picture.touch_node(node);
        }
        let version = picture.version;
        let touched = std::mem::take(&mut picture.touched);
        drop(picture);
        self.notify_nodes(Some(&touched), version);
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .nodes
            .extend(flipped);
        self.version.send_replace(version);
    }

    /// Re-reads the named apps (with their replicas) and nodes.
    pub async fn refresh(&self, changed: Changed) -> Result<(), StoreError> {
        let app_names: Vec<String> = changed.apps.iter().cloned().collect();
        let node_names: Vec<String> = changed.nodes.iter().cloned().collect();
        // Node rows (and their assignments versions) first: a version read
        // before the replicas is never ahead of them, so a node that holds
        // a version holds at least its replicas.
        let nodes = self.store.nodes_named(&node_names).await?;
        let versions = self.store.assign_versions(Some(&node_names)).await?;
        let apps = self.store.apps_named(&app_names).await?;
        let histories = self.histories_of(&apps).await?;
        let replicas = self.store.replicas_of(&app_names).await?;
        let specs = self.missing_specs(&replicas).await?;

        let mut picture = self.picture.write().unwrap_or_else(|e| e.into_inner());
        picture.version += 1;
        picture.specs.extend(specs);
        picture.assign_versions.extend(versions);
        for name in &changed.apps {
            picture.histories.remove(name);
        }
        picture.histories.extend(histories);
        let mut apps: BTreeMap<String, App> =
            apps.into_iter().map(|a| (a.name.clone(), a)).collect();
        for name in &changed.apps {
            // Replace the app's replicas with what was read.
            let old: Vec<String> = picture
                .by_app
                .get(name)
                .map(|ids| ids.iter().cloned().collect())
                .unwrap_or_default();
            for id in old {
                if let Some(r) = picture.remove_replica(&id) {
                    picture.touch_node(&r.node);
                }
            }
            match apps.remove(name) {
                Some(app) => picture.put_app(Arc::new(app)),
                None => picture.drop_app(name),
            }
        }
        for replica in replicas {
            picture.touch_node(&replica.node);
            picture.insert_replica(replica);
        }
        let mut nodes: BTreeMap<String, Node> =
            nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        // Whether a node came, went or moved: every app's endpoints may
        // name it.
        let mut nodes_moved = false;
        // Nodes whose row changed what placement sees: the reconciler
        // plans every app on them again. A write that only changed a
        // node's replicas names their apps already (planning all 10,000
        // apps of a node after each placement made applies O(apps)).
        let mut replan = Vec::new();
        for name in &changed.nodes {
            picture.touch_node(name);
            let (old, new) = (picture.nodes.get(name), nodes.get(name));
            nodes_moved |= old.map(|n| &n.ingress) != new.map(|n| &n.ingress);
            if !same_placement(old.map(|n| &**n), new) {
                replan.push(name.clone());
            }
            match nodes.remove(name) {
                Some(node) => {
                    self.leases.seed(&node);
                    picture.nodes.insert(name.clone(), Arc::new(node));
                }
                None => {
                    picture.nodes.remove(name);
                    picture.assign_versions.remove(name);
                    self.leases.forget(name);
                    // Its replicas were deleted with it.
                    let ids: Vec<String> = picture
                        .by_node
                        .get(name)
                        .map(|ids| ids.iter().cloned().collect())
                        .unwrap_or_default();
                    for id in ids {
                        picture.remove_replica(&id);
                    }
                }
            }
        }
        let version = picture.version;
        let touched = std::mem::take(&mut picture.touched);
        drop(picture);
        self.notify_nodes(Some(&touched), version);
        self.touch_endpoints(changed.apps.iter().cloned(), nodes_moved);
        let urgent = {
            let mut urgent = self.urgent.lock().unwrap_or_else(|e| e.into_inner());
            let before = urgent.len();
            urgent.retain(|app| !changed.apps.contains(app));
            urgent.len() != before
        };
        {
            let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            dirty.apps.extend(changed.apps);
            dirty.nodes.extend(replan);
        }
        self.version.send_replace(version);
        if urgent {
            self.urgent_ready.notify_one();
        }
        Ok(())
    }

    /// The revision histories of those of `apps` still rolling out.
    async fn histories_of(
        &self,
        apps: &[App],
    ) -> Result<HashMap<String, Arc<Vec<Revision>>>, StoreError> {
        let rolling: Vec<String> = apps
            .iter()
            .filter(|a| a.status.good_revision != Some(a.revision))
            .map(|a| a.name.clone())
            .collect();
        let mut out: HashMap<String, Vec<Revision>> = HashMap::new();
        if !rolling.is_empty() {
            for revision in self.store.revisions_of(&rolling).await? {
                out.entry(revision.app.clone()).or_default().push(revision);
            }
        }
        Ok(out.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
    }

    /// The specs `replicas` run that the picture does not hold yet.
    async fn missing_specs(
        &self,
        replicas: &[Replica],
    ) -> Result<Vec<((String, u64), Arc<AppSpec>)>, StoreError> {
        let wanted: BTreeSet<(String, u64)> = {
            let picture = self.read();
            replicas
                .iter()
                .map(|r| (r.app.clone(), r.revision))
                .filter(|k| !picture.specs.contains_key(k))
                .collect()
        };
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<(String, u64)> = wanted.into_iter().collect();
        Ok(self
            .store
            .revision_specs(&keys)
            .await?
            .into_iter()
            .map(|(k, s)| (k, Arc::new(s)))
            .collect())
    }

    /// Reads everything again, page by page, and swaps the new picture in.
    pub async fn rebuild_now(&self) -> Result<(), StoreError> {
        // Changes announced from here on are applied after the swap.
        let pending = self.store.take_changed();
        let mut fresh = Picture::default();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.apps_page(after.as_deref(), REBUILD_PAGE).await?;
            after = page.items.last().map(|a| a.name.clone());
            for app in page.items {
                fresh.put_app(Arc::new(app));
            }
            if !page.more {
                break;
            }
        }
        fresh.assign_versions = self
            .store
            .assign_versions(None)
            .await?
            .into_iter()
            .collect();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .nodes_page(after.as_deref(), REBUILD_PAGE)
                .await?;
            after = page.items.last().map(|n| n.name.clone());
            for node in page.items {
                self.leases.seed(&node);
                fresh.nodes.insert(node.name.clone(), Arc::new(node));
            }
            if !page.more {
                break;
            }
        }
        let mut replicas = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .replicas_page(after.as_deref(), REBUILD_PAGE)
                .await?;
            after = page.items.last().map(|r| r.id.clone());
            replicas.extend(page.items);
            if !page.more {
                break;
            }
        }
        let apps: Vec<App> = fresh.apps.values().map(|a| App::clone(a)).collect();
        fresh.histories = self.histories_of(&apps).await?;
        drop(apps);
        // Specs: current revisions from the apps, older ones read.
        for app in fresh.apps.values() {
            fresh
                .specs
                .insert((app.name.clone(), app.revision), Arc::new(app.spec.clone()));
        }
        let older: BTreeSet<(String, u64)> = replicas
            .iter()
            .map(|r| (r.app.clone(), r.revision))
            .filter(|k| !fresh.specs.contains_key(k))
            .collect();
        if !older.is_empty() {
            let keys: Vec<(String, u64)> = older.into_iter().collect();
            for (key, spec) in self.store.revision_specs(&keys).await? {
                fresh.specs.insert(key, Arc::new(spec));
            }
        }
        for replica in replicas {
            fresh.insert_replica(replica);
        }
        {
            let mut picture = self.picture.write().unwrap_or_else(|e| e.into_inner());
            fresh.version = picture.version + 1;
            fresh.log.reset(fresh.version);
            for node in fresh.nodes.keys().chain(picture.nodes.keys()) {
                fresh.node_touched.insert(node.clone(), fresh.version);
            }
            let version = fresh.version;
            fresh.touched.clear();
            *picture = fresh;
            drop(picture);
            self.notify_nodes(None, version);
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .everything = true;
            self.touch_endpoints([], true);
            self.rebuilt
                .store(true, std::sync::atomic::Ordering::Release);
            self.version.send_replace(version);
        }
        self.leases.retain_known(&self.read().nodes);
        if !pending.is_empty() && !pending.everything {
            self.refresh(pending).await?;
        }
        Ok(())
    }

    /// The node as it is now: its stored row with the live lease.
    pub fn node(&self, name: &str) -> Option<Node> {
        let picture = self.read();
        picture.nodes.get(name).map(|n| self.live_node(n))
    }

    /// Whether the stored node state says Ready (for tests and views).
    pub fn state_of(&self, name: &str) -> NodeState {
        if self.node_ready(name) {
            NodeState::Ready
        } else {
            NodeState::NotReady
        }
    }
}

/// Whether two rows of a node (absent: none) place alike: what
/// [`Rows::gather`](crate::reconciler) and the scheduler read of a node
/// besides its lease.
fn same_placement(old: Option<&Node>, new: Option<&Node>) -> bool {
    match (old, new) {
        (Some(a), Some(b)) => {
            a.labels == b.labels
                && a.cordoned == b.cordoned
                && a.draining == b.draining
                && a.capacity == b.capacity
        }
        (None, None) => true,
        _ => false,
    }
}
