//! `plan`: pure. Given the desired apps and the observed nodes and
//! replicas, the [`Action`]s that close the gap — and nothing once they
//! match. Unit-tested on plain data (`tests.rs`).

use std::collections::{HashMap, HashSet};

use skiff_sdk::api::{Condition, ReplicaState};

use super::{
    AVAILABLE, Action, DRAIN_MS, DesiredApp, GOOD_AFTER_MS, ObservedNode, ObservedReplica,
    RemoveReason, SCHEDULED,
};
use crate::scheduler::{NodeSlot, Request, Scheduler, Unschedulable};

/// The actions that take `replicas` on `nodes` to what `apps` desire;
/// empty once they match. `replicas` are those of `apps` (and orphans);
/// each node's `slot.allocated` is what other apps' replicas hold on it.
pub fn plan(
    apps: &[DesiredApp],
    nodes: &[ObservedNode],
    replicas: &[ObservedReplica],
) -> Vec<Action> {
    let mut actions = Vec::new();
    let node_by_name: HashMap<&str, &ObservedNode> =
        nodes.iter().map(|n| (n.slot.name.as_str(), n)).collect();
    let app_names: HashSet<&str> = apps.iter().map(|a| a.name.as_str()).collect();

    // `allocated` starts from what replicas outside this pass hold (zero in
    // a full pass): a pass over some apps sees the others' reservations.
    let mut slots: Vec<NodeSlot> = nodes
        .iter()
        .map(|n| NodeSlot {
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
    let node_of = |r: &ObservedReplica| nodes.get(r.node.as_str()).copied();
    let is_ready = |r: &ObservedReplica| {
        r.state == ReplicaState::Ready && node_of(r).is_some_and(|n| n.slot.ready)
    };
    let (mut current, outgoing): (Vec<&ObservedReplica>, Vec<&ObservedReplica>) = mine
        .iter()
        .partition(|r| r.revision == app.revision && node_of(r).is_some_and(|n| !n.draining));
    let proven = app.good_revision == Some(app.revision);
    // Every-node placement: the nodes that should run one replica each
    // (those matching that are ready, or already run one), else none.
    let targets: Option<Vec<&str>> = app.every_node.then(|| {
        let mut targets: Vec<&str> = nodes
            .values()
            .filter(|n| !n.draining && !n.lost)
            .filter(|n| {
                app.selector
                    .iter()
                    .all(|(k, v)| n.slot.labels.get(k) == Some(v))
            })
            .filter(|n| {
                (n.slot.ready && !n.slot.cordoned) || current.iter().any(|r| r.node == n.slot.name)
            })
            .map(|n| n.slot.name.as_str())
            .collect();
        targets.sort_unstable();
        targets
    });
    let want = targets.as_ref().map_or(app.replicas as usize, Vec::len);

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

    // Every node: one replica per target node; the others go.
    if let Some(targets) = &targets {
        let mut kept: HashSet<&str> = HashSet::new();
        current.sort_by_key(|r| (!is_ready(r), r.id.clone()));
        current.retain(|r| {
            let keep = targets.contains(&r.node.as_str()) && kept.insert(r.node.as_str());
            if !keep {
                actions.push(retire(r, RemoveReason::ScaledDown));
            }
            keep
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
    let uncovered: Vec<&str> = targets
        .iter()
        .flatten()
        .filter(|n| !current.iter().any(|r| r.node == **n))
        .copied()
        .collect();
    for placed in 0..missing {
        let request = Request {
            app: &app.name,
            reservation: app.reservation,
            selector: &app.selector,
            spread: app.spread,
            prefer: app.prefer.as_deref(),
        };
        let placement = match uncovered.get(placed) {
            Some(node) => scheduler.place_on(&request, node),
            None if targets.is_some() => break,
            None => scheduler.place(&request),
        };
        match placement {
            Ok(node) => actions.push(Action::Place {
                app: app.name.clone(),
                revision: app.revision,
                node,
            }),
            Err(why) => {
                unschedulable = Some((why, missing - placed));
                // Every node: the other nodes may still fit.
                if targets.is_none() {
                    break;
                }
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
    let conditions = conditions(want, &current, ready_current, unschedulable, is_ready);
    if conditions != app.conditions {
        actions.push(Action::SetConditions {
            app: app.name.clone(),
            conditions,
        });
    }
}

fn conditions(
    want: usize,
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
