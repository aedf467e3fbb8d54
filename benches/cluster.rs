//! Cluster latencies on a 3-node loopback cluster of real `skiff` processes
//! (release build), default settings:
//! - deploy-to-first-200: from the `PUT /v1/apps/{name}` call to the first
//!   200 through a node's ingress, with the artifact already compiled on
//!   every node, and with a new artifact (fetched and compiled on the way);
//! - deploy-to-first-200 on 3 nodes, a new artifact each time: from the
//!   apply to a replica Ready on each of the 3 nodes and a 200 through each,
//!   the artifact uploaded to the controller beforehand ("from controller"),
//!   or pushed to a loopback `docker-registry` and named by tag ("from
//!   registry": the controller resolves and copies it, the nodes pull it
//!   from the registry);
//! - node-failure-to-recovered: from `kill -9` of a node to the desired
//!   count Ready again on the survivors.
//!
//! Targets: deploy-to-first-200 p50 ≤ 100 ms (compiled); recovery ≤ 5 s.
//! Run: `cargo bench --bench cluster` (knob: `SKIFF_BENCH_DEPLOYS`, 20).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{Cluster, small_quota};
use http::StatusCode;
use skiff_sdk::Digest;
use skiff_sdk::api::{AppSpec, ReplicaState};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(what: &str, mut samples: Vec<Duration>, target: Option<Duration>) {
    samples.sort();
    let p50 = percentile(&samples, 0.5);
    let verdict = match target {
        Some(t) if p50 <= t => format!(" (meets the {t:?} target)"),
        Some(t) => format!(" (MISSES the {t:?} target)"),
        None => String::new(),
    };
    println!(
        "{what:<48} n={:<3} p50 {:>8.1} ms  p90 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms{verdict}",
        samples.len(),
        p50.as_secs_f64() * 1000.0,
        percentile(&samples, 0.9).as_secs_f64() * 1000.0,
        percentile(&samples, 0.99).as_secs_f64() * 1000.0,
        samples[samples.len() - 1].as_secs_f64() * 1000.0
    );
}

async fn deploy_to_first_200(cluster: &Cluster, app: &str, artifact: Digest) -> Duration {
    let spec: AppSpec = serde_json::from_value(serde_json::json!({
        "artifact": artifact, "replicas": 1, "quota": small_quota(),
    }))
    .unwrap();
    let start = Instant::now();
    cluster.admin.apply_app(app, &spec).await.unwrap();
    loop {
        if cluster.get("n1", app, "/").await.status == StatusCode::OK {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{app} never answered"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// From the apply (`apply` is what the row measures) to a replica of
/// `app` Ready on each node and a 200 through each node's ingress.
async fn to_first_200_on_3_nodes<F: std::future::Future<Output = ()>>(
    cluster: &Cluster,
    app: &str,
    apply: F,
) -> Duration {
    let start = Instant::now();
    apply.await;
    loop {
        let replicas = cluster.admin.replicas(app).await.unwrap();
        let nodes: std::collections::BTreeSet<&str> = replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Ready)
            .map(|r| r.node.as_str())
            .collect();
        if nodes.len() == 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{app} never ran on 3 nodes"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for node in ["n1", "n2", "n3"] {
        while cluster.get(node, app, "/").await.status != StatusCode::OK {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{app} never answered through {node}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    start.elapsed()
}

/// The "from controller" and "from registry" rows: a new artifact each
/// time, 3 replicas (one per node, by zone).
async fn from_controller_and_registry(cluster: &Cluster, deploys: u32) {
    let hello = common::example("hello");
    let spec = |artifact: Digest| -> AppSpec {
        serde_json::from_value(serde_json::json!({
            "artifact": artifact, "replicas": 3, "quota": small_quota(),
        }))
        .unwrap()
    };
    let mut controller = Vec::new();
    for i in 0..deploys {
        let bytes = Bytes::from(common::variant(&hello, 1000 + i));
        let artifact = cluster.admin.upload_artifact(bytes).await.unwrap();
        let app = format!("fc{i}");
        let apply = async {
            cluster
                .admin
                .apply_app(&app, &spec(artifact.digest))
                .await
                .unwrap();
        };
        controller.push(to_first_200_on_3_nodes(cluster, &app, apply).await);
        cluster.admin.delete_app(&app).await.unwrap();
    }
    summary(
        "deploy from controller -> first 200 on 3 nodes",
        controller,
        None,
    );

    let Some(registry) = common::registry::registry(None).await else {
        println!(
            "deploy from registry -> first 200 on 3 nodes: skipped (docker-registry not installed)"
        );
        return;
    };
    let mut pulled = Vec::new();
    for i in 0..deploys {
        let tag = format!("bench/hello:v{i}");
        let bytes = common::variant(&hello, 2000 + i);
        common::registry::push_raw(registry.addr, &tag, &[("application/wasm", &bytes, None)])
            .await;
        let app = format!("fr{i}");
        let reference = format!("oci://{}/{tag}", registry.addr);
        let apply = async {
            cluster
                .admin
                .apply_app_image(&app, &spec(Digest::of(b"")), &reference, false)
                .await
                .unwrap();
        };
        pulled.push(to_first_200_on_3_nodes(cluster, &app, apply).await);
        cluster.admin.delete_app(&app).await.unwrap();
    }
    summary("deploy from registry -> first 200 on 3 nodes", pulled, None);
    let mut from = std::collections::BTreeMap::<String, u64>::new();
    for node in ["n1", "n2", "n3"] {
        let metrics = cluster.admin.node_metrics(node).await.unwrap();
        for line in metrics.lines() {
            if let Some(rest) = line.strip_prefix("skiff_node_layer_pulls_total{from=\"")
                && let Some((source, n)) = rest.split_once("\"} ")
            {
                *from.entry(source.to_owned()).or_default() += n.trim().parse::<u64>().unwrap();
            }
        }
    }
    println!("  layers the nodes fetched, by source: {from:?}");
}

#[tokio::main]
async fn main() {
    let deploys: u32 = std::env::var("SKIFF_BENCH_DEPLOYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut cluster = Cluster::start(&[("n1", "zone=a"), ("n2", "zone=b"), ("n3", "zone=c")]).await;
    // Compile hello on every node first.
    let warm = cluster.deploy("warm", "hello", 3).await;
    cluster.wait_ready("warm", 3, Duration::from_secs(60)).await;

    let mut compiled = Vec::new();
    for i in 0..deploys {
        let app = format!("c{i}");
        compiled.push(deploy_to_first_200(&cluster, &app, warm.spec.artifact).await);
        cluster.admin.delete_app(&app).await.unwrap();
    }
    summary(
        "deploy-to-first-200, compiled",
        compiled,
        Some(Duration::from_millis(100)),
    );

    let hello = common::example("hello");
    let mut fresh = Vec::new();
    for i in 0..deploys.min(5) {
        let artifact = cluster
            .admin
            .upload_artifact(Bytes::from(common::variant(&hello, i)))
            .await
            .unwrap();
        let app = format!("n{i}");
        fresh.push(deploy_to_first_200(&cluster, &app, artifact.digest).await);
        cluster.admin.delete_app(&app).await.unwrap();
    }
    summary("deploy-to-first-200, new artifact", fresh, None);

    from_controller_and_registry(&cluster, deploys.min(10)).await;

    let mut recovery = Vec::new();
    for _ in 0..3 {
        let victim = cluster.admin.replicas("warm").await.unwrap()[0]
            .node
            .clone();
        cluster.kill_node(&victim);
        let killed = Instant::now();
        loop {
            let replicas = cluster.admin.replicas("warm").await.unwrap();
            let ready = replicas
                .iter()
                .filter(|r| r.state == ReplicaState::Ready && r.node != victim)
                .count();
            if ready == 3 && replicas.len() == 3 {
                recovery.push(killed.elapsed());
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "never recovered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
    summary(
        "node-failure-to-recovered (kill -9)",
        recovery,
        Some(Duration::from_secs(5)),
    );
}
