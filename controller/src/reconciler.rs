//! The reconciler: one idempotent loop that drives the replicas the nodes
//! run towards what the apps ask for.
//!
//! [`plan`] is pure: given the desired apps and the observed nodes and
//! replicas it returns the [`Action`]s that close the gap, and nothing once
//! they match. [`Reconciler::reconcile`] reads the store, plans, applies the
//! replica changes in one transaction (with their events) and records each
//! app's conditions; it is safe to run at any moment, any number of times.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use skiff_sdk::api::{App, Condition, NodeState, ReplicaState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::scheduler::{NodeSlot, Request, Scheduler, Unschedulable};
use crate::store::{NewEvent, NewReplica, ReplicaChange, Store, StoreError};

/// Default periodic resync: how soon a lost node is noticed after its grace
/// period ends, since nothing is written when a node dies.
pub const DEFAULT_RESYNC: Duration = Duration::from_millis(500);

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

/// The actions that take `replicas` on `nodes` to what `apps` desire;
/// empty once they match.
pub fn plan(
    apps: &[DesiredApp],
    nodes: &[ObservedNode],
    replicas: &[ObservedReplica],
) -> Vec<Action> {
    let mut actions = Vec::new();
    let node_by_name: HashMap<&str, &ObservedNode> =
        nodes.iter().map(|n| (n.slot.name.as_str(), n)).collect();
    let app_names: HashSet<&str> = apps.iter().map(|a| a.name.as_str()).collect();

    let mut slots: Vec<NodeSlot> = nodes
        .iter()
        .map(|n| NodeSlot {
            allocated: 0,
            cordoned: n.slot.cordoned || n.draining,
            ..n.slot.clone()
        })
        .collect();
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.slot.name.as_str(), i))
        .collect();

    // Replicas that stay in the picture, by app.
    let mut by_app: HashMap<&str, Vec<&ObservedReplica>> = HashMap::new();
    for r in replicas {
        let node = node_by_name.get(r.node.as_str());
        let reason = match node {
            _ if !app_names.contains(r.app.as_str()) => Some(RemoveReason::Orphaned),
            None => Some(RemoveReason::Orphaned),
            Some(n) if n.lost => Some(RemoveReason::NodeLost),
            Some(_) => None,
        };
        let drained = r.retiring_ms.map(|age| age >= DRAIN_MS);
        match (reason, drained) {
            (Some(reason), _) => actions.push(remove(r, reason)),
            (None, Some(true)) => actions.push(remove(r, RemoveReason::Drained)),
            (None, Some(false)) => {
                // Still draining: holds its memory, serves nobody new.
                if let Some(&i) = index.get(r.node.as_str()) {
                    slots[i].allocated = slots[i].allocated.saturating_add(r.reservation);
                }
            }
            (None, None) => {
                if let Some(&i) = index.get(r.node.as_str()) {
                    slots[i].allocated = slots[i].allocated.saturating_add(r.reservation);
                }
                by_app.entry(r.app.as_str()).or_default().push(r);
            }
        }
    }
    let mut scheduler = Scheduler::new(slots);
    // Spreading counts the replicas of the current revision only: the new
    // revision spreads on its own while the old one is replaced.
    let revisions: HashMap<&str, u64> =
        apps.iter().map(|a| (a.name.as_str(), a.revision)).collect();
    for r in by_app.values().flatten() {
        if revisions.get(r.app.as_str()) == Some(&r.revision) {
            scheduler.count(&r.app, &r.node);
        }
    }

    for app in apps {
        let mine = by_app.remove(app.name.as_str()).unwrap_or_default();
        plan_app(app, &mine, &node_by_name, &mut scheduler, &mut actions);
    }
    actions
}

/// Retires a Ready replica (it may be serving); removes one that is not.
fn retire(r: &ObservedReplica, reason: RemoveReason) -> Action {
    if r.state != ReplicaState::Ready {
        return remove(r, reason);
    }
    Action::Retire {
        id: r.id.clone(),
        app: r.app.clone(),
        node: r.node.clone(),
        reason,
    }
}

fn remove(r: &ObservedReplica, reason: RemoveReason) -> Action {
    Action::Remove {
        id: r.id.clone(),
        app: r.app.clone(),
        node: r.node.clone(),
        reason,
    }
}

fn plan_app(
    app: &DesiredApp,
    mine: &[&ObservedReplica],
    nodes: &HashMap<&str, &ObservedNode>,
    scheduler: &mut Scheduler,
    actions: &mut Vec<Action>,
) {
    let want = app.replicas as usize;
    let node_of = |r: &ObservedReplica| nodes.get(r.node.as_str()).copied();
    let is_ready = |r: &ObservedReplica| {
        r.state == ReplicaState::Ready && node_of(r).is_some_and(|n| n.slot.ready)
    };
    let (mut current, outgoing): (Vec<&ObservedReplica>, Vec<&ObservedReplica>) = mine
        .iter()
        .partition(|r| r.revision == app.revision && node_of(r).is_some_and(|n| !n.draining));
    let proven = app.good_revision == Some(app.revision);

    // A rollout that fails (a replica of the new revision failed, or the
    // deadline passed) returns to the last good revision.
    if !proven && let Some(to) = app.rollback_to {
        let failed = current.iter().find(|r| r.state == ReplicaState::Failed);
        let overdue = app
            .rollout_age_ms
            .is_some_and(|age| age > app.progress_deadline_ms);
        let reason = match (failed, overdue) {
            (Some(r), _) => Some(format!(
                "revision {} failed on {}: {}",
                app.revision,
                r.node,
                r.reason.as_deref().unwrap_or("no reason given")
            )),
            (None, true) => Some(format!(
                "revision {} made no full progress within {} ms",
                app.revision, app.progress_deadline_ms
            )),
            (None, false) => None,
        };
        if let Some(reason) = reason {
            actions.push(Action::Rollback {
                app: app.name.clone(),
                to,
                reason,
            });
            return;
        }
    }
    // A revision that already proved itself does not fail by its nature: a
    // replica of it that fails now (e.g. its health check after it was
    // Ready) is replaced.
    if proven {
        current.retain(|r| {
            if r.state == ReplicaState::Failed {
                scheduler.release(&r.app, &r.node, r.reservation);
                actions.push(remove(r, RemoveReason::Replaced));
                false
            } else {
                true
            }
        });
    }

    // Scale down: drop not-ready replicas first, then where the app is most
    // concentrated, then the newest-named (ids sort by creation only
    // loosely, but deterministically).
    if current.len() > want {
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for r in &current {
            *per_node.entry(r.node.as_str()).or_default() += 1;
        }
        current.sort_by(|a, b| {
            (
                is_ready(a),
                std::cmp::Reverse(per_node[a.node.as_str()]),
                &b.id,
            )
                .cmp(&(
                    is_ready(b),
                    std::cmp::Reverse(per_node[b.node.as_str()]),
                    &a.id,
                ))
        });
        let extra = current.len() - want;
        for r in current.drain(..extra) {
            actions.push(retire(r, RemoveReason::ScaledDown));
        }
    }

    // Scale up (or replace). While outgoing replicas remain, the total
    // stays within `want + max_surge`.
    let mut unschedulable: Option<(Unschedulable, usize)> = None;
    let mut missing = want.saturating_sub(current.len());
    if !outgoing.is_empty() {
        let ceiling = want + app.max_surge as usize;
        missing = missing.min(ceiling.saturating_sub(current.len() + outgoing.len()));
    }
    for placed in 0..missing {
        let request = Request {
            app: &app.name,
            reservation: app.reservation,
            selector: &app.selector,
            spread: app.spread,
        };
        match scheduler.place(&request) {
            Ok(node) => actions.push(Action::Place {
                app: app.name.clone(),
                revision: app.revision,
                node,
            }),
            Err(why) => {
                unschedulable = Some((why, missing - placed));
                break;
            }
        }
    }

    // Outgoing replicas leave once current ones can take their load: the
    // not-ready ones at once, ready ones only while the ready count stays
    // at or above `want - max_unavailable`. Those sharing a node with a
    // ready current replica go first, so every node keeps serving locally.
    let ready_current = current.iter().filter(|r| is_ready(r)).count();
    let ready_outgoing = outgoing.iter().filter(|r| is_ready(r)).count();
    let floor = want.saturating_sub(app.max_unavailable as usize);
    let mut may_remove_ready = (ready_current + ready_outgoing).saturating_sub(floor);
    let covered: HashSet<&str> = current
        .iter()
        .filter(|r| is_ready(r))
        .map(|r| r.node.as_str())
        .collect();
    let mut outgoing = outgoing;
    outgoing.sort_by_key(|r| (!covered.contains(r.node.as_str()), r.id.clone()));
    for r in &outgoing {
        if is_ready(r) {
            if may_remove_ready == 0 {
                continue;
            }
            may_remove_ready -= 1;
        }
        actions.push(remove(r, RemoveReason::Replaced));
    }

    let settled = app.rollout_age_ms.is_none_or(|age| age >= GOOD_AFTER_MS);
    if outgoing.is_empty() && current.len() == want && ready_current >= want && !proven && settled {
        actions.push(Action::SetGoodRevision {
            app: app.name.clone(),
            revision: app.revision,
        });
    }
    let conditions = conditions(app, &current, ready_current, unschedulable, is_ready);
    if conditions != app.conditions {
        actions.push(Action::SetConditions {
            app: app.name.clone(),
            conditions,
        });
    }
}

fn conditions(
    app: &DesiredApp,
    current: &[&ObservedReplica],
    ready: usize,
    unschedulable: Option<(Unschedulable, usize)>,
    is_ready: impl Fn(&ObservedReplica) -> bool,
) -> Vec<Condition> {
    let scheduled = match unschedulable {
        Some((why, pending)) => Condition {
            kind: SCHEDULED.into(),
            status: false,
            reason: "Unschedulable".into(),
            message: format!("{pending} replica(s) cannot be placed: {why}"),
        },
        None => Condition {
            kind: SCHEDULED.into(),
            status: true,
            reason: "Scheduled".into(),
            message: "every replica is placed on a node".into(),
        },
    };
    let want = app.replicas as usize;
    let mut message = format!("{ready}/{want} replicas ready");
    let failed: Vec<String> = current
        .iter()
        .filter(|r| r.state == ReplicaState::Failed)
        .map(|r| {
            format!(
                "{} on {} failed: {}",
                r.id,
                r.node,
                r.reason.as_deref().unwrap_or("no reason given")
            )
        })
        .collect();
    if !failed.is_empty() {
        message.push_str("; ");
        message.push_str(&failed.join("; "));
    }
    let not_ready_nodes = current
        .iter()
        .filter(|r| r.state == ReplicaState::Ready && !is_ready(r))
        .count();
    if not_ready_nodes > 0 {
        message.push_str(&format!("; {not_ready_nodes} on nodes that are not ready"));
    }
    let available = Condition {
        kind: AVAILABLE.into(),
        status: ready >= want,
        reason: if ready >= want {
            "MinimumReplicasReady"
        } else if failed.is_empty() {
            "ReplicasNotReady"
        } else {
            "ReplicaFailure"
        }
        .into(),
        message,
    };
    vec![scheduled, available]
}

/// Reconciler settings.
#[derive(Clone, Debug)]
pub struct ReconcilerOptions {
    /// A node NotReady this long (from leadership on) is lost. Match the
    /// store's node grace.
    pub node_grace: Duration,
    /// Periodic resync.
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
    options: ReconcilerOptions,
}

impl Reconciler {
    /// A reconciler over `store`, woken by the store's own writes
    /// ([`Store::changes`]) and every `options.resync`.
    pub fn new(store: Arc<dyn Store>, options: ReconcilerOptions) -> Self {
        Self { store, options }
    }

    /// Reads, plans and applies once. With `evict_lost` false, NotReady
    /// nodes are waited for rather than given up.
    pub async fn reconcile(&self, evict_lost: bool) -> Result<Summary, StoreError> {
        let apps = self.store.apps().await?;
        let nodes = self.store.nodes().await?;
        let records = self.store.replicas(None).await?;

        let mut reservations: HashMap<(String, u64), u64> = apps
            .iter()
            .map(|a| {
                (
                    (a.name.clone(), a.revision),
                    a.spec.quota.reservation_bytes(),
                )
            })
            .collect();
        // Revision histories, read once per app that needs one: apps still
        // rolling out, and apps with replicas of an older revision (whose
        // own quota decides what they hold).
        let current: HashMap<&str, u64> =
            apps.iter().map(|a| (a.name.as_str(), a.revision)).collect();
        let mut wanted: HashSet<&str> = apps
            .iter()
            .filter(|a| a.status.good_revision != Some(a.revision))
            .map(|a| a.name.as_str())
            .collect();
        wanted.extend(
            records
                .iter()
                .filter(|r| {
                    current
                        .get(r.app.as_str())
                        .is_some_and(|rev| *rev != r.revision)
                })
                .map(|r| r.app.as_str()),
        );
        let mut histories: HashMap<&str, Vec<skiff_sdk::api::Revision>> = HashMap::new();
        for app in wanted {
            let revisions = self.store.revisions(app).await?;
            for rev in &revisions {
                reservations
                    .entry((rev.app.clone(), rev.number))
                    .or_insert_with(|| rev.spec.quota.reservation_bytes());
            }
            histories.insert(app, revisions);
        }
        let mut desired = Vec::with_capacity(apps.len());
        for app in &apps {
            let mut d = DesiredApp::from_app(app);
            if app.status.good_revision != Some(app.revision) {
                // Rolling out: how long for, and where a failure returns.
                let revisions = histories
                    .get(app.name.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let now = crate::store::now_ms();
                d.rollout_age_ms = revisions
                    .iter()
                    .find(|r| r.number == app.revision)
                    .map(|r| u64::try_from(now - r.created_at).unwrap_or(0));
                let differs = |spec: &skiff_sdk::api::AppSpec| {
                    skiff_sdk::api::AppSpec {
                        replicas: app.spec.replicas,
                        ..spec.clone()
                    } != app.spec
                };
                d.rollback_to = app
                    .status
                    .good_revision
                    .filter(|_| app.spec.strategy.auto_rollback)
                    .filter(|good| {
                        revisions
                            .iter()
                            .any(|r| r.number == *good && differs(&r.spec))
                    });
            }
            desired.push(d);
        }
        let observed_nodes: Vec<ObservedNode> = nodes
            .iter()
            .map(|n| ObservedNode {
                slot: NodeSlot {
                    name: n.name.clone(),
                    labels: n.labels.clone(),
                    ready: n.state == NodeState::Ready,
                    cordoned: n.cordoned,
                    capacity: n.capacity.memory_bytes,
                    allocated: 0,
                },
                draining: n.draining,
                lost: evict_lost && n.state == NodeState::NotReady,
            })
            .collect();
        let replicas: Vec<ObservedReplica> = records
            .into_iter()
            .map(|r| ObservedReplica {
                reservation: reservations
                    .get(&(r.app.clone(), r.revision))
                    .copied()
                    .unwrap_or(0),
                id: r.id,
                app: r.app,
                revision: r.revision,
                node: r.node,
                state: r.state,
                reason: r.reason,
                retiring_ms: r
                    .retiring_since
                    .map(|at| u64::try_from(crate::store::now_ms() - at).unwrap_or(0)),
            })
            .collect();

        let actions = plan(&desired, &observed_nodes, &replicas);
        self.apply(&desired, actions).await
    }

    async fn apply(
        &self,
        desired: &[DesiredApp],
        actions: Vec<Action>,
    ) -> Result<Summary, StoreError> {
        let mut change = ReplicaChange::default();
        let mut conditions = Vec::new();
        let mut good = Vec::new();
        let mut rollbacks = Vec::new();
        // Events are grouped per (kind, app, node) so that a large pass
        // writes a handful of rows, not one per replica.
        let mut groups: BTreeMap<(&'static str, String, Option<String>), Vec<String>> =
            BTreeMap::new();
        for action in actions {
            match action {
                Action::Place {
                    app,
                    revision,
                    node,
                } => {
                    let id = replica_id(&app);
                    groups
                        .entry(("ReplicaScheduled", app.clone(), None))
                        .or_default()
                        .push(format!("{id} on {node}"));
                    change.add.push(NewReplica {
                        id,
                        app,
                        revision,
                        node,
                    });
                }
                Action::Remove {
                    id,
                    reason: RemoveReason::Drained,
                    ..
                } => change.remove.push(id),
                Action::Retire {
                    id,
                    app,
                    node,
                    reason,
                } => {
                    let kind = match reason {
                        RemoveReason::ScaledDown => "ReplicaRemoved",
                        _ => "ReplicaReplaced",
                    };
                    groups
                        .entry((kind, app, None))
                        .or_default()
                        .push(format!("{id} on {node}"));
                    change.retire.push(id);
                }
                Action::Remove {
                    id,
                    app,
                    node,
                    reason,
                } => {
                    let (kind, on) = match reason {
                        RemoveReason::NodeLost => ("NodeLost", Some(node.clone())),
                        RemoveReason::ScaledDown => ("ReplicaRemoved", None),
                        RemoveReason::Replaced => ("ReplicaReplaced", None),
                        RemoveReason::Orphaned | RemoveReason::Drained => ("ReplicaOrphaned", None),
                    };
                    groups
                        .entry((kind, app, on))
                        .or_default()
                        .push(format!("{id} on {node}"));
                    change.remove.push(id);
                }
                Action::SetConditions { app, conditions: c } => conditions.push((app, c)),
                Action::SetGoodRevision { app, revision } => good.push((app, revision)),
                Action::Rollback { app, to, reason } => rollbacks.push((app, to, reason)),
            }
        }
        for ((kind, app, node), items) in groups {
            let what = summarize(&items);
            let message = match kind {
                "ReplicaScheduled" => format!("placed {what}"),
                "NodeLost" => format!(
                    "node {} missed its heartbeats for the grace period; replacing {what}",
                    node.as_deref().unwrap_or("?")
                ),
                "ReplicaReplaced" => format!("replaced {what}"),
                "ReplicaOrphaned" => format!("removed orphaned {what}"),
                _ => format!("scaled down: removed {what}"),
            };
            change.events.push(NewEvent {
                app: Some(app),
                node,
                kind: kind.into(),
                message,
            });
        }
        for (app, c) in &conditions {
            let before = desired
                .iter()
                .find(|d| &d.name == app)
                .and_then(|d| d.conditions.iter().find(|c| c.kind == SCHEDULED));
            if let Some(now) = c.iter().find(|c| c.kind == SCHEDULED && !c.status)
                && before != Some(now)
            {
                change.events.push(NewEvent {
                    app: Some(app.clone()),
                    node: None,
                    kind: "Unschedulable".into(),
                    message: now.message.clone(),
                });
            }
        }

        let summary = Summary {
            placed: change.add.len(),
            removed: change.remove.len() + change.retire.len(),
            conditions: conditions.len() + good.len() + rollbacks.len(),
        };
        if change != ReplicaChange::default() {
            self.store.change_replicas(&change).await?;
        }
        for (app, revision) in good {
            match self.store.set_good_revision(&app, revision).await {
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for (app, to, reason) in rollbacks {
            tracing::warn!(%app, to, %reason, "rollout failed: rolling back");
            self.store
                .record_event(NewEvent {
                    app: Some(app.clone()),
                    node: None,
                    kind: "RolloutFailed".into(),
                    message: format!("{reason}; rolling back to revision {to}"),
                })
                .await?;
            match self.store.rollback_app(&app, Some(to), None).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for (app, c) in conditions {
            match self.store.set_app_conditions(&app, &c).await {
                // Deleted meanwhile: the next pass sees it gone.
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if summary != Summary::default() {
            tracing::info!(
                placed = summary.placed,
                removed = summary.removed,
                conditions = summary.conditions,
                "reconciled"
            );
        }
        Ok(summary)
    }

    /// Reconciles on every change and every resync while `leader` says this
    /// controller leads, until `shutdown`.
    pub async fn run(self, mut leader: watch::Receiver<bool>, shutdown: CancellationToken) {
        let mut changes = self.store.changes();
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
            while *leader.borrow_and_update() {
                let evict_lost = since.elapsed() >= self.options.node_grace;
                if let Err(error) = self.reconcile(evict_lost).await {
                    tracing::warn!(error = %crate::error_chain(&error), "reconcile failed; retrying");
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    () = tokio::time::sleep(self.options.resync) => {}
                    changed = leader.changed() => if changed.is_err() { return },
                    () = shutdown.cancelled() => return,
                }
            }
            tracing::info!("no longer leading: reconciling stopped");
        }
    }
}

/// `<app>-<8 hex>`: unique enough (32 random bits per app; a clash fails
/// the insert and the next pass draws again).
fn replica_id(app: &str) -> String {
    format!("{app}-{:08x}", rand::rng().random::<u32>())
}

fn summarize(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let noun = if items.len() == 1 {
        "replica"
    } else {
        "replicas"
    };
    let mut out = format!(
        "{} {noun}: {}",
        items.len(),
        items[..items.len().min(SHOWN)].join(", ")
    );
    if items.len() > SHOWN {
        out.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    out
}

#[cfg(test)]
mod tests;
