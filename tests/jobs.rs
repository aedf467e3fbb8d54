//! Jobs and schedules on a real cluster (`skiff controller` and two
//! `skiff node` processes): runs complete, retry with growing back-off,
//! fail with the reason of the quota they broke while the node keeps
//! serving, move off a killed node; schedules fire on time and `forbid`
//! skips an overlapping firing; `skiff run` exits with the guest's status;
//! bad input is refused naming the field, with nothing stored.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::cluster::Cluster;
use common::{example, example_path};
use http::StatusCode;
use skiff_sdk::api::{
    ConcurrencyPolicy, EventKind, Job, JobSpec, JobState, Run, RunState, Schedule,
};
use skiff_sdk::{ClientError, Digest, Quota};

const NODES: [(&str, &str); 2] = [("a", "zone=a"), ("b", "zone=b")];
/// Generous limits for slow CI machines; the benchmarks measure speed.
const SETTLE: Duration = Duration::from_secs(30);

async fn countdown(cluster: &Cluster) -> Digest {
    cluster
        .admin
        .upload_artifact(Bytes::from(example("countdown")))
        .await
        .unwrap()
        .digest
}

fn spec(artifact: Digest, args: &[&str]) -> JobSpec {
    JobSpec {
        args: args.iter().map(|a| a.to_string()).collect(),
        quota: Quota {
            memory_bytes: 16 << 20,
            fuel: 200_000_000,
            timeout_ms: 20_000,
            ..Quota::default()
        },
        backoff_ms: 100,
        ..JobSpec::new(artifact)
    }
}

/// Waits until the job is no longer Active; returns it with its runs.
async fn finished(cluster: &Cluster, name: &str) -> (Job, Vec<Run>) {
    cluster
        .wait(&format!("job {name} finished"), SETTLE, |c| async move {
            let job = c.admin.job(name).await.ok()?;
            if job.status.state == JobState::Active {
                return None;
            }
            let runs = c.admin.runs(name).await.ok()?;
            Some((job, runs))
        })
        .await
}

#[tokio::test]
async fn a_job_completes_its_runs_two_at_a_time() {
    let cluster = Cluster::start(&NODES).await;
    let artifact = countdown(&cluster).await;
    let job = JobSpec {
        completions: 3,
        parallelism: 2,
        ..spec(artifact, &["4"])
    };
    let applied = cluster.admin.apply_job("count", &job).await.unwrap();
    assert_eq!(applied.status.state, JobState::Active);
    // The same spec again changes nothing.
    let again = cluster.admin.apply_job("count", &job).await.unwrap();
    assert_eq!(again.version, applied.version);
    let (job, runs) = finished(&cluster, "count").await;
    assert_eq!(job.status.state, JobState::Complete, "{job:?}");
    assert_eq!(job.status.succeeded, 3);
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(
        runs.iter()
            .all(|r| r.state == RunState::Succeeded && r.exit_code == Some(0))
    );
    // At most two at once: the third was created after one had finished.
    let third = &runs[2];
    assert!(
        runs[..2]
            .iter()
            .any(|r| r.finished_at.unwrap() <= third.created_at),
        "{runs:?}"
    );
    // Spread over both nodes.
    assert_ne!(runs[0].node, runs[1].node);
    // Each run's output, through the logs pipeline.
    let mut lines = Vec::new();
    cluster
        .admin
        .run_logs("count", &runs[0].id, false, |entry| {
            lines.push(entry.line);
            true
        })
        .await
        .unwrap();
    assert_eq!(lines, ["4", "3", "2", "1", "liftoff"]);
}

#[tokio::test]
async fn a_failing_job_retries_with_growing_delay_then_fails() {
    let cluster = Cluster::start(&NODES).await;
    let artifact = countdown(&cluster).await;
    let job = JobSpec {
        retries: 2,
        backoff_ms: 300,
        ..spec(artifact, &["1", "--fail"])
    };
    cluster.admin.apply_job("flaky", &job).await.unwrap();
    let (job, runs) = finished(&cluster, "flaky").await;
    assert_eq!(job.status.state, JobState::Failed, "{job:?}");
    assert_eq!(job.status.failed, 3);
    assert_eq!(runs.len(), 3, "one run and two retries: {runs:?}");
    for run in &runs {
        assert_eq!(run.state, RunState::Failed);
        assert_eq!(run.reason.as_deref(), Some("exit 1"));
        assert_eq!(run.exit_code, Some(1));
    }
    // 300 ms after the first failure, then 600 ms after the second.
    let gap = |i: usize| runs[i].created_at - runs[i - 1].finished_at.unwrap();
    assert!(gap(1) >= 300, "first back-off {} ms", gap(1));
    assert!(gap(2) >= 600, "second back-off {} ms", gap(2));
    let events = cluster.admin.events(Some("flaky"), 0, 100).await.unwrap();
    assert!(events.iter().any(|e| e.kind == EventKind::JobFailed));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::JobRunFailed)
            .count(),
        3
    );
}

#[tokio::test]
async fn quota_breaks_fail_the_run_with_their_reason_and_the_node_keeps_serving() {
    let cluster = Cluster::start(&NODES).await;
    let artifact = countdown(&cluster).await;
    cluster.deploy("hello", "hello", 2).await;
    cluster.wait_ready("hello", 2, SETTLE).await;
    let no_retry = |args: &[&str]| JobSpec {
        retries: 0,
        ..spec(artifact, args)
    };
    let mut slow = no_retry(&["--sleep", "10000"]);
    slow.quota.timeout_ms = 300;
    for (name, job, reason) in [
        ("burn", no_retry(&["--burn"]), "fuel-exhausted"),
        ("hog", no_retry(&["--hog"]), "memory-limit"),
        ("slow", slow, "timeout"),
        ("trap", no_retry(&["--trap"]), "trap"),
    ] {
        cluster.admin.apply_job(name, &job).await.unwrap();
        let (job, runs) = finished(&cluster, name).await;
        assert_eq!(job.status.state, JobState::Failed, "{name}: {job:?}");
        assert_eq!(runs[0].reason.as_deref(), Some(reason), "{name}: {runs:?}");
        // The app on the same nodes answered throughout.
        for node in ["a", "b"] {
            let reply = cluster.get(node, "hello", "/").await;
            assert_eq!(reply.status, StatusCode::OK, "{name}: via {node}");
        }
    }
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_nothing_is_stored() {
    let cluster = Cluster::start(&NODES[..1]).await;
    let command = countdown(&cluster).await;
    let http = cluster
        .admin
        .upload_artifact(Bytes::from(example("hello")))
        .await
        .unwrap()
        .digest;
    let field_of = |e: ClientError| match e {
        ClientError::Api { status, body, .. } => {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body:?}");
            body.error.field.unwrap_or_default()
        }
        other => panic!("not an API error: {other}"),
    };
    let schedule = |s: Schedule| JobSpec {
        schedule: Some(s),
        ..spec(command, &[])
    };
    let cases = [
        (spec(http, &[]), "artifact"),
        (
            JobSpec {
                parallelism: 0,
                ..spec(command, &[])
            },
            "parallelism",
        ),
        (schedule(Schedule::new("*/5 * * *")), "schedule.cron"),
        (
            schedule(Schedule {
                timezone: Some("Mars/Olympus".into()),
                ..Schedule::new("* * * * *")
            }),
            "schedule.timezone",
        ),
        (spec(Digest::of(b"never uploaded"), &[]), "artifact"),
        (
            JobSpec {
                placement: skiff_sdk::api::Placement {
                    every_node: true,
                    ..Default::default()
                },
                ..spec(command, &[])
            },
            "placement.every_node",
        ),
    ];
    for (job, field) in cases {
        let error = cluster.admin.apply_job("bad", &job).await.unwrap_err();
        assert_eq!(field_of(error), field);
        let missing = cluster.admin.job("bad").await.unwrap_err();
        assert_eq!(missing.status(), Some(StatusCode::NOT_FOUND));
    }
}

#[tokio::test]
async fn a_seconds_schedule_fires_on_time_and_forbid_skips_an_overlap() {
    let cluster = Cluster::start(&NODES).await;
    let artifact = countdown(&cluster).await;
    // Every second; each job runs 1.5 s, so every other firing overlaps.
    let job = JobSpec {
        schedule: Some(Schedule {
            concurrency_policy: ConcurrencyPolicy::Forbid,
            keep_succeeded: 10,
            ..Schedule::new("* * * * * *")
        }),
        ..spec(artifact, &["1", "--sleep", "1500"])
    };
    let applied = cluster.admin.apply_job("tick", &job).await.unwrap();
    assert_eq!(applied.status.state, JobState::Scheduled);
    let started: Vec<Job> = cluster
        .wait("two jobs started by the schedule", SETTLE, |c| async move {
            let jobs: Vec<Job> = c
                .admin
                .jobs()
                .await
                .ok()?
                .into_iter()
                .filter(|j| j.owner.as_deref() == Some("tick"))
                .collect();
            (jobs.len() >= 2 && jobs[0].status.state == JobState::Complete).then_some(jobs)
        })
        .await;
    for job in &started {
        // Named for the second it fired for, and started within it.
        let second: i64 = job.name.rsplit('-').next().unwrap().parse().unwrap();
        let late = job.created_at - second * 1000;
        assert!(
            (0..1000).contains(&late),
            "{} started {late} ms late",
            job.name
        );
    }
    // Never two at once: the firing during the first job was skipped.
    let events = cluster.admin.events(Some("tick"), 0, 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::JobSkipped && e.message.contains("forbid")),
        "{events:?}"
    );
    let runs_first = cluster.admin.runs(&started[0].name).await.unwrap();
    let runs_second = cluster.admin.runs(&started[1].name).await.unwrap();
    assert!(runs_second[0].created_at >= runs_first[0].finished_at.unwrap());
    // Deleting the schedule deletes the jobs it started.
    cluster.admin.delete_job("tick").await.unwrap();
    let left = cluster.admin.jobs().await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_run_on_a_killed_node_runs_again_elsewhere() {
    let mut cluster = Cluster::start(&NODES).await;
    let artifact = countdown(&cluster).await;
    let job = JobSpec {
        retries: 0,
        ..spec(artifact, &["1", "--sleep", "2000"])
    };
    cluster.admin.apply_job("long", &job).await.unwrap();
    let first: Run = cluster
        .wait("the run running", SETTLE, |c| async move {
            c.admin
                .runs("long")
                .await
                .ok()?
                .into_iter()
                .find(|r| r.state == RunState::Running)
        })
        .await;
    cluster.kill_node(&first.node);
    let (job, runs) = finished(&cluster, "long").await;
    // Not a failure of the job: the run ran again, to completion.
    assert_eq!(job.status.state, JobState::Complete, "{job:?} {runs:?}");
    assert_eq!(runs[0].reason.as_deref(), Some("node-lost"));
    assert_eq!(runs[1].state, RunState::Succeeded);
    assert_ne!(runs[1].node, first.node);
}

#[tokio::test]
async fn skiff_run_streams_the_output_and_exits_with_the_guest_status() {
    let cluster = Cluster::start(&NODES[..1]).await;
    let token = std::fs::read_to_string(cluster.dir.path().join("controller/admin.token")).unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("run")
            .arg(common::root().join("examples/countdown"))
            .args(["--no-build", "--controller"])
            .arg(format!("http://{}", cluster.controller_addr))
            .args(["--token", token.trim(), "--"])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // The examples are built (the countdown component exists).
    assert!(example_path("countdown").exists());
    let (code, out, err) = run(&["2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "2\n1\nliftoff\n");
    let (code, _, err) = run(&["1", "--fail"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failing as asked"), "{err}");
    let (code, _, err) = run(&["1", "--exit", "7"]);
    assert_eq!(code, 7, "exit-with-code: {err}");
    let (code, _, err) = run(&["--burn"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("fuel-exhausted"), "{err}");
    // Nothing is left behind.
    assert!(cluster.admin.jobs().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_worker_runs_on_restarts_with_back_off_and_rolls_out() {
    let cluster = Cluster::start(&NODES).await;
    let artifact = countdown(&cluster).await;
    let worker = |args: &[&str], version: &str| -> skiff_sdk::api::AppSpec {
        serde_json::from_value(serde_json::json!({
            "artifact": artifact,
            "replicas": 2,
            "kind": "worker",
            "args": args,
            "env": { "GREETING": version },
            "quota": { "memory_bytes": 16 << 20, "concurrency": 1, "reserve_bytes": 1 << 20 },
        }))
        .unwrap()
    };
    // A worker that keeps running is Ready, and its output is the app's.
    cluster
        .admin
        .apply_app("pulse", &worker(&["--every", "100"], "v1"))
        .await
        .unwrap();
    cluster.wait_ready("pulse", 2, SETTLE).await;
    let mut lines = Vec::new();
    cluster
        .admin
        .logs("pulse", false, |e| {
            lines.push(e.line);
            true
        })
        .await
        .unwrap();
    assert!(lines.iter().any(|l| l.starts_with("v1 ")), "{lines:?}");
    // A new revision rolls out like an app's.
    let app = cluster
        .admin
        .apply_app("pulse", &worker(&["--every", "100"], "v2"))
        .await
        .unwrap();
    assert_eq!(app.revision, 2);
    cluster.wait_revision("pulse", 2, 2).await;

    // One that exits at once is restarted after 1 s, 2 s, 4 s...
    cluster
        .admin
        .apply_app("crashy", &worker(&["1"], "v1"))
        .await
        .unwrap();
    let restarts: Vec<String> = cluster
        .wait(
            "three restarts of a crashing worker",
            SETTLE,
            |c| async move {
                let events = c.admin.events(Some("crashy"), 0, 1000).await.ok()?;
                let restarts: Vec<String> = events
                    .into_iter()
                    .filter(|e| e.kind == EventKind::ReplicaRestarting)
                    .map(|e| e.message)
                    .collect();
                (restarts.len() >= 6).then_some(restarts)
            },
        )
        .await;
    for delay in [
        "restart 1 in 1000 ms",
        "restart 2 in 2000 ms",
        "restart 3 in 4000 ms",
    ] {
        assert!(
            restarts
                .iter()
                .any(|m| m.contains(delay) && m.contains("CrashLoopBackOff: exit 0")),
            "{delay}: {restarts:?}"
        );
    }
    let replicas = cluster.admin.replicas("crashy").await.unwrap();
    assert!(
        replicas
            .iter()
            .all(|r| r.state != skiff_sdk::api::ReplicaState::Ready)
    );
    // An HTTP component is no worker.
    let hello = cluster
        .admin
        .upload_artifact(Bytes::from(example("hello")))
        .await
        .unwrap()
        .digest;
    let mut http = worker(&[], "v1");
    http.artifact = hello;
    let refused = cluster
        .admin
        .apply_app("notaworker", &http)
        .await
        .unwrap_err();
    match refused {
        ClientError::Api { status, body, .. } => {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(body.error.field.as_deref(), Some("artifact"));
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_node_local_schedule_fires_on_every_node_while_the_controller_is_away() {
    let mut cluster = Cluster::start(&NODES).await;
    let artifact = countdown(&cluster).await;
    let job = JobSpec {
        schedule: Some(Schedule::new("* * * * * *")),
        placement: skiff_sdk::api::Placement {
            every_node: true,
            ..Default::default()
        },
        keep_runs: 100,
        ..spec(artifact, &["0"])
    };
    cluster.admin.apply_job("local", &job).await.unwrap();
    cluster
        .wait("runs of the schedule from both nodes", SETTLE, |c| {
            fired_on_both(c, 0, i64::MAX)
        })
        .await;
    // The controller goes away until both nodes have finished a run fired
    // a whole second later (their own logs say so).
    cluster.kill_controller();
    let down = now_ms();
    common::poll::eventually(SETTLE, "both nodes firing offline", || {
        ["a", "b"]
            .iter()
            .all(|node| {
                let log = cluster.nodes[*node]
                    .as_ref()
                    .map(|p| p.log())
                    .unwrap_or_default();
                log.lines()
                    .filter(|l| l.contains("run finished"))
                    .filter_map(|l| fired_second(l, node))
                    .any(|second| second * 1000 > down + 1_000)
            })
            .then_some(())
    })
    .await;
    cluster.restart_controller();
    let up = now_ms();
    // Runs fired while it was away are reported once it is back.
    let runs = cluster
        .wait("runs fired while the controller was away", SETTLE, |c| {
            fired_on_both(c, down + 1_000, up)
        })
        .await;
    let id = &runs.iter().find(|r| r.created_at > down).unwrap().id;
    assert!(id.starts_with("local."), "{id}");
}

/// The runs of the node-local schedule `local`, once both nodes have a
/// succeeded one fired in `after..before` (Unix ms).
async fn fired_on_both(c: &Cluster, after: i64, before: i64) -> Option<Vec<Run>> {
    let runs = c.admin.runs("local").await.ok()?;
    let mut nodes: Vec<String> = runs
        .iter()
        .filter(|r| r.state == RunState::Succeeded)
        .filter(|r| (after..before).contains(&r.created_at))
        .map(|r| r.node.clone())
        .collect();
    nodes.sort();
    nodes.dedup();
    (nodes == ["a", "b"]).then_some(runs)
}

#[tokio::test]
async fn a_finished_job_is_deleted_after_keep_finished() {
    let cluster = Cluster::start(&NODES[..1]).await;
    let artifact = countdown(&cluster).await;
    let job = JobSpec {
        keep_finished_ms: Some(100),
        ..spec(artifact, &["1"])
    };
    cluster.admin.apply_job("brief", &job).await.unwrap();
    cluster
        .wait("the finished job deleted", SETTLE, |c| async move {
            match c.admin.job("brief").await {
                Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Some(()),
                _ => None,
            }
        })
        .await;
    let events = cluster.admin.events(Some("brief"), 0, 100).await.unwrap();
    assert!(
        events.iter().any(|e| e.kind == EventKind::JobComplete),
        "{events:?}"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The second a node-local run named in a log line fired for: its id is
/// `local.<node>.<unix seconds>`.
fn fired_second(line: &str, node: &str) -> Option<i64> {
    let prefix = format!("local.{node}.");
    let rest = &line[line.find(&prefix)? + prefix.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
