//! Rolling updates under the highest load this machine sustains: three
//! nodes, `hello` with three replicas and a health check, closed-loop
//! keep-alive clients on every ingress. Measures a steady window, then five
//! rollouts back to back, and reports failed requests and p50/p99 latency
//! in each. Targets: 0 failed; p99 during rollouts ≤ 2× steady state.
//!
//! Run: `cargo bench --bench rollout` (knobs: `SKIFF_BENCH_CLIENTS` per
//! ingress, default 4; `SKIFF_BENCH_STEADY_SECS`, default 3).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Load, hello_spec};

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn stats(what: &str, mut latencies: Vec<Duration>, seconds: f64) -> Duration {
    latencies.sort();
    let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "{what:<28} {:>7} requests {:>7.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        latencies.len(),
        latencies.len() as f64 / seconds,
        at(0.5).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0
    );
    at(0.99)
}

#[tokio::main]
async fn main() {
    let clients = env_or("SKIFF_BENCH_CLIENTS", 4) as usize;
    let steady_secs = env_or("SKIFF_BENCH_STEADY_SECS", 3) as f64;
    let cluster = Cluster::start(&[("n1", "zone=a"), ("n2", "zone=b"), ("n3", "zone=c")]).await;
    let artifact = cluster.hello_v1().await;

    let addrs = cluster.ingresses();
    let origin = Instant::now();
    let load = Load::start(&addrs, "hello.localhost", clients).await;
    tokio::time::sleep(Duration::from_secs_f64(steady_secs)).await;
    let rollouts_from = origin.elapsed().as_secs_f64();
    for version in 2..=6 {
        let revision = cluster
            .admin
            .apply_app("hello", &hello_spec(artifact, version))
            .await
            .unwrap()
            .revision;
        cluster.wait_revision("hello", revision, 3).await;
    }
    let rollouts_to = origin.elapsed().as_secs_f64();
    let seen = load.stop().await;
    let failed = seen.failed.lock().unwrap().len();
    let latencies = seen.latencies.lock().unwrap().clone();
    let window = |from: f64, to: f64| -> Vec<Duration> {
        latencies
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, l)| *l)
            .collect()
    };
    println!(
        "3 nodes, {clients} clients per ingress ({} in all), 5 rollouts in {:.2} s",
        clients * 3,
        rollouts_to - rollouts_from
    );
    // The first half second warms connections; steady state is after it.
    let steady = stats(
        "steady state",
        window(0.5, rollouts_from),
        rollouts_from - 0.5,
    );
    let during = stats(
        "during rollouts",
        window(rollouts_from, rollouts_to),
        rollouts_to - rollouts_from,
    );
    let ratio = during.as_secs_f64() / steady.as_secs_f64();
    println!(
        "failed requests: {failed} (target 0); p99 during / steady: {ratio:.2}× (target ≤ 2×) — {}",
        if failed == 0 && ratio <= 2.0 {
            "meets both"
        } else {
            "MISSES"
        }
    );
}
