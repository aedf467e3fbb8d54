//! `plan` on plain data: every rule, and that it is quiet once the
//! observed state matches.

use super::*;

const MI: u64 = 1 << 20;

fn app(name: &str, replicas: u32) -> DesiredApp {
    DesiredApp {
        name: name.into(),
        revision: 1,
        replicas,
        reservation: 100 * MI,
        selector: BTreeMap::new(),
        spread: true,
        max_surge: 1,
        max_unavailable: 0,
        good_revision: Some(1),
        rollback_to: None,
        rollout_age_ms: None,
        progress_deadline_ms: 60_000,
        conditions: Vec::new(),
        prefer: None,
        every_node: false,
    }
}

fn node(name: &str) -> ObservedNode {
    ObservedNode {
        slot: NodeSlot {
            name: name.into(),
            labels: BTreeMap::new(),
            ready: true,
            cordoned: false,
            capacity: 1024 * MI,
            allocated: 0,
        },
        draining: false,
        lost: false,
    }
}

fn replica(id: &str, app: &str, node: &str, state: ReplicaState) -> ObservedReplica {
    ObservedReplica {
        id: id.into(),
        app: app.into(),
        revision: 1,
        node: node.into(),
        state,
        reason: None,
        reservation: 100 * MI,
        retiring_ms: None,
    }
}

/// Applies a plan to the observed replicas the way the store and the
/// nodes would (placed replicas come up Ready), and the conditions to the
/// apps; returns the new replicas.
fn settle(
    apps: &mut [DesiredApp],
    replicas: Vec<ObservedReplica>,
    actions: &[Action],
) -> Vec<ObservedReplica> {
    let mut out: Vec<ObservedReplica> = replicas
        .into_iter()
        .filter(|r| {
            !actions
                .iter()
                .any(|a| matches!(a, Action::Remove { id, .. } | Action::Retire { id, .. } if id == &r.id))
        })
        .collect();
    for (n, action) in actions.iter().enumerate() {
        match action {
            Action::Place {
                app,
                revision,
                node,
            } => out.push(ObservedReplica {
                revision: *revision,
                ..replica(&format!("{app}-new{n}"), app, node, ReplicaState::Ready)
            }),
            Action::SetConditions { app, conditions } => {
                if let Some(a) = apps.iter_mut().find(|a| &a.name == app) {
                    a.conditions = conditions.clone();
                }
            }
            Action::SetGoodRevision { app, revision } => {
                if let Some(a) = apps.iter_mut().find(|a| &a.name == app) {
                    a.good_revision = Some(*revision);
                }
            }
            Action::Remove { .. } | Action::Retire { .. } | Action::Rollback { .. } => {}
        }
    }
    out
}

fn places(actions: &[Action]) -> Vec<&str> {
    let mut nodes: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Place { node, .. } => Some(node.as_str()),
            _ => None,
        })
        .collect();
    nodes.sort_unstable();
    nodes
}

fn removes(actions: &[Action]) -> Vec<(&str, RemoveReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Remove { id, reason, .. } | Action::Retire { id, reason, .. } => {
                Some((id.as_str(), *reason))
            }
            _ => None,
        })
        .collect()
}

fn condition<'a>(actions: &'a [Action], kind: &str) -> Option<&'a Condition> {
    actions.iter().find_map(|a| match a {
        Action::SetConditions { conditions, .. } => conditions.iter().find(|c| c.kind == kind),
        _ => None,
    })
}

#[test]
fn places_one_per_node_then_is_quiet() {
    let mut apps = vec![app("web", 3)];
    let nodes = vec![node("a"), node("b"), node("c")];
    let actions = plan(&apps, &nodes, &[]);
    assert_eq!(places(&actions), ["a", "b", "c"]);
    let scheduled = condition(&actions, SCHEDULED).unwrap();
    assert!(scheduled.status);
    let replicas = settle(&mut apps, Vec::new(), &actions);
    // Conditions now say 3/3 ready; one more pass records that, then quiet.
    let actions = plan(&apps, &nodes, &replicas);
    assert_eq!(places(&actions), Vec::<&str>::new());
    assert!(condition(&actions, AVAILABLE).unwrap().status);
    let replicas = settle(&mut apps, replicas, &actions);
    assert_eq!(plan(&apps, &nodes, &replicas), Vec::new());
}

#[test]
fn scales_up_and_down_keeping_spread() {
    let mut apps = vec![app("web", 5)];
    let nodes = vec![node("a"), node("b"), node("c")];
    let actions = plan(&apps, &nodes, &[]);
    assert_eq!(places(&actions), ["a", "a", "b", "b", "c"]);
    let replicas = settle(&mut apps, Vec::new(), &actions);
    apps[0].replicas = 1;
    let actions = plan(&apps, &nodes, &replicas);
    let removed = removes(&actions);
    assert_eq!(removed.len(), 4);
    assert!(removed.iter().all(|(_, r)| *r == RemoveReason::ScaledDown));
    let replicas = settle(&mut apps, replicas, &actions);
    assert_eq!(replicas.len(), 1);
    // Scale down removes not-ready replicas first.
    let mut apps = vec![app("web", 1)];
    let replicas = vec![
        replica("r1", "web", "a", ReplicaState::Ready),
        replica("r2", "web", "b", ReplicaState::Starting),
    ];
    assert_eq!(
        removes(&plan(&apps, &nodes, &replicas)),
        [("r2", RemoveReason::ScaledDown)]
    );
    apps[0].replicas = 0;
    assert_eq!(removes(&plan(&apps, &nodes, &replicas)).len(), 2);
}

#[test]
fn lost_node_replicas_are_replaced_elsewhere_not_ready_ones_are_waited_for() {
    let apps = vec![app("web", 3)];
    let mut nodes = vec![node("a"), node("b"), node("c")];
    let replicas = vec![
        replica("r1", "web", "a", ReplicaState::Ready),
        replica("r2", "web", "b", ReplicaState::Ready),
        replica("r3", "web", "c", ReplicaState::Ready),
    ];
    // NotReady but not yet lost: nothing moves, the app is not available.
    nodes[2].slot.ready = false;
    let actions = plan(&apps, &nodes, &replicas);
    assert!(removes(&actions).is_empty() && places(&actions).is_empty());
    let available = condition(&actions, AVAILABLE).unwrap();
    assert!(!available.status);
    assert!(available.message.contains("1 on nodes that are not ready"));
    // Lost: replaced on a survivor.
    nodes[2].lost = true;
    let actions = plan(&apps, &nodes, &replicas);
    assert_eq!(removes(&actions), [("r3", RemoveReason::NodeLost)]);
    assert_eq!(places(&actions).len(), 1);
    assert_ne!(places(&actions)[0], "c");
}

#[test]
fn unschedulable_says_why() {
    let mut apps = vec![app("web", 2)];
    apps[0].selector = [("disk".to_owned(), "ssd".to_owned())].into();
    apps[0].reservation = 600 * MI;
    let mut nodes = vec![node("a"), node("b"), node("c")];
    nodes[0].slot.labels = apps[0].selector.clone();
    nodes[1].slot.labels = apps[0].selector.clone();
    nodes[1].slot.capacity = 500 * MI;
    let actions = plan(&apps, &nodes, &[]);
    assert_eq!(places(&actions), ["a"]);
    let scheduled = condition(&actions, SCHEDULED).unwrap();
    assert!(!scheduled.status);
    assert_eq!(scheduled.reason, "Unschedulable");
    assert_eq!(
        scheduled.message,
        "1 replica(s) cannot be placed: 0/3 nodes fit: 2 insufficient memory, 1 selector mismatch"
    );
}

#[test]
fn drain_and_new_revisions_keep_old_replicas_until_replacements_are_ready() {
    let mut apps = vec![app("web", 2)];
    let mut nodes = vec![node("a"), node("b"), node("c")];
    let replicas = vec![
        replica("r1", "web", "a", ReplicaState::Ready),
        replica("r2", "web", "b", ReplicaState::Ready),
    ];
    nodes[0].draining = true;
    let actions = plan(&apps, &nodes, &replicas);
    // The replacement goes to c (a is draining, b already has one); r1 stays.
    assert_eq!(places(&actions), ["c"]);
    assert!(removes(&actions).is_empty());
    // Replacement Starting: r1 still stays.
    let mut replicas = replicas;
    replicas.push(replica("r3", "web", "c", ReplicaState::Starting));
    assert!(removes(&plan(&apps, &nodes, &replicas)).is_empty());
    // Ready: r1 goes.
    replicas[2].state = ReplicaState::Ready;
    assert_eq!(
        removes(&plan(&apps, &nodes, &replicas)),
        [("r1", RemoveReason::Replaced)]
    );

    // A new revision: old replicas leave as new ones become ready.
    nodes[0].draining = false;
    apps[0].revision = 2;
    let old = vec![
        replica("o1", "web", "a", ReplicaState::Ready),
        replica("o2", "web", "b", ReplicaState::Ready),
    ];
    let actions = plan(&apps, &nodes, &old);
    assert_eq!(places(&actions).len(), 1, "max surge 1");
    assert!(removes(&actions).is_empty());
    let mut replicas = old.clone();
    replicas.push(ObservedReplica {
        revision: 2,
        ..replica("n1", "web", "c", ReplicaState::Ready)
    });
    replicas.push(ObservedReplica {
        revision: 2,
        ..replica("n2", "web", "a", ReplicaState::Starting)
    });
    // One new ready: one old may go.
    assert_eq!(removes(&plan(&apps, &nodes, &replicas)).len(), 1);
}

#[test]
fn failed_replicas_of_an_unproven_revision_are_kept_and_reported() {
    let mut apps = vec![app("web", 1)];
    // Never fully available, nothing to roll back to: kept and reported.
    apps[0].good_revision = None;
    let nodes = vec![node("a")];
    let mut r = replica("r1", "web", "a", ReplicaState::Failed);
    r.reason = Some("component does not link".into());
    let actions = plan(&apps, &nodes, &[r]);
    assert!(removes(&actions).is_empty() && places(&actions).is_empty());
    let available = condition(&actions, AVAILABLE).unwrap();
    assert_eq!(available.reason, "ReplicaFailure");
    assert!(
        available
            .message
            .contains("r1 on a failed: component does not link")
    );
}

#[test]
fn orphans_are_removed() {
    let nodes = vec![node("a")];
    let replicas = vec![
        replica("r1", "gone", "a", ReplicaState::Ready),
        replica("r2", "web", "ghost", ReplicaState::Ready),
    ];
    let actions = plan(&[app("web", 0)], &nodes, &replicas);
    assert_eq!(
        removes(&actions),
        [
            ("r1", RemoveReason::Orphaned),
            ("r2", RemoveReason::Orphaned)
        ]
    );
}

#[test]
fn rolling_update_surges_one_at_a_time_and_ends_spread() {
    let mut apps = vec![app("web", 3)];
    let nodes = vec![node("a"), node("b"), node("c")];
    let mut replicas = vec![
        replica("o1", "web", "a", ReplicaState::Ready),
        replica("o2", "web", "b", ReplicaState::Ready),
        replica("o3", "web", "c", ReplicaState::Ready),
    ];
    apps[0].revision = 2;
    let mut placed_on = Vec::new();
    for _ in 0..10 {
        let actions = plan(&apps, &nodes, &replicas);
        let places = places(&actions);
        assert!(places.len() <= 1, "max surge 1: {actions:?}");
        // Never fewer than 3 ready (max unavailable 0).
        let removed = removes(&actions).len();
        let ready = replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Ready)
            .count();
        assert!(ready - removed >= 3, "{actions:?}");
        placed_on.extend(places.iter().map(|n| n.to_string()));
        replicas = settle(&mut apps, replicas, &actions);
        for r in &mut replicas {
            if r.id.contains("-new") {
                r.revision = 2;
            }
        }
        if actions.is_empty() {
            break;
        }
    }
    assert!(replicas.iter().all(|r| r.revision == 2), "{replicas:?}");
    placed_on.sort();
    assert_eq!(placed_on, ["a", "b", "c"], "one new replica per node");
}

#[test]
fn max_unavailable_lets_old_replicas_go_first() {
    let mut apps = vec![app("web", 2)];
    apps[0].revision = 2;
    apps[0].max_surge = 0;
    apps[0].max_unavailable = 1;
    let nodes = vec![node("a"), node("b")];
    let replicas = vec![
        replica("o1", "web", "a", ReplicaState::Ready),
        replica("o2", "web", "b", ReplicaState::Ready),
    ];
    let actions = plan(&apps, &nodes, &replicas);
    assert!(places(&actions).is_empty(), "no surge room yet");
    assert_eq!(removes(&actions), [("o1", RemoveReason::Replaced)]);
}

#[test]
fn a_failed_or_overdue_rollout_rolls_back_and_a_proven_revision_replaces_failures() {
    let mut apps = vec![app("web", 2)];
    apps[0].revision = 3;
    apps[0].good_revision = Some(2);
    apps[0].rollback_to = Some(2);
    apps[0].rollout_age_ms = Some(1_000);
    let nodes = vec![node("a"), node("b")];
    let mut replicas = vec![
        ObservedReplica {
            revision: 2,
            ..replica("o1", "web", "a", ReplicaState::Ready)
        },
        ObservedReplica {
            revision: 2,
            ..replica("o2", "web", "b", ReplicaState::Ready)
        },
        ObservedReplica {
            revision: 3,
            ..replica("n1", "web", "a", ReplicaState::Starting)
        },
    ];
    // In progress, within the deadline: no rollback.
    let actions = plan(&apps, &nodes, &replicas);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Rollback { .. })),
        "{actions:?}"
    );
    // Over the deadline: roll back.
    apps[0].rollout_age_ms = Some(61_000);
    let actions = plan(&apps, &nodes, &replicas);
    assert!(
        matches!(&actions[..], [Action::Rollback { to: 2, reason, .. }] if reason.contains("no full progress")),
        "{actions:?}"
    );
    // A failed new replica: roll back at once, saying why.
    apps[0].rollout_age_ms = Some(1_000);
    replicas[2].state = ReplicaState::Failed;
    replicas[2].reason = Some("health check GET /healthz answered 500".into());
    let actions = plan(&apps, &nodes, &replicas);
    assert!(
        matches!(&actions[..], [Action::Rollback { to: 2, reason, .. }] if reason.contains("answered 500")),
        "{actions:?}"
    );
    // Without a target (auto rollback off, or nothing good yet): kept.
    apps[0].rollback_to = None;
    let actions = plan(&apps, &nodes, &replicas);
    assert!(!actions.iter().any(|a| matches!(a, Action::Rollback { .. })));

    // A proven revision replaces a replica that fails later.
    let apps = vec![app("web", 1)];
    let failed = replica("r1", "web", "a", ReplicaState::Failed);
    let actions = plan(&apps, &nodes, &[failed]);
    assert_eq!(removes(&actions), [("r1", RemoveReason::Replaced)]);
    assert_eq!(places(&actions).len(), 1);
}

#[test]
fn a_fully_available_revision_becomes_the_good_one() {
    let mut apps = vec![app("web", 1)];
    apps[0].revision = 2;
    apps[0].good_revision = Some(1);
    let nodes = vec![node("a")];
    let ready = ObservedReplica {
        revision: 2,
        ..replica("n1", "web", "a", ReplicaState::Ready)
    };
    let actions = plan(&apps, &nodes, &[ready]);
    assert!(
        actions.contains(&Action::SetGoodRevision {
            app: "web".into(),
            revision: 2
        }),
        "{actions:?}"
    );
}

#[test]
fn ready_replicas_retire_then_go_once_drained() {
    let apps = vec![app("web", 1)];
    let nodes = vec![node("a"), node("b")];
    let replicas = vec![
        replica("r1", "web", "a", ReplicaState::Ready),
        replica("r2", "web", "b", ReplicaState::Ready),
    ];
    // Scaling down retires (out of the endpoints) rather than removes.
    let actions = plan(&apps, &nodes, &replicas);
    let retired: Vec<&Action> = actions
        .iter()
        .filter(|a| matches!(a, Action::Retire { .. }))
        .collect();
    assert_eq!(retired.len(), 1, "{actions:?}");
    // While draining it is left alone and not counted; once drained, removed.
    let mut replicas = replicas;
    replicas[1].retiring_ms = Some(DRAIN_MS / 2);
    let actions = plan(&apps, &nodes, &replicas);
    assert!(
        removes(&actions).is_empty() && places(&actions).is_empty(),
        "{actions:?}"
    );
    replicas[1].retiring_ms = Some(DRAIN_MS);
    assert_eq!(
        removes(&plan(&apps, &nodes, &replicas)),
        [("r2", RemoveReason::Drained)]
    );
}

#[test]
fn every_node_follows_nodes_and_their_labels() {
    let mut apps = vec![DesiredApp {
        every_node: true,
        selector: BTreeMap::from([("role".to_owned(), "edge".to_owned())]),
        ..app("agent", 1)
    }];
    let labelled = |name: &str, role: &str| {
        let mut n = node(name);
        n.slot.labels.insert("role".into(), role.into());
        n
    };
    let mut nodes = vec![
        labelled("a", "edge"),
        labelled("b", "edge"),
        labelled("c", "core"),
    ];
    // One on each matching node, whatever `replicas` says.
    let actions = plan(&apps, &nodes, &[]);
    assert_eq!(places(&actions), ["a", "b"]);
    let replicas = named(settle(&mut apps, Vec::new(), &actions));
    let conditions = plan(&apps, &nodes, &replicas);
    let replicas = named(settle(&mut apps, replicas, &conditions));
    let again = plan(&apps, &nodes, &replicas);
    assert!(again.is_empty(), "quiet once placed: {again:?}");
    // A node joins: it gets one.
    nodes.push(labelled("d", "edge"));
    let actions = plan(&apps, &nodes, &replicas);
    assert_eq!(places(&actions), ["d"]);
    let replicas = named(settle(&mut apps, replicas, &actions));
    // A node stops matching: its replica goes; a lost node's too.
    nodes[0].slot.labels.insert("role".into(), "core".into());
    nodes[1].lost = true;
    let actions = plan(&apps, &nodes, &replicas);
    let mut gone: Vec<&str> = removes(&actions).iter().map(|(id, _)| *id).collect();
    gone.sort_unstable();
    let on = |node: &str| {
        replicas
            .iter()
            .find(|r| r.node == node)
            .map(|r| r.id.as_str())
            .unwrap()
    };
    let mut want = vec![on("a"), on("b")];
    want.sort_unstable();
    assert_eq!(gone, want);
    assert!(places(&actions).is_empty());
    // A cordoned node without one gets none.
    nodes.push(
        NodeSlot {
            cordoned: true,
            ..labelled("e", "edge").slot
        }
        .into_observed(),
    );
    let replicas = named(settle(&mut apps, replicas, &actions));
    let last = plan(&apps, &nodes, &replicas);
    assert!(places(&last).is_empty(), "{last:?}");
}

impl NodeSlot {
    fn into_observed(self) -> ObservedNode {
        ObservedNode {
            slot: self,
            draining: false,
            lost: false,
        }
    }
}

/// Replicas named after their node (settle names them by action index,
/// which repeats from one plan to the next).
fn named(replicas: Vec<ObservedReplica>) -> Vec<ObservedReplica> {
    replicas
        .into_iter()
        .map(|r| ObservedReplica {
            id: format!("{}-{}", r.app, r.node),
            ..r
        })
        .collect()
}
