//! Node-local schedules: a schedule with `placement.every_node` is fired
//! by each matching node's own clock, from the copy the node keeps on disk
//! (`schedules.json`), so time-based work goes on while the controller is
//! unreachable; the runs are reported (and recorded by the controller)
//! once it answers again (edge autonomy).
//!
//! Times are counted from when the node learnt the schedule or started:
//! times missed while the node itself was down are not made up. The
//! concurrency policy applies to this node's own runs of the schedule.
//! Reports not yet sent when the node restarts are lost (the run's output
//! is too): the controller never learns of those runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use skiff_sdk::api::{ConcurrencyPolicy, NodeSchedule, RunAssignment};
use tokio_util::sync::CancellationToken;

use super::disk::StateFile;
use super::{Agent, lock};

/// The node's schedules on disk.
pub(super) const SCHEDULES_FILE: &str = "schedules.json";
/// Longest sleep of the cron loop when nothing is due sooner.
const IDLE: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    crate::command::now_ms()
}

impl Agent {
    /// Takes the schedules the controller placed here (stored before they
    /// are acted on).
    pub(super) async fn follow_schedules(
        &self,
        schedules: Vec<NodeSchedule>,
        file: &mut StateFile<Vec<NodeSchedule>>,
    ) {
        if **self.schedules.borrow() == schedules {
            return;
        }
        let schedules = Arc::new(schedules);
        file.store(schedules.clone()).await;
        tracing::info!(count = schedules.len(), "node-local schedules updated");
        self.schedules.send_replace(schedules);
    }

    /// Fires the node-local schedules at their times until `shutdown`.
    pub(super) async fn cron_loop(self: &Arc<Self>, shutdown: &CancellationToken) {
        let mut rx = self.schedules.subscribe();
        // Per schedule (name, version): the time it last fired for.
        let mut last: HashMap<(String, u64), i64> = HashMap::new();
        loop {
            let schedules = rx.borrow_and_update().clone();
            let now = now_ms();
            last.retain(|(name, version), _| {
                schedules
                    .iter()
                    .any(|s| &s.job == name && s.version == *version)
            });
            let mut next: Option<i64> = None;
            for schedule in schedules.iter() {
                let Some(cron) = &schedule.spec.schedule else {
                    continue;
                };
                let key = (schedule.job.clone(), schedule.version);
                let since = *last.entry(key.clone()).or_insert(now);
                let (latest, _) = cron.fired_between(since, now, 1_000);
                if let Some(at) = latest {
                    last.insert(key, at);
                    self.fire_local(schedule, at);
                }
                if let Some(at) = cron.next_after(now) {
                    next = Some(next.map_or(at, |n: i64| n.min(at)));
                }
            }
            let wait = next
                .map(|at| Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)))
                .unwrap_or(IDLE)
                .min(IDLE);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                changed = rx.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Starts this node's run of `schedule` for the time `at`, as its
    /// concurrency policy allows.
    fn fire_local(self: &Arc<Self>, schedule: &NodeSchedule, at: i64) {
        let prefix = format!("{}.{}.", schedule.job, self.config.name);
        let id = format!("{prefix}{}", at.div_euclid(1000));
        let policy = schedule
            .spec
            .schedule
            .as_ref()
            .map(|s| s.concurrency_policy)
            .unwrap_or_default();
        {
            let mut runs = lock(&self.runs);
            let active: Vec<String> = runs.active_local(&prefix);
            match policy {
                ConcurrencyPolicy::Forbid if !active.is_empty() => {
                    tracing::info!(schedule = %schedule.job, run = %active[0], "firing skipped: the last run is still active (forbid)");
                    return;
                }
                ConcurrencyPolicy::Replace => {
                    for old in active {
                        runs.stop(&old);
                    }
                }
                _ => {}
            }
        }
        let mut spec = (*schedule.spec).clone();
        spec.schedule = None;
        let run = RunAssignment {
            id,
            job: schedule.job.clone(),
            spec: Arc::new(spec),
        };
        self.start_run(run, Some(at));
    }
}
