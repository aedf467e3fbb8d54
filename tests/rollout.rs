//! Rolling updates under load: three nodes, an app with three replicas,
//! clients hammering all three ingresses while three revisions roll out back
//! to back — not one failed request, and the answers end on the last
//! version.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::cluster::{Cluster, small_quota};
use http::{Method, StatusCode};
use skiff_sdk::api::{AppSpec, ReplicaState};

/// What the load generator saw.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    failed: std::sync::Mutex<Vec<String>>,
    last: std::sync::Mutex<Vec<String>>,
}

fn spec(artifact: skiff_sdk::Digest, version: u32) -> AppSpec {
    serde_json::from_value(serde_json::json!({
        "artifact": artifact,
        "replicas": 3,
        "quota": small_quota(),
        "env": { "VERSION": version.to_string() },
        "health": { "path": "/healthz", "interval_ms": 100, "failure_threshold": 3 },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_rollouts_under_load_fail_no_request() {
    rollouts_under_load(&[("n1", "zone=a"), ("n2", "zone=b"), ("n3", "zone=c")]).await;
}

/// With a fourth node, one node at a time has no replica and forwards, and
/// replicas move between nodes as revisions change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollouts_with_a_forwarding_node_fail_no_request() {
    rollouts_under_load(&[
        ("n1", "zone=a"),
        ("n2", "zone=b"),
        ("n3", "zone=c"),
        ("n4", "zone=d"),
    ])
    .await;
}

/// Waits until exactly the three replicas of `revision` run, all Ready.
async fn settled_on(cluster: &Cluster, revision: u64) {
    cluster
        .wait(
            &format!("revision {revision} everywhere"),
            Duration::from_secs(60),
            |c| async move {
                let replicas = c.admin.replicas("hello").await.ok()?;
                (replicas.len() == 3
                    && replicas
                        .iter()
                        .all(|r| r.revision == revision && r.state == ReplicaState::Ready))
                .then_some(())
            },
        )
        .await;
}

async fn rollouts_under_load(nodes: &[(&str, &str)]) {
    let cluster = Cluster::start(nodes).await;
    let first = cluster.deploy("hello", "hello", 3).await;
    let artifact = first.spec.artifact;
    cluster
        .admin
        .apply_app("hello", &spec(artifact, 1))
        .await
        .unwrap();
    cluster
        .wait_ready("hello", 3, Duration::from_secs(30))
        .await;

    // Two keep-alive clients per ingress, as fast as they can.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let mut clients = Vec::new();
    for node in cluster.live_nodes() {
        for _ in 0..2 {
            let addr = cluster.node_addr(&node);
            let (stop, seen, node) = (stop.clone(), seen.clone(), node.clone());
            clients.push(tokio::spawn(async move {
                let mut client = common::Client::connect(addr).await;
                let mut last = String::new();
                while !stop.load(Ordering::Relaxed) {
                    let reply = client
                        .send("hello.localhost", Method::GET, "/", Bytes::new())
                        .await;
                    if reply.status == StatusCode::OK {
                        seen.ok.fetch_add(1, Ordering::Relaxed);
                        last = reply.text();
                    } else {
                        seen.failed.lock().unwrap().push(format!(
                            "via {node}: {} {}",
                            reply.status,
                            reply.text()
                        ));
                    }
                }
                seen.last.lock().unwrap().push(last);
            }));
        }
    }

    let started = std::time::Instant::now();
    for version in 2..=4 {
        let app = cluster
            .admin
            .apply_app("hello", &spec(artifact, version))
            .await
            .unwrap();
        settled_on(&cluster, app.revision).await;
    }
    // A revision whose health check fails never takes traffic: its replica
    // fails on its node while the old ones keep serving, and the rollout
    // returns to the last good revision by itself.
    let mut broken = spec(artifact, 5);
    if let Some(health) = broken.health.as_mut() {
        health.path = "/no-such-health".into();
    }
    let broken_revision = cluster
        .admin
        .apply_app("hello", &broken)
        .await
        .unwrap()
        .revision;
    // It is rolled back automatically, with an event that says why.
    let event = cluster
        .wait(
            "the automatic rollback",
            Duration::from_secs(60),
            |c| async move {
                let events = c.admin.events(Some("hello"), 0, 1000).await.ok()?;
                events.into_iter().find(|e| e.kind == "RolloutFailed")
            },
        )
        .await;
    assert!(
        event
            .message
            .contains("health check GET /no-such-health answered 404"),
        "{}",
        event.message
    );
    let app = cluster.admin.app("hello").await.unwrap();
    assert!(
        app.revision > broken_revision,
        "rolled forward to the good spec"
    );
    assert_eq!(app.spec.env["VERSION"], "4");
    settled_on(&cluster, app.revision).await;

    // Let the clients see the settled state for a moment, then stop them.
    let settled = seen.ok.load(Ordering::Relaxed);
    cluster
        .wait(
            "more answers after the last rollout",
            Duration::from_secs(10),
            |_| {
                let seen = seen.clone();
                async move { (seen.ok.load(Ordering::Relaxed) > settled + 300).then_some(()) }
            },
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let elapsed = started.elapsed();
    let ok = seen.ok.load(Ordering::Relaxed);
    let failed = seen.failed.lock().unwrap().clone();
    eprintln!(
        "{} nodes: {ok} requests in {elapsed:?} ({:.0}/s) across 3 rollouts and an automatically rolled back one; {} failed",
        nodes.len(),
        ok as f64 / elapsed.as_secs_f64(),
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        ok as f64 / elapsed.as_secs_f64() >= 200.0,
        "load too low to mean much"
    );
    for last in seen.last.lock().unwrap().iter() {
        assert_eq!(last, "Hello from Skiff! version=4\n");
    }
}
