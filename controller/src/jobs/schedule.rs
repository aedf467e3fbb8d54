//! `plan_schedule`: what one pass does to one schedule (pure): fire for
//! the latest time that came (or skip it, by the deadline or the
//! concurrency policy), and drop finished jobs beyond the history limits.

use skiff_sdk::api::{ConcurrencyPolicy, EventKind, Job, JobState, utc};

use crate::store::{Firing, NewEvent};

/// Most missed times counted one by one.
const MISSED_CAP: u32 = 100;

/// What a pass decided for one schedule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scheduled {
    /// The firing to write, when there is one.
    pub firing: Option<Firing>,
    /// When it fires next.
    pub wake_at: Option<i64>,
}

/// The name of the job a schedule starts for the time `at` (Unix ms).
pub fn child_name(schedule: &str, at: i64) -> String {
    format!("{schedule}-{}", at.div_euclid(1000))
}

/// Plans one schedule: `children` are the jobs it started, oldest first.
pub fn plan_schedule(schedule: &Job, children: &[Job], now: i64) -> Scheduled {
    let Some(cron) = &schedule.spec.schedule else {
        return Scheduled::default();
    };
    if schedule.spec.placement.every_node {
        // Fired by each matching node's own clock (see the node's `cron`).
        return Scheduled::default();
    }
    let name = schedule.name.as_str();
    let event = |message: String| NewEvent {
        app: Some(name.to_owned()),
        node: None,
        kind: EventKind::JobSkipped,
        message,
    };
    let mut firing = Firing {
        schedule: name.to_owned(),
        version: schedule.version,
        fired_for: None,
        start: None,
        delete: Vec::new(),
        events: Vec::new(),
    };
    let last = schedule.status.last_fired.unwrap_or(schedule.created_at);
    let (latest, count) = cron.fired_between(last, now, MISSED_CAP);
    let active: Vec<&Job> = children
        .iter()
        .filter(|c| c.status.state == JobState::Active)
        .collect();
    if let Some(at) = latest {
        firing.fired_for = Some(at);
        if count > 1 {
            let more = if count >= MISSED_CAP { "or more " } else { "" };
            firing.events.push(event(format!(
                "schedule {name}: {} {more}earlier time(s) were missed; firing for the latest, {}",
                count - 1,
                utc(at)
            )));
        }
        let late = u64::try_from(now - at).unwrap_or(0);
        if cron.starting_deadline_ms.is_some_and(|d| late > d) {
            firing.events.push(event(format!(
                "schedule {name}: the time {} was missed by {late} ms, beyond its starting deadline",
                utc(at)
            )));
        } else if cron.concurrency_policy == ConcurrencyPolicy::Forbid && !active.is_empty() {
            firing.events.push(event(format!(
                "schedule {name}: skipped the time {}: job {} is still active (concurrency_policy = forbid)",
                utc(at),
                active[0].name
            )));
        } else {
            if cron.concurrency_policy == ConcurrencyPolicy::Replace {
                firing.delete.extend(active.iter().map(|c| c.name.clone()));
            }
            let mut spec = schedule.spec.clone();
            spec.schedule = None;
            let child = child_name(name, at);
            firing.events.push(NewEvent {
                app: Some(child.clone()),
                node: None,
                kind: EventKind::JobCreated,
                message: format!("job {child} started by schedule {name} for {}", utc(at)),
            });
            firing.start = Some((child, spec));
        }
    }
    // History: the newest finished jobs of each outcome are kept.
    for (state, keep) in [
        (JobState::Complete, cron.keep_succeeded),
        (JobState::Failed, cron.keep_failed),
    ] {
        let done: Vec<&Job> = children
            .iter()
            .filter(|c| c.status.state == state)
            .collect();
        let extra = done.len().saturating_sub(keep as usize);
        firing
            .delete
            .extend(done.iter().take(extra).map(|c| c.name.clone()));
    }
    let wake_at = cron.next_after(now);
    let nothing = firing.fired_for.is_none() && firing.delete.is_empty();
    Scheduled {
        firing: (!nothing).then_some(firing),
        wake_at,
    }
}

#[cfg(test)]
mod tests {
    use skiff_sdk::Digest;
    use skiff_sdk::api::{JobSpec, JobStatus, Schedule};

    use super::*;

    const T0: i64 = 1_767_225_600_000;

    fn job(name: &str, state: JobState, schedule: Option<Schedule>) -> Job {
        Job {
            name: name.into(),
            version: 1,
            spec: JobSpec {
                schedule,
                ..JobSpec::new(Digest::of(b"x"))
            },
            created_at: T0,
            owner: None,
            status: JobStatus {
                state,
                succeeded: 0,
                failed: 0,
                active: 0,
                finished_at: None,
                last_fired: Some(T0),
                message: String::new(),
            },
        }
    }

    fn every(seconds: u32, policy: ConcurrencyPolicy) -> Job {
        job(
            "tick",
            JobState::Scheduled,
            Some(Schedule {
                concurrency_policy: policy,
                ..Schedule::new(format!("*/{seconds} * * * * *"))
            }),
        )
    }

    #[test]
    fn fires_at_its_times_only() {
        let s = every(2, ConcurrencyPolicy::Allow);
        let p = plan_schedule(&s, &[], T0 + 1_000);
        assert_eq!(p.firing, None);
        assert_eq!(p.wake_at, Some(T0 + 2_000));
        let p = plan_schedule(&s, &[], T0 + 2_010);
        let firing = p.firing.unwrap();
        assert_eq!(firing.fired_for, Some(T0 + 2_000));
        let (name, spec) = firing.start.unwrap();
        assert_eq!(name, format!("tick-{}", (T0 + 2_000) / 1000));
        assert_eq!(spec.schedule, None);
        assert_eq!(p.wake_at, Some(T0 + 4_000));
    }

    #[test]
    fn policies_and_missed_times() {
        let running = job("tick-1", JobState::Active, None);
        let forbid = every(2, ConcurrencyPolicy::Forbid);
        let firing = plan_schedule(&forbid, std::slice::from_ref(&running), T0 + 2_000)
            .firing
            .unwrap();
        assert_eq!(firing.start, None);
        assert_eq!(firing.fired_for, Some(T0 + 2_000));
        assert!(firing.events[0].message.contains("still active"));
        let replace = every(2, ConcurrencyPolicy::Replace);
        let firing = plan_schedule(&replace, &[running], T0 + 2_000)
            .firing
            .unwrap();
        assert_eq!(firing.delete, vec!["tick-1".to_owned()]);
        assert!(firing.start.is_some());
        // Ten seconds away: one firing, for the latest time, four missed.
        let allow = every(2, ConcurrencyPolicy::Allow);
        let firing = plan_schedule(&allow, &[], T0 + 10_500).firing.unwrap();
        assert_eq!(firing.fired_for, Some(T0 + 10_000));
        assert!(firing.events[0].message.contains("4 earlier"));
        // Beyond the starting deadline: nothing starts.
        let mut late = every(2, ConcurrencyPolicy::Allow);
        if let Some(s) = late.spec.schedule.as_mut() {
            s.starting_deadline_ms = Some(100);
        }
        let firing = plan_schedule(&late, &[], T0 + 2_500).firing.unwrap();
        assert_eq!(firing.start, None);
    }

    #[test]
    fn history_keeps_the_newest() {
        let s = every(60, ConcurrencyPolicy::Allow);
        let done: Vec<Job> = (0..5)
            .map(|i| job(&format!("tick-{i}"), JobState::Complete, None))
            .chain([
                job("tick-f1", JobState::Failed, None),
                job("tick-f2", JobState::Failed, None),
            ])
            .collect();
        let firing = plan_schedule(&s, &done, T0 + 1_000).firing.unwrap();
        assert_eq!(firing.delete, vec!["tick-0", "tick-1", "tick-f1"]);
    }
}
