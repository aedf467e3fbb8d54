//! Every-node placement on a real cluster: an app with
//! `placement.every_node` runs one replica on each matching node, and
//! follows nodes as they join and leave (Kubernetes' DaemonSet).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::cluster::{Cluster, small_quota};
use common::example;
use skiff_sdk::api::{AppSpec, ReplicaState};

/// Generous for slow CI machines; the benchmarks measure speed.
const SETTLE: Duration = Duration::from_secs(30);

/// The nodes running a Ready replica of `app`, once there are exactly `n`.
async fn ready_on(cluster: &Cluster, app: &str, n: usize) -> Vec<String> {
    cluster
        .wait(
            &format!("{app} Ready on {n} nodes"),
            SETTLE,
            |c| async move {
                let replicas = c.admin.replicas(app).await.ok()?;
                let mut nodes: Vec<String> = replicas
                    .iter()
                    .filter(|r| r.state == ReplicaState::Ready)
                    .map(|r| r.node.clone())
                    .collect();
                nodes.sort();
                (nodes.len() == n && replicas.len() == n).then_some(nodes)
            },
        )
        .await
}

#[tokio::test]
async fn an_every_node_app_follows_nodes_joining_and_leaving() {
    let mut cluster = Cluster::start(&[
        ("a", "role=edge"),
        ("b", "role=edge"),
        ("core", "role=core"),
    ])
    .await;
    let artifact = cluster
        .admin
        .upload_artifact(Bytes::from(example("hello")))
        .await
        .unwrap()
        .digest;
    let spec: AppSpec = serde_json::from_value(serde_json::json!({
        "artifact": artifact,
        "quota": small_quota(),
        "placement": { "node_selector": { "role": "edge" }, "every_node": true },
    }))
    .unwrap();
    cluster.admin.apply_app("agent", &spec).await.unwrap();
    assert_eq!(ready_on(&cluster, "agent", 2).await, ["a", "b"]);

    // A matching node joins: it gets one.
    cluster.set_labels("c", "role=edge");
    cluster.start_node("c");
    assert_eq!(ready_on(&cluster, "agent", 3).await, ["a", "b", "c"]);

    // A node leaves: its replica goes and is not placed elsewhere.
    cluster.kill_node("b");
    assert_eq!(ready_on(&cluster, "agent", 2).await, ["a", "c"]);
    let reply = cluster.get("core", "agent", "/").await;
    assert_eq!(
        reply.status,
        http::StatusCode::OK,
        "reached through any node"
    );
}
