//! `observe`: what the store holds, read once per pass ([`Rows::read`]),
//! turned into the plain data [`plan`](super::plan) works on
//! ([`observe`], pure: rows and one `now` in, nothing read twice).

use std::collections::{HashMap, HashSet};

use skiff_sdk::api::{App, Node, NodeState, Replica, Revision};

use super::{DesiredApp, ObservedNode, ObservedReplica};
use crate::scheduler::NodeSlot;
use crate::store::{Store, StoreError};

/// The store rows one pass needs.
pub(super) struct Rows {
    apps: Vec<App>,
    nodes: Vec<Node>,
    replicas: Vec<Replica>,
    /// Revision histories of the apps that need one: apps still rolling
    /// out, and apps with replicas of an older revision (whose own quota
    /// decides what they hold).
    histories: HashMap<String, Vec<Revision>>,
}

impl Rows {
    /// Reads the rows of one pass.
    pub(super) async fn read(store: &dyn Store) -> Result<Self, StoreError> {
        let apps = store.apps().await?;
        let nodes = store.nodes().await?;
        let replicas = store.replicas(None).await?;
        let current: HashMap<&str, u64> =
            apps.iter().map(|a| (a.name.as_str(), a.revision)).collect();
        let mut wanted: HashSet<&str> = apps
            .iter()
            .filter(|a| a.status.good_revision != Some(a.revision))
            .map(|a| a.name.as_str())
            .collect();
        wanted.extend(
            replicas
                .iter()
                .filter(|r| {
                    current
                        .get(r.app.as_str())
                        .is_some_and(|rev| *rev != r.revision)
                })
                .map(|r| r.app.as_str()),
        );
        let mut histories = HashMap::new();
        for app in wanted {
            histories.insert(app.to_owned(), store.revisions(app).await?);
        }
        Ok(Self {
            apps,
            nodes,
            replicas,
            histories,
        })
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
    let Rows {
        apps,
        nodes,
        replicas: records,
        histories,
    } = rows;
    // What each revision's replica reserves: the current spec's, or for an
    // older revision its own.
    let mut reservations: HashMap<(String, u64), u64> = apps
        .iter()
        .map(|a| {
            (
                (a.name.clone(), a.revision),
                a.spec.quota.reservation_bytes(),
            )
        })
        .collect();
    for revisions in histories.values() {
        for rev in revisions {
            reservations
                .entry((rev.app.clone(), rev.number))
                .or_insert_with(|| rev.spec.quota.reservation_bytes());
        }
    }
    let mut desired = Vec::with_capacity(apps.len());
    for app in apps {
        let mut d = DesiredApp::from_app(app);
        if app.status.good_revision != Some(app.revision) {
            // Rolling out: how long for, and where a failure returns.
            let revisions = histories
                .get(&app.name)
                .map(Vec::as_slice)
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
        .iter()
        .map(|r| ObservedReplica {
            reservation: reservations
                .get(&(r.app.clone(), r.revision))
                .copied()
                .unwrap_or(0),
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
        nodes: observed_nodes,
        replicas,
    }
}
