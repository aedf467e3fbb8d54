//! The reconciler: one idempotent loop that drives the replicas the nodes
//! run towards what the apps ask for.
//!
//! One pass is three steps, one module each: `observe` reads the store
//! once and turns the rows into plain data (pure, given the rows and one
//! `now`); [`plan`] (pure) returns the [`Action`]s that close the gap
//! between desired and observed, and nothing once they match; `apply`
//! writes the replica changes in one transaction (with their events) and
//! records each app's conditions. [`Reconciler::reconcile`] runs the three;
//! it is safe to run at any moment, any number of times.
//! [`Reconciler::run`] triggers it on store changes and on a periodic resync
//! (lost nodes are noticed by time, not by a write), and only while this
//! controller holds the leader lease.
//!
//! Rules, per app:
//! - replicas on a *lost* node (NotReady for the grace period, counted from
//!   when this controller became leader so that a restarted controller does
//!   not evict nodes it has not heard from yet) are removed and replaced;
//!   the node is told to drop them when it returns, as its assignments no
//!   longer list them;
//! - replicas of the current revision on nodes that are not draining are
//!   *current*; missing ones are placed by the [`scheduler`](crate::scheduler),
//!   extra ones removed (not-ready ones first, then where the app is most
//!   concentrated);
//! - replicas of an older revision or on a draining node are *outgoing*:
//!   they keep serving until enough current replicas are Ready to take over,
//!   so a drain or an update never drops below the desired ready count
//!   when capacity allows;
//! - a Failed replica is kept and reported (a component that failed to load
//!   will fail the same way again; a new revision replaces it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use skiff_sdk::api::{App, Condition, ReplicaState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::informer::Informer;
use crate::scheduler::NodeSlot;
use crate::store::{Store, StoreError};
use observe::Scope;

mod apply;
mod observe;
mod plan;

pub use plan::plan;

/// Default resync of apps still moving (rolling out, draining, waiting for
/// replicas): time-driven steps such as a drained replica's removal or a
/// rollout's deadline happen without any write to wake the reconciler.
pub const DEFAULT_RESYNC: Duration = Duration::from_millis(500);
/// Longest a pass waits for the picture to hold this controller's last
/// writes (a refresh takes about a millisecond); then it plans anyway and
/// the store's conflicts catch what a stale picture gets wrong.
const CAUGHT_UP_WAIT: Duration = Duration::from_secs(1);

/// Default full resync: the whole picture is re-read and every app planned
/// this often, in case a change notification was ever missed. Rare, since
/// its cost grows with the fleet (at 10,000 apps a rebuild and full pass
/// take about half a second of CPU: every 30 s that alone was over 1% of a
/// core at rest). Notifications that may have been lost (a PostgreSQL
/// listener that reconnected) already force a rebuild at once; this is
/// only the safety net behind it.
pub const DEFAULT_FULL_RESYNC: Duration = Duration::from_secs(300);

/// Condition kind: every replica is placed on a node.
pub const SCHEDULED: &str = "Scheduled";
/// Condition kind: the desired number of replicas are Ready.
pub const AVAILABLE: &str = "Available";

/// An app as the reconciler wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredApp {
    /// Name.
    pub name: String,
    /// Current revision.
    pub revision: u64,
    /// Desired replica count.
    pub replicas: u32,
    /// Memory reserved per replica (memory limit × concurrency).
    pub reservation: u64,
    /// Labels a node must carry.
    pub selector: BTreeMap<String, String>,
    /// Spread replicas across nodes and zones.
    pub spread: bool,
    /// Replicas allowed above `replicas` while replacing (at least 1 when
    /// `max_unavailable` is 0).
    pub max_surge: u32,
    /// Ready replicas allowed below `replicas` while replacing.
    pub max_unavailable: u32,
    /// The last revision that was fully available.
    pub good_revision: Option<u64>,
    /// Where a failed rollout of the current revision returns (the good
    /// revision, when automatic rollback is on and its spec differs).
    pub rollback_to: Option<u64>,
    /// How long the current revision has been rolling out (milliseconds),
    /// when it is not the good one.
    pub rollout_age_ms: Option<u64>,
    /// A rollout older than this has failed.
    pub progress_deadline_ms: u64,
    /// Conditions as last recorded.
    pub conditions: Vec<Condition>,
    /// A node to place new replicas on when it fits: the node holding
    /// requests for the app while it wakes.
    pub prefer: Option<String>,
    /// One replica on every matching node instead of `replicas`.
    pub every_node: bool,
}

impl DesiredApp {
    /// The desired state of a stored app.
    pub fn from_app(app: &App) -> Self {
        let want = app.spec.replicas;
        let max_unavailable = app.spec.strategy.max_unavailable.resolve(want, false);
        let max_surge = app.spec.strategy.max_surge.resolve(want, true);
        Self {
            // Both zero could never make progress: surge by one then.
            max_surge: if max_surge == 0 && max_unavailable == 0 {
                1
            } else {
                max_surge
            },
            max_unavailable,
            good_revision: app.status.good_revision,
            rollback_to: None,
            rollout_age_ms: None,
            progress_deadline_ms: app.spec.strategy.progress_deadline_ms,
            name: app.name.clone(),
            revision: app.revision,
            replicas: app.spec.replicas,
            reservation: app.spec.quota.reservation_bytes(),
            selector: app.spec.placement.node_selector.clone(),
            spread: app.spec.placement.spread.unwrap_or(true),
            conditions: app.status.conditions.clone(),
            prefer: None,
            every_node: app.spec.placement.every_node,
        }
    }
}

/// A node as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedNode {
    /// Name, labels, capacity, readiness, cordon (allocation is computed).
    pub slot: NodeSlot,
    /// Its replicas are to move elsewhere.
    pub draining: bool,
    /// Gone long enough that its replicas are placed elsewhere.
    pub lost: bool,
}

/// A replica as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedReplica {
    /// Id.
    pub id: String,
    /// App.
    pub app: String,
    /// Revision it runs.
    pub revision: u64,
    /// Node it is assigned to.
    pub node: String,
    /// As last reported.
    pub state: ReplicaState,
    /// Why, when failed.
    pub reason: Option<String>,
    /// Memory it reserves.
    pub reservation: u64,
    /// How long it has been retiring (milliseconds), if it is.
    pub retiring_ms: Option<u64>,
}

/// How long a retiring replica stays out of the endpoints before it is
/// removed: nodes see an endpoints change within milliseconds (a long-poll),
/// and a second covers a slow one. Its in-flight requests then finish on
/// its node, each bounded by the app's timeout.
pub const DRAIN_MS: u64 = 1_000;

/// A revision becomes the good one (the target of automatic rollbacks) once
/// it has been rolling out this long and is fully available: long enough
/// for nodes to judge its first requests, so a release that fails on them
/// is rolled back rather than taken for good.
pub const GOOD_AFTER_MS: u64 = 5_000;

/// Why a replica is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// Its node is lost.
    NodeLost,
    /// More replicas than desired.
    ScaledDown,
    /// Replaced by a current replica (older revision, or drained node).
    Replaced,
    /// Its app or node no longer exists.
    Orphaned,
    /// It finished retiring.
    Drained,
}

/// One step towards the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create a replica of `app` at `revision` on `node`.
    Place {
        /// App.
        app: String,
        /// Revision.
        revision: u64,
        /// Node.
        node: String,
    },
    /// Take a Ready replica out of the endpoints; it is removed once
    /// drained.
    Retire {
        /// Replica id.
        id: String,
        /// App.
        app: String,
        /// Node it is on.
        node: String,
        /// Why.
        reason: RemoveReason,
    },
    /// Remove a replica.
    Remove {
        /// Replica id.
        id: String,
        /// App.
        app: String,
        /// Node it was on.
        node: String,
        /// Why.
        reason: RemoveReason,
    },
    /// Record that the app's current revision became fully available.
    SetGoodRevision {
        /// App.
        app: String,
        /// Revision.
        revision: u64,
    },
    /// The current revision's rollout failed: return to revision `to`.
    Rollback {
        /// App.
        app: String,
        /// Revision whose spec becomes current again.
        to: u64,
        /// Why the rollout failed.
        reason: String,
    },
    /// Record an app's conditions.
    SetConditions {
        /// App.
        app: String,
        /// All its conditions.
        conditions: Vec<Condition>,
    },
}

/// Reconciler settings.
#[derive(Clone, Debug)]
pub struct ReconcilerOptions {
    /// A node NotReady this long (from leadership on) is lost. Match the
    /// store's node grace.
    pub node_grace: Duration,
    /// How often apps that are still moving (rolling out, draining,
    /// waiting for replicas) are planned again while nothing is written.
    pub resync: Duration,
}

impl Default for ReconcilerOptions {
    fn default() -> Self {
        Self {
            node_grace: crate::DEFAULT_NODE_GRACE,
            resync: DEFAULT_RESYNC,
        }
    }
}

/// What one reconcile pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Apps planned.
    pub planned: usize,
    /// Replicas created.
    pub placed: usize,
    /// Replicas removed.
    pub removed: usize,
    /// Apps whose conditions were recorded.
    pub conditions: usize,
}

/// The reconcile loop of one controller.
pub struct Reconciler {
    store: Arc<dyn Store>,
    informer: Arc<Informer>,
    options: ReconcilerOptions,
    /// Apps not yet at rest: planned again every resync until they are.
    unsettled: BTreeSet<String>,
    /// When the unsettled apps were last planned: a pass woken by a change
    /// plans them only once a resync has passed since (at 500 applies a
    /// second, 2,500 new apps wait out their settling time at once, and
    /// planning all of them at every change made each apply cost them).
    unsettled_at: Option<tokio::time::Instant>,
}

impl Reconciler {
    /// A reconciler over `store`, seeing it through `informer`.
    pub fn new(store: Arc<dyn Store>, informer: Arc<Informer>, options: ReconcilerOptions) -> Self {
        Self {
            store,
            informer,
            options,
            unsettled: BTreeSet::new(),
            unsettled_at: None,
        }
    }

    /// Plans every app once (a full pass). With `evict_lost` false, NotReady
    /// nodes are waited for rather than given up.
    pub async fn reconcile(&mut self, evict_lost: bool) -> Result<Summary, StoreError> {
        self.reconcile_scope(&Scope::Everything, evict_lost).await
    }

    /// Plans the apps that changed since the last pass (as the informer
    /// reports them), those not yet at rest, and those with replicas on
    /// nodes that changed; everything if the informer was rebuilt.
    pub async fn reconcile_changed(&mut self, evict_lost: bool) -> Result<Summary, StoreError> {
        let dirty = self.informer.take_dirty();
        let scope = if dirty.everything {
            Scope::Everything
        } else {
            let mut apps = dirty.apps;
            // What changes is dirty; what waits for time is caught here.
            let due = self
                .unsettled_at
                .is_none_or(|at| at.elapsed() >= self.options.resync);
            if due {
                self.unsettled_at = Some(tokio::time::Instant::now());
                apps.extend(self.unsettled.iter().cloned());
            }
            let picture = self.informer.read();
            for node in &dirty.nodes {
                apps.extend(picture.replicas_on(node).map(|r| r.app.clone()));
            }
            if !dirty.nodes.is_empty() {
                // A node that joins, leaves or changes its labels may
                // change where every-node apps run.
                apps.extend(picture.every_node().iter().cloned());
            }
            Scope::Apps(apps)
        };
        if scope == Scope::Apps(BTreeSet::new()) {
            return Ok(Summary::default());
        }
        self.reconcile_scope(&scope, evict_lost).await
    }

    async fn reconcile_scope(
        &mut self,
        scope: &Scope,
        evict_lost: bool,
    ) -> Result<Summary, StoreError> {
        let rows = observe::Rows::gather(&self.informer, scope);
        let observed = observe::observe(&rows, crate::store::now_ms(), evict_lost);
        let actions = plan(&observed.desired, &observed.nodes, &observed.replicas);
        let moving = moving_apps(&observed, &actions);
        let mut summary = match self.apply(&observed.desired, actions).await {
            Ok(summary) => summary,
            Err(error) => {
                // Planned again on the next pass, not only at the next full
                // one.
                self.unsettled
                    .extend(observed.desired.iter().map(|d| d.name.clone()));
                self.unsettled
                    .extend(observed.replicas.iter().map(|r| r.app.clone()));
                return Err(error);
            }
        };
        summary.planned = observed.desired.len();
        match scope {
            Scope::Everything => self.unsettled = moving,
            Scope::Apps(names) => {
                for name in names {
                    self.unsettled.remove(name);
                }
                self.unsettled.extend(moving);
            }
        }
        Ok(summary)
    }

    /// Reconciles on every change and every resync while `leader` says this
    /// controller leads, until `shutdown`. Gaining leadership rebuilds the
    /// informer's picture and plans everything once.
    pub async fn run(mut self, mut leader: watch::Receiver<bool>, shutdown: CancellationToken) {
        // Woken once the endpoints show a change, so that what a pass
        // records (conditions, events) is never ahead of what nodes route by.
        let mut version = self.informer.published();
        loop {
            // Wait for leadership.
            while !*leader.borrow_and_update() {
                tokio::select! {
                    changed = leader.changed() => if changed.is_err() { return },
                    () = shutdown.cancelled() => return,
                }
            }
            let since = tokio::time::Instant::now();
            tracing::info!("leading: reconciling");
            self.unsettled.clear();
            let _ = self.informer.take_rebuilt();
            self.informer.request_rebuild();
            let mut evicting = false;
            let mut rebuilt = false;
            while *leader.borrow_and_update() {
                let evict_lost = since.elapsed() >= self.options.node_grace;
                // Plan only once the picture was rebuilt for this term.
                rebuilt |= self.informer.take_rebuilt();
                if rebuilt {
                    // Plan from a picture that holds this controller's own
                    // last writes: a pass woken early (a wake-up) must not
                    // place a replica again that the previous pass placed a
                    // moment ago.
                    self.informer.caught_up(CAUGHT_UP_WAIT).await;
                    let result = if evict_lost && !evicting {
                        // Lost nodes may be given up from now on.
                        let _ = self.informer.take_dirty();
                        self.reconcile(true).await
                    } else {
                        self.reconcile_changed(evict_lost).await
                    };
                    match result {
                        Ok(_) => evicting = evict_lost,
                        // A plan from a picture a moment behind the store
                        // (a replica already gone) fails as a whole; the
                        // next pass plans from the caught-up picture.
                        Err(error) => {
                            tracing::warn!(error = %crate::error_chain(&error), "reconcile failed; retrying");
                        }
                    }
                }
                // At rest, only a change (or the eviction deadline) wakes
                // this loop; apps still moving are planned every resync.
                let wake = if !rebuilt || !self.unsettled.is_empty() {
                    self.options.resync
                } else if !evicting {
                    self.options.node_grace.saturating_sub(since.elapsed())
                } else {
                    Duration::from_secs(3600)
                };
                tokio::select! {
                    _ = version.changed() => {}
                    // A request waits on an app's wake-up: plan it now.
                    () = self.informer.urgent() => {}
                    () = tokio::time::sleep(wake) => {}
                    changed = leader.changed() => if changed.is_err() { return },
                    () = shutdown.cancelled() => return,
                }
            }
            tracing::info!("no longer leading: reconciling stopped");
        }
    }
}

/// The apps of `observed` not at rest: an action planned for them, a
/// revision not yet proven, or replicas that are not all Ready, current,
/// and as many as wanted.
fn moving_apps(observed: &observe::Observed, actions: &[Action]) -> BTreeSet<String> {
    let mut moving: BTreeSet<String> = actions
        .iter()
        .map(|a| match a {
            Action::Place { app, .. }
            | Action::Retire { app, .. }
            | Action::Remove { app, .. }
            | Action::SetGoodRevision { app, .. }
            | Action::Rollback { app, .. }
            | Action::SetConditions { app, .. } => app.clone(),
        })
        .collect();
    // Per app: replicas, whether all are Ready and not retiring, and the
    // revisions they run.
    let mut seen: HashMap<&str, (u32, bool, BTreeSet<u64>)> = HashMap::new();
    for r in &observed.replicas {
        let entry = seen
            .entry(r.app.as_str())
            .or_insert_with(|| (0, true, BTreeSet::new()));
        entry.0 += 1;
        entry.1 &= r.state == ReplicaState::Ready && r.retiring_ms.is_none();
        entry.2.insert(r.revision);
    }
    for app in &observed.desired {
        let at_rest = app.good_revision == Some(app.revision)
            && match seen.get(app.name.as_str()) {
                Some((count, all_ready, revisions)) => {
                    *count == app.replicas
                        && *all_ready
                        && revisions.iter().all(|r| *r == app.revision)
                }
                None => app.replicas == 0,
            };
        if !at_rest {
            moving.insert(app.name.clone());
        }
    }
    moving
}

#[cfg(test)]
mod tests;
