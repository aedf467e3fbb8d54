//! Fast failure detection. A node process that dies (kill -9, a crash)
//! closes its connections at once, so its assignments watch ends without an
//! answer: a *suspicion*. It is confirmed when, after a short re-watch
//! window, the node has not watched or heartbeat again and its ingress
//! refuses connections (the port is closed: nothing listens there any more).
//! A confirmed node's lease ends at once ([`Leases::suspect`]), so its
//! replicas are replaced within about a second instead of after the grace.
//!
//! Anything less certain is left to the heartbeat grace: a watch closed by
//! a network blip while the ingress still answers, or an ingress that does
//! not answer at all (a partition, power loss: the probe times out). A node
//! restarted within the window renews its lease and keeps its replicas.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Leases;

/// How long a node whose watch closed has to watch (or heartbeat) again
/// before its ingress is probed: a node agent re-watches within
/// milliseconds after an answer, and a restarted node registers again as
/// soon as it starts.
pub const REWATCH_WINDOW: Duration = Duration::from_millis(300);
/// How long the ingress probe may take; a slower answer confirms nothing.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Suspicions waiting for their window to pass.
#[derive(Debug, Default)]
pub struct Detector {
    /// Node to (its ingress, when its watch closed).
    pending: Mutex<HashMap<String, (String, Instant)>>,
    /// Open watches per node.
    open: Mutex<HashMap<String, usize>>,
    wake: Notify,
}

/// An open assignments watch; dropping it without [`WatchGuard::finish`]
/// (the connection closed mid-wait) raises a suspicion.
#[derive(Debug)]
pub struct WatchGuard {
    detector: Arc<Detector>,
    node: String,
    ingress: String,
    finished: bool,
}

impl WatchGuard {
    /// The watch answered normally.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut open = self.detector.open.lock().unwrap_or_else(|e| e.into_inner());
        let left = open.get_mut(&self.node).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left == Some(0) {
            open.remove(&self.node);
        }
        drop(open);
        if !self.finished {
            self.detector
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    self.node.clone(),
                    (std::mem::take(&mut self.ingress), Instant::now()),
                );
            self.detector.wake.notify_one();
        }
    }
}

impl Detector {
    /// A node opens an assignments watch; `ingress` is where to probe it.
    pub fn watching(self: &Arc<Self>, node: &str, ingress: &str) -> WatchGuard {
        *self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.to_owned())
            .or_default() += 1;
        self.alive(node);
        WatchGuard {
            detector: self.clone(),
            node: node.to_owned(),
            ingress: ingress.to_owned(),
            finished: false,
        }
    }

    /// The node was heard from (a watch, a heartbeat, a registration):
    /// whatever suspicion there was is void.
    pub fn alive(&self, node: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
    }

    /// Confirms or drops suspicions as their windows pass, until
    /// `shutdown`.
    pub async fn run(self: Arc<Self>, leases: Arc<Leases>, shutdown: CancellationToken) {
        loop {
            let next = {
                let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                pending.values().map(|(_, at)| *at + REWATCH_WINDOW).min()
            };
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = self.wake.notified() => continue,
                () = shutdown.cancelled() => return,
            }
            let due: Vec<(String, String)> = {
                let now = Instant::now();
                let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                let due: Vec<(String, String)> = pending
                    .iter()
                    .filter(|(_, (_, at))| *at + REWATCH_WINDOW <= now)
                    .map(|(node, (ingress, _))| (node.clone(), ingress.clone()))
                    .collect();
                for (node, _) in &due {
                    pending.remove(node);
                }
                // A node watching again is alive.
                due.into_iter()
                    .filter(|(node, _)| !open.contains_key(node))
                    .collect()
            };
            for (node, ingress) in due {
                if refused(&ingress).await {
                    tracing::warn!(%node, %ingress, "node's watch closed and its ingress refuses connections: lost");
                    leases.suspect(&node);
                } else {
                    tracing::debug!(%node, "node's watch closed but its ingress answers: waiting for the grace");
                }
            }
        }
    }
}

/// Whether `ingress` (host:port) actively refuses a connection.
async fn refused(ingress: &str) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(ingress)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}
