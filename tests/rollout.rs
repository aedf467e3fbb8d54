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
    for version in 2..=4 {
        let app = cluster
            .admin
            .apply_app("hello", &hello_spec(artifact, version))
            .await
            .unwrap();
        cluster.wait_revision("hello", app.revision, 3).await;
    }
    // A revision whose health check fails never takes traffic: its replica
    // fails on its node while the old ones keep serving, and the rollout
    // returns to the last good revision by itself.
    let mut broken = hello_spec(artifact, 5);
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
    cluster.wait_revision("hello", app.revision, 3).await;

    // Let the clients see the settled state for a moment, then stop them.
    let settled = load.ok();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while load.ok() < settled + 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "no answers after the last rollout"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    for last in seen.last.lock().unwrap().iter() {
        assert_eq!(last, "Hello from Skiff! version=4\n");
    }
}
