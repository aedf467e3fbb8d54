//! Workers: each replica of a worker app assigned here runs its command
//! continuously ([`Runtime::run_command`]), and is restarted when it
//! exits. A run that ended within [`WORKER_STABLE_MS`] of its start counts
//! as a failure, and the delay before the next start doubles with each
//! one in a row (from [`RESTART_BACKOFF_MIN`] up to
//! [`RESTART_BACKOFF_MAX`]): Kubernetes' `CrashLoopBackOff`, shown in
//! the replica's state reason.
//!
//! States: `Pending` while the component is fetched, `Starting` until an
//! instance has run for [`READY_AFTER`] (and again, with the back-off in
//! the reason, after it exited), `Ready` while it runs, `Failed` if the
//! component cannot run as a command here at all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_sdk::api::{Assignment, ReplicaState, WORKER_STABLE_MS, reason};
use tokio_util::sync::CancellationToken;

use super::fetch::Load;
use super::{Agent, lock};
use crate::command::CommandRun;
use crate::host::Capabilities;

/// An instance that has run this long without exiting is Ready.
pub const READY_AFTER: Duration = Duration::from_secs(1);
/// The first restart delay after a quick exit.
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest restart delay, as Kubernetes caps its own.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How long a worker waits before fetching its component again.
const FETCH_RETRY: Duration = Duration::from_secs(1);

/// The delay before the next start after `failures` quick exits in a row.
pub fn restart_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    RESTART_BACKOFF_MIN
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(RESTART_BACKOFF_MAX)
}

/// The worker replicas supervised here: replica id to (app, stop).
#[derive(Debug, Default)]
pub(super) struct Workers {
    by_id: HashMap<String, (String, CancellationToken)>,
}

impl Agent {
    /// Starts a supervisor for each worker replica newly assigned among
    /// `by_app`, and stops those of the apps looked at (all: `None`) that
    /// are no longer assigned.
    pub(super) fn follow_workers(
        &self,
        looked_at: Option<&HashSet<String>>,
        by_app: &BTreeMap<&str, Vec<&Assignment>>,
    ) {
        let assigned: HashSet<&str> = by_app
            .values()
            .flatten()
            .filter(|a| a.spec.kind == skiff_sdk::api::AppKind::Worker)
            .map(|a| a.id.as_str())
            .collect();
        let mut workers = lock(&self.workers);
        workers.by_id.retain(|id, (app, stop)| {
            let looked = looked_at.is_none_or(|apps| apps.contains(app));
            let keep = !looked || assigned.contains(id.as_str());
            if !keep {
                stop.cancel();
            }
            keep
        });
        let Some(this) = self.me.upgrade() else {
            return;
        };
        for a in by_app.values().flatten() {
            if !assigned.contains(a.id.as_str()) || workers.by_id.contains_key(&a.id) {
                continue;
            }
            let stop = self.stopping.child_token();
            workers
                .by_id
                .insert(a.id.clone(), (a.app.clone(), stop.clone()));
            let agent = this.clone();
            let assignment = (*a).clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = agent.supervise(&assignment) => {}
                    () = stop.cancelled() => {
                        tracing::info!(replica = %assignment.id, "worker stopped: no longer assigned");
                    }
                }
            });
        }
    }

    /// Runs one worker replica until its component cannot run here.
    async fn supervise(self: &Arc<Self>, a: &Assignment) {
        let runtime = self.router.runtime().clone();
        let (mut failures, mut restarts) = (0u32, 0u32);
        self.set_state(&a.id, ReplicaState::Starting, None);
        loop {
            match self
                .fetch_component(&runtime, &a.spec.artifact, a.spec.source.as_deref())
                .await
            {
                Load::Ready => {}
                Load::Failed(why) => {
                    self.set_state(&a.id, ReplicaState::Failed, Some(why));
                    return;
                }
                Load::Missing(why) => {
                    self.set_state(&a.id, ReplicaState::Pending, Some(why));
                    tokio::time::sleep(FETCH_RETRY).await;
                    continue;
                }
            }
            let spec = &a.spec;
            let command = CommandRun {
                // Its output is the app's, as for HTTP apps.
                id: a.app.clone(),
                program: a.app.clone(),
                digest: spec.artifact,
                args: spec.args.clone(),
                env: spec.env.clone().into_iter().collect(),
                quota: spec.quota,
                capabilities: Capabilities {
                    outbound: super::converge::granted(&a.app, &spec.allowed_outbound_hosts),
                    files: None,
                },
            };
            let started = Instant::now();
            let run = runtime.run_command(command, |_| {});
            tokio::pin!(run);
            let end = tokio::select! {
                end = &mut run => end,
                () = tokio::time::sleep(READY_AFTER) => {
                    self.set_state(&a.id, ReplicaState::Ready, None);
                    run.await
                }
            };
            if end.reason.as_deref() == Some(reason::START) {
                let why = end.message.unwrap_or_else(|| "cannot start".into());
                self.set_state(&a.id, ReplicaState::Failed, Some(why));
                return;
            }
            restarts += 1;
            failures = if started.elapsed() >= Duration::from_millis(WORKER_STABLE_MS) {
                0
            } else {
                failures + 1
            };
            let delay = restart_delay(failures);
            let why = end.reason.as_deref().unwrap_or("exit 0");
            tracing::warn!(replica = %a.id, app = %a.app, reason = why, restarts, delay_ms = delay.as_millis() as u64, "worker exited; restarting");
            self.set_state(
                &a.id,
                ReplicaState::Starting,
                Some(format!(
                    "CrashLoopBackOff: {why}; restart {restarts} in {} ms",
                    delay.as_millis()
                )),
            );
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delay_doubles_from_a_second_to_five_minutes() {
        let secs = |f| restart_delay(f).as_secs();
        assert_eq!([0, 1, 2, 3, 4].map(secs), [0, 1, 2, 4, 8]);
        assert_eq!(secs(20), 300);
    }
}
