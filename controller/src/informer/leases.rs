//! Node leases in memory: a heartbeat renews one map entry (no disk write);
//! renewals are persisted in batches every [`LEASE_FLUSH`], and renewals
//! other controllers persisted are read back, so every controller on a
//! shared database sees every node's lease within about two flushes.
//!
//! Losing unflushed renewals (a crash) is harmless: a new or restarted
//! leader counts lost-node time from its own leadership, and the grace
//! (3 s by default) is longer than a flush.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_sdk::api::{Node, NodeState};
use tokio_util::sync::CancellationToken;

use crate::store::{Store, now_ms};

/// How often renewals are persisted (and other controllers' read back):
/// a third of the default grace, so a lease read from the database is never
/// staler than the grace allows.
pub const LEASE_FLUSH: Duration = Duration::from_secs(1);

/// The leases of every known node.
#[derive(Debug)]
pub struct Leases {
    grace_ms: i64,
    started: std::time::Instant,
    warm: std::sync::atomic::AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Last renewal seen per node (Unix ms), here or in the database.
    renewed: HashMap<String, i64>,
    /// Renewals received here and not yet persisted.
    unflushed: HashMap<String, i64>,
    /// Nodes Ready at the last [`Leases::flipped`].
    ready: HashSet<String>,
    /// Nodes whose lease ended early (their process was seen to die).
    suspect: HashSet<String>,
}

impl Leases {
    /// Leases that make a node NotReady once not renewed for `grace`.
    pub fn new(grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            grace_ms: i64::try_from(grace.as_millis()).unwrap_or(i64::MAX),
            started: std::time::Instant::now(),
            warm: std::sync::atomic::AtomicBool::new(false),
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A heartbeat from `node`, now.
    pub fn renew(&self, node: &str) {
        let now = now_ms();
        let mut inner = self.lock();
        inner.suspect.remove(node);
        inner.renewed.insert(node.to_owned(), now);
        inner.unflushed.insert(node.to_owned(), now);
    }

    /// Learns a renewal time read from the database (kept if newer).
    pub fn learn(&self, node: &str, at: i64) {
        let mut inner = self.lock();
        let entry = inner.renewed.entry(node.to_owned()).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// Learns a stored node's last heartbeat.
    pub fn seed(&self, node: &Node) {
        if let Some(at) = node.last_heartbeat {
            self.learn(&node.name, at);
        }
    }

    /// Forgets a deleted node.
    pub fn forget(&self, node: &str) {
        let mut inner = self.lock();
        inner.renewed.remove(node);
        inner.unflushed.remove(node);
        inner.ready.remove(node);
        inner.suspect.remove(node);
    }

    /// Forgets every node not in `nodes`.
    pub fn retain_known<T>(&self, nodes: &BTreeMap<String, T>) {
        let mut inner = self.lock();
        inner.renewed.retain(|n, _| nodes.contains_key(n));
        inner.unflushed.retain(|n, _| nodes.contains_key(n));
        inner.ready.retain(|n| nodes.contains_key(n));
    }

    /// Ends `node`'s lease now: its process was seen to die. The next
    /// heartbeat (a restart within the grace) renews it again.
    pub fn suspect(&self, node: &str) {
        self.lock().suspect.insert(node.to_owned());
    }

    fn ready_in(&self, inner: &Inner, node: &str, now: i64) -> bool {
        !inner.suspect.contains(node)
            && inner
                .renewed
                .get(node)
                .is_some_and(|at| now - at <= self.grace_ms)
    }

    /// Whether `node`'s lease is live now.
    pub fn is_ready(&self, node: &str) -> bool {
        let inner = self.lock();
        self.ready_in(&inner, node, now_ms())
    }

    /// Sets `node`'s state and last heartbeat from its live lease.
    pub fn overlay(&self, node: &mut Node) {
        let inner = self.lock();
        if let Some(at) = inner.renewed.get(&node.name) {
            node.last_heartbeat = Some(node.last_heartbeat.unwrap_or(*at).max(*at));
        }
        node.state = if self.ready_in(&inner, &node.name, now_ms()) {
            NodeState::Ready
        } else {
            NodeState::NotReady
        };
    }

    /// Whether this controller started less than a grace ago: it may not
    /// have heard from live nodes yet, so the endpoints trust recorded
    /// replica states meanwhile.
    pub fn warming_up(&self) -> bool {
        u128::try_from(self.grace_ms).is_ok_and(|g| self.started.elapsed().as_millis() < g)
    }

    /// The nodes whose readiness changed since the last call (every node
    /// once, when the warm-up ends).
    pub fn flipped(&self) -> Vec<String> {
        let now = now_ms();
        let warmed =
            !self.warming_up() && !self.warm.swap(true, std::sync::atomic::Ordering::AcqRel);
        let mut inner = self.lock();
        if warmed {
            inner.ready.clear();
        }
        // Only the nodes whose readiness differs from last time are
        // collected: a pass over 10,000 leases allocates nothing else.
        let flipped: Vec<String> = inner
            .renewed
            .keys()
            .filter(|n| warmed || self.ready_in(&inner, n, now) != inner.ready.contains(*n))
            .cloned()
            .collect();
        for node in &flipped {
            if self.ready_in(&inner, node, now) {
                inner.ready.insert(node.clone());
            } else {
                inner.ready.remove(node);
            }
        }
        flipped
    }

    /// Persists renewals every [`LEASE_FLUSH`] and reads back those other
    /// controllers persisted, until `shutdown` (then flushes once more).
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        me: String,
        shutdown: CancellationToken,
    ) {
        // Another controller's flush carries renewals up to a flush old, and
        // may commit just after a read: each read overlaps the last by two
        // flushes (learning is idempotent).
        let overlap = 2 * i64::try_from(LEASE_FLUSH.as_millis()).unwrap_or(1_000);
        let mut since = now_ms() - self.grace_ms;
        let mut tick = tokio::time::interval(LEASE_FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                _ = tick.tick() => false,
                () = shutdown.cancelled() => true,
            };
            let batch: Vec<(String, i64)> = std::mem::take(&mut self.lock().unflushed)
                .into_iter()
                .collect();
            if let Err(error) = store.renew_leases(&batch, &me).await {
                tracing::warn!(error = %crate::error_chain(&error), nodes = batch.len(), "persisting node leases failed; retrying");
                let mut inner = self.lock();
                for (node, at) in batch {
                    let entry = inner.unflushed.entry(node).or_insert(at);
                    *entry = (*entry).max(at);
                }
            }
            if stop {
                return;
            }
            let read_at = now_ms();
            match store.leases_renewed_elsewhere(since, &me).await {
                Ok(renewals) => {
                    since = read_at - overlap;
                    for (node, at) in renewals {
                        self.learn(&node, at);
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %crate::error_chain(&error), "reading other controllers' node leases failed");
                }
            }
        }
    }
}
