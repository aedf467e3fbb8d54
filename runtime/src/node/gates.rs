//! Health gates in the background: a new revision with a health check is
//! tried under a name no request routes to until it answers 2xx (or fails
//! `failure_threshold` times). That can take `failure_threshold ×
//! interval`; run inline, it would hold the convergence of every other app
//! on the node meanwhile. So the converge loop starts the gate as a task and
//! moves on (the app keeps what serves now, its new replicas Starting); the
//! task records its verdict, marks the app unconverged and wakes the loop,
//! whose next pass deploys the revision or marks it Failed.

use std::collections::HashMap;
use std::sync::Arc;

use skiff_sdk::Digest;
use skiff_sdk::api::{Assignment, HealthCheck};
use skiff_sdk::error_chain;
use tokio_util::sync::CancellationToken;

use super::health::health_gate;
use super::{Agent, lock};
use crate::{Deployment, Runtime};

/// One app's gate: the revision it checks and, once done, its verdict.
struct Gate {
    revision: u64,
    digest: Digest,
    verdict: Option<Result<(), String>>,
    stop: CancellationToken,
}

/// The gates of the node's apps, one per app at most.
#[derive(Default)]
pub(super) struct Gates {
    by_app: HashMap<String, Gate>,
}

impl Gates {
    /// Stops `app`'s gate (the app is gone, or a newer revision replaces
    /// the one checked).
    pub(super) fn stop(&mut self, app: &str) {
        if let Some(gate) = self.by_app.remove(app) {
            gate.stop.cancel();
        }
    }
}

/// Tries `spec` as `candidate`: deployed, instantiated once, then its
/// health check; the candidate is removed whatever the verdict.
pub(super) async fn check(
    runtime: &Arc<Runtime>,
    candidate: &str,
    app: &str,
    spec: Deployment,
    health: &HealthCheck,
) -> Result<(), String> {
    runtime
        .deploy(Deployment {
            name: candidate.to_owned(),
            ..spec
        })
        .map_err(|e| error_chain(&e))?;
    let checked = async {
        runtime
            .instantiate_once(candidate)
            .await
            .map_err(|e| error_chain(&e))?;
        health_gate(runtime, candidate, app, health).await
    }
    .await;
    runtime.remove(candidate);
    checked
}

impl Agent {
    /// The verdict of `first`'s revision of `app` once its gate is done
    /// (taken: the next revision starts afresh); `None` while it runs,
    /// starting it if it is not running yet.
    pub(super) fn gate_verdict(
        &self,
        runtime: &Arc<Runtime>,
        app: &str,
        first: &Assignment,
        spec: &Deployment,
        health: &HealthCheck,
    ) -> Option<Result<(), String>> {
        let (revision, digest) = (first.revision, first.spec.artifact);
        let mut gates = lock(&self.gates);
        if let Some(gate) = gates.by_app.get(app)
            && gate.revision == revision
            && gate.digest == digest
        {
            let verdict = gate.verdict.clone()?;
            gates.by_app.remove(app);
            return Some(verdict);
        }
        let Some(me) = self.me.upgrade() else {
            return Some(Err("the node is stopping".into()));
        };
        gates.stop(app);
        let stop = CancellationToken::new();
        gates.by_app.insert(
            app.to_owned(),
            Gate {
                revision,
                digest,
                verdict: None,
                stop: stop.clone(),
            },
        );
        drop(gates);
        let (runtime, app, spec, health) = (
            runtime.clone(),
            app.to_owned(),
            spec.clone(),
            health.clone(),
        );
        tokio::spawn(async move {
            let candidate = format!("{app}@{revision}");
            let verdict = tokio::select! {
                verdict = check(&runtime, &candidate, &app, spec, &health) => verdict,
                () = stop.cancelled() => {
                    runtime.remove(&candidate);
                    return;
                }
            };
            {
                let mut gates = lock(&me.gates);
                match gates.by_app.get_mut(&app) {
                    Some(gate) if gate.revision == revision && gate.digest == digest => {
                        gate.verdict = Some(verdict);
                    }
                    _ => return,
                }
            }
            lock(&me.unconverged).mark([app.as_str()]);
            me.gate_done.notify_one();
        });
        None
    }
}
