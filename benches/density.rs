//! Density benchmark: 10,000 apps on one node that declares `--memory
//! 1Gi`, against real `skiff` processes (release, SQLite).
//!
//! Run A, apps that sleep (`[scale] min = 0`, deployed asleep):
//!
//! 1. Node and controller RSS with all of them deployed, and their idle CPU.
//! 2. Wake-up latency (first request to an app at zero → 200): the very
//!    first (the node fetches and compiles the component), then 200 apps
//!    woken through the controller (the node never ran them) and the same
//!    200 again once they slept (the node wakes them locally from its copy).
//! 3. Time for an idle app to reach zero (configured idle: 5 s).
//! 4. 1,000 requests sent at once to one sleeping app: all must be served.
//! 5. Warm requests: `wrk` spreads load over 1,000 different app hosts.
//!
//! Run B, the same apps with a fixed `replicas = 1`: RSS and idle CPU once
//! all are Ready, and the same warm `wrk` load.
//!
//! Every replica reserves 64 KiB (`resources.reserve`), so that run B's
//! 10,000 replicas fit the declared 1 GiB; the node's memory budget
//! guards what instances really use.
//!
//! Run: `cargo bench --bench density` (needs `wrk`; knobs
//! `SKIFF_BENCH_APPS` (10000), `SKIFF_BENCH_WAKES` (200),
//! `SKIFF_BENCH_WAKE_GAP_MS` (20: the wake-ups come one after another this
//! far apart, 50 a second; 0 measures a back-to-back storm in which every
//! wake-up also competes with the controller placing the previous ones),
//! `SKIFF_BENCH_ONLY` (`sleeping,fixed`)).
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is the report

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::SkiffProcess;
use futures::StreamExt;
use http::{Method, StatusCode};
use skiff_sdk::Client;
use skiff_sdk::api::AppSpec;
use support::{Run, knob, ms, pct, proc_stats, verdict};

/// Idle time before a sleeping app goes to zero in this benchmark.
const IDLE_MS: u64 = 5_000;
/// Wake-ups that compile a component the node has never seen (besides the
/// first).
const FRESH_COMPILES: usize = 5;
/// Apps the warm load spreads over.
const WARM_APPS: usize = 1_000;
/// Connections `wrk` keeps open for the warm load (two threads).
const WARM_CONNECTIONS: u32 = 16;
/// The first app of the warm set (never woken before it).
const WARM_FIRST: usize = 1_000;

fn name(i: usize) -> String {
    format!("app-{i:05}")
}

struct Setup {
    _dir: tempfile::TempDir,
    controller: SkiffProcess,
    node: SkiffProcess,
    admin: Client,
}

async fn setup(count: usize, sleeping: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (controller, node, admin, artifact) = support::one_node(dir.path(), None, "1Gi").await;
    let spec = move |i: usize| -> AppSpec {
        let mut spec = serde_json::json!({
            "artifact": artifact,
            "replicas": if sleeping { 0 } else { 1 },
            "quota": { "memory_bytes": 16 << 20, "concurrency": 10, "reserve_bytes": 64 << 10 },
            "env": { "I": i.to_string() },
        });
        if sleeping {
            spec["scale"] = serde_json::json!({
                "min": 0, "max": 1, "idle_ms": IDLE_MS, "window_ms": 1000, "scale_down_delay_ms": 0,
            });
        }
        serde_json::from_value(spec).unwrap()
    };
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let (admin, spec) = (admin.clone(), spec(i));
            async move { admin.apply_app(&name(i), &spec).await.unwrap() }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    println!(
        "{} {count} apps applied in {:.1} s",
        if sleeping { "sleeping:" } else { "fixed:   " },
        started.elapsed().as_secs_f64()
    );
    Setup {
        _dir: dir,
        controller,
        node,
        admin,
    }
}

/// A GET of `app` on a kept-alive connection (a benchmark that opened a
/// connection per request would measure the kernel's search for a free
/// port among its own TIME_WAIT sockets).
async fn get(client: &mut common::Client, app: &str) -> Duration {
    let sent = Instant::now();
    let reply = client
        .send(&format!("{app}.localhost"), Method::GET, "/", Bytes::new())
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{app}: {} {}",
        reply.status,
        reply.text()
    );
    sent.elapsed()
}

/// Idle CPU (% of one core) over 10 s and RSS (MiB) of both processes.
fn idle(setup: &Setup) -> [(f64, u64); 2] {
    let pids = [setup.controller.child.id(), setup.node.child.id()];
    let before = pids.map(|p| proc_stats(p).0);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let secs = start.elapsed().as_secs_f64();
    [0, 1].map(|i| {
        let (ticks, rss) = proc_stats(pids[i]);
        ((ticks - before[i]) as f64 / secs, rss / 1024)
    })
}

/// Waits until `app` has no replica.
async fn wait_asleep(admin: &Client, app: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let spec = admin.app(app).await.unwrap().spec;
        if spec.replicas == 0 && admin.replicas(app).await.unwrap().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{app} never slept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn warm_load(node: SocketAddr) -> Run {
    let script = std::env::temp_dir().join("skiff-density-hosts.lua");
    std::fs::write(
        &script,
        format!(
            "local i = 0\nrequest = function()\n  i = (i + 1) % {WARM_APPS}\n  \
             return wrk.format(\"GET\", \"/\", {{[\"Host\"] = string.format(\"app-%05d.localhost\", {WARM_FIRST} + i)}})\nend\n"
        ),
    )
    .unwrap();
    support::wrk(
        node,
        2,
        WARM_CONNECTIONS,
        10,
        &["-s", script.to_str().unwrap()],
    )
}

/// Sends one request to each warm app, over 50 connections.
async fn touch_warm_apps(node: SocketAddr) {
    let per = WARM_APPS.div_ceil(50);
    futures::future::join_all((0..50).map(|c| async move {
        let mut client = common::Client::connect(node).await;
        for i in (WARM_FIRST + c * per..WARM_FIRST + (c + 1) * per)
            .take_while(|i| *i < WARM_FIRST + WARM_APPS)
        {
            get(&mut client, &name(i)).await;
        }
    }))
    .await;
}

struct Figures {
    idle: [(f64, u64); 2],
    warm: Run,
    warm_rss: u64,
}

/// Marks a phase on stderr with the kernel's uptime, to line up with a
/// profile (`perf record -k CLOCK_MONOTONIC`) when `SKIFF_BENCH_DEBUG` is set.
fn phase(what: &str) {
    if std::env::var_os("SKIFF_BENCH_DEBUG").is_some() {
        let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
        eprintln!(
            "phase {what} at {}",
            uptime.split(' ').next().unwrap_or("?")
        );
    }
}

async fn sleeping(count: usize, wakes: usize) -> Figures {
    let setup = setup(count, true).await;
    let node = setup.node.addr();
    phase("settling");
    tokio::time::sleep(Duration::from_secs(5)).await;
    phase("idle");
    let idle = idle(&setup);

    let mut client = common::Client::connect(node).await;
    // The very first wake: fetch, compile, place, serve.
    let mut fresh = vec![get(&mut client, &name(0)).await];
    // More fresh compiles: hello with a custom section of its own is a
    // component no node has compiled.
    for k in 0..FRESH_COMPILES {
        let app = format!("fresh-{k}");
        let mut bytes = common::example("hello");
        let label = format!("skiff-bench-{k}");
        bytes.extend([
            0u8,
            u8::try_from(label.len() + 1).unwrap(),
            u8::try_from(label.len()).unwrap(),
        ]);
        bytes.extend(label.as_bytes());
        let artifact = setup
            .admin
            .upload_artifact(Bytes::from(bytes))
            .await
            .unwrap();
        let spec: AppSpec = serde_json::from_value(serde_json::json!({
            "artifact": artifact.digest, "replicas": 0,
            "quota": { "memory_bytes": 16 << 20, "concurrency": 10, "reserve_bytes": 64 << 10 },
            "scale": { "min": 0, "max": 1, "idle_ms": IDLE_MS },
        }))
        .unwrap();
        setup.admin.apply_app(&app, &spec).await.unwrap();
        // Once the node knows the app sleeps (a 503 before that is the
        // endpoints not there yet, not the wake-up).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sent = Instant::now();
            let reply = client
                .send(&format!("{app}.localhost"), Method::GET, "/", Bytes::new())
                .await;
            if reply.status == StatusCode::OK {
                fresh.push(sent.elapsed());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{app}: {} {}",
                reply.status,
                reply.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    fresh.sort();
    // Through the controller: the node never ran these.
    let gap = Duration::from_millis(knob("SKIFF_BENCH_WAKE_GAP_MS", 20) as u64);
    let mut remote = Vec::new();
    phase("remote wakes");
    for i in 1..=wakes {
        remote.push(get(&mut client, &name(i)).await);
        tokio::time::sleep(gap).await;
    }
    remote.sort();
    let last = Instant::now();
    wait_asleep(&setup.admin, &name(wakes)).await;
    let to_zero = last.elapsed();
    for i in 1..wakes {
        wait_asleep(&setup.admin, &name(i)).await;
    }
    // Locally, from the node's copy (and the controller told after).
    let mut local = Vec::new();
    let mut client = common::Client::connect(node).await;
    phase("local wakes");
    for i in 1..=wakes {
        local.push(get(&mut client, &name(i)).await);
        tokio::time::sleep(gap).await;
    }
    local.sort();
    phase("local wakes done");
    drop(client);
    if std::env::var_os("SKIFF_BENCH_DEBUG").is_some() {
        for (who, p) in [("controller", &setup.controller), ("node", &setup.node)] {
            let log = p.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- {who}\n{}",
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }

    // 1,000 requests at once to one sleeping app.
    let held_app = name(count - 1);
    let held_started = Instant::now();
    let held: Vec<StatusCode> = futures::future::join_all((0..1000).map(|_| {
        let app = held_app.clone();
        async move {
            common::send(
                node,
                &format!("{app}.localhost"),
                Method::GET,
                "/",
                Bytes::new(),
            )
            .await
            .status
        }
    }))
    .await;
    let held_all = held_started.elapsed();
    let held_failed = held.iter().filter(|s| **s != StatusCode::OK).count();

    touch_warm_apps(node).await;
    let warm = warm_load(node);
    let warm_rss = proc_stats(setup.node.child.id()).1 / 1024;

    println!(
        "sleeping: idle with {count} apps: controller {:.1}% of a core, RSS {} MiB; node {:.1}%, RSS {} MiB (target node RSS <= 200 MiB: {})",
        idle[0].0,
        idle[0].1,
        idle[1].0,
        idle[1].1,
        verdict(idle[1].1 <= 200)
    );
    println!(
        "sleeping: wake with a fresh compile (fetch + compile + place), {} components: p50 {:.1} ms max {:.1} ms (target <= 1 s: {})",
        fresh.len(),
        ms(pct(&fresh, 0.5)),
        ms(pct(&fresh, 1.0)),
        verdict(pct(&fresh, 1.0) <= Duration::from_secs(1))
    );
    println!(
        "sleeping: wake through the controller, component cached, {wakes} apps {}ms apart: p50 {:.1} ms p99 {:.1} ms (targets <= 20 / 50 ms: {})",
        gap.as_millis(),
        ms(pct(&remote, 0.5)),
        ms(pct(&remote, 0.99)),
        verdict(
            pct(&remote, 0.5) <= Duration::from_millis(20)
                && pct(&remote, 0.99) <= Duration::from_millis(50)
        )
    );
    println!(
        "sleeping: wake locally from the node's copy, {wakes} apps {}ms apart: p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms max {:.2} ms (target <= 5 ms: {})",
        gap.as_millis(),
        ms(pct(&local, 0.5)),
        ms(pct(&local, 0.9)),
        ms(pct(&local, 0.99)),
        ms(pct(&local, 1.0)),
        verdict(pct(&local, 0.99) <= Duration::from_millis(5))
    );
    println!(
        "sleeping: idle app at zero {:.1} s after its last request (idle configured {:.1} s)",
        to_zero.as_secs_f64(),
        IDLE_MS as f64 / 1000.0
    );
    println!(
        "sleeping: 1000 requests at once to a sleeping app: {held_failed} failed, all answered in {:.0} ms (target 0 failed: {})",
        ms(held_all),
        verdict(held_failed == 0)
    );
    Figures {
        idle,
        warm,
        warm_rss,
    }
}

async fn fixed(count: usize) -> Figures {
    let setup = setup(count, false).await;
    let node = setup.node.addr();
    let started = Instant::now();
    loop {
        let text = common::get_from("127.0.0.1", setup.controller.addr(), "c", "/metrics")
            .await
            .text();
        let ready: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("skiff_replicas_ready "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if ready >= count {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {ready} replicas Ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "fixed:    {count} replicas Ready {:.1} s after the last apply",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = idle(&setup);
    touch_warm_apps(node).await;
    let warm = warm_load(node);
    let warm_rss = proc_stats(setup.node.child.id()).1 / 1024;
    Figures {
        idle,
        warm,
        warm_rss,
    }
}

#[tokio::main]
async fn main() {
    let count = knob("SKIFF_BENCH_APPS", 10_000);
    let wakes = knob("SKIFF_BENCH_WAKES", 200);
    let only = std::env::var("SKIFF_BENCH_ONLY").unwrap_or_else(|_| "sleeping,fixed".into());
    let mut rows = Vec::new();
    if only.contains("sleeping") {
        rows.push(("min = 0", sleeping(count, wakes).await));
    }
    if only.contains("fixed") {
        rows.push(("replicas = 1", fixed(count).await));
    }
    println!(
        "\n{count} apps on one node (--memory 1Gi)   controller idle CPU / RSS   node idle CPU / RSS   warm over {WARM_APPS} apps (wrk -t2 -c{WARM_CONNECTIONS}): req/s, p50, p99, errors, node RSS"
    );
    for (what, f) in &rows {
        println!(
            "{what:<14} {:>5.1}% {:>5} MiB   {:>5.1}% {:>5} MiB   {:>7.0} {:>6.3} ms {:>6.3} ms {:>4} {:>5} MiB (target p50 <= 1 ms: {})",
            f.idle[0].0,
            f.idle[0].1,
            f.idle[1].0,
            f.idle[1].1,
            f.warm.rps,
            f.warm.p50_ms,
            f.warm.p99_ms,
            f.warm.errors,
            f.warm_rss,
            verdict(f.warm.p50_ms <= 1.0)
        );
    }
}
