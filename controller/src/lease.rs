//! Leader election over the store's lease row: when several controllers
//! share one database, exactly one (the holder of [`LEADER_LEASE`]) runs the
//! background loops.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Name of the leader lease row.
pub const LEADER_LEASE: &str = "controller-leader";
/// Default lease duration: a dead leader is replaced within this time.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

/// Keeps trying to take or renew the leader lease (every third of its TTL)
/// and publishes whether this controller holds it. Releases the lease on
/// shutdown so a successor need not wait for it to expire.
pub async fn run_election(
    store: Arc<dyn Store>,
    holder: String,
    ttl: Duration,
    leader: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let held = match store.try_acquire_lease(LEADER_LEASE, &holder, ttl_ms).await {
            Ok(held) => held,
            Err(error) => {
                // Cannot renew: assume the lease is lost rather than risk
                // two leaders.
                tracing::warn!(error = %crate::error_chain(&error), "leader lease renewal failed");
                false
            }
        };
        if leader.send_replace(held) != held {
            tracing::info!(%holder, leader = held, "leadership changed");
        }
    }
    if *leader.borrow() {
        let _ = store.release_lease(LEADER_LEASE, &holder).await;
        leader.send_replace(false);
    }
}
