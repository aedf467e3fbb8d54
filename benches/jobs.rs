//! Jobs benchmark, against real `skiff` processes (release, SQLite): one
//! controller and one node, the `countdown` command component.
//!
//! 1. Apply → guest `main` starts: a one-run job applied, timed to the
//!    run's `started_at` (the node's clock, on the same machine), with the
//!    component already compiled on the node. Target p50 ≤ 10 ms.
//! 2. Sustained short runs on one node: one job of `SKIFF_BENCH_RUNS`
//!    (5,000) completions, `SKIFF_BENCH_PARALLELISM` (64) at once, of a
//!    trivial command; completions per second from apply to Complete.
//!    Target ≥ 1,000 runs/s.
//! 3. Schedule firing jitter: a schedule firing every second for
//!    `SKIFF_BENCH_FIRINGS` (30) seconds; how late each job started
//!    (created) after the time it fired for, and how late its run's guest
//!    started. Target p99 ≤ 100 ms.
//!
//! Run: `cargo bench --bench jobs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is the report

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use skiff_sdk::api::{JobSpec, JobState, RunState, Schedule};
use skiff_sdk::{Client, Digest, Quota};
use support::{knob, ms, pct, start_controller, start_node, token, verdict};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn trivial(artifact: Digest) -> JobSpec {
    JobSpec {
        args: vec!["0".into()],
        quota: Quota {
            memory_bytes: 16 << 20,
            fuel: 100_000_000,
            timeout_ms: 10_000,
            reserve_bytes: Some(1 << 20),
            ..Quota::default()
        },
        retries: 0,
        ..JobSpec::new(artifact)
    }
}

async fn wait_finished(admin: &Client, name: &str, limit: Duration) -> skiff_sdk::api::Job {
    let start = Instant::now();
    loop {
        let job = admin.job(name).await.unwrap();
        if job.status.state != JobState::Active {
            return job;
        }
        assert!(start.elapsed() < limit, "job {name} not finished: {job:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let controller = start_controller(&dir.path().join("controller"), None, "c1");
    let node = start_node(&controller, &dir.path().join("node"), "4Gi");
    let admin = Client::new(&format!("http://{}", controller.addr()))
        .unwrap()
        .with_token(&token(&controller, "admin_token_file"));
    let artifact = admin
        .upload_artifact(Bytes::from(common::example("countdown")))
        .await
        .unwrap()
        .digest;
    while admin.nodes().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 1. Apply → main starts (the first run compiles; not counted).
    let samples = knob("SKIFF_BENCH_STARTS", 100);
    let mut starts = Vec::new();
    for i in 0..=samples {
        let name = format!("start-{i}");
        let before = now_ms();
        admin.apply_job(&name, &trivial(artifact)).await.unwrap();
        let job = wait_finished(&admin, &name, Duration::from_secs(60)).await;
        assert_eq!(job.status.state, JobState::Complete, "{job:?}");
        let run = admin.runs(&name).await.unwrap().remove(0);
        if i > 0 {
            let started = run.started_at.unwrap();
            starts.push(Duration::from_millis(
                u64::try_from(started - before).unwrap_or(0),
            ));
        }
        admin.delete_job(&name).await.unwrap();
    }
    starts.sort();
    let p50 = pct(&starts, 0.50);
    println!(
        "apply → guest main starts ({samples} jobs, component cached): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p50 ≤ 10 ms: {})",
        ms(p50),
        ms(pct(&starts, 0.99)),
        ms(*starts.last().unwrap()),
        verdict(ms(p50) <= 10.0)
    );

    // 2. Sustained short runs.
    let runs = knob("SKIFF_BENCH_RUNS", 5_000) as u32;
    let parallelism = knob("SKIFF_BENCH_PARALLELISM", 64) as u32;
    let batch = JobSpec {
        completions: runs,
        parallelism,
        keep_runs: 10,
        ..trivial(artifact)
    };
    let start = Instant::now();
    admin.apply_job("batch", &batch).await.unwrap();
    let job = wait_finished(&admin, "batch", Duration::from_secs(600)).await;
    let took = start.elapsed();
    assert_eq!(job.status.state, JobState::Complete, "{job:?}");
    let rate = f64::from(runs) / took.as_secs_f64();
    println!(
        "sustained short runs on one node: {runs} runs, {parallelism} at once, in {:.2} s: {rate:.0} runs/s (target ≥ 1,000: {})",
        took.as_secs_f64(),
        verdict(rate >= 1_000.0)
    );
    println!(
        "  node RSS after: {} MiB; controller RSS: {} MiB",
        support::proc_stats(node.child.id()).1 >> 10,
        support::proc_stats(controller.child.id()).1 >> 10
    );

    // 3. Schedule jitter.
    let firings = knob("SKIFF_BENCH_FIRINGS", 30);
    let every_second = JobSpec {
        schedule: Some(Schedule {
            keep_succeeded: firings as u32 + 5,
            ..Schedule::new("* * * * * *")
        }),
        ..trivial(artifact)
    };
    admin.apply_job("tick", &every_second).await.unwrap();
    tokio::time::sleep(Duration::from_secs(firings as u64 + 2)).await;
    let mut created = Vec::new();
    let mut started = Vec::new();
    for job in admin.jobs().await.unwrap() {
        if job.owner.as_deref() != Some("tick") {
            continue;
        }
        let second: i64 = job.name.rsplit('-').next().unwrap().parse().unwrap();
        let at = second * 1000;
        created.push(Duration::from_millis(
            u64::try_from(job.created_at - at).unwrap_or(0),
        ));
        if let Some(run) = admin
            .runs(&job.name)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.state == RunState::Succeeded)
        {
            started.push(Duration::from_millis(
                u64::try_from(run.started_at.unwrap() - at).unwrap_or(0),
            ));
        }
    }
    created.sort();
    started.sort();
    println!(
        "schedule firing jitter ({} firings, every second): job created p50 {:.0} ms, p99 {:.0} ms; guest started p50 {:.0} ms, p99 {:.0} ms (target p99 ≤ 100 ms: {})",
        created.len(),
        ms(pct(&created, 0.50)),
        ms(pct(&created, 0.99)),
        ms(pct(&started, 0.50)),
        ms(pct(&started, 0.99)),
        verdict(ms(pct(&started, 0.99)) <= 100.0)
    );
    admin.delete_job("tick").await.unwrap();
    drop(node);
    drop(controller);
}
