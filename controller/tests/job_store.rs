//! The store contract for jobs, runs and schedules, run against every
//! backend (SQLite always, PostgreSQL when `SKIFF_TEST_POSTGRES_URL` is
//! set).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::collections::BTreeMap;

use common::stores;
use skiff_controller::store::{Firing, JobChange, JobStore, NewRun, Store, StoreError};
use skiff_sdk::Digest;
use skiff_sdk::api::{
    JobSpec, JobState, NodeCapacity, RegisterNode, RunReport, RunState, Schedule,
};

async fn stored<S: Store + ?Sized>(s: &S, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    s.put_artifact(&digest, bytes).await.unwrap();
    digest
}

async fn register<S: Store + ?Sized>(s: &S, name: &str) {
    let node = RegisterNode {
        name: name.into(),
        labels: BTreeMap::new(),
        capacity: NodeCapacity {
            memory_bytes: 1 << 30,
        },
        ingress: "127.0.0.1:8080".into(),
        logs_key: None,
        credential: None,
    };
    s.register_node(&node, &format!("hash-{name}"), None, 60_000)
        .await
        .unwrap();
}

fn change(job: &str, version: u64, nodes: &[&str]) -> JobChange {
    JobChange {
        job: job.into(),
        version,
        add: nodes
            .iter()
            .map(|n| NewRun {
                node: (*n).into(),
                reservation: 1 << 20,
            })
            .collect(),
        end: Vec::new(),
        finish: None,
        message: None,
        events: Vec::new(),
    }
}

fn report(id: &str, state: RunState, reason: Option<&str>) -> RunReport {
    RunReport {
        id: id.into(),
        state,
        started_at: Some(1),
        finished_at: state.finished().then_some(2),
        exit_code: state
            .finished()
            .then_some(if reason.is_some() { 1 } else { 0 }),
        reason: reason.map(str::to_owned),
        message: None,
        job: None,
        fired_for: None,
    }
}

#[tokio::test]
async fn runs_are_placed_reported_counted_and_pruned() {
    for t in stores().await {
        let s = &t.store;
        let b = t.backend;
        register(s, "n1").await;
        register(s, "n2").await;
        let d = stored(s, b"cmd").await;
        let spec = JobSpec {
            completions: 2,
            keep_runs: 1,
            ..JobSpec::new(d)
        };
        let (job, created) = s.apply_job("batch", &spec).await.unwrap();
        assert!(created, "{b}");
        assert_eq!(
            (job.version, job.status.state),
            (1, JobState::Active),
            "{b}"
        );
        let (same, changed) = s.apply_job("batch", &spec).await.unwrap();
        assert!(!changed && same.version == 1, "{b}");

        s.change_job(&change("batch", 1, &["n1", "n2"]))
            .await
            .unwrap();
        let on_n1 = s.node_runs("n1").await.unwrap();
        assert_eq!(on_n1.len(), 1, "{b}");
        assert_eq!(on_n1[0].id, "batch.1", "{b}");
        assert_eq!(*on_n1[0].spec, spec, "{b}");
        let held: BTreeMap<String, u64> = s.run_reservations().await.unwrap().into_iter().collect();
        assert_eq!(held.get("n2"), Some(&(1 << 20)), "{b}");

        // Reports: only the node's own runs, and the first end wins.
        let jobs = s
            .report_runs("n2", &[report("batch.1", RunState::Succeeded, None)])
            .await
            .unwrap();
        assert!(jobs.is_empty(), "another node's run: {b}");
        s.report_runs("n1", &[report("batch.1", RunState::Running, None)])
            .await
            .unwrap();
        let jobs = s
            .report_runs("n1", &[report("batch.1", RunState::Failed, Some("exit 1"))])
            .await
            .unwrap();
        assert_eq!(jobs, ["batch"], "{b}");
        let late = s
            .report_runs("n1", &[report("batch.1", RunState::Succeeded, None)])
            .await
            .unwrap();
        assert!(late.is_empty(), "{b}");
        s.report_runs("n2", &[report("batch.2", RunState::Succeeded, None)])
            .await
            .unwrap();
        let progress = s.active_jobs().await.unwrap();
        assert_eq!(progress.len(), 1, "{b}");
        let p = &progress[0];
        assert_eq!(
            (p.job.status.succeeded, p.job.status.failed, p.active.len()),
            (1, 1, 0),
            "{b}"
        );
        assert_eq!(p.last_failure, Some(2), "{b}");
        assert!(s.node_runs("n1").await.unwrap().is_empty(), "{b}");

        // A run lost with its node does not count as a failure.
        s.change_job(&change("batch", 1, &["n1"])).await.unwrap();
        let mut lost = change("batch", 1, &[]);
        lost.end = vec![("batch.3".into(), "node-lost".into())];
        s.change_job(&lost).await.unwrap();
        let job = s.job("batch").await.unwrap().unwrap();
        assert_eq!((job.status.failed, job.status.active), (1, 0), "{b}");

        // A stale plan is a conflict.
        let stale = s.change_job(&change("batch", 7, &["n1"])).await;
        assert!(matches!(stale, Err(StoreError::Conflict(_))), "{b}");

        // Finishing freezes the counts and keeps `keep_runs` runs.
        let mut done = change("batch", 1, &[]);
        done.finish = Some(JobState::Complete);
        s.change_job(&done).await.unwrap();
        let job = s.job("batch").await.unwrap().unwrap();
        assert_eq!(job.status.state, JobState::Complete, "{b}");
        assert_eq!((job.status.succeeded, job.status.failed), (1, 1), "{b}");
        let runs = s.runs("batch").await.unwrap();
        assert_eq!(runs.len(), 1, "{b}");
        assert_eq!(runs[0].id, "batch.3", "{b}");
        assert!(s.active_jobs().await.unwrap().is_empty(), "{b}");
        // Without `keep_finished_ms` a finished job is kept.
        assert!(s.expiring_jobs().await.unwrap().is_empty(), "{b}");

        // A job's component is not collected while the job exists.
        assert!(s.collect_artifacts(0).await.unwrap().is_empty(), "{b}");
        assert!(s.collect_artifacts(0).await.unwrap().is_empty(), "{b}");
        // Replacing the job starts it over; deleting removes its runs.
        let (replaced, changed) = s
            .apply_job(
                "batch",
                &JobSpec {
                    completions: 5,
                    ..spec.clone()
                },
            )
            .await
            .unwrap();
        assert!(changed, "{b}");
        // Version 2 was the finish.
        assert_eq!(
            (replaced.version, replaced.status.state),
            (3, JobState::Active),
            "{b}"
        );
        assert!(s.runs("batch").await.unwrap().is_empty(), "{b}");
        // With it, the finished job is listed with when it finished.
        let short = JobSpec {
            keep_finished_ms: Some(5),
            ..spec.clone()
        };
        let (brief, _) = s.apply_job("brief", &short).await.unwrap();
        let mut done = change("brief", brief.version, &[]);
        done.finish = Some(JobState::Failed);
        s.change_job(&done).await.unwrap();
        let expiring = s.expiring_jobs().await.unwrap();
        assert_eq!(expiring.len(), 1, "{b}");
        assert_eq!((expiring[0].0.as_str(), expiring[0].2), ("brief", 5), "{b}");
        s.delete_job("brief").await.unwrap();
        s.delete_job("batch").await.unwrap();
        assert!(s.job("batch").await.unwrap().is_none(), "{b}");
        assert!(matches!(
            s.delete_job("batch").await,
            Err(StoreError::NotFound { .. })
        ));
    }
}

#[tokio::test]
async fn schedules_fire_jobs_they_own() {
    for t in stores().await {
        let s = &t.store;
        let b = t.backend;
        let d = stored(s, b"cmd").await;
        let spec = JobSpec {
            schedule: Some(Schedule::new("* * * * * *")),
            ..JobSpec::new(d)
        };
        let (schedule, _) = s.apply_job("tick", &spec).await.unwrap();
        assert_eq!(schedule.status.state, JobState::Scheduled, "{b}");
        assert!(schedule.status.last_fired.is_some(), "{b}");
        assert_eq!(s.schedules().await.unwrap().len(), 1, "{b}");
        let mut child = spec.clone();
        child.schedule = None;
        let firing = Firing {
            schedule: "tick".into(),
            version: schedule.version,
            fired_for: Some(1_000),
            start: Some(("tick-1".into(), child.clone())),
            delete: Vec::new(),
            events: Vec::new(),
        };
        s.fire(&firing).await.unwrap();
        let children = s.children("tick").await.unwrap();
        assert_eq!(children.len(), 1, "{b}");
        assert_eq!(children[0].owner.as_deref(), Some("tick"), "{b}");
        assert_eq!(children[0].status.state, JobState::Active, "{b}");
        assert_eq!(
            s.job("tick").await.unwrap().unwrap().status.last_fired,
            Some(1_000),
            "{b}"
        );
        // The next firing deletes the first (replace) and starts another.
        s.fire(&Firing {
            fired_for: Some(2_000),
            start: Some(("tick-2".into(), child)),
            delete: vec!["tick-1".into()],
            ..firing.clone()
        })
        .await
        .unwrap();
        let names: Vec<String> = s
            .children("tick")
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["tick-2"], "{b}");
        // A firing planned on an older version is refused.
        let stale = s
            .fire(&Firing {
                version: 99,
                ..firing
            })
            .await;
        assert!(matches!(stale, Err(StoreError::Conflict(_))), "{b}");
        // Deleting the schedule deletes what it started.
        s.delete_job("tick").await.unwrap();
        assert!(s.job("tick-2").await.unwrap().is_none(), "{b}");
    }
}
