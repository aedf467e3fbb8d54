//! Scheduler throughput: 10,000 replicas (100 apps × 100) placed over 1,000
//! nodes in 10 zones, pure (`Scheduler::place` alone, and the whole
//! reconcile `plan`), then committed: one `Reconciler::reconcile` pass that
//! reads the store, plans and writes every replica (and its events) to
//! SQLite — and to PostgreSQL when `SKIFF_TEST_POSTGRES_URL` is set.
//! Targets: ≥ 10,000 placements/s pure, ≥ 2,000/s committed.
//!
//! Run: `cargo bench -p skiff-controller --bench scheduler`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use skiff_controller::reconciler::{DesiredApp, ObservedNode, Reconciler, ReconcilerOptions, plan};
use skiff_controller::scheduler::{NodeSlot, Request, Scheduler};
use skiff_controller::store::Store;
use skiff_sdk::api::{AppSpec, NodeCapacity, RegisterNode};

const NODES: usize = 1000;
const APPS: usize = 100;
const PER_APP: u32 = 100;
const RESERVATION: u64 = 64 << 20;
const CAPACITY: u64 = 64 << 30;

fn labels(i: usize) -> BTreeMap<String, String> {
    [("zone".to_owned(), format!("z{}", i % 10))].into()
}

fn slots() -> Vec<NodeSlot> {
    (0..NODES)
        .map(|i| NodeSlot {
            name: format!("node-{i:04}"),
            labels: labels(i),
            ready: true,
            cordoned: false,
            capacity: CAPACITY,
            allocated: 0,
        })
        .collect()
}

fn report(what: &str, placements: usize, elapsed: std::time::Duration, target: f64) {
    let rate = placements as f64 / elapsed.as_secs_f64();
    let verdict = if rate >= target { "meets" } else { "MISSES" };
    println!(
        "{what:<44} {placements} placements in {:>8.1} ms = {rate:>10.0}/s ({verdict} the {target:.0}/s target)",
        elapsed.as_secs_f64() * 1000.0
    );
}

fn pure() {
    let selector = BTreeMap::new();
    let names: Vec<String> = (0..APPS).map(|a| format!("app-{a:03}")).collect();
    let mut scheduler = Scheduler::new(slots());
    let start = Instant::now();
    for name in &names {
        for _ in 0..PER_APP {
            scheduler
                .place(&Request {
                    app: name,
                    reservation: RESERVATION,
                    selector: &selector,
                    spread: true,
                    prefer: None,
                })
                .unwrap();
        }
    }
    report(
        "pure: Scheduler::place",
        APPS * PER_APP as usize,
        start.elapsed(),
        10_000.0,
    );

    let apps: Vec<DesiredApp> = names
        .iter()
        .map(|name| DesiredApp {
            name: name.clone(),
            revision: 1,
            replicas: PER_APP,
            reservation: RESERVATION,
            selector: BTreeMap::new(),
            spread: true,
            max_surge: 1,
            max_unavailable: 0,
            good_revision: None,
            rollback_to: None,
            rollout_age_ms: None,
            progress_deadline_ms: 60_000,
            conditions: Vec::new(),
            prefer: None,
            every_node: false,
        })
        .collect();
    let nodes: Vec<ObservedNode> = slots()
        .into_iter()
        .map(|slot| ObservedNode {
            slot,
            draining: false,
            lost: false,
        })
        .collect();
    let start = Instant::now();
    let actions = plan(&apps, &nodes, &[]);
    let elapsed = start.elapsed();
    assert_eq!(actions.len(), APPS * PER_APP as usize + APPS);
    report(
        "pure: reconciler plan (whole pass)",
        APPS * PER_APP as usize,
        elapsed,
        10_000.0,
    );
}

async fn committed(t: &common::TestStore) {
    let store: Arc<dyn Store> = Arc::new(t.store.clone());
    let component = wat::parse_str("(component)").unwrap();
    let digest = skiff_sdk::Digest::of(&component);
    store.put_artifact(&digest, &component).await.unwrap();
    for i in 0..NODES {
        store
            .register_node(
                &RegisterNode {
                    name: format!("node-{i:04}"),
                    labels: labels(i),
                    capacity: NodeCapacity {
                        memory_bytes: CAPACITY,
                    },
                    ingress: format!("127.0.0.1:{}", 10_000 + i),
                    logs_key: None,
                    credential: None,
                },
                &format!("credential-{i}"),
                None,
                0,
            )
            .await
            .unwrap();
    }
    for a in 0..APPS {
        let spec: AppSpec = serde_json::from_value(serde_json::json!({
            "artifact": digest,
            "replicas": PER_APP,
            "quota": { "memory_bytes": 16 << 20, "concurrency": 4 },
        }))
        .unwrap();
        store
            .apply_app(&format!("app-{a:03}"), &spec, None)
            .await
            .unwrap();
    }
    let leases = skiff_controller::informer::Leases::new(skiff_controller::DEFAULT_NODE_GRACE);
    let informer = skiff_controller::informer::Informer::new(store.clone(), leases);
    informer.rebuild_now().await.unwrap();
    let mut reconciler = Reconciler::new(
        store.clone(),
        informer.clone(),
        ReconcilerOptions::default(),
    );
    let start = Instant::now();
    let summary = reconciler.reconcile(false).await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(summary.placed, APPS * PER_APP as usize);
    report(
        &format!("committed ({}): one reconcile pass", t.backend),
        summary.placed,
        elapsed,
        2_000.0,
    );
    // A second pass has nothing to do: how long a no-op full pass costs.
    informer.rebuild_now().await.unwrap();
    let start = Instant::now();
    let again = reconciler.reconcile(false).await.unwrap();
    assert_eq!(again.placed + again.removed, 0);
    println!(
        "{:<44} {:>8.1} ms (10,000 replicas, 1,000 nodes)",
        format!("committed ({}): no-op resync", t.backend),
        start.elapsed().as_secs_f64() * 1000.0
    );
}

fn main() {
    pure();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for t in common::stores().await {
            committed(&t).await;
            t.finish().await;
        }
    });
}
