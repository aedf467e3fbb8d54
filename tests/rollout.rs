//! Rolling updates under load: three nodes, an app with three replicas,
//! clients hammering all three ingresses while three revisions roll out back
//! to back — not one failed request, and the answers end on the last
//! version.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::time::Duration;

use common::cluster::{Cluster, Load, hello_spec};

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

async fn rollouts_under_load(nodes: &[(&str, &str)]) {
    let cluster = Cluster::start(nodes).await;
    let artifact = cluster.hello_v1().await;

    // Two keep-alive clients per ingress, as fast as they can.
    let addrs = cluster.ingresses();
    let load = Load::start(&addrs, "hello.localhost", 2).await;

    let started = std::time::Instant::now();
    let mut last = 0;
    for version in 2..=4 {
        let app = cluster
            .admin
            .apply_app("hello", &hello_spec(artifact, version))
            .await
            .unwrap();
        cluster.wait_revision("hello", app.revision, 3).await;
        last = app.revision;
    }
    // The last one becomes the good revision once it has settled.
    cluster.wait_proven("hello", last).await;
    // A revision whose health check fails never takes traffic: its replica
    // fails on its node while the old ones keep serving, and the rollout
    // returns to the last good revision by itself.
    let (broken_revision, event) =
        expect_rollback(&cluster, hello_spec(artifact, 5), "/no-such-health", false).await;
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
    cluster.wait_revision("hello", app.revision, 3).await;

    // Let the clients see the settled state for a moment, then stop them.
    let settled = load.ok();
    common::eventually(
        Duration::from_secs(10),
        "answers after the last rollout",
        || (load.ok() >= settled + 300).then_some(()),
    )
    .await;
    let seen = load.stop().await;
    let elapsed = started.elapsed();
    let ok = seen.ok.load(std::sync::atomic::Ordering::Relaxed);
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
    // The revision whose health check failed never answered anyone.
    let bodies = seen.bodies.lock().unwrap().clone();
    assert!(
        !bodies.iter().any(|b| b.contains("version=5")),
        "the broken revision took traffic: {bodies:?}"
    );
    assert!(
        bodies.contains("Hello from Skiff! version=4\n"),
        "{bodies:?}"
    );
    for last in seen.last.lock().unwrap().iter() {
        assert_eq!(last, "Hello from Skiff! version=4\n");
    }
}

/// A proven revision's replica whose health check starts failing while it
/// serves is reported Failed by its node and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_failing_its_health_check_while_serving_is_replaced() {
    let cluster = Cluster::start(&[("n1", "zone=a"), ("n2", "zone=b")]).await;
    let artifact = cluster
        .admin
        .upload_artifact(bytes::Bytes::from(common::example("sleep")))
        .await
        .unwrap()
        .digest;
    // One instance slot: a long request makes the health check wait for it,
    // give up after the queue wait, and fail.
    let spec: skiff_sdk::api::AppSpec = serde_json::from_value(serde_json::json!({
        "artifact": artifact, "replicas": 1,
        "quota": { "memory_bytes": 16 << 20, "concurrency": 1, "timeout_ms": 10_000 },
        "health": { "path": "/?ms=1", "interval_ms": 100, "failure_threshold": 3 },
    }))
    .unwrap();
    let app = cluster.admin.apply_app("nap", &spec).await.unwrap();
    cluster.wait_revision("nap", app.revision, 1).await;
    cluster.wait_proven("nap", app.revision).await;
    let first = cluster.admin.replicas("nap").await.unwrap().remove(0);
    let addr = cluster.node_addr(&first.node);
    let hog = tokio::spawn(async move {
        common::send(
            addr,
            "nap.localhost",
            http::Method::GET,
            "/?ms=4000",
            bytes::Bytes::new(),
        )
        .await
    });
    let replacement = cluster
        .wait("the replica to be replaced", Duration::from_secs(30), |c| {
            let first = first.id.clone();
            async move {
                let replicas = c.admin.replicas("nap").await.ok()?;
                replicas
                    .into_iter()
                    .find(|r| r.id != first && r.state == skiff_sdk::api::ReplicaState::Ready)
            }
        })
        .await;
    assert_ne!(replacement.id, first.id);
    let events = cluster.admin.events(Some("nap"), 0, 1000).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == skiff_sdk::api::EventKind::ReplicaReplaced),
        "{events:?}"
    );
    // The request that held the slot still finished.
    assert_eq!(hog.await.unwrap().status, http::StatusCode::OK);
}

/// A new revision that passes its health check but traps on its first
/// requests is failed by its node and rolled back automatically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_that_traps_on_its_first_requests_is_rolled_back() {
    let cluster = Cluster::start(&[("n1", "zone=a"), ("n2", "zone=b")]).await;
    let good = cluster.hello_v1_with(1).await;
    // `panic` answers /ok and panics on anything else.
    let panic = cluster
        .admin
        .upload_artifact(bytes::Bytes::from(common::example("panic")))
        .await
        .unwrap()
        .digest;
    let mut bad = hello_spec(panic, 2);
    bad.replicas = 1;
    // The new revision takes traffic where it started, and traps there.
    let (broken, event) = expect_rollback(&cluster, bad, "/ok", true).await;
    assert!(
        event.message.contains("requests here (trapped"),
        "{}",
        event.message
    );
    let app = cluster.admin.app("hello").await.unwrap();
    assert!(app.revision > broken);
    assert_eq!(app.spec.artifact, good);
    cluster.wait_revision("hello", app.revision, 1).await;
}

/// Applies `spec` with its health check on `health_path`, then waits for
/// the automatic rollback (sending a request through every node on each
/// look when `poke`); returns the broken revision and the `RolloutFailed`
/// event.
async fn expect_rollback(
    cluster: &Cluster,
    mut spec: skiff_sdk::api::AppSpec,
    health_path: &str,
    poke: bool,
) -> (u64, skiff_sdk::api::Event) {
    if let Some(health) = spec.health.as_mut() {
        health.path = health_path.into();
    }
    let broken = cluster
        .admin
        .apply_app("hello", &spec)
        .await
        .unwrap()
        .revision;
    let event = cluster
        .wait(
            "the automatic rollback",
            Duration::from_secs(60),
            |c| async move {
                if poke {
                    // Two clients: one alone never moves a verdict.
                    for (_, addr) in c.ingresses() {
                        for from in ["127.0.0.1", "127.0.0.2"] {
                            common::get_from(from, addr, "hello.localhost", "/").await;
                        }
                    }
                }
                let events = c.admin.events(Some("hello"), 0, 1000).await.ok()?;
                events
                    .into_iter()
                    .find(|e| e.kind == skiff_sdk::api::EventKind::RolloutFailed)
            },
        )
        .await;
    (broken, event)
}
