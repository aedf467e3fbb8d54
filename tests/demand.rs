//! Apps that follow demand, with real processes on loopback: a load ramp
//! scales an app up and back down; an idle app sleeps and its next
//! requests (200 at once) are held and served; a request held past the
//! activation timeout gets the documented 503; a node under memory
//! pressure refuses new requests with 503 `node-memory-pressure` while its
//! other apps keep serving; and a sleeping app wakes on its node while the
//! controller is away.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::cluster::Cluster;
use http::{Method, StatusCode};
use skiff_sdk::api::{App, AppSpec, EventKind};

/// Generous limits for slow CI machines; the benchmarks measure speed.
const CONVERGE: Duration = Duration::from_secs(30);

/// Applies `app` running `example` with `scale` (JSON) and `replicas`.
async fn deploy_scaled(
    cluster: &Cluster,
    app: &str,
    example: &str,
    replicas: u32,
    extra: serde_json::Value,
) -> App {
    let artifact = cluster
        .admin
        .upload_artifact(Bytes::from(common::example(example)))
        .await
        .unwrap();
    let mut spec = serde_json::json!({
        "artifact": artifact.digest,
        "replicas": replicas,
        "quota": { "memory_bytes": 64 << 20, "concurrency": 50, "reserve_bytes": 4 << 20 },
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let spec: AppSpec = serde_json::from_value(spec).unwrap();
    cluster.admin.apply_app(app, &spec).await.unwrap()
}

/// Waits until `app` has no replica left (it sleeps).
async fn wait_asleep(cluster: &Cluster, app: &str) {
    cluster
        .wait(&format!("{app} asleep"), CONVERGE, |c| async move {
            let spec = c.admin.app(app).await.ok()?.spec;
            let replicas = c.admin.replicas(app).await.ok()?;
            (spec.replicas == 0 && replicas.is_empty()).then_some(())
        })
        .await;
}

async fn scaled_events(cluster: &Cluster, app: &str) -> Vec<String> {
    let events = cluster.admin.events(Some(app), 0, 1000).await.unwrap();
    events
        .into_iter()
        .filter(|e| e.kind == EventKind::AppScaled)
        .map(|e| e.message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_app_sleeps_and_every_held_request_is_served_when_it_wakes() {
    let cluster = Cluster::start(&[("n1", "zone=a"), ("n2", "zone=b")]).await;
    // Health checks run all along; they are not demand.
    let scale = serde_json::json!({
        "scale": { "min": 0, "max": 2, "window_ms": 1000, "scale_down_delay_ms": 0, "idle_ms": 1500 },
        "health": { "path": "/healthz", "interval_ms": 100, "failure_threshold": 3 },
    });
    deploy_scaled(&cluster, "hello", "hello", 1, scale).await;
    cluster.wait_ready("hello", 1, CONVERGE).await;
    assert_eq!(cluster.get("n1", "hello", "/").await.status, StatusCode::OK);

    // Idle: it goes to zero, and says why.
    wait_asleep(&cluster, "hello").await;
    let events = scaled_events(&cluster, "hello").await;
    assert!(
        events.iter().any(|e| e.starts_with("Scaled to zero")),
        "{events:?}"
    );

    // The next request, through either node, is held and served.
    let reply = cluster.get("n2", "hello", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.text().starts_with("Hello from Skiff"));
    let events = scaled_events(&cluster, "hello").await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Scaled up 0 → 1: woken by node")),
        "{events:?}"
    );

    // Asleep again, 200 requests at once through both nodes: all served.
    wait_asleep(&cluster, "hello").await;
    let requests = (0..200).map(|i| {
        let node = if i % 2 == 0 { "n1" } else { "n2" };
        let addr = cluster.node_addr(node);
        tokio::spawn(async move {
            common::send(addr, "hello.localhost", Method::GET, "/", Bytes::new()).await
        })
    });
    let replies = futures::future::join_all(requests).await;
    let failed: Vec<String> = replies
        .into_iter()
        .map(Result::unwrap)
        .filter(|r| r.status != StatusCode::OK)
        .map(|r| format!("{} {}", r.status, r.text()))
        .collect();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_past_the_activation_timeout_gets_503() {
    let cluster = Cluster::start(&[("n1", "zone=a")]).await;
    // Asleep from the start, and no node may run it: it cannot wake.
    let scale = serde_json::json!({
        "scale": { "min": 0, "max": 1, "activation_timeout_ms": 300 },
        "placement": { "node_selector": { "disk": "none" } },
    });
    deploy_scaled(&cluster, "nowhere", "hello", 0, scale).await;
    let reply = cluster
        .wait("n1 to know the app sleeps", CONVERGE, |c| async move {
            let reply = c.get("n1", "nowhere", "/").await;
            (reply.reason() != Some("no-ready-replica") && reply.status != StatusCode::NOT_FOUND)
                .then_some(reply)
        })
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.reason(), Some("activation-timeout"));
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(reply.json()["error"]["code"], "activation-timeout");
    // The node asked (its call may land a moment after the 503): the app
    // wants a replica it cannot place.
    cluster
        .wait(
            "the activation to reach the controller",
            CONVERGE,
            |c| async move {
                let app = c.admin.app("nowhere").await.ok()?;
                (app.spec.replicas == 1).then_some(())
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_ramp_scales_up_through_three_nodes_and_back_down() {
    let cluster = Cluster::start(&[("n1", "zone=a"), ("n2", "zone=b"), ("n3", "zone=c")]).await;
    let scale = serde_json::json!({ "scale": {
        "min": 1, "max": 3, "target_concurrency": 2, "window_ms": 2000, "scale_down_delay_ms": 1000,
    }});
    deploy_scaled(&cluster, "nap", "sleep", 1, scale).await;
    cluster.wait_ready("nap", 1, CONVERGE).await;

    // Twelve clients, each keeping a 300 ms request in flight, spread over
    // the three nodes: about 12 in flight against a target of 2 per replica.
    let stop = tokio_util::sync::CancellationToken::new();
    let load: Vec<_> = (0..12)
        .map(|i| {
            let addr = cluster.node_addr(["n1", "n2", "n3"][i % 3]);
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    common::send(addr, "nap.localhost", Method::GET, "/?ms=300", Bytes::new())
                        .await;
                }
            })
        })
        .collect();
    let replicas = cluster.wait_ready("nap", 3, CONVERGE).await;
    let mut nodes: Vec<String> = replicas.into_iter().map(|r| r.node).collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"]);
    let app = cluster.admin.app("nap").await.unwrap();
    let observed = app.observed.unwrap();
    assert_eq!(observed.reserved_bytes, 4 << 20);
    assert!(observed.nodes >= 1, "{observed:?}");

    stop.cancel();
    for task in load {
        task.await.unwrap();
    }
    cluster.wait_ready("nap", 1, CONVERGE).await;
    let events = scaled_events(&cluster, "nap").await;
    assert!(
        events.iter().any(|e| e.starts_with("Scaled up 1 → ")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.starts_with("Scaled down ")),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_memory_pressure_refuses_new_requests_and_keeps_serving() {
    let mut cluster = Cluster::start(&[]).await;
    cluster.set_labels("small", "zone=a");
    cluster.set_memory("small", "96Mi");
    cluster.start_node("small");
    cluster.wait_ready_node("small", CONVERGE).await;
    deploy_scaled(&cluster, "hog", "memory-hog", 1, serde_json::json!({})).await;
    deploy_scaled(&cluster, "hello", "hello", 1, serde_json::json!({})).await;
    cluster.wait_ready("hog", 1, CONVERGE).await;
    cluster.wait_ready("hello", 1, CONVERGE).await;

    // Once: the node learns what one hog instance takes (~40 MiB).
    let reply = cluster.get("small", "hog", "/?mb=40").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    // Two hogs hold ~80 of the 96 MiB for a while.
    let addr = cluster.node_addr("small");
    let holding: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                common::send(
                    addr,
                    "hog.localhost",
                    Method::GET,
                    "/?mb=40&ms=3000",
                    Bytes::new(),
                )
                .await
            })
        })
        .collect();
    cluster
        .wait("two hogs holding their memory", CONVERGE, |c| async move {
            let metrics = c.admin.node_metrics("small").await.ok()?;
            let used: u64 = metrics
                .lines()
                .find_map(|l| l.strip_prefix("skiff_node_memory_used_bytes "))?
                .parse()
                .ok()?;
            (used >= 80 << 20).then_some(())
        })
        .await;

    // A third has no room: 503 with the reason, after a short wait.
    let refused = cluster.get("small", "hog", "/?mb=40").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.reason(), Some("node-memory-pressure"));
    assert_eq!(refused.headers["retry-after"], "1");
    // A small app still fits and serves.
    let hello = cluster.get("small", "hello", "/").await;
    assert_eq!(hello.status, StatusCode::OK, "{}", hello.text());
    // The requests already running were not harmed.
    for task in holding {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "held 40 MiB\n");
    }
    // And the node is alive and serves the hog again.
    let again = cluster.get("small", "hog", "/?mb=40").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert!(cluster.nodes["small"].is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_app_wakes_on_its_node_while_the_controller_is_away() {
    let mut cluster = Cluster::start(&[("n1", "zone=a")]).await;
    let scale = serde_json::json!({ "scale": {
        "min": 0, "max": 1, "window_ms": 1000, "scale_down_delay_ms": 0, "idle_ms": 1000,
    }});
    deploy_scaled(&cluster, "hello", "hello", 1, scale).await;
    cluster.wait_ready("hello", 1, CONVERGE).await;
    assert_eq!(cluster.get("n1", "hello", "/").await.status, StatusCode::OK);
    wait_asleep(&cluster, "hello").await;
    // The node has seen the app's endpoints empty (asleep) before the
    // controller goes.
    cluster
        .wait(
            "n1 to hold requests for the sleeping app",
            CONVERGE,
            |c| async move {
                let metrics = c.admin.node_metrics("n1").await.ok()?;
                (!metrics.contains("app=\"hello\"")).then_some(())
            },
        )
        .await;

    cluster.kill_controller();
    let reply = cluster.get("n1", "hello", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.text().starts_with("Hello from Skiff"));

    // Back, the controller hears of it and gives the node a replica.
    cluster.restart_controller();
    let replicas = cluster.wait_ready("hello", 1, CONVERGE).await;
    assert_eq!(replicas[0].node, "n1");
    let events = scaled_events(&cluster, "hello").await;
    assert!(
        events
            .iter()
            .any(|e| e.contains("woken by node n1, which serves it from its own copy")),
        "{events:?}"
    );
}
