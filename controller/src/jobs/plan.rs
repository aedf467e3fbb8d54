//! `plan`: what one pass does to one job, from plain data (pure, like the
//! reconciler's plan): end the runs of lost nodes, finish the job when it
//! has its completions or too many failures, wait out the back-off, and
//! place new runs with the scheduler.

use std::collections::HashMap;

use skiff_sdk::api::{EventKind, JobState, reason};

use crate::scheduler::{self, NodeSlot, Request};
use crate::store::{JobChange, JobProgress, NewEvent, NewRun};

/// What a pass decided for one job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Planned {
    /// The change to write, when there is one.
    pub change: Option<JobChange>,
    /// When to look at the job again by time (a back-off ending).
    pub wake_at: Option<i64>,
}

/// Plans one job. `slots` are the nodes (their `allocated` grows with the
/// runs placed here, so later jobs in the same pass see them); `lost` says
/// whether a node's runs are to be run again elsewhere.
pub fn plan(
    progress: &JobProgress,
    slots: &mut [NodeSlot],
    lost: &dyn Fn(&str) -> bool,
    now: i64,
) -> Planned {
    let job = &progress.job;
    let spec = &job.spec;
    let name = job.name.as_str();
    let mut change = JobChange {
        job: job.name.clone(),
        version: job.version,
        add: Vec::new(),
        end: Vec::new(),
        finish: None,
        message: None,
        events: Vec::new(),
    };
    let event = |kind, node: Option<&str>, message: String| NewEvent {
        app: Some(name.to_owned()),
        node: node.map(str::to_owned),
        kind,
        message,
    };
    let mut running = Vec::new();
    for run in &progress.active {
        if lost(&run.node) {
            change
                .end
                .push((run.id.clone(), reason::NODE_LOST.to_owned()));
            change.events.push(event(
                EventKind::JobRunLost,
                Some(&run.node),
                format!(
                    "run {} is run again elsewhere: node {} was lost",
                    run.id, run.node
                ),
            ));
        } else {
            running.push(run);
        }
    }
    let (succeeded, failed) = (job.status.succeeded, job.status.failed);
    let finish = if succeeded >= spec.completions {
        Some((
            JobState::Complete,
            EventKind::JobComplete,
            format!("{succeeded} of {} runs succeeded", spec.completions),
            "job-complete",
        ))
    } else if failed > spec.retries {
        Some((
            JobState::Failed,
            EventKind::JobFailed,
            format!(
                "{failed} runs failed, more than the {} retries allowed",
                spec.retries
            ),
            "job-failed",
        ))
    } else {
        None
    };
    if let Some((state, kind, message, why)) = finish {
        for run in running {
            change.end.push((run.id.clone(), why.to_owned()));
        }
        change.finish = Some(state);
        change
            .events
            .push(event(kind, None, format!("job {name}: {message}")));
        change.message = Some(message);
        return Planned {
            change: Some(change),
            wake_at: None,
        };
    }
    let room = spec
        .parallelism
        .min(spec.completions - succeeded)
        .saturating_sub(u32::try_from(running.len()).unwrap_or(u32::MAX));
    let mut wake_at = None;
    let mut message = String::new();
    let ready_at = progress
        .last_failure
        .map(|at| at.saturating_add(i64::try_from(spec.backoff(failed)).unwrap_or(i64::MAX)));
    if room > 0 && failed > 0 && ready_at.is_some_and(|at| now < at) {
        wake_at = ready_at;
        message = format!(
            "backing off after {failed} failed run(s): the next starts in {} ms",
            ready_at.unwrap_or(now) - now
        );
    } else if room > 0 {
        let mut per_node: HashMap<String, u32> = HashMap::new();
        for run in &running {
            *per_node.entry(run.node.clone()).or_default() += 1;
        }
        let reservation = spec.quota.reservation_bytes();
        let spread = spec.placement.spread.unwrap_or(true);
        for _ in 0..room {
            let counts: Vec<u32> = slots
                .iter()
                .map(|s| per_node.get(s.name.as_str()).copied().unwrap_or(0))
                .collect();
            let request = Request {
                app: name,
                reservation,
                selector: &spec.placement.node_selector,
                spread,
                prefer: None,
            };
            match scheduler::place(&request, slots, &counts, |_| 0) {
                Ok(i) => {
                    let slot = &mut slots[i];
                    slot.allocated = slot.allocated.saturating_add(reservation);
                    *per_node.entry(slot.name.clone()).or_default() += 1;
                    change.add.push(NewRun {
                        node: slot.name.clone(),
                        reservation,
                    });
                }
                Err(why) => {
                    message = format!("waiting for a node: {why}");
                    break;
                }
            }
        }
    }
    if job.status.message != message {
        change.message = Some(message);
    }
    let nothing = change.add.is_empty() && change.end.is_empty() && change.message.is_none();
    Planned {
        change: (!nothing).then_some(change),
        wake_at,
    }
}

#[cfg(test)]
mod tests {
    use skiff_sdk::Digest;
    use skiff_sdk::api::{Job, JobSpec, JobStatus, Run, RunState};

    use super::*;

    fn slot(name: &str) -> NodeSlot {
        NodeSlot {
            name: name.into(),
            labels: Default::default(),
            ready: true,
            cordoned: false,
            capacity: 1 << 30,
            allocated: 0,
        }
    }

    fn progress(
        spec: JobSpec,
        succeeded: u32,
        failed: u32,
        active: &[(&str, &str)],
    ) -> JobProgress {
        JobProgress {
            job: Job {
                name: "batch".into(),
                version: 1,
                spec,
                created_at: 0,
                owner: None,
                status: JobStatus {
                    state: JobState::Active,
                    succeeded,
                    failed,
                    active: active.len() as u32,
                    finished_at: None,
                    last_fired: None,
                    message: String::new(),
                },
            },
            active: active
                .iter()
                .map(|(id, node)| Run {
                    id: (*id).into(),
                    job: "batch".into(),
                    state: RunState::Running,
                    node: (*node).into(),
                    created_at: 0,
                    started_at: None,
                    finished_at: None,
                    exit_code: None,
                    reason: None,
                    message: None,
                })
                .collect(),
            last_failure: (failed > 0).then_some(1_000),
        }
    }

    fn spec(completions: u32, parallelism: u32) -> JobSpec {
        JobSpec {
            completions,
            parallelism,
            backoff_ms: 100,
            retries: 2,
            ..JobSpec::new(Digest::of(b"x"))
        }
    }

    #[test]
    fn runs_start_up_to_parallelism_and_spread() {
        let mut slots = [slot("a"), slot("b")];
        let p = plan(&progress(spec(3, 2), 0, 0, &[]), &mut slots, &|_| false, 0);
        let add = p.change.unwrap().add;
        assert_eq!(add.len(), 2);
        assert_ne!(add[0].node, add[1].node);
        // One running and one succeeded: one more fits the last completion.
        let p = plan(
            &progress(spec(3, 2), 1, 0, &[("batch.1", "a")]),
            &mut slots,
            &|_| false,
            0,
        );
        assert_eq!(p.change.unwrap().add.len(), 1);
        // Nothing to do once the runs fill the room.
        let p = plan(
            &progress(spec(3, 2), 1, 0, &[("batch.1", "a"), ("batch.2", "b")]),
            &mut slots,
            &|_| false,
            0,
        );
        assert_eq!(p, Planned::default());
    }

    #[test]
    fn failures_back_off_then_fail_the_job() {
        let mut slots = [slot("a")];
        // One failure at t=1000: the next run waits 100 ms.
        let p = plan(
            &progress(spec(1, 1), 0, 1, &[]),
            &mut slots,
            &|_| false,
            1_050,
        );
        assert_eq!(p.wake_at, Some(1_100));
        assert!(p.change.unwrap().add.is_empty());
        let p = plan(
            &progress(spec(1, 1), 0, 1, &[]),
            &mut slots,
            &|_| false,
            1_100,
        );
        assert_eq!(p.change.unwrap().add.len(), 1);
        // Two failures: 200 ms.
        let p = plan(
            &progress(spec(1, 1), 0, 2, &[]),
            &mut slots,
            &|_| false,
            1_150,
        );
        assert_eq!(p.wake_at, Some(1_200));
        // More than `retries`: Failed.
        let p = plan(
            &progress(spec(1, 1), 0, 3, &[]),
            &mut slots,
            &|_| false,
            5_000,
        );
        assert_eq!(p.change.unwrap().finish, Some(JobState::Failed));
    }

    #[test]
    fn completions_finish_the_job_and_lost_runs_run_again() {
        let mut slots = [slot("a"), slot("b")];
        let p = plan(&progress(spec(2, 2), 2, 0, &[]), &mut slots, &|_| false, 0);
        assert_eq!(p.change.unwrap().finish, Some(JobState::Complete));
        let p = plan(
            &progress(spec(1, 1), 0, 0, &[("batch.1", "a")]),
            &mut slots,
            &|n| n == "a",
            0,
        );
        let change = p.change.unwrap();
        assert_eq!(change.end, vec![("batch.1".into(), "node-lost".into())]);
        assert_eq!(change.add.len(), 1);
        assert_eq!(change.finish, None);
    }

    #[test]
    fn no_fitting_node_is_said() {
        let mut slots = [NodeSlot {
            ready: false,
            ..slot("a")
        }];
        let p = plan(&progress(spec(1, 1), 0, 0, &[]), &mut slots, &|_| false, 0);
        let change = p.change.unwrap();
        assert!(change.add.is_empty());
        assert!(change.message.unwrap().contains("0/1 nodes fit"));
    }
}
