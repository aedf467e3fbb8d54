//! The job controller: on the leader, drives each active job towards its
//! completions (see [`skiff_sdk::api::JobSpec`] for the rules). A pass
//! reads the active jobs with their unfinished runs, [`plan`]s each (pure),
//! and writes each job's change in one transaction. Passes run when a job
//! is applied or a node reports a run ([`RunBell::ring_jobs`]), when a
//! back-off ends, and at least every [`RESYNC`] (reports received by
//! other controllers, lost nodes).
//!
//! Nodes learn their runs by long-polling `GET /v1/nodes/{name}/runs`; the
//! [`RunBell`] wakes exactly the nodes whose runs changed.

mod plan;
mod schedule;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

pub use plan::{Planned, plan};
pub use schedule::{Scheduled, child_name, plan_schedule};

use crate::informer::Informer;
use crate::scheduler::NodeSlot;
use crate::store::{Store, StoreError, now_ms};

/// Longest time between passes while jobs are active: picks up what other
/// controllers recorded and nodes that were lost.
pub const RESYNC: Duration = Duration::from_millis(500);
/// How often finished jobs past their `keep_finished_ms` are deleted.
pub const EXPIRY_EVERY: Duration = Duration::from_secs(5);

/// Wakes whoever waits on runs: the job controller (a job was applied or
/// a run reported) and each node's runs watch (its runs changed).
#[derive(Debug, Default)]
pub struct RunBell {
    jobs: Notify,
    nodes: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl RunBell {
    /// Something about jobs changed: plan again.
    pub fn ring_jobs(&self) {
        self.jobs.notify_one();
    }

    /// `node`'s runs changed.
    pub fn ring_node(&self, node: &str) {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = nodes.get(node) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Every node's runs (their node-local schedules) changed.
    pub fn ring_all(&self) {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        for tx in nodes.values() {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// A receiver that sees every [`RunBell::ring_node`] of `node`.
    pub fn node(&self, node: &str) -> watch::Receiver<u64> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        // Senders nobody listens to any more go (bounded by live watches).
        nodes.retain(|_, tx| tx.receiver_count() > 0);
        nodes
            .entry(node.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

/// Runs the job controller while this controller leads, until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    informer: Arc<Informer>,
    bell: Arc<RunBell>,
    node_grace: Duration,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let mut leading_since: Option<tokio::time::Instant> = None;
    let mut wake_at: Option<i64> = None;
    let mut expired_at = tokio::time::Instant::now();
    loop {
        let delay = wake_at
            .map(|at| Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)))
            .unwrap_or(RESYNC)
            .min(RESYNC);
        tokio::select! {
            () = bell.jobs.notified() => {}
            () = tokio::time::sleep(delay) => {}
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = shutdown.cancelled() => return,
        }
        if !*leader.borrow() {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(tokio::time::Instant::now);
        // As for replicas: a node's runs are lost only once this leader
        // has given it a whole grace to be heard from.
        let evict_lost = since.elapsed() >= node_grace;
        if expired_at.elapsed() >= EXPIRY_EVERY {
            expired_at = tokio::time::Instant::now();
            if let Err(error) = expire(store.as_ref()).await {
                tracing::warn!(error = %crate::error_chain(&error), "deleting expired jobs failed");
            }
        }
        match pass(store.as_ref(), &informer, &bell, evict_lost).await {
            Ok(next) => wake_at = next,
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "job pass failed");
                wake_at = None;
            }
        }
    }
}

/// Deletes the finished jobs kept longer than their `keep_finished_ms`.
async fn expire(store: &dyn Store) -> Result<(), StoreError> {
    let now = now_ms();
    for (name, finished_at, keep) in store.expiring_jobs().await? {
        if finished_at.saturating_add(i64::try_from(keep).unwrap_or(i64::MAX)) <= now {
            match store.delete_job(&name).await {
                Ok(()) => tracing::info!(job = %name, "finished job deleted: kept long enough"),
                Err(StoreError::NotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
}

/// Fires the schedules whose time came; returns the earliest next time.
async fn fire_schedules(store: &dyn Store, bell: &RunBell) -> Result<Option<i64>, StoreError> {
    let now = now_ms();
    let mut wake_at: Option<i64> = None;
    for schedule in store.schedules().await? {
        let children = store.children(&schedule.name).await?;
        let planned = plan_schedule(&schedule, &children, now);
        if let Some(at) = planned.wake_at {
            wake_at = Some(wake_at.map_or(at, |w: i64| w.min(at)));
        }
        let Some(firing) = planned.firing else {
            continue;
        };
        // Jobs deleted here stop their runs: wake those nodes.
        let mut nodes = Vec::new();
        for name in &firing.delete {
            if let Ok(runs) = store.runs(name).await {
                nodes.extend(
                    runs.into_iter()
                        .filter(|r| !r.state.finished())
                        .map(|r| r.node),
                );
            }
        }
        match store.fire(&firing).await {
            Ok(()) => {
                if let Some((name, _)) = &firing.start {
                    tracing::info!(schedule = %firing.schedule, job = %name, "schedule fired");
                }
                for node in nodes {
                    bell.ring_node(&node);
                }
            }
            Err(StoreError::Conflict(message)) => {
                tracing::warn!(schedule = %firing.schedule, %message, "firing skipped");
            }
            Err(error) => return Err(error),
        }
    }
    Ok(wake_at)
}

/// One pass: the schedules, then the active jobs; returns the earliest
/// time something is due (a schedule's next time, a back-off's end).
async fn pass(
    store: &dyn Store,
    informer: &Informer,
    bell: &RunBell,
    evict_lost: bool,
) -> Result<Option<i64>, StoreError> {
    let next_fire = fire_schedules(store, bell).await?;
    let mut wake_at = next_fire;
    let jobs = store.active_jobs().await?;
    if jobs.is_empty() {
        return Ok(wake_at);
    }
    let held: HashMap<String, u64> = store.run_reservations().await?.into_iter().collect();
    let (mut slots, known) = {
        let picture = informer.read();
        let leases = informer.leases();
        let slots: Vec<NodeSlot> = picture
            .nodes
            .values()
            .map(|n| NodeSlot {
                name: n.name.clone(),
                labels: n.labels.clone(),
                ready: leases.is_ready(&n.name),
                cordoned: n.cordoned || n.draining,
                capacity: n.capacity.memory_bytes,
                allocated: picture
                    .allocated
                    .get(&n.name)
                    .copied()
                    .unwrap_or(0)
                    .saturating_add(held.get(&n.name).copied().unwrap_or(0)),
            })
            .collect();
        let known: std::collections::HashSet<String> = picture.nodes.keys().cloned().collect();
        (slots, known)
    };
    let ready: std::collections::HashSet<String> = slots
        .iter()
        .filter(|s| s.ready)
        .map(|s| s.name.clone())
        .collect();
    let lost = |node: &str| !known.contains(node) || (evict_lost && !ready.contains(node));
    let now = now_ms();
    for progress in &jobs {
        let planned = plan(progress, &mut slots, &lost, now);
        if let Some(at) = planned.wake_at {
            wake_at = Some(wake_at.map_or(at, |w: i64| w.min(at)));
        }
        let Some(change) = planned.change else {
            continue;
        };
        match store.change_job(&change).await {
            Ok(()) => {
                for run in &change.add {
                    bell.ring_node(&run.node);
                }
                let ended: std::collections::HashSet<&str> =
                    change.end.iter().map(|(id, _)| id.as_str()).collect();
                for run in progress
                    .active
                    .iter()
                    .filter(|r| ended.contains(r.id.as_str()))
                {
                    bell.ring_node(&run.node);
                }
                if change.finish.is_some() {
                    tracing::info!(job = %change.job, state = ?change.finish, "job finished");
                }
            }
            // Replaced or deleted meanwhile: the next pass plans it anew.
            Err(StoreError::Conflict(_) | StoreError::NotFound { .. }) => bell.ring_jobs(),
            Err(error) => return Err(error),
        }
    }
    Ok(wake_at)
}
