//! `observe`: what one pass works on, gathered from the informer's picture
//! ([`Rows::gather`]: the apps in scope, their replicas, every node with its
//! live readiness and what other apps hold on it), then turned into the
//! plain data [`plan`](super::plan) works on ([`observe`], pure: rows and
//! one `now` in, nothing read twice).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use skiff_sdk::api::{App, Node, Replica, Revision};

use super::{DesiredApp, ObservedNode, ObservedReplica};
use crate::informer::Informer;
use crate::scheduler::NodeSlot;

/// Which apps a pass plans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// Every app and every replica.
    Everything,
    /// These apps (existing or deleted) and their replicas.
    Apps(BTreeSet<String>),
}

/// The rows one pass needs.
pub(super) struct Rows {
    pub apps: Vec<Arc<App>>,
    pub nodes: Vec<Arc<Node>>,
    /// Nodes whose lease is live.
    pub ready: HashSet<String>,
    /// Memory held on each node by replicas outside the scope.
    pub baseline: HashMap<String, u64>,
    /// The scope's replicas, each with what it reserves.
    pub replicas: Vec<(Arc<Replica>, u64)>,
    /// Revision histories of the apps that need one: apps still rolling
    /// out.
    pub histories: HashMap<String, Arc<Vec<Revision>>>,
    /// Apps waking up, to the node that holds their requests.
    pub prefer: HashMap<String, String>,
}

impl Rows {
    /// The rows of `scope`, from the informer's picture.
    pub(super) fn gather(informer: &Informer, scope: &Scope) -> Self {
        let mut rows = {
            let picture = informer.read();
            let leases = informer.leases();
            let nodes: Vec<Arc<Node>> = picture.nodes.values().cloned().collect();
            let ready = nodes
                .iter()
                .filter(|n| leases.is_ready(&n.name))
                .map(|n| n.name.clone())
                .collect();
            let (apps, replicas): (Vec<Arc<App>>, Vec<Arc<Replica>>) = match scope {
                Scope::Everything => (
                    picture.apps.values().cloned().collect(),
                    picture.replicas.values().cloned().collect(),
                ),
                Scope::Apps(names) => (
                    names
                        .iter()
                        .filter_map(|n| picture.apps.get(n).cloned())
                        .collect(),
                    names
                        .iter()
                        .flat_map(|n| picture.replicas_of(n).cloned())
                        .collect(),
                ),
            };
            let mut baseline = match scope {
                Scope::Everything => HashMap::new(),
                Scope::Apps(_) => picture.allocated.clone(),
            };
            let replicas: Vec<(Arc<Replica>, u64)> = replicas
                .into_iter()
                .map(|r| {
                    let reservation = picture.reservation(&r);
                    if let Some(held) = baseline.get_mut(&r.node) {
                        *held = held.saturating_sub(reservation);
                    }
                    (r, reservation)
                })
                .collect();
            let histories = apps
                .iter()
                .filter_map(|a| {
                    picture
                        .histories
                        .get(&a.name)
                        .map(|h| (a.name.clone(), h.clone()))
                })
                .collect();
            Rows {
                apps,
                nodes,
                ready,
                baseline,
                replicas,
                histories,
                prefer: informer.demand().preferred(crate::store::now_ms()),
            }
        };
        rows.replicas.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        rows
    }
}

/// What [`plan`](super::plan) works on.
pub(super) struct Observed {
    pub desired: Vec<DesiredApp>,
    pub nodes: Vec<ObservedNode>,
    pub replicas: Vec<ObservedReplica>,
}

/// Plain data from `rows` at `now` (Unix ms). With `evict_lost` false,
/// NotReady nodes are not lost yet.
pub(super) fn observe(rows: &Rows, now: i64, evict_lost: bool) -> Observed {
    let mut desired = Vec::with_capacity(rows.apps.len());
    for app in &rows.apps {
        let mut d = DesiredApp::from_app(app);
        d.prefer = rows.prefer.get(&app.name).cloned();
        if app.status.good_revision != Some(app.revision) {
            // Rolling out: how long for, and where a failure returns.
            let revisions = rows
                .histories
                .get(&app.name)
                .map(|h| h.as_slice())
                .unwrap_or_default();
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
    let nodes: Vec<ObservedNode> = rows
        .nodes
        .iter()
        .map(|n| {
            let ready = rows.ready.contains(&n.name);
            ObservedNode {
                slot: NodeSlot {
                    name: n.name.clone(),
                    labels: n.labels.clone(),
                    ready,
                    cordoned: n.cordoned,
                    capacity: n.capacity.memory_bytes,
                    allocated: rows.baseline.get(&n.name).copied().unwrap_or(0),
                },
                draining: n.draining,
                lost: evict_lost && !ready,
            }
        })
        .collect();
    let replicas: Vec<ObservedReplica> = rows
        .replicas
        .iter()
        .map(|(r, reservation)| ObservedReplica {
            reservation: *reservation,
            id: r.id.clone(),
            app: r.app.clone(),
            revision: r.revision,
            node: r.node.clone(),
            state: r.state,
            reason: r.reason.clone(),
            retiring_ms: r
                .retiring_since
                .map(|at| u64::try_from(now - at).unwrap_or(0)),
        })
        .collect();
    Observed {
        desired,
        nodes,
        replicas,
    }
}
