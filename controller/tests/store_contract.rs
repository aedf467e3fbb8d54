//! The store contract, run against every backend (SQLite always, PostgreSQL
//! when `SKIFF_TEST_POSTGRES_URL` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{stores, stores_with};
use skiff_controller::store::{
    KEEP_REVISIONS, NewEvent, ReplicaChange, Store, StoreError, StoreOptions, TokenKind,
};
use skiff_sdk::Digest;
use skiff_sdk::api::{
    AppSpec, EventKind, Heartbeat, NodeCapacity, NodeState, RegisterNode, ReplicaState,
    ReplicaStatus,
};

/// Stores `bytes` as an artifact (a spec may name only stored ones).
async fn stored<S: Store + ?Sized>(s: &S, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    s.put_artifact(&digest, bytes).await.unwrap();
    digest
}

fn spec(artifact: Digest, replicas: u32) -> AppSpec {
    serde_json::from_value(serde_json::json!({ "artifact": artifact, "replicas": replicas }))
        .unwrap()
}

/// The node grace the store is asked to honour in these tests.
const GRACE: i64 = 60_000;

fn node(name: &str, zone: &str) -> RegisterNode {
    RegisterNode {
        name: name.into(),
        labels: BTreeMap::from([("zone".to_owned(), zone.to_owned())]),
        capacity: NodeCapacity {
            memory_bytes: 4 << 30,
        },
        ingress: "127.0.0.1:8080".into(),
        logs_key: None,
        credential: None,
    }
}

#[tokio::test]
async fn apps_revisions_versions_and_rollback() {
    for t in stores().await {
        let s = &t.store;
        let b = t.backend;
        let d = stored(s, b"a").await;
        let first = s.apply_app("web", &spec(d, 2), None).await.unwrap();
        assert!(first.created && first.new_revision, "{b}");
        assert_eq!(
            (
                first.app.revision,
                first.app.version,
                first.app.spec.replicas
            ),
            (1, 1, 2),
            "{b}"
        );

        // The same spec again changes nothing.
        let same = s.apply_app("web", &spec(d, 2), None).await.unwrap();
        assert!(!same.created && !same.new_revision, "{b}");
        assert_eq!(same.app.version, 1, "{b}");

        // Replicas alone: no new revision, but a new version.
        let scaled = s.apply_app("web", &spec(d, 3), Some(1)).await.unwrap();
        assert_eq!((scaled.app.revision, scaled.app.version), (1, 2), "{b}");

        // A changed spec: revision 2.
        let mut changed = spec(d, 3);
        changed.env.insert("VERSION".into(), "2".into());
        let v2 = s.apply_app("web", &changed, Some(2)).await.unwrap();
        assert!(v2.new_revision, "{b}");
        assert_eq!(v2.app.revision, 2, "{b}");

        // Stale or impossible preconditions conflict and change nothing.
        assert!(
            matches!(
                s.apply_app("web", &spec(d, 9), Some(1)).await,
                Err(StoreError::Conflict(_))
            ),
            "{b}"
        );
        assert!(
            matches!(
                s.apply_app("web", &spec(d, 9), Some(0)).await,
                Err(StoreError::Conflict(_))
            ),
            "{b}"
        );
        assert!(
            matches!(
                s.apply_app("new", &spec(d, 1), Some(4)).await,
                Err(StoreError::Conflict(_))
            ),
            "{b}"
        );
        assert_eq!(s.app("web").await.unwrap().unwrap(), v2.app, "{b}");
        assert!(s.app("new").await.unwrap().is_none(), "{b}");

        // Rollback to the previous revision: a new revision with the old
        // spec and the current replica count.
        let back = s.rollback_app("web", None, None, None).await.unwrap();
        assert_eq!(back.revision, 3, "{b}");
        assert!(back.spec.env.is_empty(), "{b}");
        assert_eq!(back.spec.replicas, 3, "{b}");
        let revs = s.revisions("web").await.unwrap();
        assert_eq!(
            revs.iter().map(|r| r.number).collect::<Vec<_>>(),
            [1, 2, 3],
            "{b}"
        );
        assert!(
            matches!(
                s.rollback_app("web", Some(99), None, None).await,
                Err(StoreError::NotFound { .. })
            ),
            "{b}"
        );

        let scaled = s.scale_app("web", 5, Some(back.version)).await.unwrap();
        assert_eq!((scaled.spec.replicas, scaled.revision), (5, 3), "{b}");
        assert!(
            matches!(
                s.scale_app("web", 6, Some(back.version)).await,
                Err(StoreError::Conflict(_))
            ),
            "{b}"
        );

        assert_eq!(s.apps().await.unwrap().len(), 1, "{b}");
        assert!(
            matches!(
                s.delete_app("web", Some(1)).await,
                Err(StoreError::Conflict(_))
            ),
            "{b}"
        );
        s.delete_app("web", None).await.unwrap();
        assert!(s.app("web").await.unwrap().is_none(), "{b}");
        assert!(
            matches!(
                s.delete_app("web", None).await,
                Err(StoreError::NotFound { .. })
            ),
            "{b}"
        );
        assert!(
            matches!(s.revisions("web").await, Err(StoreError::NotFound { .. })),
            "{b}"
        );

        let kinds: Vec<_> = s
            .events(Some("web"), 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds.first(), Some(&EventKind::AppCreated), "{b}");
        assert_eq!(kinds.last(), Some(&EventKind::AppDeleted), "{b}");
        t.finish().await;
    }
}

#[tokio::test]
async fn growth_is_bounded() {
    let options = StoreOptions {
        event_cap: 50,
        ..StoreOptions::default()
    };
    for t in stores_with(options).await {
        let s = &t.store;
        let b = t.backend;
        let d = stored(s, b"a").await;
        for i in 0..(KEEP_REVISIONS + 10) {
            let mut sp = spec(d, 1);
            sp.env.insert("I".into(), i.to_string());
            s.apply_app("web", &sp, None).await.unwrap();
        }
        let revs = s.revisions("web").await.unwrap();
        assert_eq!(
            revs.len() as u64,
            KEEP_REVISIONS + 1,
            "{b}: the last {KEEP_REVISIONS} plus the current one"
        );
        assert_eq!(revs.last().unwrap().number, KEEP_REVISIONS + 10, "{b}");

        for i in 0..200 {
            let event = NewEvent {
                app: None,
                node: None,
                kind: EventKind::AppScaled,
                message: format!("{i}"),
            };
            s.record_event(event).await.unwrap();
        }
        let events = s.events(None, 0, 1000).await.unwrap();
        assert!(events.len() <= 50, "{b}: {} events kept", events.len());
        assert_eq!(
            events.last().unwrap().message,
            "199",
            "{b}: the newest are kept"
        );

        // Heartbeats renew in place: no event, no new row.
        s.register_node(&node("n1", "a"), "hash-n1", None, GRACE)
            .await
            .unwrap();
        let before = s.events(None, 0, 1000).await.unwrap().len();
        for _ in 0..300 {
            s.heartbeat("n1", &Heartbeat::default()).await.unwrap();
        }
        assert_eq!(s.events(None, 0, 1000).await.unwrap().len(), before, "{b}");
        t.finish().await;
    }
}

#[tokio::test]
async fn nodes_heartbeats_and_assignments() {
    for t in stores().await {
        let s = &t.store;
        let b = t.backend;
        let (n1, created) = s
            .register_node(&node("n1", "a"), "hash-1", None, GRACE)
            .await
            .unwrap();
        assert!(created, "{b}");
        assert_eq!((n1.version, n1.state), (1, NodeState::Ready), "{b}");
        assert_eq!(
            s.node_for_credential("hash-1").await.unwrap().as_deref(),
            Some("n1"),
            "{b}"
        );
        // A live node's name is not taken without its current credential.
        for claim in [None, Some("hash-other")] {
            assert!(
                matches!(
                    s.register_node(&node("n1", "b"), "hash-x", claim, GRACE)
                        .await,
                    Err(StoreError::NameTaken(_))
                ),
                "{b}"
            );
        }
        assert_eq!(
            s.node("n1").await.unwrap().unwrap().labels["zone"],
            "a",
            "{b}"
        );
        // Re-registering with it keeps the identity and replaces the credential.
        let (again, created) = s
            .register_node(&node("n1", "b"), "hash-2", Some("hash-1"), GRACE)
            .await
            .unwrap();
        assert!(!created, "{b}: a re-registration is not new");
        assert_eq!(again.registered_at, n1.registered_at, "{b}");
        assert_eq!(again.labels["zone"], "b", "{b}");
        assert!(
            s.node_for_credential("hash-1").await.unwrap().is_none(),
            "{b}"
        );
        // A node silent for longer than the grace can be replaced.
        let (taken, created) = s
            .register_node(&node("n1", "b"), "hash-3", None, -1)
            .await
            .unwrap();
        assert!(!created, "{b}");
        assert_eq!(taken.registered_at, n1.registered_at, "{b}");
        let (_, _) = s
            .register_node(&node("n1", "b"), "hash-2", Some("hash-3"), GRACE)
            .await
            .unwrap();
        // Credentials are unique.
        assert!(
            matches!(
                s.register_node(&node("n2", "a"), "hash-2", None, GRACE)
                    .await,
                Err(StoreError::Conflict(_))
            ),
            "{b}"
        );

        let d = stored(s, b"a").await;
        s.apply_app("web", &spec(d, 2), None).await.unwrap();
        let empty = s.assignments("n1").await.unwrap();
        assert!(empty.replicas.is_empty(), "{b}");
        s.assign_replica("web-1", "web", 1, "n1").await.unwrap();
        s.assign_replica("web-2", "web", 1, "n1").await.unwrap();
        assert!(
            matches!(
                s.assign_replica("web-1", "web", 1, "n1").await,
                Err(StoreError::Conflict(_))
            ),
            "{b}"
        );
        assert!(
            matches!(
                s.assign_replica("x", "web", 1, "ghost").await,
                Err(StoreError::NotFound { .. })
            ),
            "{b}"
        );
        let a = s.assignments("n1").await.unwrap();
        assert!(a.version > empty.version, "{b}");
        assert_eq!(a.replicas.len(), 2, "{b}");
        assert_eq!(a.replicas[0].spec.artifact, d, "{b}");

        let hb = Heartbeat {
            replicas: vec![
                ReplicaStatus {
                    id: "web-1".into(),
                    state: ReplicaState::Ready,
                    reason: None,
                },
                ReplicaStatus {
                    id: "web-2".into(),
                    state: ReplicaState::Failed,
                    reason: Some("trap".into()),
                },
            ],
            ..Heartbeat::default()
        };
        s.heartbeat("n1", &hb).await.unwrap();
        assert_eq!(
            s.app("web").await.unwrap().unwrap().status.ready_replicas,
            1,
            "{b}"
        );
        let reps = s.replicas(Some("web")).await.unwrap();
        assert_eq!(reps[1].state, ReplicaState::Failed, "{b}");
        assert_eq!(reps[1].reason.as_deref(), Some("trap"), "{b}");
        assert!(
            matches!(
                s.heartbeat("ghost", &hb).await,
                Err(StoreError::NotFound { .. })
            ),
            "{b}"
        );

        s.remove_replica("web-2").await.unwrap();
        assert!(
            s.assignments("n1").await.unwrap().version > a.version,
            "{b}"
        );

        let current = s.node("n1").await.unwrap().unwrap().version;
        let cordoned = s
            .set_node_flags("n1", Some(true), None, Some(current))
            .await
            .unwrap();
        assert!(cordoned.cordoned && !cordoned.draining, "{b}");
        assert!(
            matches!(
                s.set_node_flags("n1", None, Some(true), Some(1)).await,
                Err(StoreError::Conflict(_))
            ),
            "{b}"
        );
        s.delete_node("n1", None).await.unwrap();
        assert!(s.node("n1").await.unwrap().is_none(), "{b}");
        assert!(s.replicas(Some("web")).await.unwrap().is_empty(), "{b}");
        t.finish().await;
    }
}

/// A retiring replica keeps the moment it started retiring (a millisecond
/// timestamp: more than 32 bits) and an app its last good revision, on
/// every backend and through every read path.
#[tokio::test]
async fn retiring_replicas_and_good_revisions_round_trip() {
    for t in stores().await {
        let s = &t.store;
        let b = t.backend;
        s.register_node(&node("n1", "a"), "h", None, GRACE)
            .await
            .unwrap();
        s.apply_app("web", &spec(stored(s, b"a").await, 2), None)
            .await
            .unwrap();
        s.assign_replica("web-1", "web", 1, "n1").await.unwrap();
        s.assign_replica("web-2", "web", 1, "n1").await.unwrap();
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        s.change_replicas(&ReplicaChange {
            retire: vec!["web-2".into()],
            ..ReplicaChange::default()
        })
        .await
        .unwrap();
        let reps = s.replicas(Some("web")).await.unwrap();
        assert_eq!(reps[0].retiring_since, None, "{b}");
        let since = reps[1].retiring_since.expect("web-2 is retiring");
        assert!(since >= before - 1_000, "{b}: retiring since {since}");

        s.set_good_revision("web", 1).await.unwrap();
        let app = s.app("web").await.unwrap().unwrap();
        assert_eq!(app.status.good_revision, Some(1), "{b}");
        let listed = s.apps().await.unwrap();
        assert_eq!(listed[0].status.good_revision, Some(1), "{b}");
        t.finish().await;
    }
}

#[tokio::test]
async fn a_node_without_heartbeats_becomes_not_ready() {
    let options = StoreOptions {
        node_grace: Duration::from_millis(50),
        ..StoreOptions::default()
    };
    for t in stores_with(options).await {
        t.store
            .register_node(&node("n1", "a"), "h", None, GRACE)
            .await
            .unwrap();
        common::poll(Duration::from_secs(10), "the node NotReady", || async {
            match t.store.node("n1").await.unwrap().unwrap().state {
                NodeState::Ready => Err(t.backend),
                _ => Ok(()),
            }
        })
        .await;
        t.store
            .heartbeat("n1", &Heartbeat::default())
            .await
            .unwrap();
        assert_eq!(
            t.store.node("n1").await.unwrap().unwrap().state,
            NodeState::Ready,
            "{}",
            t.backend
        );
        t.finish().await;
    }
}

#[tokio::test]
async fn artifacts_and_tokens() {
    for t in stores().await {
        let s = &t.store;
        let b = t.backend;
        let bytes: Vec<u8> = (0..(5 << 19)).map(|i| (i % 251) as u8).collect(); // 2.5 MiB
        let d = Digest::of(&bytes);
        assert!(s.put_artifact(&d, &bytes).await.unwrap(), "{b}");
        assert!(
            !s.put_artifact(&d, &bytes).await.unwrap(),
            "{b}: idempotent"
        );
        let info = s.artifact(&d).await.unwrap().unwrap();
        assert_eq!((info.size, info.chunks), (bytes.len() as u64, 3), "{b}");
        let mut back = Vec::new();
        for seq in 0..info.chunks {
            back.extend(s.artifact_chunk(&d, seq).await.unwrap().unwrap());
        }
        assert_eq!(back, bytes, "{b}");
        assert!(
            s.artifact(&Digest::of(b"none")).await.unwrap().is_none(),
            "{b}"
        );

        assert!(
            s.install_tokens("admin-hash", "join-hash").await.unwrap(),
            "{b}"
        );
        assert!(
            !s.install_tokens("other", "other").await.unwrap(),
            "{b}: only the first start installs"
        );
        assert_eq!(
            s.token_hash(TokenKind::Admin).await.unwrap().as_deref(),
            Some("admin-hash"),
            "{b}"
        );
        assert_eq!(
            s.token_hash(TokenKind::Join).await.unwrap().as_deref(),
            Some("join-hash"),
            "{b}"
        );
        t.finish().await;
    }
}

#[tokio::test]
async fn leader_lease_expiry_and_takeover() {
    for t in stores().await {
        let s = &t.store;
        let b = t.backend;
        assert!(
            s.try_acquire_lease("leader", "a", 60_000).await.unwrap(),
            "{b}"
        );
        assert!(
            !s.try_acquire_lease("leader", "b", 60_000).await.unwrap(),
            "{b}: held by a"
        );
        assert!(
            s.try_acquire_lease("leader", "a", 60_000).await.unwrap(),
            "{b}: a renews"
        );
        assert_eq!(
            s.lease_holder("leader").await.unwrap().as_deref(),
            Some("a"),
            "{b}"
        );

        // Released: b takes it at once.
        s.release_lease("leader", "a").await.unwrap();
        assert!(s.try_acquire_lease("leader", "b", 1).await.unwrap(), "{b}");
        // b stops renewing (1 ms lease): a takes over once it has expired.
        common::poll(
            Duration::from_secs(10),
            "a to take over the expired lease",
            || async {
                match s.try_acquire_lease("leader", "a", 60_000).await.unwrap() {
                    true => Ok(()),
                    false => Err(b),
                }
            },
        )
        .await;
        assert_eq!(
            s.lease_holder("leader").await.unwrap().as_deref(),
            Some("a"),
            "{b}"
        );
        assert!(
            !s.try_acquire_lease("leader", "b", 60_000).await.unwrap(),
            "{b}"
        );
        t.finish().await;
    }
}

/// The app list (cached on SQLite) must match fresh single reads after every
/// kind of write that can change it.
#[tokio::test]
async fn the_app_list_reflects_every_write() {
    for t in stores().await {
        let s = &t.store;
        let b = t.backend;
        let check = |step: &'static str| async move {
            let listed = s.apps().await.unwrap();
            for app in &listed {
                assert_eq!(
                    Some(app),
                    s.app(&app.name).await.unwrap().as_ref(),
                    "{b}: after {step}"
                );
            }
            listed
        };
        assert!(check("nothing").await.is_empty());
        let d = stored(s, b"a").await;
        s.apply_app("web", &spec(d, 1), None).await.unwrap();
        assert_eq!(check("apply").await.len(), 1);
        s.scale_app("web", 3, None).await.unwrap();
        assert_eq!(check("scale").await[0].spec.replicas, 3);
        let mut v2 = spec(d, 3);
        v2.env.insert("V".into(), "2".into());
        s.apply_app("web", &v2, None).await.unwrap();
        s.rollback_app("web", None, None, None).await.unwrap();
        assert_eq!(check("rollback").await[0].revision, 3);
        s.register_node(&node("n1", "a"), "h1", None, GRACE)
            .await
            .unwrap();
        s.assign_replica("r1", "web", 3, "n1").await.unwrap();
        assert_eq!(check("assign").await[0].status.ready_replicas, 0);
        let ready = Heartbeat {
            replicas: vec![ReplicaStatus {
                id: "r1".into(),
                state: ReplicaState::Ready,
                reason: None,
            }],
            ..Heartbeat::default()
        };
        s.heartbeat("n1", &ready).await.unwrap();
        assert_eq!(check("heartbeat").await[0].status.ready_replicas, 1);
        let cond = skiff_sdk::api::Condition {
            kind: "Available".into(),
            status: true,
            reason: "Ok".into(),
            message: "".into(),
        };
        s.set_app_conditions("web", &[cond]).await.unwrap();
        assert_eq!(check("conditions").await[0].status.conditions.len(), 1);
        s.remove_replica("r1").await.unwrap();
        assert_eq!(check("remove replica").await[0].status.ready_replicas, 0);
        s.assign_replica("r2", "web", 3, "n1").await.unwrap();
        check("assign 2").await;
        let ready = Heartbeat {
            replicas: vec![ReplicaStatus {
                id: "r2".into(),
                state: ReplicaState::Ready,
                reason: None,
            }],
            ..Heartbeat::default()
        };
        s.heartbeat("n1", &ready).await.unwrap();
        assert_eq!(check("heartbeat 2").await[0].status.ready_replicas, 1);
        s.delete_node("n1", None).await.unwrap();
        assert_eq!(check("delete node").await[0].status.ready_replicas, 0);
        s.delete_app("web", None).await.unwrap();
        assert!(check("delete app").await.is_empty(), "{b}");
        t.finish().await;
    }
}

#[tokio::test]
async fn artifacts_are_bounded_and_collected_once_unreferenced() {
    let options = StoreOptions {
        artifact_store_bytes: 300,
        ..StoreOptions::default()
    };
    for t in stores_with(options).await {
        let s = &t.store;
        let b = t.backend;
        let a = stored(s, &[1; 100]).await;
        let spare = stored(s, &[2; 100]).await;
        let c = stored(s, &[3; 100]).await;
        // Full: 300 of 300 bytes; one more byte is refused, nothing stored.
        let d = Digest::of(&[4]);
        assert!(
            matches!(
                s.put_artifact(&d, &[4]).await,
                Err(StoreError::Full {
                    used: 300,
                    size: 1,
                    limit: 300
                })
            ),
            "{b}"
        );
        assert!(s.artifact(&d).await.unwrap().is_none(), "{b}");
        // The same bytes again are not new and take no room.
        assert!(!s.put_artifact(&a, &[1; 100]).await.unwrap(), "{b}");

        s.apply_app("web", &spec(a, 1), None).await.unwrap();
        assert!(
            matches!(s.delete_artifact(&a).await, Err(StoreError::Conflict(_))),
            "{b}: a referenced artifact stays"
        );
        assert!(s.delete_artifact(&c).await.unwrap(), "{b}");
        assert!(!s.delete_artifact(&c).await.unwrap(), "{b}: already gone");
        assert!(s.artifact_chunk(&c, 0).await.unwrap().is_none(), "{b}");

        // Unreferenced artifacts go only once their retention has passed.
        let hour = 3_600_000;
        assert!(s.collect_artifacts(hour).await.unwrap().is_empty(), "{b}");
        assert!(s.collect_artifacts(hour).await.unwrap().is_empty(), "{b}");
        assert_eq!(s.collect_artifacts(0).await.unwrap(), vec![spare], "{b}");
        assert!(s.artifact(&spare).await.unwrap().is_none(), "{b}");
        assert!(s.artifact_chunk(&spare, 0).await.unwrap().is_none(), "{b}");
        assert!(s.artifact(&a).await.unwrap().is_some(), "{b}");

        // Applying an artifact claims it: its mark is cleared.
        let e = stored(s, &[5; 10]).await;
        assert!(s.collect_artifacts(hour).await.unwrap().is_empty(), "{b}");
        let mut v2 = spec(e, 1);
        v2.env.insert("V".into(), "2".into());
        s.apply_app("web", &v2, None).await.unwrap();
        assert!(s.collect_artifacts(0).await.unwrap().is_empty(), "{b}");
        assert!(s.artifact(&e).await.unwrap().is_some(), "{b}");

        // Once the app is gone, so are its artifacts (after the retention),
        // and a spec naming a removed artifact is refused whole.
        s.delete_app("web", None).await.unwrap();
        assert!(
            s.collect_artifacts(0).await.unwrap().is_empty(),
            "{b}: marked first"
        );
        let mut removed = s.collect_artifacts(0).await.unwrap();
        removed.sort();
        let mut expected = vec![a, e];
        expected.sort();
        assert_eq!(removed, expected, "{b}");
        assert!(
            matches!(
                s.apply_app("web", &spec(a, 1), None).await,
                Err(StoreError::NotFound {
                    kind: "artifact",
                    ..
                })
            ),
            "{b}"
        );
        assert!(s.app("web").await.unwrap().is_none(), "{b}");
        t.finish().await;
    }
}

#[tokio::test]
async fn secrets_at_rest_are_hashes_and_the_sqlite_file_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    for t in stores().await {
        let s = &t.store;
        let b = t.backend;
        let mut with_key = node("n1", "a");
        with_key.logs_key = Some("the-node-api-key".into());
        s.register_node(&with_key, "h1", None, GRACE).await.unwrap();
        let source = s.node_source("n1").await.unwrap().unwrap();
        assert!(source.offers_api, "{b}");
        assert_eq!(
            source.logs_key_hash.as_deref(),
            Some(skiff_controller::auth::hash_secret("the-node-api-key").as_str()),
            "{b}: only the key's hash is stored"
        );
        s.register_node(&node("n2", "a"), "h2", None, GRACE)
            .await
            .unwrap();
        let without = s.node_source("n2").await.unwrap().unwrap();
        assert!(
            !without.offers_api && without.logs_key_hash.is_none(),
            "{b}"
        );
        if let Some(file) = t.sqlite_file() {
            for suffix in ["", "-wal", "-shm"] {
                let path = format!("{}{suffix}", file.display());
                if let Ok(meta) = std::fs::metadata(&path) {
                    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{path}");
                }
            }
        }
        t.finish().await;
    }
}
