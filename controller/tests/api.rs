//! The HTTP API over real loopback HTTP, on every backend: the happy paths
//! and each bad input, asserting status and error code and that the store
//! is left unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use bytes::Bytes;
use common::{TestApi, component, stores};
use http::{Method, StatusCode};
use skiff_controller::api::ApiConfig;
use skiff_sdk::api::{App, Artifact, NodeRegistration};

const WASM: &str = "application/wasm";

async fn upload(api: &TestApi, bytes: Vec<u8>) -> Artifact {
    let admin = api.admin.clone();
    let r = api
        .call(
            Method::POST,
            "/v1/artifacts",
            Some(&admin),
            Some((WASM, Bytes::from(bytes))),
        )
        .await;
    assert!(r.status.is_success(), "{r:?}");
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_round_trip() {
    for t in stores().await {
        let api = TestApi::start(t.store.clone(), ApiConfig::default()).await;
        let b = t.backend;
        let art = upload(&api, component()).await;
        assert!(art.digest.to_string().starts_with("sha256:"), "{b}");
        // Idempotent upload: 200 the second time, same digest.
        let again = api
            .call(
                Method::POST,
                "/v1/artifacts",
                Some(&api.admin),
                Some((WASM, Bytes::from(component()))),
            )
            .await;
        assert_eq!(again.status, StatusCode::OK, "{b}");

        let spec =
            serde_json::json!({ "artifact": art.digest, "replicas": 2, "env": { "VERSION": "1" } });
        let created = api
            .admin_json(Method::PUT, "/v1/apps/hello", spec.clone())
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{b}: {:?}", created);
        assert_eq!(created.headers["etag"], "\"1\"", "{b}");
        let app: App = serde_json::from_slice(&created.body).unwrap();
        assert_eq!((app.revision, app.spec.replicas), (1, 2), "{b}");

        let same = api.admin_json(Method::PUT, "/v1/apps/hello", spec).await;
        assert_eq!(same.status, StatusCode::OK, "{b}");
        assert_eq!(same.json()["revision"], 1, "{b}");

        let listed = api.admin_get("/v1/apps").await;
        assert_eq!(listed.json().as_array().unwrap().len(), 1, "{b}");
        let shown = api.admin_get("/v1/apps/hello").await;
        assert_eq!(shown.json()["spec"]["env"]["VERSION"], "1", "{b}");

        let scaled = api
            .admin_json(
                Method::POST,
                "/v1/apps/hello/scale",
                serde_json::json!({"replicas": 4}),
            )
            .await;
        assert_eq!(scaled.json()["spec"]["replicas"], 4, "{b}");
        let v2 =
            serde_json::json!({ "artifact": art.digest, "replicas": 4, "env": { "VERSION": "2" } });
        assert_eq!(
            api.admin_json(Method::PUT, "/v1/apps/hello", v2)
                .await
                .json()["revision"],
            2,
            "{b}"
        );
        let back = api
            .admin_json(
                Method::POST,
                "/v1/apps/hello/rollback",
                serde_json::json!({}),
            )
            .await;
        assert_eq!(back.json()["spec"]["env"]["VERSION"], "1", "{b}");
        assert_eq!(back.json()["revision"], 3, "{b}");
        let revs = api.admin_get("/v1/apps/hello/revisions").await;
        assert_eq!(revs.json().as_array().unwrap().len(), 3, "{b}");

        let dl = api
            .admin_get(&format!("/v1/artifacts/{}", art.digest))
            .await;
        assert_eq!(dl.status, StatusCode::OK, "{b}");
        assert_eq!(dl.body.as_ref(), component().as_slice(), "{b}");
        let head = api
            .call(
                Method::HEAD,
                &format!("/v1/artifacts/{}", art.digest),
                Some(&api.admin),
                None,
            )
            .await;
        assert_eq!(
            head.headers["content-length"],
            component().len().to_string().as_str(),
            "{b}"
        );

        let events = api.admin_get("/v1/events?app=hello").await;
        assert!(events.json().as_array().unwrap().len() >= 4, "{b}");
        let doc = api.admin_get("/v1/openapi.json").await;
        assert!(
            doc.json()["paths"]["/v1/apps/{name}"]["put"].is_object(),
            "{b}"
        );
        assert_eq!(
            api.call(Method::GET, "/healthz", None, None).await.status,
            StatusCode::OK
        );
        assert_eq!(
            api.call(Method::GET, "/readyz", None, None).await.status,
            StatusCode::OK
        );
        let metrics = api.call(Method::GET, "/metrics", None, None).await;
        assert!(
            String::from_utf8_lossy(&metrics.body).contains("skiff_apps 1"),
            "{b}"
        );

        let deleted = api
            .call(Method::DELETE, "/v1/apps/hello", Some(&api.admin), None)
            .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{b}");
        api.admin_get("/v1/apps/hello")
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found");
        drop(api);
        t.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_error_and_changes_nothing() {
    for t in stores().await {
        let config = ApiConfig {
            max_artifact_bytes: 4096,
            ..ApiConfig::default()
        };
        let api = TestApi::start(t.store.clone(), config).await;
        let b = t.backend;
        let art = upload(&api, component()).await;
        let good = serde_json::json!({ "artifact": art.digest });
        api.admin_json(Method::PUT, "/v1/apps/web", good.clone())
            .await;
        let snapshot = api.admin_get("/v1/apps").await.body;
        let events_before = api
            .admin_get("/v1/events")
            .await
            .json()
            .as_array()
            .unwrap()
            .len();
        let admin = api.admin.clone();
        let json = |s: &str| Some(("application/json", Bytes::from(s.to_owned())));

        // Malformed JSON: 400.
        api.call(
            Method::PUT,
            "/v1/apps/web",
            Some(&admin),
            json("{\"artifact\": "),
        )
        .await
        .expect_error(StatusCode::BAD_REQUEST, "malformed_json");
        // Unknown field: 422 naming it.
        let bad = serde_json::json!({ "artifact": art.digest, "replica": 3 });
        let body = api
            .admin_json(Method::PUT, "/v1/apps/web", bad)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("replica"),
            "{b}: {body}"
        );
        // Wrong type deep inside: the field path is named.
        let bad = serde_json::json!({ "artifact": art.digest, "quota": { "fuel": "lots" } });
        let body = api
            .admin_json(Method::PUT, "/v1/apps/web", bad)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(body["error"]["field"], "quota.fuel", "{b}");
        // Invalid quota value.
        let bad = serde_json::json!({ "artifact": art.digest, "quota": { "concurrency": 0 } });
        let body = api
            .admin_json(Method::PUT, "/v1/apps/web", bad)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(body["error"]["field"], "quota.concurrency", "{b}");
        // Values beyond what a node can honour, a NUL in an environment
        // value, a missing field, a duplicate key and a body that is no
        // object: each 422 names its field.
        let cases = [
            (serde_json::json!({ "artifact": art.digest, "quota": { "memory_bytes": (4u64 << 30) + 1 } }).to_string(), "quota.memory_bytes"),
            (serde_json::json!({ "artifact": art.digest, "quota": { "fuel": u64::MAX } }).to_string(), "quota.fuel"),
            (serde_json::json!({ "artifact": art.digest, "quota": { "concurrency": 1u64 << 31 } }).to_string(), "quota.concurrency"),
            (serde_json::json!({ "artifact": art.digest, "env": { "A": "x\u{0}y" } }).to_string(), "env.A"),
            (serde_json::json!({ "replicas": 1 }).to_string(), "artifact"),
            (format!(r#"{{"artifact":"{}","replicas":1,"replicas":2}}"#, art.digest), "replicas"),
            ("[1, 2]".to_owned(), "."),
        ];
        for (bad, field) in cases {
            let body = api
                .call(
                    Method::PUT,
                    "/v1/apps/web",
                    Some(&admin),
                    Some(("application/json", Bytes::from(bad.clone()))),
                )
                .await
                .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
            assert_eq!(body["error"]["field"], field, "{b}: {bad}");
        }
        // Invalid name.
        let body = api
            .admin_json(Method::PUT, "/v1/apps/Bad_Name", good.clone())
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_name");
        assert_eq!(body["error"]["field"], "name", "{b}");
        // Unknown artifact.
        let missing = serde_json::json!({ "artifact": skiff_sdk::Digest::of(b"nothing") });
        api.admin_json(Method::PUT, "/v1/apps/other", missing)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "unknown_artifact");
        // Wrong content type.
        api.call(
            Method::PUT,
            "/v1/apps/web",
            Some(&admin),
            Some(("text/plain", Bytes::from(good.to_string()))),
        )
        .await
        .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
        // Oversized artifact, and bytes that are not a component.
        api.call(
            Method::POST,
            "/v1/artifacts",
            Some(&admin),
            Some((WASM, Bytes::from(vec![0u8; 5000]))),
        )
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        let body = api
            .call(
                Method::POST,
                "/v1/artifacts",
                Some(&admin),
                Some((WASM, Bytes::from_static(b"\0asm garbage"))),
            )
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_component");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not a valid Wasm component"),
            "{b}"
        );
        let core = wat::parse_str("(module)").unwrap();
        let body = api
            .call(
                Method::POST,
                "/v1/artifacts",
                Some(&admin),
                Some((WASM, Bytes::from(core))),
            )
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_component");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("core Wasm module"),
            "{b}"
        );
        // Missing and wrong tokens: 401.
        api.call(Method::GET, "/v1/apps", None, None)
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
        api.call(Method::GET, "/v1/apps", Some("nope"), None)
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
        // The join token may only register: 403 elsewhere.
        let join = api.join.clone();
        api.call(Method::GET, "/v1/apps", Some(&join), None)
            .await
            .expect_error(StatusCode::FORBIDDEN, "forbidden");
        // Stale version: 409.
        api.call_with(
            Method::PUT,
            "/v1/apps/web",
            Some(&admin),
            json(&good.to_string()),
            &[("if-match", "\"7\"")],
        )
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
        api.call_with(
            Method::DELETE,
            "/v1/apps/web",
            Some(&admin),
            None,
            &[("if-match", "7")],
        )
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
        // Unknown routes and query parameters.
        api.admin_get("/v1/nothing")
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found");
        api.admin_get("/v1/events?bogus=1")
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_query");

        assert_eq!(
            api.admin_get("/v1/apps").await.body,
            snapshot,
            "{b}: the store is unchanged"
        );
        let events_after = api
            .admin_get("/v1/events")
            .await
            .json()
            .as_array()
            .unwrap()
            .len();
        assert_eq!(events_after, events_before, "{b}: no event was recorded");
        drop(api);
        t.finish().await;
    }
}

fn registration(name: &str) -> serde_json::Value {
    serde_json::json!({ "name": name, "labels": {"zone": "a"}, "capacity": {"memory_bytes": 1 << 30}, "ingress": "127.0.0.1:9000" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_credentials_and_assignment_watch() {
    for t in stores().await {
        let api = TestApi::start(t.store.clone(), ApiConfig::default()).await;
        let b = t.backend;
        let join = api.join.clone();
        let json = |v: serde_json::Value| Some(("application/json", Bytes::from(v.to_string())));
        let reg = api
            .call(
                Method::POST,
                "/v1/nodes",
                Some(&join),
                json(registration("n1")),
            )
            .await;
        assert_eq!(reg.status, StatusCode::CREATED, "{b}: {reg:?}");
        let n1: NodeRegistration = serde_json::from_slice(&reg.body).unwrap();
        let reg2 = api
            .call(
                Method::POST,
                "/v1/nodes",
                Some(&join),
                json(registration("n2")),
            )
            .await;
        assert_eq!(reg2.status, StatusCode::CREATED, "{b}");

        // A node may heartbeat and watch for itself only.
        let hb = serde_json::json!({ "replicas": [] });
        assert_eq!(
            api.call(
                Method::PUT,
                "/v1/nodes/n1/heartbeat",
                Some(&n1.credential),
                json(hb.clone())
            )
            .await
            .status,
            StatusCode::NO_CONTENT,
            "{b}"
        );
        api.call(
            Method::PUT,
            "/v1/nodes/n2/heartbeat",
            Some(&n1.credential),
            json(hb.clone()),
        )
        .await
        .expect_error(StatusCode::FORBIDDEN, "forbidden");
        api.call(
            Method::GET,
            "/v1/nodes/n2/assignments",
            Some(&n1.credential),
            None,
        )
        .await
        .expect_error(StatusCode::FORBIDDEN, "forbidden");
        api.call(Method::GET, "/v1/apps", Some(&n1.credential), None)
            .await
            .expect_error(StatusCode::FORBIDDEN, "forbidden");
        api.call(
            Method::POST,
            "/v1/nodes",
            Some(&n1.credential),
            json(registration("n3")),
        )
        .await
        .expect_error(StatusCode::FORBIDDEN, "forbidden");
        api.call(Method::POST, "/v1/nodes", Some(&join), json(serde_json::json!({"name": "n9", "capacity": {"memory_bytes": 1}, "ingress": "nope"}))).await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");

        // A body is judged only once the caller may send it: 403 before
        // any 415 or 422. And the admin token is no node credential.
        let bad_bodies = [
            ("application/json", "{\"artifact\": 7}"),
            ("application/json", "{"),
            ("text/plain", "hello"),
        ];
        type Call<'a> = (Method, &'a str, &'a str, Option<(&'a str, Bytes)>);
        let mut forbidden: Vec<Call> = Vec::new();
        for (content_type, body) in bad_bodies {
            let body = Some((content_type, Bytes::from(body)));
            forbidden.push((Method::PUT, "/v1/apps/x", &n1.credential, body.clone()));
            forbidden.push((Method::POST, "/v1/nodes", &n1.credential, body.clone()));
            forbidden.push((Method::PUT, "/v1/nodes/n2/heartbeat", &n1.credential, body));
        }
        forbidden.push((
            Method::PUT,
            "/v1/nodes/n1/heartbeat",
            &api.admin,
            json(hb.clone()),
        ));
        forbidden.push((Method::GET, "/v1/nodes/n1/assignments", &api.admin, None));
        for (method, path, token, body) in forbidden {
            api.call(method, path, Some(token), body)
                .await
                .expect_error(StatusCode::FORBIDDEN, "forbidden");
        }

        // The join token does not take over a live node's name...
        let taken = api
            .call(
                Method::POST,
                "/v1/nodes",
                Some(&join),
                json(registration("n1")),
            )
            .await;
        let error = taken.expect_error(StatusCode::CONFLICT, "taken");
        assert_eq!(error["error"]["field"], "name", "{b}: {error}");
        // ...but the node itself, with its current credential, re-registers:
        // it keeps its identity and gets a new credential.
        let mut proven = registration("n1");
        proven["credential"] = n1.credential.clone().into();
        let again = api
            .call(Method::POST, "/v1/nodes", Some(&join), json(proven))
            .await;
        assert_eq!(again.status, StatusCode::OK, "{b}");
        let n1b: NodeRegistration = serde_json::from_slice(&again.body).unwrap();
        assert_eq!(n1b.node.registered_at, n1.node.registered_at, "{b}");
        api.call(
            Method::PUT,
            "/v1/nodes/n1/heartbeat",
            Some(&n1.credential),
            json(hb),
        )
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");

        // Long-poll: waits past `after` until the node's replicas change.
        let first = api
            .call(
                Method::GET,
                "/v1/nodes/n1/assignments",
                Some(&n1b.credential),
                None,
            )
            .await
            .json();
        let version = first["version"].as_u64().unwrap();
        let art = upload(&api, component()).await;
        api.admin_json(
            Method::PUT,
            "/v1/apps/web",
            serde_json::json!({ "artifact": art.digest }),
        )
        .await;
        let path = format!("/v1/nodes/n1/assignments?after={version}&timeout_ms=20000");
        let cred = n1b.credential.clone();
        // The watch is in flight while the replica is assigned (the store
        // announces the write itself); either way it must answer with the
        // new version well before its timeout.
        let (watcher, ()) = tokio::join!(api.call(Method::GET, &path, Some(&cred), None), async {
            api.store
                .assign_replica("web-0", "web", 1, "n1")
                .await
                .unwrap();
        });
        let body = watcher.json();
        assert!(body["version"].as_u64().unwrap() > version, "{b}: {body}");
        assert_eq!(body["replicas"][0]["id"], "web-0", "{b}");
        // Nothing changed: answers at the timeout with the same version.
        let v = body["version"].as_u64().unwrap();
        let idle = api
            .call(
                Method::GET,
                &format!("/v1/nodes/n1/assignments?after={v}&timeout_ms=50"),
                Some(&cred),
                None,
            )
            .await
            .json();
        assert_eq!(idle["version"].as_u64(), Some(v), "{b}");

        let drained = api
            .admin_json(Method::POST, "/v1/nodes/n2/drain", serde_json::json!({}))
            .await;
        assert_eq!(
            (
                drained.json()["cordoned"].as_bool(),
                drained.json()["draining"].as_bool()
            ),
            (Some(true), Some(true)),
            "{b}"
        );
        let nodes = api.admin_get("/v1/nodes").await.json();
        assert_eq!(nodes.as_array().unwrap().len(), 2, "{b}");
        drop(api);
        t.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_removed_only_when_unreferenced_and_the_store_is_bounded() {
    let first = component();
    let options = skiff_controller::store::StoreOptions {
        artifact_store_bytes: first.len() as u64,
        ..Default::default()
    };
    for t in common::stores_with(options).await {
        let b = t.backend;
        let api = TestApi::start(t.store.clone(), ApiConfig::default()).await;
        let admin = api.admin.clone();
        let art = upload(&api, first.clone()).await;
        // Full: another component does not fit; the same bytes again do.
        let other = wat::parse_str("(component (core module))").unwrap();
        api.call(
            Method::POST,
            "/v1/artifacts",
            Some(&admin),
            Some((WASM, Bytes::from(other))),
        )
        .await
        .expect_error(StatusCode::INSUFFICIENT_STORAGE, "store_full");
        upload(&api, first.clone()).await;

        let path = format!("/v1/artifacts/{}", art.digest);
        api.admin_json(
            Method::PUT,
            "/v1/apps/web",
            serde_json::json!({ "artifact": art.digest }),
        )
        .await;
        api.call(Method::DELETE, &path, Some(&admin), None)
            .await
            .expect_error(StatusCode::CONFLICT, "conflict");
        let node = api
            .call(Method::POST, "/v1/nodes", Some(&api.join), Some(("application/json", Bytes::from(
                serde_json::json!({ "name": "n1", "capacity": { "memory_bytes": 1 << 30 }, "ingress": "127.0.0.1:9" }).to_string(),
            ))))
            .await;
        let node: NodeRegistration = serde_json::from_slice(&node.body).unwrap();
        api.call(Method::DELETE, &path, Some(&node.credential), None)
            .await
            .expect_error(StatusCode::FORBIDDEN, "forbidden");

        let deleted = api
            .call(Method::DELETE, "/v1/apps/web", Some(&admin), None)
            .await;
        assert!(deleted.status.is_success(), "{b}: {deleted:?}");
        let removed = api.call(Method::DELETE, &path, Some(&admin), None).await;
        assert_eq!(removed.status, StatusCode::NO_CONTENT, "{b}: {removed:?}");
        api.call(Method::DELETE, &path, Some(&admin), None)
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found");
        api.call(Method::GET, &path, Some(&admin), None)
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found");
        t.finish().await;
    }
}
