//! Work proportional to change, checked for sameness: the dirty-set
//! reconciler against full passes on the same randomized histories, delta
//! heartbeats against full ones, and paged lists while apps come and go.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{TestApi, component, poll, stores};
use http::{Method, StatusCode};
use skiff_controller::api::ApiConfig;
use skiff_controller::informer::{Informer, Leases};
use skiff_controller::reconciler::{Reconciler, ReconcilerOptions};
use skiff_controller::store::{SqlStore, Store, StoreOptions};
use skiff_sdk::Digest;
use skiff_sdk::api::{
    AppSpec, HeartbeatReply, NodeCapacity, RegisterNode, ReplicaState, ReplicaStatus,
    replica_digest,
};

/// A small deterministic generator (xorshift64*), so a failing history can
/// be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One reconciling controller over its own SQLite store, driven by hand.
struct Pipeline {
    store: Arc<dyn Store>,
    informer: Arc<Informer>,
    leases: Arc<Leases>,
    reconciler: Reconciler,
    _dir: tempfile::TempDir,
}

impl Pipeline {
    async fn new() -> Self {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("skiff.db").display());
        let store: Arc<dyn Store> = Arc::new(
            SqlStore::connect(&url, StoreOptions::default())
                .await
                .unwrap(),
        );
        let leases = Leases::new(Duration::from_secs(60));
        let informer = Informer::new(store.clone(), leases.clone());
        informer.rebuild_now().await.unwrap();
        // Every pass plans the unsettled apps too (no resync to wait for):
        // the outcomes are compared after each step, not over time.
        let reconciler = Reconciler::new(
            store.clone(),
            informer.clone(),
            ReconcilerOptions {
                resync: Duration::ZERO,
                ..ReconcilerOptions::default()
            },
        );
        Self {
            store,
            informer,
            leases,
            reconciler,
            _dir: dir,
        }
    }

    /// Brings the picture up to date: by the changes named (`dirty`), or
    /// by reading everything again.
    async fn catch_up(&self, dirty: bool) {
        if dirty {
            let changed = self.store.take_changed();
            if !changed.is_empty() {
                self.informer.refresh(changed).await.unwrap();
            }
        } else {
            self.informer.rebuild_now().await.unwrap();
        }
    }

    /// Reconciles until a pass changes nothing (at most 8 passes), with
    /// every live node heartbeating and reporting its replicas: those of
    /// apps with an even number Ready, the rest Starting.
    async fn settle(&mut self, dirty: bool, nodes: &BTreeSet<String>) {
        for _ in 0..8 {
            for node in nodes {
                self.leases.renew(node);
            }
            self.catch_up(dirty).await;
            let summary = if dirty {
                self.reconciler.reconcile_changed(true).await.unwrap()
            } else {
                self.reconciler.reconcile(true).await.unwrap()
            };
            for node in nodes {
                let states: Vec<ReplicaStatus> = self
                    .store
                    .replicas(None)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|r| &r.node == node)
                    .map(|r| {
                        let even =
                            r.app.trim_start_matches("app-").parse::<u32>().unwrap() % 2 == 0;
                        ReplicaStatus {
                            id: r.id,
                            state: if even {
                                ReplicaState::Ready
                            } else {
                                ReplicaState::Starting
                            },
                            reason: None,
                        }
                    })
                    .collect();
                self.store.report_replicas(node, &states).await.unwrap();
            }
            if summary.placed + summary.removed + summary.conditions == 0 {
                break;
            }
        }
    }
}

/// What both pipelines must agree on, per app: its revision, its replicas
/// counted by (revision, retiring, state), and its conditions (kind,
/// status, reason). Which node a replica landed on may differ: placement
/// order differs between a pass over some apps and a pass over all.
type Outcome = BTreeMap<
    String,
    (
        u64,
        BTreeMap<(u64, bool, String), usize>,
        Vec<(String, bool, String)>,
    ),
>;

async fn outcome(store: &dyn Store) -> Outcome {
    let replicas = store.replicas(None).await.unwrap();
    let mut out = Outcome::new();
    for app in store.apps().await.unwrap() {
        let mut counts = BTreeMap::new();
        for r in replicas.iter().filter(|r| r.app == app.name) {
            *counts
                .entry((
                    r.revision,
                    r.retiring_since.is_some(),
                    format!("{:?}", r.state),
                ))
                .or_default() += 1;
        }
        let conditions = app
            .status
            .conditions
            .iter()
            .map(|c| (c.kind.clone(), c.status, c.reason.clone()))
            .collect();
        out.insert(app.name.clone(), (app.revision, counts, conditions));
    }
    // No replica of an app that does not exist.
    let apps: BTreeSet<String> = out.keys().cloned().collect();
    assert!(
        replicas.iter().all(|r| apps.contains(&r.app)),
        "orphans: {replicas:?}"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dirty_set_reconciler_converges_to_what_full_passes_reach() {
    let (mut placed, mut unschedulable) = (0, 0);
    for seed in 1..=12u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut dirty = Pipeline::new().await;
        let mut full = Pipeline::new().await;
        let bytes = component();
        let digest = Digest::of(&bytes);
        for p in [&dirty, &full] {
            p.store.put_artifact(&digest, &bytes).await.unwrap();
        }
        let mut nodes: BTreeSet<String> = BTreeSet::new();
        let mut history = Vec::new();
        for step in 0..25 {
            let op = rng.below(10);
            let app = format!("app-{}", rng.below(6));
            let node = format!("node-{}", rng.below(4));
            let zone = ["a", "b"][rng.below(2) as usize];
            let n = rng.below(5) as u32;
            let v = rng.below(3);
            history.push(format!("{step}: op {op} {app} {node} {zone} {n} {v}"));
            for p in [&dirty, &full] {
                let s = p.store.as_ref();
                match op {
                    // Apply (a new revision when `v` or the selector changes).
                    0..=2 => {
                        let mut spec: AppSpec = serde_json::from_value(serde_json::json!({
                            "artifact": digest, "replicas": n,
                            "quota": { "memory_bytes": 1 << 20, "concurrency": 1 },
                            "env": { "V": v.to_string() },
                        }))
                        .unwrap();
                        if v == 2 {
                            spec.placement
                                .node_selector
                                .insert("zone".into(), zone.into());
                        }
                        s.apply_app(&app, &spec, None).await.unwrap();
                    }
                    3 => {
                        let _ = s.scale_app(&app, n, None).await;
                    }
                    4 => {
                        let _ = s.delete_app(&app, None).await;
                    }
                    5 | 6 => {
                        let register = RegisterNode {
                            name: node.clone(),
                            labels: BTreeMap::from([("zone".to_owned(), zone.to_owned())]),
                            capacity: NodeCapacity {
                                memory_bytes: 64 << 30,
                            },
                            ingress: "127.0.0.1:9".into(),
                            logs_key: None,
                            credential: None,
                        };
                        s.register_node(&register, &format!("{node}-{seed}-{step}"), None, 0)
                            .await
                            .unwrap();
                    }
                    7 => {
                        let _ = s.set_node_flags(&node, Some(v == 0), None, None).await;
                    }
                    8 => {
                        let _ = s
                            .set_node_flags(&node, Some(true), Some(v != 0), None)
                            .await;
                    }
                    _ => {
                        let _ = s.delete_node(&node, None).await;
                    }
                }
            }
            match op {
                5 | 6 => {
                    nodes.insert(node.clone());
                }
                9 => {
                    nodes.remove(&node);
                }
                _ => {}
            }
            dirty.settle(true, &nodes).await;
            full.settle(false, &nodes).await;
            let (a, b) = (
                outcome(dirty.store.as_ref()).await,
                outcome(full.store.as_ref()).await,
            );
            assert_eq!(a, b, "seed {seed}, after:\n{}", history.join("\n"));
            placed += a
                .values()
                .map(|(_, c, _)| c.values().sum::<usize>())
                .sum::<usize>();
            unschedulable += a
                .values()
                .filter(|(_, _, c)| c.iter().any(|(k, s, _)| k == "Scheduled" && !s))
                .count();
        }
    }
    // The histories exercised something: replicas ran, and some could not
    // be placed at some point.
    assert!(
        placed > 100 && unschedulable > 0,
        "{placed} {unschedulable}"
    );
}

fn node_registration(name: &str) -> serde_json::Value {
    serde_json::json!({ "name": name, "labels": {}, "capacity": {"memory_bytes": 1 << 30}, "ingress": "127.0.0.1:9" })
}

/// An API with app `web` at revision 1 and node `n1` holding replicas
/// `web-0..5`; returns the node's credential.
async fn with_replicas(api: &TestApi) -> String {
    let art = api
        .call(
            Method::POST,
            "/v1/artifacts",
            Some(&api.admin.clone()),
            Some(("application/wasm", Bytes::from(component()))),
        )
        .await
        .json();
    let r = api
        .admin_json(
            Method::PUT,
            "/v1/apps/web",
            serde_json::json!({ "artifact": art["digest"], "replicas": 0 }),
        )
        .await;
    assert!(r.status.is_success(), "{r:?}");
    let join = api.join.clone();
    let reg = api
        .call(
            Method::POST,
            "/v1/nodes",
            Some(&join),
            Some((
                "application/json",
                Bytes::from(node_registration("n1").to_string()),
            )),
        )
        .await
        .json();
    for i in 0..5 {
        api.store
            .assign_replica(&format!("web-{i}"), "web", 1, "n1")
            .await
            .unwrap();
    }
    reg["credential"].as_str().unwrap().to_owned()
}

async fn beat(
    api: &TestApi,
    credential: &str,
    replicas: &[ReplicaStatus],
    digest: Option<String>,
) -> HeartbeatReply {
    let body = serde_json::json!({ "replicas": replicas, "digest": digest });
    let r = api
        .call(
            Method::PUT,
            "/v1/nodes/n1/heartbeat",
            Some(credential),
            Some(("application/json", Bytes::from(body.to_string()))),
        )
        .await;
    match r.status {
        StatusCode::NO_CONTENT => HeartbeatReply::default(),
        StatusCode::OK => serde_json::from_slice(&r.body).unwrap(),
        other => panic!("heartbeat answered {other}: {r:?}"),
    }
}

async fn recorded(api: &TestApi) -> Vec<(String, ReplicaState, Option<String>)> {
    api.store
        .replicas(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.state, r.reason))
        .collect()
}

fn digest_of(states: &BTreeMap<String, ReplicaStatus>) -> String {
    replica_digest(
        states
            .values()
            .map(|r| (r.id.as_str(), r.state, r.reason.as_deref())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_heartbeats_record_what_full_ones_do_and_drift_is_repaired() {
    let mut pair = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..2 {
        let t = stores().await.into_iter().next().unwrap();
        pair.push(TestApi::start(t.store.clone(), ApiConfig::default()).await);
        kept.push(t);
    }
    let (full, delta) = (&pair[0], &pair[1]);
    let (cf, cd) = (with_replicas(full).await, with_replicas(delta).await);
    let mut rng = Rng(7);
    let mut now: BTreeMap<String, ReplicaStatus> = BTreeMap::new();
    let mut acked: BTreeMap<String, ReplicaStatus> = BTreeMap::new();
    for step in 0..40 {
        for _ in 0..rng.below(3) + 1 {
            let id = format!("web-{}", rng.below(5));
            let (state, reason) = match rng.below(4) {
                0 => (ReplicaState::Pending, None),
                1 => (ReplicaState::Starting, None),
                2 => (ReplicaState::Ready, None),
                _ => (ReplicaState::Failed, Some(format!("trap {step}"))),
            };
            now.insert(id.clone(), ReplicaStatus { id, state, reason });
        }
        beat(full, &cf, &now.values().cloned().collect::<Vec<_>>(), None).await;
        let changed: Vec<ReplicaStatus> = now
            .values()
            .filter(|r| acked.get(&r.id) != Some(*r))
            .cloned()
            .collect();
        let reply = beat(delta, &cd, &changed, Some(digest_of(&now))).await;
        if reply.resend_full {
            beat(delta, &cd, &now.values().cloned().collect::<Vec<_>>(), None).await;
        }
        acked = now.clone();
        assert_eq!(recorded(full).await, recorded(delta).await, "step {step}");
    }

    // The record drifts behind the node's back: the next delta (with
    // nothing changed) is told to send a full report, which repairs it.
    let drift = ReplicaStatus {
        id: "web-0".into(),
        state: ReplicaState::Failed,
        reason: Some("drift".into()),
    };
    delta.store.report_replicas("n1", &[drift]).await.unwrap();
    poll(
        Duration::from_secs(5),
        "the informer to see the drift",
        || async {
            let picture = delta.state.informer.read();
            match picture.replicas["web-0"].reason.as_deref() {
                Some("drift") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let reply = beat(delta, &cd, &[], Some(digest_of(&now))).await;
    assert!(reply.resend_full, "a drifted record asks for a full report");
    beat(delta, &cd, &now.values().cloned().collect::<Vec<_>>(), None).await;
    assert_eq!(recorded(full).await, recorded(delta).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_list_returns_every_app_once_while_apps_come_and_go() {
    for t in stores().await {
        let b = t.backend;
        let api = TestApi::start(t.store.clone(), ApiConfig::default()).await;
        let art = api
            .call(
                Method::POST,
                "/v1/artifacts",
                Some(&api.admin.clone()),
                Some(("application/wasm", Bytes::from(component()))),
            )
            .await
            .json();
        let spec = serde_json::json!({ "artifact": art["digest"], "replicas": 0 });
        // Stable apps interleaved with ones that are deleted during the walk.
        for i in 0..120 {
            for kind in ["s", "t"] {
                let r = api
                    .admin_json(
                        Method::PUT,
                        &format!("/v1/apps/a{i:03}-{kind}"),
                        spec.clone(),
                    )
                    .await;
                assert!(r.status.is_success(), "{b}: {r:?}");
            }
        }
        let stable: BTreeSet<String> = (0..120).map(|i| format!("a{i:03}-s")).collect();
        let seen = std::sync::Mutex::new(Vec::<String>::new());
        let walk = async {
            let mut token: Option<String> = None;
            loop {
                let path = match &token {
                    Some(t) => format!("/v1/apps?limit=7&continue={t}"),
                    None => "/v1/apps?limit=7".to_owned(),
                };
                let r = api
                    .call(Method::GET, &path, Some(&api.admin.clone()), None)
                    .await;
                assert_eq!(r.status, StatusCode::OK, "{b}: {r:?}");
                let page: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
                assert!(page.len() <= 7);
                seen.lock()
                    .unwrap()
                    .extend(page.iter().map(|a| a["name"].as_str().unwrap().to_owned()));
                match r.headers.get("skiff-continue") {
                    Some(t) => token = Some(t.to_str().unwrap().to_owned()),
                    None => break,
                }
            }
        };
        let churn = async {
            for i in 0..120 {
                let r = api
                    .call(
                        Method::DELETE,
                        &format!("/v1/apps/a{i:03}-t"),
                        Some(&api.admin.clone()),
                        None,
                    )
                    .await;
                assert!(r.status.is_success(), "{b}: {r:?}");
                let r = api
                    .admin_json(Method::PUT, &format!("/v1/apps/a{i:03}-u"), spec.clone())
                    .await;
                assert!(r.status.is_success(), "{b}: {r:?}");
            }
        };
        tokio::join!(walk, churn);
        let seen = seen.into_inner().unwrap();
        let unique: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "{b}: an app was listed twice: {seen:?}"
        );
        for app in &stable {
            assert!(unique.contains(app), "{b}: {app} was missed");
        }
        let sorted = {
            let mut s = seen.clone();
            s.sort();
            s
        };
        assert_eq!(seen, sorted, "{b}: pages come in name order");

        // A token that is not one is a 400 naming the field.
        let r = api
            .call(
                Method::GET,
                "/v1/apps?continue=bm9wZQ",
                Some(&api.admin.clone()),
                None,
            )
            .await;
        let body = r.expect_error(StatusCode::BAD_REQUEST, "invalid_continue");
        assert_eq!(body["error"]["field"], "continue", "{b}");
        let r = api
            .call(
                Method::GET,
                "/v1/nodes?continue=%25%25",
                Some(&api.admin.clone()),
                None,
            )
            .await;
        r.expect_error(StatusCode::BAD_REQUEST, "invalid_continue");
        drop(api);
        t.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignments_watch_answers_only_what_changed() {
    for t in stores().await {
        let b = t.backend;
        let api = TestApi::start(t.store.clone(), ApiConfig::default()).await;
        let credential = with_replicas(&api).await;
        let get = |path: String| {
            let (api, credential) = (&api, credential.clone());
            async move {
                let r = api.call(Method::GET, &path, Some(&credential), None).await;
                assert_eq!(r.status, StatusCode::OK, "{r:?}");
                serde_json::from_slice::<skiff_sdk::api::Assignments>(&r.body).unwrap()
            }
        };
        // Answers come from the informer's picture, a moment behind the
        // store: wait for the five replicas written directly.
        let mut held = poll(Duration::from_secs(5), "the five replicas", || async {
            let held = get("/v1/nodes/n1/assignments".into()).await;
            if held.replicas.len() == 5 {
                Ok(held)
            } else {
                Err(held.replicas.len())
            }
        })
        .await;
        assert!(!held.delta, "{b}: {held:?}");

        // Each change reaches the node as deltas (a version may lag its
        // content by one refresh, so a delta can be empty): follow them
        // until the change is held, and check that nothing else was sent.
        let follow = |mut held: skiff_sdk::api::Assignments,
                      done: fn(&skiff_sdk::api::Assignments) -> bool| {
            let get = &get;
            async move {
                let (mut sent, mut removed) = (BTreeSet::new(), BTreeSet::new());
                while !done(&held) {
                    let next = get(format!(
                        "/v1/nodes/n1/assignments?after={}&delta=true&timeout_ms=5000",
                        held.version
                    ))
                    .await;
                    assert!(next.delta, "{next:?}");
                    sent.extend(next.replicas.iter().map(|a| a.id.clone()));
                    removed.extend(next.removed.iter().cloned());
                    held.apply(next);
                }
                (held, sent, removed)
            }
        };
        api.store
            .assign_replica("web-5", "web", 1, "n1")
            .await
            .unwrap();
        let (next, sent, removed) =
            follow(held, |h| h.replicas.iter().any(|a| a.id == "web-5")).await;
        assert_eq!(
            sent,
            BTreeSet::from(["web-5".to_owned()]),
            "{b}: only the new replica"
        );
        assert!(removed.is_empty(), "{b}");
        held = next;

        api.store.remove_replica("web-0").await.unwrap();
        let (next, sent, removed) =
            follow(held, |h| h.replicas.iter().all(|a| a.id != "web-0")).await;
        assert!(sent.is_empty(), "{b}: {sent:?}");
        assert_eq!(removed, BTreeSet::from(["web-0".to_owned()]), "{b}");
        held = next;

        // A new replica count changes every replica's assignment.
        api.store.scale_app("web", 9, None).await.unwrap();
        let (next, sent, _) =
            follow(held, |h| h.replicas.iter().all(|a| a.spec.replicas == 9)).await;
        assert_eq!(sent.len(), 5, "{b}: {sent:?}");
        held = next;

        // What the deltas built is the whole set.
        let whole = get(format!(
            "/v1/nodes/n1/assignments?after={}",
            held.version - 1
        ))
        .await;
        assert_eq!(held.version, whole.version, "{b}");
        assert_eq!(held.replicas, whole.replicas, "{b}");
        // A version this controller did not answer gets the whole set.
        let again = get("/v1/nodes/n1/assignments?after=1&delta=true".into()).await;
        assert!(!again.delta && again.replicas == whole.replicas, "{b}");
        drop(api);
        t.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoints_watch_answers_only_what_changed() {
    use skiff_sdk::api::Endpoints;
    use skiff_sdk::delta::{ENDPOINTS_KIND_HEADER, EndpointsDelta};
    for t in stores().await {
        let b = t.backend;
        let api = TestApi::start(t.store.clone(), ApiConfig::default()).await;
        let credential = with_replicas(&api).await;
        let watch = |path: &'static str, seen: Option<String>| {
            let (api, credential) = (&api, credential.clone());
            async move {
                let headers: Vec<(&str, &str)> = seen
                    .as_deref()
                    .map(|s| ("if-none-match", s))
                    .into_iter()
                    .collect();
                let r = api
                    .call_with(Method::GET, path, Some(&credential), None, &headers)
                    .await;
                assert_eq!(r.status, StatusCode::OK, "{r:?}");
                let tag = r.headers["etag"].to_str().unwrap().to_owned();
                let kind = r.headers[ENDPOINTS_KIND_HEADER]
                    .to_str()
                    .unwrap()
                    .to_owned();
                (tag, kind, r.body)
            }
        };
        let (mut tag, mut held) = poll(Duration::from_secs(5), "web in the endpoints", || async {
            let (tag, kind, body) = watch("/v1/endpoints", None).await;
            assert_eq!(kind, "full");
            let doc: Endpoints = serde_json::from_slice(&body).unwrap();
            if doc.apps.contains_key("web") {
                Ok((tag, doc))
            } else {
                Err(doc)
            }
        })
        .await;

        // A new app that may sleep: the watch answers that change only.
        let art = held_artifact(&api).await;
        let r = api
            .admin_json(
                Method::PUT,
                "/v1/apps/api",
                serde_json::json!({ "artifact": art, "replicas": 0, "scale": { "min": 0 } }),
            )
            .await;
        assert!(r.status.is_success(), "{r:?}");
        let mut changes = EndpointsDelta::default();
        while !held.activatable.contains_key("api") {
            let (next, kind, body) = watch(
                "/v1/endpoints?delta=true&timeout_ms=5000",
                Some(tag.clone()),
            )
            .await;
            assert_eq!(kind, "delta", "{b}");
            let delta: EndpointsDelta = serde_json::from_slice(&body).unwrap();
            changes.then(delta.clone());
            held.apply(delta);
            tag = next;
        }
        assert_eq!(changes.apps.keys().collect::<Vec<_>>(), ["api"], "{b}");
        assert!(!changes.apps.contains_key("web"), "{b}: only what changed");

        // What the deltas built is the whole document.
        let (_, _, body) = watch("/v1/endpoints", None).await;
        let whole: Endpoints = serde_json::from_slice(&body).unwrap();
        assert_eq!(held, whole, "{b}");
        // A version this controller does not know gets the whole document.
        let (_, kind, _) = watch(
            "/v1/endpoints?delta=true&timeout_ms=1",
            Some("\"unknown\"".into()),
        )
        .await;
        assert_eq!(kind, "full", "{b}");
        drop(api);
        t.finish().await;
    }
}

/// The artifact app `web` runs.
async fn held_artifact(api: &TestApi) -> serde_json::Value {
    api.admin_get("/v1/apps/web").await.json()["spec"]["artifact"].clone()
}
