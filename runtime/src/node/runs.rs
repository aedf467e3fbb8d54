//! A node's job runs: long-poll the runs placed here, carry each out once
//! in the runtime ([`Runtime::run_command`]), and report what became of
//! it (`Running`, then `Succeeded` or `Failed` with the reason).
//!
//! A run that disappears from the set (its job was deleted or replaced,
//! or the controller gave it up) is stopped: dropping its task drops the
//! instance. A finished run is remembered until the controller stops
//! listing it, so a report that was lost is sent again and the run is
//! never started twice by this node. Reports go in batches, as soon as
//! the previous batch was answered; a failed send is retried.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use skiff_sdk::api::{RunAssignment, RunReport, RunState, reason};
use skiff_sdk::{Client, ClientError, error_chain};
use tokio_util::sync::CancellationToken;

use super::control::{LONG_POLL_WAIT, needs_registration};
use super::disk::StateFile;
use super::fetch::Load;
use super::{Agent, lock};
use crate::command::{CommandEnd, CommandRun};
use crate::host::Capabilities;

/// How long a run waits before trying again to fetch its component while
/// the controller is unreachable.
const FETCH_RETRY: Duration = Duration::from_secs(1);
/// Pause after a failed report before sending again.
const REPORT_RETRY: Duration = Duration::from_millis(500);

/// One run this node knows of.
#[derive(Debug)]
pub(super) struct RunTask {
    /// Stops it.
    cancel: CancellationToken,
    /// Its last report (the final one once it has finished).
    last: Option<RunReport>,
    /// A run of a node-local schedule: the schedule and the time it fired
    /// for (the controller learns of it from its reports).
    local: Option<(String, i64)>,
}

/// Runs known here, and reports not yet answered.
#[derive(Debug, Default)]
pub(super) struct Runs {
    tasks: HashMap<String, RunTask>,
    unsent: Vec<RunReport>,
}

impl Runs {
    /// The node-local runs whose ids start with `prefix` that have not
    /// finished.
    pub(super) fn active_local(&self, prefix: &str) -> Vec<String> {
        self.tasks
            .iter()
            .filter(|(id, t)| {
                t.local.is_some()
                    && id.starts_with(prefix)
                    && !t.last.as_ref().is_some_and(|r| r.state.finished())
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Stops a node-local run (`replace`) and reports it so.
    pub(super) fn stop(&mut self, id: &str) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        task.cancel.cancel();
        let mut report = finished(
            &CommandEnd {
                exit_code: None,
                reason: Some("replaced".into()),
                message: Some("a newer firing of its schedule replaced it".into()),
            },
            task.last.as_ref().and_then(|r| r.started_at),
        );
        report.id = id.to_owned();
        if let Some((job, at)) = &task.local {
            report.job = Some(job.clone());
            report.fired_for = Some(*at);
        }
        task.last = Some(report.clone());
        self.unsent.retain(|r| r.id != id);
        self.unsent.push(report);
    }
}

impl Agent {
    /// Long-polls the runs placed here and starts or stops them, until the
    /// controller no longer knows this node's credential.
    pub(super) async fn poll_runs(self: &Arc<Self>, client: &Client) -> ClientError {
        let mut after: Option<String> = None;
        let mut failures = 0u32;
        let mut file = StateFile::new(self.state.clone(), super::cron::SCHEDULES_FILE);
        loop {
            match client
                .node_runs(&self.config.name, after.as_deref(), LONG_POLL_WAIT)
                .await
            {
                Ok(set) => {
                    failures = 0;
                    if after.as_deref() != Some(set.version.as_str()) {
                        self.follow_schedules(set.schedules, &mut file).await;
                        self.follow_runs(set.runs);
                        after = Some(set.version);
                    }
                }
                Err(e) if needs_registration(&e) => return e,
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(error = %error_chain(&e), "watching runs failed; retrying");
                    }
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(REPORT_RETRY * failures.min(10)).await;
                }
            }
        }
    }

    /// Starts the runs new in `set` and stops those no longer in it.
    fn follow_runs(self: &Arc<Self>, set: Vec<RunAssignment>) {
        let mut runs = lock(&self.runs);
        let listed: std::collections::HashSet<&str> = set.iter().map(|r| r.id.as_str()).collect();
        runs.tasks.retain(|id, task| {
            // Node-local runs are this node's own, not the controller's.
            let keep = task.local.is_some() || listed.contains(id.as_str());
            if !keep {
                task.cancel.cancel();
            }
            keep
        });
        let mut resend = Vec::new();
        let mut fresh = Vec::new();
        for run in &set {
            match runs.tasks.get(&run.id) {
                // Finished here, yet still listed: the report was lost.
                Some(task) => {
                    resend.extend(task.last.as_ref().filter(|r| r.state.finished()).cloned())
                }
                None => fresh.push(run.clone()),
            }
        }
        for report in resend {
            if !runs.unsent.iter().any(|r| r.id == report.id) {
                runs.unsent.push(report);
            }
        }
        drop(runs);
        for run in fresh {
            self.start_run(run, None);
        }
        self.runs_report.notify_one();
    }

    /// Starts carrying out a run (a node-local schedule's, fired for
    /// `local_at`, or one the controller placed).
    pub(super) fn start_run(self: &Arc<Self>, run: RunAssignment, local_at: Option<i64>) {
        let cancel = CancellationToken::new();
        lock(&self.runs).tasks.insert(
            run.id.clone(),
            RunTask {
                cancel: cancel.clone(),
                last: None,
                local: local_at.map(|at| (run.job.clone(), at)),
            },
        );
        let this = self.clone();
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = this.carry_out(&run) => {}
                () = cancel.cancelled() => {
                    tracing::info!(run = %run.id, "run stopped");
                }
                // Run again once the node is back (at least once).
                () = stopping.cancelled() => {}
            }
        });
    }

    /// Fetches the component, runs it, reports.
    async fn carry_out(self: &Arc<Self>, run: &RunAssignment) {
        let runtime = self.router.runtime().clone();
        loop {
            match self
                .fetch_component(&runtime, &run.spec.artifact, None)
                .await
            {
                Load::Ready => break,
                Load::Failed(why) => {
                    let end = CommandEnd {
                        exit_code: None,
                        reason: Some(reason::START.to_owned()),
                        message: Some(why),
                    };
                    self.record_run(&run.id, finished(&end, None));
                    return;
                }
                Load::Missing(why) => {
                    tracing::debug!(run = %run.id, %why, "waiting for the component");
                    tokio::time::sleep(FETCH_RETRY).await;
                }
            }
        }
        let spec = &run.spec;
        let command = CommandRun {
            id: run.id.clone(),
            program: run.job.clone(),
            digest: spec.artifact,
            args: spec.args.clone(),
            env: spec.env.clone().into_iter().collect(),
            quota: spec.quota,
            capabilities: Capabilities {
                outbound: super::converge::granted(&run.job, &spec.allowed_outbound_hosts),
                files: None,
            },
        };
        let started_at = Arc::new(std::sync::Mutex::new(None));
        let seen = started_at.clone();
        let this = self.clone();
        let id = run.id.clone();
        tracing::info!(run = %run.id, job = %run.job, "run starting");
        let end = runtime
            .run_command(command, move |at| {
                *lock(&seen) = Some(at);
                this.record_run(
                    &id,
                    RunReport {
                        id: id.clone(),
                        state: RunState::Running,
                        started_at: Some(at),
                        finished_at: None,
                        exit_code: None,
                        reason: None,
                        message: None,
                        job: None,
                        fired_for: None,
                    },
                );
            })
            .await;
        let started = *lock(&started_at);
        tracing::info!(run = %run.id, reason = end.reason.as_deref().unwrap_or("succeeded"), "run finished");
        let mut report = finished(&end, started);
        report.id = run.id.clone();
        self.record_run(&run.id, report);
    }

    /// Keeps a run's latest report and queues it to be sent.
    fn record_run(&self, id: &str, mut report: RunReport) {
        report.id = id.to_owned();
        let mut runs = lock(&self.runs);
        let Some(task) = runs.tasks.get_mut(id) else {
            return;
        };
        if let Some((job, at)) = &task.local {
            report.job = Some(job.clone());
            report.fired_for = Some(*at);
        }
        task.last = Some(report.clone());
        runs.unsent.retain(|r| r.id != id || r.state.finished());
        runs.unsent.push(report);
        drop(runs);
        self.runs_report.notify_one();
    }

    /// Sends queued reports, a batch at a time, until the controller no
    /// longer knows this node's credential.
    pub(super) async fn report_runs(&self, client: &Client) -> ClientError {
        loop {
            let batch = {
                let mut runs = lock(&self.runs);
                std::mem::take(&mut runs.unsent)
            };
            if batch.is_empty() {
                self.runs_report.notified().await;
                continue;
            }
            match client.report_runs(&self.config.name, &batch).await {
                Ok(()) => {
                    // A node-local run is forgotten once its end is told.
                    let mut runs = lock(&self.runs);
                    for report in batch.iter().filter(|r| r.state.finished()) {
                        let told = runs
                            .tasks
                            .get(&report.id)
                            .is_some_and(|t| t.local.is_some());
                        if told {
                            runs.tasks.remove(&report.id);
                        }
                    }
                }
                Err(e) => {
                    {
                        // Back in front of what was queued meanwhile.
                        let mut runs = lock(&self.runs);
                        let newer = std::mem::take(&mut runs.unsent);
                        runs.unsent = batch;
                        runs.unsent.extend(newer);
                    }
                    if needs_registration(&e) {
                        return e;
                    }
                    tracing::debug!(error = %error_chain(&e), "reporting runs failed; retrying");
                    tokio::time::sleep(REPORT_RETRY).await;
                }
            }
        }
    }
}

/// The final report of a run that ended so.
fn finished(end: &CommandEnd, started_at: Option<i64>) -> RunReport {
    RunReport {
        id: String::new(),
        state: if end.succeeded() {
            RunState::Succeeded
        } else {
            RunState::Failed
        },
        started_at,
        finished_at: Some(crate::command::now_ms()),
        exit_code: end.exit_code,
        reason: end.reason.clone(),
        message: end.message.clone(),
        job: None,
        fired_for: None,
    }
}
