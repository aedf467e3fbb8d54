//! Fleet benchmark: the control plane at 10,000 nodes and 10,000 apps, on
//! SQLite and on PostgreSQL, against real `skiff` processes (release).
//!
//! 1. Heartbeats. Simulated node agents speak the real HTTP API: each
//!    registers, heartbeats every second (a delta report with its digest, as
//!    a real node does once nothing changes), and holds its assignments and
//!    endpoints long-polls open. They are multiplexed over HTTP/2
//!    connections from this process (10,000 agents would otherwise need
//!    30,000 sockets); the controller does the same work per request either
//!    way. Printed per fleet size: heartbeats/s sustained, p50/p99 latency,
//!    and how many nodes the controller shows Ready. PostgreSQL runs two
//!    controllers on one database, each taking half of the nodes.
//! 2. Apps. One real node (declaring 256Gi) and 10,000 single-replica apps
//!    applied one after another: applies/s per thousand and the last
//!    thousand's p50/p99; time until all 10,000 replicas are Ready; then,
//!    with nothing changing, controller and node CPU (% of one core) and RSS;
//!    single-app GET p50/p99; a page of 100 apps p50/p99; updates of
//!    existing apps p50/p99.
//! 3. kill -9. A 3-node cluster running one app with a replica per node,
//!    under load through the two survivors: `kill -9` of the third, then
//!    the time until its replica is Ready elsewhere, 10 times; every
//!    request through the survivors must succeed.
//!
//! Run: `cargo bench --bench fleet` (PostgreSQL from
//! `SKIFF_TEST_POSTGRES_URL`; knobs: `SKIFF_BENCH_NODES` (10000),
//! `SKIFF_BENCH_APPS` (10000), `SKIFF_BENCH_KILLS` (10),
//! `SKIFF_BENCH_BACKENDS` (`sqlite,postgres`), `SKIFF_BENCH_ONLY`
//! (`heartbeats,apps,kills`)). Needs
//! `ulimit -n` of at least 4,096.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is the report

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{Cluster, Load, kill9, postgres_database, small_quota};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_sdk::api::{AppSpec, ReplicaState, replica_digest};
use support::{knob, ms, pct, proc_stats, start_controller, token, verdict};

/// HTTP/2 connections to one controller, used in turn.
struct H2 {
    senders: Vec<SendRequest<Full<Bytes>>>,
    next: AtomicUsize,
}

impl H2 {
    async fn connect(addr: std::net::SocketAddr, n: usize) -> Arc<Self> {
        let mut senders = Vec::new();
        for _ in 0..n {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            senders.push(sender);
        }
        Arc::new(Self {
            senders,
            next: AtomicUsize::new(0),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Bytes>,
        etag: Option<&str>,
    ) -> (StatusCode, http::HeaderMap, Bytes) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        let mut sender = self.senders[i].clone();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://controller{path}"))
            .header("authorization", format!("Bearer {token}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(tag) = etag {
            req = req.header("if-none-match", tag);
        }
        let req = req.body(Full::new(body.unwrap_or_default())).unwrap();
        match sender.send_request(req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                (parts.status, parts.headers, bytes)
            }
            Err(_) => (
                StatusCode::BAD_GATEWAY,
                http::HeaderMap::new(),
                Bytes::new(),
            ),
        }
    }
}

/// One simulated node: its name, credential and the controller it uses.
struct Agent {
    name: String,
    credential: String,
    h2: Arc<H2>,
}

#[derive(Default)]
struct Beats {
    latencies: std::sync::Mutex<Vec<Duration>>,
    failed: AtomicUsize,
}

/// Heartbeats, assignments and endpoints watches of one agent until `stop`.
fn run_agent(
    agent: Arc<Agent>,
    beats: Arc<Beats>,
    stop: Arc<AtomicBool>,
    recording: Arc<AtomicBool>,
) {
    let digest = replica_digest(std::iter::empty());
    let body = Bytes::from(format!(r#"{{"replicas":[],"digest":"{digest}"}}"#));
    {
        let (agent, stop, beats, recording) = (
            agent.clone(),
            stop.clone(),
            beats.clone(),
            recording.clone(),
        );
        tokio::spawn(async move {
            // A random phase, as real nodes have.
            let phase = Duration::from_millis(rand_ms(&agent.name) % 1000);
            tokio::time::sleep(phase).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let path = format!("/v1/nodes/{}/heartbeat", agent.name);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let sent = Instant::now();
                let (status, _, _) = agent
                    .h2
                    .call(
                        Method::PUT,
                        &path,
                        &agent.credential,
                        Some(body.clone()),
                        None,
                    )
                    .await;
                if recording.load(Ordering::Relaxed) {
                    if status.is_success() {
                        beats.latencies.lock().unwrap().push(sent.elapsed());
                    } else {
                        beats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    {
        let (agent, stop) = (agent.clone(), stop.clone());
        tokio::spawn(async move {
            let mut after: Option<u64> = None;
            while !stop.load(Ordering::Relaxed) {
                let path = match after {
                    Some(v) => format!(
                        "/v1/nodes/{}/assignments?after={v}&timeout_ms=30000",
                        agent.name
                    ),
                    None => format!("/v1/nodes/{}/assignments", agent.name),
                };
                let (status, _, body) = agent
                    .h2
                    .call(Method::GET, &path, &agent.credential, None, None)
                    .await;
                if status == StatusCode::OK {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    after = v["version"].as_u64();
                } else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
    tokio::spawn(async move {
        let mut tag: Option<String> = None;
        while !stop.load(Ordering::Relaxed) {
            let (status, headers, _) = agent
                .h2
                .call(
                    Method::GET,
                    "/v1/endpoints?timeout_ms=30000",
                    &agent.credential,
                    None,
                    tag.as_deref(),
                )
                .await;
            match status {
                StatusCode::OK => {
                    tag = headers
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                }
                StatusCode::NOT_MODIFIED => {}
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
}

fn rand_ms(seed: &str) -> u64 {
    seed.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    })
}

async fn register(h2: &H2, join: &str, name: &str) -> String {
    let body = serde_json::json!({
        "name": name, "labels": {}, "capacity": { "memory_bytes": 1u64 << 30 },
        "ingress": "127.0.0.1:9",
    });
    loop {
        let (status, _, reply) = h2
            .call(
                Method::POST,
                "/v1/nodes",
                join,
                Some(Bytes::from(body.to_string())),
                None,
            )
            .await;
        if status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
            return v["credential"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ready nodes as one controller shows them.
async fn ready_nodes(h2: &H2, admin: &str) -> usize {
    let mut ready = 0;
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(t) => format!("/v1/nodes?limit=5000&continue={t}"),
            None => "/v1/nodes?limit=5000".to_owned(),
        };
        let (_, headers, body) = h2.call(Method::GET, &path, admin, None, None).await;
        let nodes: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
        ready += nodes.iter().filter(|n| n["state"] == "Ready").count();
        match headers.get("skiff-continue").and_then(|v| v.to_str().ok()) {
            Some(t) => token = Some(t.to_owned()),
            None => return ready,
        }
    }
}

async fn heartbeats(backend: &str, db: Option<&str>, sizes: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    let first = start_controller(&dir.path().join("c1"), db, "c1");
    let (admin, join) = (
        token(&first, "admin_token_file"),
        token(&first, "join_token_file"),
    );
    let mut controllers = vec![H2::connect(first.addr(), 96).await];
    let mut second = None;
    if db.is_some() {
        // A second controller on the same database (reading the same
        // tokens); it takes every other node.
        let dir2 = dir.path().join("c2");
        std::fs::create_dir_all(&dir2).unwrap();
        for f in ["admin.token", "join.token"] {
            let _ = std::fs::copy(dir.path().join("c1").join(f), dir2.join(f));
        }
        let c2 = start_controller(&dir2, db, "c2");
        controllers.push(H2::connect(c2.addr(), 96).await);
        second = Some(c2);
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Every agent records into one place while a window is measured.
    let beats = Arc::new(Beats::default());
    let recording = Arc::new(AtomicBool::new(false));
    let mut registered = 0;
    for &size in sizes {
        let start = Instant::now();
        let mut joins = tokio::task::JoinSet::new();
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        for i in registered..size {
            let h2 = controllers[i % controllers.len()].clone();
            let (join, sem) = (join.clone(), sem.clone());
            joins.spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let name = format!("sim-{i:05}");
                let credential = register(&h2, &join, &name).await;
                Agent {
                    name,
                    credential,
                    h2,
                }
            });
        }
        let mut agents = Vec::new();
        while let Some(agent) = joins.join_next().await {
            agents.push(Arc::new(agent.unwrap()));
        }
        let registering = start.elapsed();
        let fresh = size - registered;
        for agent in agents {
            run_agent(agent, beats.clone(), stop.clone(), recording.clone());
        }
        registered = size;
        // The new agents (and the earlier ones, still running) settle,
        // then 10 s are measured.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pid = first.child.id();
        let (cpu0, _) = proc_stats(pid);
        recording.store(true, Ordering::Relaxed);
        let window = Instant::now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        recording.store(false, Ordering::Relaxed);
        let secs = window.elapsed().as_secs_f64();
        let (cpu1, rss) = proc_stats(pid);
        let mut lat = std::mem::take(&mut *beats.latencies.lock().unwrap());
        lat.sort();
        let rate = lat.len() as f64 / secs;
        let ready = ready_nodes(&controllers[0], &admin).await;
        let p99 = pct(&lat, 0.99);
        println!(
            "{backend:<9} heartbeats, {size:>6} nodes ({} controller{}): {rate:>8.0}/s  p50 {:>6.1} ms  p99 {:>6.1} ms  failed {}  Ready {ready}/{size}  controller CPU {:.0}% RSS {} MiB  (registered {} in {:.1} s)",
            controllers.len(),
            if controllers.len() > 1 { "s" } else { "" },
            ms(pct(&lat, 0.5)),
            ms(p99),
            beats.failed.swap(0, Ordering::Relaxed),
            (cpu1 - cpu0) as f64 / secs,
            rss / 1024,
            fresh,
            registering.as_secs_f64(),
        );
        if size >= 10_000 {
            let ok =
                rate >= 0.97 * size as f64 && p99 <= Duration::from_millis(50) && ready == size;
            println!(
                "{backend:<9}   target: {size} nodes kept Ready at >= {size}/s with p99 <= 50 ms: {}",
                verdict(ok)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(controllers);
    kill9(first);
    if let Some(c2) = second {
        kill9(c2);
    }
}

async fn replicas_ready(controller: std::net::SocketAddr) -> u64 {
    let text = common::get_from("127.0.0.1", controller, "controller", "/metrics")
        .await
        .text();
    text.lines()
        .find(|l| l.starts_with("skiff_replicas_ready "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn apps(backend: &str, db: Option<&str>, count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (controller, node, admin, artifact) = support::one_node(dir.path(), db, "256Gi").await;
    let spec = |i: usize| -> AppSpec {
        serde_json::from_value(serde_json::json!({
            "artifact": artifact, "replicas": 1,
            "quota": { "memory_bytes": 16 << 20, "concurrency": 1 },
            "env": { "I": i.to_string() },
        }))
        .unwrap()
    };
    let start = Instant::now();
    let mut per_thousand = Vec::new();
    let mut last_thousand = Vec::new();
    let mut block = Instant::now();
    for i in 0..count {
        let sent = Instant::now();
        admin
            .apply_app(&format!("app-{i:05}"), &spec(i))
            .await
            .unwrap();
        if i + 1000 >= count {
            last_thousand.push(sent.elapsed());
        }
        if (i + 1) % 1000 == 0 {
            per_thousand.push(1000.0 / block.elapsed().as_secs_f64());
            block = Instant::now();
        }
    }
    let applied = start.elapsed();
    loop {
        if replicas_ready(controller.addr()).await as usize >= count {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "replicas never all Ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_ready = start.elapsed();
    last_thousand.sort();
    let rate = count as f64 / applied.as_secs_f64();
    println!(
        "{backend:<9} apply {count} apps: {rate:.0}/s overall; per thousand: {}",
        per_thousand
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let (p50, p99) = (pct(&last_thousand, 0.5), pct(&last_thousand, 0.99));
    let steady = per_thousand.last().copied().unwrap_or(0.0) >= 0.8 * per_thousand[0];
    println!(
        "{backend:<9}   last thousand: p50 {:.1} ms p99 {:.1} ms (target p99 <= 20 ms: {}); >= 500/s: {}; last thousand as fast as the first: {}",
        ms(p50),
        ms(p99),
        verdict(p99 <= Duration::from_millis(20)),
        verdict(rate >= 500.0),
        verdict(steady),
    );
    println!(
        "{backend:<9} {count} replicas placed and Ready {:.1} s after the first apply ({:.1} s after the last)",
        all_ready.as_secs_f64(),
        (all_ready - applied).as_secs_f64()
    );

    // Idle: nothing changes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (cpid, npid) = (controller.child.id(), node.child.id());
    let (c0, _) = proc_stats(cpid);
    let (n0, _) = proc_stats(npid);
    let idle = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let secs = idle.elapsed().as_secs_f64();
    let (c1, crss) = proc_stats(cpid);
    let (n1, nrss) = proc_stats(npid);
    let (ccpu, ncpu) = ((c1 - c0) as f64 / secs, (n1 - n0) as f64 / secs);
    println!(
        "{backend:<9} idle with {count} apps: controller {ccpu:.1}% of a core, RSS {} MiB; node {ncpu:.1}%, RSS {} MiB (targets <= 3%, <= 3%, controller <= 100 MiB: {})",
        crss / 1024,
        nrss / 1024,
        verdict(ccpu <= 3.0 && ncpu <= 3.0 && crss <= 100 * 1024)
    );

    if std::env::var_os("SKIFF_BENCH_DEBUG").is_some() {
        let log = controller.log();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!("{}", lines[lines.len().saturating_sub(40)..].join("\n"));
    }
    // Reads at scale.
    let mut gets = Vec::new();
    for i in 0..1000 {
        let name = format!("app-{:05}", (i * 7919) % count);
        let sent = Instant::now();
        admin.app(&name).await.unwrap();
        gets.push(sent.elapsed());
    }
    gets.sort();
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..100 {
        let sent = Instant::now();
        let (items, next) = admin.apps_page(100, token.as_deref()).await.unwrap();
        pages.push(sent.elapsed());
        assert_eq!(items.len(), 100);
        token = next;
    }
    pages.sort();
    let mut updates = Vec::new();
    for i in 0..500 {
        let n = (i * 104_729) % count;
        let mut s = spec(n);
        s.env.insert("UPDATED".into(), "1".into());
        let sent = Instant::now();
        admin.apply_app(&format!("app-{n:05}"), &s).await.unwrap();
        updates.push(sent.elapsed());
    }
    updates.sort();
    println!(
        "{backend:<9} at {count} apps: GET one app p50 {:.2} ms p99 {:.2} ms (target p99 <= 5 ms: {}); page of 100 p50 {:.2} ms p99 {:.2} ms (target <= 10 ms: {}); update p50 {:.1} ms p99 {:.1} ms (target p99 <= 20 ms: {})",
        ms(pct(&gets, 0.5)),
        ms(pct(&gets, 0.99)),
        verdict(pct(&gets, 0.99) <= Duration::from_millis(5)),
        ms(pct(&pages, 0.5)),
        ms(pct(&pages, 0.99)),
        verdict(pct(&pages, 0.99) <= Duration::from_millis(10)),
        ms(pct(&updates, 0.5)),
        ms(pct(&updates, 0.99)),
        verdict(pct(&updates, 0.99) <= Duration::from_millis(20)),
    );
    kill9(node);
    kill9(controller);
}

async fn kills(backend: &str, db: Option<&str>, kills: usize) {
    let args: Vec<&str> = match db {
        Some(url) => vec!["--database-url", url],
        None => vec![],
    };
    let mut cluster = Cluster::start_with(&[("n1", ""), ("n2", ""), ("n3", "")], &args).await;
    let app = cluster.deploy("hello", "hello", 3).await;
    assert_eq!(app.spec.quota.memory_bytes, small_quota().memory_bytes);
    cluster
        .wait_ready("hello", 3, Duration::from_secs(60))
        .await;
    // A controller evicts lost nodes only once it has led for a grace
    // (a new leader gives every node its full grace).
    tokio::time::sleep(skiff_controller::DEFAULT_NODE_GRACE).await;
    let mut times = Vec::new();
    let mut failures = Vec::new();
    let mut failed = 0;
    let mut served = 0;
    for k in 0..kills {
        // A node that holds a replica.
        let replicas = cluster.admin.replicas("hello").await.unwrap();
        let victim = replicas[k % replicas.len()].node.clone();
        let survivors: Vec<(String, std::net::SocketAddr)> = cluster
            .live_nodes()
            .into_iter()
            .filter(|n| *n != victim)
            .map(|n| {
                let addr = cluster.node_addr(&n);
                (n, addr)
            })
            .collect();
        let load = Load::start(&survivors, "hello.localhost", 2).await;
        while load.ok() < 50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cluster.kill_node(&victim);
        let killed = Instant::now();
        loop {
            let replicas = cluster.admin.replicas("hello").await.unwrap();
            let ready = replicas
                .iter()
                .filter(|r| r.state == ReplicaState::Ready && r.node != victim)
                .count();
            if ready == 3 && replicas.len() == 3 {
                times.push(killed.elapsed());
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "never recovered"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let seen = load.stop().await;
        failed += seen.failed.lock().unwrap().len();
        failures.extend(seen.failed.lock().unwrap().iter().take(3).cloned());
        served += seen.ok.load(Ordering::Relaxed);
        cluster.start_node(&victim);
        let name = victim.clone();
        cluster
            .wait("the node to rejoin", Duration::from_secs(30), |c| {
                let name = name.clone();
                async move {
                    let nodes = c.admin.nodes().await.ok()?;
                    nodes
                        .iter()
                        .any(|n| n.name == name && n.state == skiff_sdk::api::NodeState::Ready)
                        .then_some(())
                }
            })
            .await;
    }
    times.sort();
    let (p50, max) = (pct(&times, 0.5), *times.last().unwrap());
    println!(
        "{backend:<9} kill -9 -> replica Ready elsewhere, {kills} kills: p50 {:.0} ms max {:.0} ms; {served} requests through the survivors, {failed} failed (targets p50 <= 1 s, max <= 1.5 s, 0 failed: {})",
        ms(p50),
        ms(max),
        verdict(p50 <= Duration::from_secs(1) && max <= Duration::from_millis(1500) && failed == 0)
    );
    for failure in failures.iter().take(5) {
        println!("{backend:<9}   failed: {failure}");
    }
}

#[tokio::main]
async fn main() {
    let nodes = knob("SKIFF_BENCH_NODES", 10_000);
    let count = knob("SKIFF_BENCH_APPS", 10_000);
    let kill_count = knob("SKIFF_BENCH_KILLS", 10);
    let sizes: Vec<usize> = [1_000, 5_000, 10_000]
        .into_iter()
        .filter(|s| *s <= nodes)
        .collect();
    let pg = postgres_database().await;
    let only = std::env::var("SKIFF_BENCH_ONLY").unwrap_or_default();
    let wanted = std::env::var("SKIFF_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let backends: Vec<(&str, Option<&str>)> = std::iter::once(("sqlite", None))
        .chain(pg.as_deref().map(|url| ("postgres", Some(url))))
        .filter(|(name, _)| wanted.contains(name))
        .collect();
    for (backend, db) in &backends {
        if only.is_empty() || only.contains("heartbeats") {
            heartbeats(backend, *db, &sizes).await;
        }
        if only.is_empty() || only.contains("apps") {
            if let Some(url) = db {
                reset(url).await;
            }
            apps(backend, *db, count).await;
        }
        if only.is_empty() || only.contains("kills") {
            if let Some(url) = db {
                reset(url).await;
            }
            kills(backend, *db, kill_count).await;
        }
        if let Some(url) = db {
            reset(url).await;
        }
    }
    if let Some(url) = pg {
        common::cluster::drop_database(&url).await;
    }
}

/// Empties the benchmark's PostgreSQL database between parts.
async fn reset(url: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::postgres::PgConnection::connect(url).await.unwrap();
    sqlx::Executor::execute(
        &mut conn,
        "DROP SCHEMA public CASCADE; CREATE SCHEMA public;",
    )
    .await
    .unwrap();
}
