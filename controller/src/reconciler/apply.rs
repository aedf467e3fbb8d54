//! `apply`: the planned [`Action`]s as store writes — every replica change
//! and its (grouped) events in one transaction, then good revisions,
//! automatic rollbacks and conditions.

use std::collections::BTreeMap;

use rand::Rng as _;
use skiff_sdk::api::EventKind;

use super::{Action, DesiredApp, Reconciler, RemoveReason, SCHEDULED, Summary};
use crate::store::{NewEvent, NewReplica, ReplicaChange, StatusUpdate, StoreError};

impl Reconciler {
    pub(super) async fn apply(
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
        let mut groups: BTreeMap<(EventKind, String, Option<String>), Vec<String>> =
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
                        .entry((EventKind::ReplicaScheduled, app.clone(), None))
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
                        RemoveReason::ScaledDown => EventKind::ReplicaRemoved,
                        _ => EventKind::ReplicaReplaced,
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
                        RemoveReason::NodeLost => (EventKind::NodeLost, Some(node.clone())),
                        RemoveReason::ScaledDown => (EventKind::ReplicaRemoved, None),
                        RemoveReason::Replaced => (EventKind::ReplicaReplaced, None),
                        RemoveReason::Orphaned | RemoveReason::Drained => {
                            (EventKind::ReplicaOrphaned, None)
                        }
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
                EventKind::ReplicaScheduled => format!("placed {what}"),
                EventKind::NodeLost => format!(
                    "node {} missed its heartbeats for the grace period; replacing {what}",
                    node.as_deref().unwrap_or("?")
                ),
                EventKind::ReplicaReplaced => format!("replaced {what}"),
                EventKind::ReplicaOrphaned => format!("removed orphaned {what}"),
                _ => format!("scaled down: removed {what}"),
            };
            change.events.push(NewEvent {
                app: Some(app),
                node,
                kind,
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
                    kind: EventKind::Unschedulable,
                    message: now.message.clone(),
                });
            }
        }

        let summary = Summary {
            planned: 0,
            placed: change.add.len(),
            removed: change.remove.len() + change.retire.len(),
            conditions: conditions.len() + good.len() + rollbacks.len(),
        };
        if change != ReplicaChange::default() {
            self.store.change_replicas(&change).await?;
        }
        for (app, to, reason) in rollbacks {
            tracing::warn!(%app, to, %reason, "rollout failed: rolling back");
            let cause = NewEvent {
                app: Some(app.clone()),
                node: None,
                kind: EventKind::RolloutFailed,
                message: format!("{reason}; rolling back to revision {to}"),
            };
            match self
                .store
                .rollback_app(&app, Some(to), None, Some(cause))
                .await
            {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Good revisions and conditions of every app: one transaction.
        let mut statuses: BTreeMap<String, StatusUpdate> = BTreeMap::new();
        fn status(statuses: &mut BTreeMap<String, StatusUpdate>, app: String) -> &mut StatusUpdate {
            statuses.entry(app.clone()).or_insert_with(|| StatusUpdate {
                app,
                good_revision: None,
                conditions: None,
            })
        }
        for (app, revision) in good {
            status(&mut statuses, app).good_revision = Some(revision);
        }
        for (app, c) in conditions {
            status(&mut statuses, app).conditions = Some(c);
        }
        let statuses: Vec<StatusUpdate> = statuses.into_values().collect();
        self.store.record_statuses(&statuses).await?;
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
