//! Talking to the controller: register (proving the node's identity with
//! its stored credential), heartbeat, and long-poll the assignments and the
//! endpoints, with back-off while the controller does not answer. Serving
//! never waits on any of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_sdk::api::{Assignments, Endpoints, Heartbeat, NodeCapacity, RegisterNode};
use skiff_sdk::client::EndpointsUpdate;
use skiff_sdk::{Client, ClientError};
use tokio_util::sync::CancellationToken;

use super::disk::{StateFile, store_delay};
use super::{ASSIGNMENTS_FILE, Agent, CREDENTIAL_FILE, ENDPOINTS_FILE, lock, sleep_or_shutdown};
use skiff_sdk::error_chain;

/// Longest wait of one long-poll (the controller caps it at 60 s).
pub(super) const LONG_POLL_WAIT: Duration = Duration::from_secs(30);
/// How long a state change waits for others to report with it.
const REPORT_GATHER: Duration = Duration::from_millis(20);

/// Assignment sets (and endpoint documents, in apps) up to this size are
/// written to disk on every change (off the async workers, a write of
/// about a millisecond); larger ones at most every [`STORE_EVERY`] per
/// this many entries (see [`store_delay`]).
const STORE_AT_ONCE: usize = 1_000;
/// Large assignment sets and endpoint documents are written to disk at
/// most this often per [`STORE_AT_ONCE`] entries.
const STORE_EVERY: Duration = Duration::from_secs(1);
/// First and longest back-off after a failed call to the controller.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Agent {
    /// Registers, then heartbeats and long-polls the assignments and
    /// endpoints until the controller forgets this node's credential
    /// (then registers again), with back-off while it does not answer.
    pub(super) async fn control_loop(self: &Arc<Self>, shutdown: &CancellationToken) {
        let mut backoff = Backoff::default();
        loop {
            let client = match self.register().await {
                Ok(client) => client,
                Err(error) => {
                    backoff.failed("registering with the controller", &error);
                    if sleep_or_shutdown(backoff.delay(), shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.succeeded("registered with the controller");
            *lock(&self.session) = Some(client.clone());
            // Artifacts that could not be fetched before can be now.
            self.reconverge(None);
            let why = tokio::select! {
                why = self.heartbeats(&client) => why,
                why = self.poll_assignments(&client) => why,
                why = self.poll_endpoints(&client) => why,
                why = self.poll_runs(&client) => why,
                why = self.report_runs(&client) => why,
                () = shutdown.cancelled() => return,
            };
            tracing::warn!(error = %error_chain(&why), "the controller no longer knows this node's credential; registering again");
            *lock(&self.session) = None;
        }
    }

    async fn register(&self) -> Result<Client, ClientError> {
        let joiner = self.client.clone().with_token(&self.config.join_token);
        let credential = self
            .state
            .read_or_set_aside::<String>(CREDENTIAL_FILE)
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "the stored credential is unreadable; registering without it (the name is free again once the grace has passed)");
                None
            });
        let registration = joiner
            .register_node(&RegisterNode {
                name: self.config.name.clone(),
                labels: self.config.labels.clone(),
                capacity: NodeCapacity {
                    memory_bytes: self.config.memory_bytes,
                },
                ingress: self.ingress.clone(),
                logs_key: Some(self.router.logs_key().to_owned()),
                credential,
            })
            .await?;
        // Every start registers again (updating the advertised address,
        // labels and capacity); the name is the identity that keeps the
        // node's replicas, and the stored credential proves it is ours.
        if let Err(error) = self.state.write(CREDENTIAL_FILE, &registration.credential) {
            tracing::warn!(%error, "could not store the node's credential");
        }
        Ok(self.client.clone().with_token(&registration.credential))
    }

    /// Heartbeats: the first one after registering reports every replica;
    /// later ones only the states that changed since the last answered one,
    /// with a digest of the whole, until the controller asks for a full
    /// report again.
    async fn heartbeats(&self, client: &Client) -> ClientError {
        let mut backoff = Backoff::default();
        // Whether the controller needs every state (after registering, or
        // when it found the record drifted).
        let mut full = true;
        // Usage goes with one heartbeat per interval, not with each early
        // report of changed states (it walks every app).
        let mut usage_at: Option<Instant> = None;
        loop {
            let usage = if usage_at.is_none_or(|at| at.elapsed() >= self.config.heartbeat) {
                usage_at = Some(Instant::now());
                self.router.runtime().usage_report()
            } else {
                Vec::new()
            };
            // The states (all, or those changed since the last report) and
            // their digest, kept up to date as they change: a node with
            // 10,000 replicas heartbeats for nothing.
            let (heartbeat, taken) = {
                let mut reported = lock(&self.replicas);
                if full {
                    let (replicas, _) = reported.take_all();
                    let heartbeat = Heartbeat {
                        replicas,
                        logs_key: Some(self.router.logs_key().to_owned()),
                        digest: None,
                        usage,
                    };
                    (heartbeat, None)
                } else {
                    let (replicas, ids, digest) = reported.take_changed();
                    let heartbeat = Heartbeat {
                        replicas,
                        logs_key: Some(self.router.logs_key().to_owned()),
                        digest: Some(digest),
                        usage,
                    };
                    (heartbeat, Some(ids))
                }
            };
            let mut resend = false;
            match client.heartbeat(&self.config.name, &heartbeat).await {
                Ok(reply) => {
                    backoff.succeeded("heartbeats reach the controller again");
                    resend = reply.resend_full;
                    full = reply.resend_full;
                }
                Err(e) => {
                    // Reported again with the next one.
                    match taken {
                        Some(ids) => lock(&self.replicas).give_back(ids),
                        None => full = true,
                    }
                    if needs_registration(&e) {
                        return e;
                    }
                    backoff.failed("sending a heartbeat", &e);
                }
            }
            if resend {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.heartbeat) => {}
                // A change is reported at once, with whatever else changes
                // within REPORT_GATHER: a burst of starts is one heartbeat.
                () = self.report.notified() => tokio::time::sleep(REPORT_GATHER).await,
            }
        }
    }

    /// Long-polls the assignments: the whole set first, then only what
    /// changed since the version held. The set is stored on disk before it
    /// is acted on, or, when it holds more than [`STORE_AT_ONCE`] replicas,
    /// at most once per [`STORE_EVERY`] (a burst of changes to thousands of
    /// replicas is one write) and within it after the last change.
    async fn poll_assignments(&self, client: &Client) -> ClientError {
        let mut backoff = Backoff::default();
        // Shared with the converge loop: a change while it converges
        // copies it.
        let mut current: Option<Arc<Assignments>> = None;
        let mut file = StateFile::new(self.state.clone(), ASSIGNMENTS_FILE);
        loop {
            let after = current.as_ref().map(|a| a.version);
            let wait = poll_wait(file.flush_due(|| current.clone()));
            match client.assignments(&self.config.name, after, wait).await {
                Ok(next) => {
                    backoff.succeeded("polling assignments again");
                    if after == Some(next.version) && !next.delta {
                        continue;
                    }
                    let mut assignments = current.take().unwrap_or_default();
                    // The apps this changes (all of them: `None`).
                    let touched: Option<Vec<String>> = next.delta.then(|| {
                        let gone: std::collections::HashSet<&str> =
                            next.removed.iter().map(String::as_str).collect();
                        let removed = assignments
                            .replicas
                            .iter()
                            .filter(|a| !gone.is_empty() && gone.contains(a.id.as_str()));
                        next.replicas
                            .iter()
                            .chain(removed)
                            .map(|a| a.app.clone())
                            .collect()
                    });
                    Arc::make_mut(&mut assignments).apply(next);
                    // A small set is stored before it is acted on, so a
                    // node that restarts while the controller is away
                    // resumes it; a large one later (see `store_delay`).
                    let delay = store_delay(assignments.replicas.len(), STORE_AT_ONCE, STORE_EVERY);
                    if delay.is_zero() {
                        file.store(assignments.clone()).await;
                    } else {
                        file.store_soon(delay);
                    }
                    current = Some(assignments.clone());
                    // Marked and sent together: the converge loop takes
                    // both together.
                    let mut unconverged = lock(&self.unconverged);
                    match &touched {
                        Some(apps) => unconverged.mark(apps.iter().map(String::as_str)),
                        None => unconverged.mark_all(),
                    }
                    self.assignments.send_replace(Some(assignments));
                }
                Err(e) if needs_registration(&e) => return e,
                Err(e) => {
                    backoff.failed("polling assignments", &e);
                    tokio::time::sleep(backoff.delay()).await;
                }
            }
        }
    }

    /// Long-polls the endpoints: the whole document first, then only what
    /// changed since the version held. A small document is stored on disk
    /// at every change, a large one at most once per [`STORE_EVERY`].
    async fn poll_endpoints(&self, client: &Client) -> ClientError {
        let mut backoff = Backoff::default();
        let mut tag: Option<String> = None;
        // Shared with a write in progress: a change meanwhile copies it.
        let mut current: Option<Arc<Endpoints>> = None;
        let mut file = StateFile::new(self.state.clone(), ENDPOINTS_FILE);
        loop {
            let wait = poll_wait(file.flush_due(|| current.clone()));
            match client.endpoints_since(tag.as_deref(), wait).await {
                Ok(Some((new_tag, update))) => {
                    backoff.succeeded("polling endpoints again");
                    match (update, &mut current) {
                        (EndpointsUpdate::Full(full), _) => {
                            self.router.set_endpoints(&full);
                            current = Some(Arc::new(full));
                        }
                        (EndpointsUpdate::Delta(delta), Some(held)) => {
                            self.router.update_endpoints(&delta);
                            Arc::make_mut(held).apply(delta);
                        }
                        // A change to nothing held: ask for the whole.
                        (EndpointsUpdate::Delta(_), None) => {
                            tag = None;
                            continue;
                        }
                    }
                    if let Some(endpoints) = &current {
                        file.store_soon(store_delay(
                            endpoints.apps.len(),
                            STORE_AT_ONCE,
                            STORE_EVERY,
                        ));
                    }
                    tag = Some(new_tag);
                }
                Ok(None) => backoff.succeeded("polling endpoints again"),
                Err(e) if needs_registration(&e) => return e,
                Err(e) => {
                    backoff.failed("polling endpoints", &e);
                    tokio::time::sleep(backoff.delay()).await;
                }
            }
        }
    }
}

/// How long a long-poll may wait: until a state file write is due (but
/// not in a busy loop), or [`LONG_POLL_WAIT`].
fn poll_wait(due: Option<Duration>) -> Duration {
    due.map_or(LONG_POLL_WAIT, |d| {
        d.clamp(Duration::from_millis(50), LONG_POLL_WAIT)
    })
}

/// A 401 (credential unknown: the controller's state was reset), 403 or
/// 404 (the node was deleted) means: register again.
pub(super) fn needs_registration(e: &ClientError) -> bool {
    e.status()
        .is_some_and(|s| matches!(s.as_u16(), 401 | 403 | 404))
}

/// Exponential back-off that logs a failure once per outage, not per try.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn failed(&mut self, doing: &str, error: &ClientError) {
        if self.failures == 0 {
            tracing::warn!(error = %error_chain(error), "{doing} failed; retrying with back-off (serving continues)");
        } else {
            tracing::debug!(error = %error_chain(error), "{doing} failed again");
        }
        self.failures = self.failures.saturating_add(1);
    }

    fn succeeded(&mut self, what: &str) {
        if self.failures > 0 {
            tracing::info!("{what}");
        }
        self.failures = 0;
    }

    fn delay(&self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(8);
        (BACKOFF_MIN * 2u32.pow(exp)).min(BACKOFF_MAX)
    }
}
