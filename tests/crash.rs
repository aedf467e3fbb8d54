//! Crash safety of the controller: a writer applies and scales apps without
//! pause while the controller process is `kill -9`ed at random moments (20
//! times) and restarted on the same store. Afterwards every write that was
//! acknowledged with 2xx is there, every app is whole (its spec is its
//! newest revision's), and once the reconciler settles no replica is
//! duplicated. Run on SQLite and on PostgreSQL, with real `skiff controller`
//! and `skiff node` processes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{Cluster, small_quota};
use common::example;
use skiff_sdk::Client;
use skiff_sdk::api::AppSpec;

const KILLS: usize = 20;
const APPS: [&str; 3] = ["alpha", "beta", "gamma"];

/// What the writer asked for, op by op, and whether the controller
/// acknowledged it. An op that failed may or may not have landed (the
/// controller may have died after committing, before answering).
#[derive(Clone, Debug)]
struct Op {
    app: &'static str,
    /// `VERSION` after the op (`None`: a scale, which keeps it).
    version: Option<u64>,
    replicas: u32,
    /// The revision the acknowledgement named.
    acked: Option<u64>,
}

/// A small deterministic generator: the kill moments and the ops differ
/// from round to round but not from run to run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

fn spec(artifact: skiff_sdk::Digest, version: u64, replicas: u32) -> AppSpec {
    serde_json::from_value(serde_json::json!({
        "artifact": artifact,
        "replicas": replicas,
        "quota": small_quota(),
        "env": { "VERSION": version.to_string() },
    }))
    .unwrap()
}

/// Applies and scales until `stop`, recording every op.
async fn writer(
    client: Client,
    artifact: skiff_sdk::Digest,
    ops: Arc<Mutex<Vec<Op>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut rng = Lcg(7);
    let mut version = 1_000;
    // The writer's own view of each app's replicas (what it last asked).
    let mut replicas: BTreeMap<&str, u32> = APPS.iter().map(|a| (*a, 1)).collect();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let app = APPS[rng.next(APPS.len() as u64) as usize];
        let scale = rng.next(3) == 0;
        let (op, result) = if scale {
            let n = 1 + rng.next(3) as u32;
            replicas.insert(app, n);
            let op = Op {
                app,
                version: None,
                replicas: n,
                acked: None,
            };
            (op, client.scale(app, n).await)
        } else {
            version += 1;
            let n = replicas[app];
            let op = Op {
                app,
                version: Some(version),
                replicas: n,
                acked: None,
            };
            (op, client.apply_app(app, &spec(artifact, version, n)).await)
        };
        let failed = result.is_err();
        ops.lock().unwrap().push(Op {
            acked: result.ok().map(|a| a.revision),
            ..op
        });
        if failed {
            // The controller is down (or going down): try again shortly.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn crash_loop(mut cluster: Cluster, backend: &str) {
    let artifact = cluster
        .admin
        .upload_artifact(Bytes::from(example("hello")))
        .await
        .unwrap()
        .digest;
    for app in APPS {
        cluster
            .admin
            .apply_app(app, &spec(artifact, 1, 1))
            .await
            .unwrap();
    }
    let ops = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = tokio::spawn(writer(
        cluster.admin.clone(),
        artifact,
        ops.clone(),
        stop.clone(),
    ));
    let mut rng = Lcg(42);
    let started = Instant::now();
    for _ in 0..KILLS {
        // Let some writes land (and some be in flight), then kill.
        let before = ops
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.acked.is_some())
            .count();
        // Run on for a random 30-330 ms, and until a write after the
        // restart has been acknowledged.
        let until = Instant::now() + Duration::from_millis(30 + rng.next(300));
        common::eventually(
            Duration::from_secs(30),
            "a write acknowledged after a restart",
            || {
                let acked = ops
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|o| o.acked.is_some())
                    .count();
                (acked > before && Instant::now() >= until).then_some(())
            },
        )
        .await;
        cluster.kill_controller();
        cluster.restart_controller();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writing.await.unwrap();
    let ops = ops.lock().unwrap().clone();
    let acked = ops.iter().filter(|o| o.acked.is_some()).count();
    eprintln!(
        "{backend}: {KILLS} kills in {:.1} s; {} ops, {acked} acknowledged, {} failed",
        started.elapsed().as_secs_f64(),
        ops.len(),
        ops.len() - acked
    );
    assert!(acked >= KILLS, "too few writes landed to mean anything");

    let admin = &cluster.admin;
    for app in APPS {
        let mine: Vec<&Op> = ops.iter().filter(|o| o.app == app).collect();
        let stored = admin.app(app).await.unwrap();
        let revisions = admin.revisions(app).await.unwrap();
        let version_of = |spec: &AppSpec| spec.env["VERSION"].parse::<u64>().unwrap();
        let by_number: BTreeMap<u64, u64> = revisions
            .iter()
            .map(|r| (r.number, version_of(&r.spec)))
            .collect();
        // The kept history (the last KEEP_REVISIONS and the current one)
        // is numbered without gaps or repeats, up to the app's revision:
        // nothing half-applied.
        let oldest = stored.revision.saturating_sub(10).max(1);
        assert_eq!(
            by_number.keys().copied().collect::<Vec<_>>(),
            (oldest..=stored.revision).collect::<Vec<_>>(),
            "{app}: revision numbers"
        );
        // Every acknowledged apply is there, as the revision it named (when
        // that revision is still in the kept history), and no acknowledged
        // revision number is beyond the app's.
        for op in &mine {
            if let (Some(version), Some(revision)) = (op.version, op.acked) {
                assert!(
                    revision <= stored.revision,
                    "{app}: revision {revision} lost"
                );
                if revision >= oldest {
                    assert_eq!(
                        by_number.get(&revision),
                        Some(&version),
                        "{app}: acknowledged VERSION={version} as revision {revision}"
                    );
                }
            }
        }
        assert_eq!(
            version_of(&stored.spec),
            by_number[&stored.revision],
            "{app}: spec and revision disagree"
        );
        // The final state is the last acknowledged write's, or that of a
        // write after it whose answer was lost.
        let after_acked = |changes: &dyn Fn(&Op) -> bool| -> &[&Op] {
            let last = mine.iter().rposition(|o| o.acked.is_some() && changes(o));
            last.map_or(&mine[..], |i| &mine[i..])
        };
        let versions: BTreeSet<u64> = after_acked(&|o| o.version.is_some())
            .iter()
            .filter_map(|o| o.version)
            .chain(
                // Before any acknowledged apply: the initial VERSION=1.
                (!mine
                    .iter()
                    .any(|o| o.acked.is_some() && o.version.is_some()))
                .then_some(1),
            )
            .collect();
        assert!(
            versions.contains(&version_of(&stored.spec)),
            "{app}: VERSION {} not among {versions:?}",
            version_of(&stored.spec)
        );
        let replicas: BTreeSet<u32> = after_acked(&|_| true)
            .iter()
            .map(|o| o.replicas)
            .chain((!mine.iter().any(|o| o.acked.is_some())).then_some(1))
            .collect();
        assert!(
            replicas.contains(&stored.spec.replicas),
            "{app}: {} replicas not among {replicas:?}",
            stored.spec.replicas
        );
    }

    // Once the reconciler settles: exactly the desired replicas, all at
    // the current revision, none twice (on the controller and on nodes).
    for app in APPS {
        let stored = admin.app(app).await.unwrap();
        cluster
            .wait_revision(app, stored.revision, stored.spec.replicas as usize)
            .await;
        let replicas = admin.replicas(app).await.unwrap();
        let ids: BTreeSet<&str> = replicas.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), replicas.len(), "{app}: duplicate replica ids");
    }
    let mut seen = BTreeSet::new();
    for app in APPS {
        for replica in admin.replicas(app).await.unwrap() {
            assert!(seen.insert(replica.id.clone()), "{} twice", replica.id);
        }
    }
    // A node learns the endpoints by long-poll, after the back-off its
    // watches built up while the controller kept dying: poll, with a limit.
    cluster
        .wait(
            "alpha through edge-1",
            Duration::from_secs(15),
            |c| async move {
                (c.get("edge-1", "alpha", "/").await.status == http::StatusCode::OK).then_some(())
            },
        )
        .await;
}

const CONTROLLER_ARGS: [&str; 4] = ["--id", "crash-test", "--lease-ttl", "2s"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_on_sqlite() {
    let cluster = Cluster::start_with(
        &[("edge-1", "zone=a"), ("edge-2", "zone=b")],
        &CONTROLLER_ARGS,
    )
    .await;
    crash_loop(cluster, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_on_postgres() {
    let Some(database) = common::cluster::postgres_database().await else {
        return;
    };
    let mut args = CONTROLLER_ARGS.to_vec();
    args.extend(["--database-url", &database]);
    let cluster = Cluster::start_with(&[("edge-1", "zone=a"), ("edge-2", "zone=b")], &args).await;
    crash_loop(cluster, "postgres").await;
    common::cluster::drop_database(&database).await;
}
