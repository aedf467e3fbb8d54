//! A real cluster on loopback: `skiff controller` and three labelled
//! `skiff node` processes. Replicas spread, scale, survive a `kill -9`,
//! are reachable through every node, and keep serving without the
//! controller; an app that fits nowhere says why.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::Cluster;
use http::StatusCode;
use skiff_sdk::api::AppSpec;

const NODES: [(&str, &str); 3] = [
    ("n1", "zone=a,disk=ssd"),
    ("n2", "zone=b,disk=ssd"),
    ("n3", "zone=c,disk=hdd"),
];
/// Generous limits for slow CI machines; the benchmarks measure speed.
const CONVERGE: Duration = Duration::from_secs(30);

fn nodes_of(replicas: &[skiff_sdk::api::Replica]) -> Vec<String> {
    let mut nodes: Vec<String> = replicas.iter().map(|r| r.node.clone()).collect();
    nodes.sort();
    nodes
}

/// Every live node answers for `app` with 200, served by a node that has a
/// replica; returns which node served each.
async fn reachable_through_every_node(cluster: &Cluster, app: &str) -> Vec<String> {
    let mut served = Vec::new();
    for node in cluster.live_nodes() {
        let reply = cluster.get(&node, app, "/").await;
        assert_eq!(reply.status, StatusCode::OK, "via {node}: {}", reply.text());
        assert!(
            reply.text().starts_with("Hello from Skiff"),
            "{}",
            reply.text()
        );
        served.push(reply.headers["x-skiff-node"].to_str().unwrap().to_owned());
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_spread_scale_and_come_back_after_a_node_is_killed() {
    let mut cluster = Cluster::start(&NODES).await;
    cluster.deploy("hello", "hello", 3).await;
    let replicas = cluster.wait_ready("hello", 3, CONVERGE).await;
    assert_eq!(nodes_of(&replicas), ["n1", "n2", "n3"], "one per node");
    // Each node serves it itself.
    let served = reachable_through_every_node(&cluster, "hello").await;
    assert_eq!(served, ["n1", "n2", "n3"]);

    // Scale to 5 and back to 1.
    cluster.admin.scale("hello", 5).await.unwrap();
    let replicas = cluster.wait_ready("hello", 5, CONVERGE).await;
    let per_node: BTreeSet<String> = nodes_of(&replicas).into_iter().collect();
    assert_eq!(per_node.len(), 3, "5 replicas spread over 3 nodes");
    cluster.admin.scale("hello", 1).await.unwrap();
    let replicas = cluster.wait_ready("hello", 1, CONVERGE).await;
    let home = replicas[0].node.clone();
    // Nodes without a replica forward to the one that has it.
    cluster
        .wait("nodes to forward to the last replica", CONVERGE, |c| {
            let home = home.clone();
            async move {
                for node in c.live_nodes() {
                    let reply = c.get(&node, "hello", "/").await;
                    if reply.status != StatusCode::OK
                        || reply.headers["x-skiff-node"] != home.as_str()
                    {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;

    // kill -9 a node: its replica comes back on a survivor, and requests
    // through the survivors keep succeeding meanwhile — also through the
    // node without a replica, which forwards and, when it picks the dead
    // node, retries on the live one.
    cluster.admin.scale("hello", 2).await.unwrap();
    let replicas = cluster.wait_ready("hello", 2, CONVERGE).await;
    let holders = nodes_of(&replicas);
    assert_eq!(holders.len(), 2);
    let spare = cluster
        .live_nodes()
        .into_iter()
        .find(|n| !holders.contains(n))
        .unwrap();
    // The spare has seen both endpoints once both have served through it.
    cluster
        .wait("the spare to forward to both holders", CONVERGE, |c| {
            let (spare, holders) = (spare.clone(), holders.clone());
            async move {
                let mut seen = BTreeSet::new();
                for _ in 0..20 {
                    let reply = c.get(&spare, "hello", "/").await;
                    seen.insert(reply.headers.get("x-skiff-node")?.to_str().ok()?.to_owned());
                }
                (seen.len() == 2 && seen.iter().all(|n| holders.contains(n))).then_some(())
            }
        })
        .await;
    let victim = holders[1].clone();
    cluster.kill_node(&victim);
    let killed = std::time::Instant::now();
    let survivors: Vec<String> = cluster.live_nodes();
    let failures = std::cell::RefCell::new(Vec::new());
    let through_spare = std::cell::Cell::new(0);
    // Every look also sends a request through each survivor: none may fail.
    let recovered = common::poll(
        Duration::from_secs(10),
        "2 Ready replicas on the survivors",
        || async {
            for node in &survivors {
                let reply = cluster.get(node, "hello", "/").await;
                if reply.status != StatusCode::OK {
                    failures.borrow_mut().push(format!(
                        "via {node}: {} {}",
                        reply.status,
                        reply.text()
                    ));
                } else if node == &spare {
                    through_spare.set(through_spare.get() + 1);
                }
            }
            let replicas = cluster.admin.replicas("hello").await.unwrap();
            let ready = replicas
                .iter()
                .filter(|r| r.state == skiff_sdk::api::ReplicaState::Ready && r.node != victim)
                .count();
            if ready == 2 && replicas.len() == 2 {
                Ok(killed.elapsed())
            } else {
                Err(replicas)
            }
        },
    )
    .await;
    let (failures, through_spare) = (failures.into_inner(), through_spare.get());
    assert!(
        failures.is_empty(),
        "requests through survivors failed: {failures:?}"
    );
    assert!(through_spare > 0);
    eprintln!(
        "recovered 2/2 on the survivors {recovered:?} after kill -9; {through_spare} requests through the forwarding node, none failed"
    );
    let events = cluster.admin.events(Some("hello"), 0, 1000).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == skiff_sdk::api::EventKind::NodeLost
                && e.node.as_deref() == Some(victim.as_str())),
        "{events:?}"
    );

    // The node returns: it is told to drop the replicas it no longer owns,
    // and forwards instead (or runs a replica the scheduler gives it anew).
    cluster.start_node(&victim);
    let old: BTreeSet<String> = replicas
        .iter()
        .filter(|r| r.node == victim)
        .map(|r| r.id.clone())
        .collect();
    cluster
        .wait(
            "the returning node to drop its old replica",
            CONVERGE,
            |c| {
                let (victim, old) = (victim.clone(), old.clone());
                async move {
                    let reply = c.get(&victim, "hello", "/").await;
                    let replicas = c.admin.replicas("hello").await.ok()?;
                    (reply.status == StatusCode::OK
                        && replicas.len() == 2
                        && replicas.iter().all(|r| !old.contains(&r.id)))
                    .then_some(())
                }
            },
        )
        .await;

    // An app that fits nowhere says why.
    let artifact = cluster.admin.app("hello").await.unwrap().spec.artifact;
    let spec: AppSpec = serde_json::from_value(serde_json::json!({
        "artifact": artifact,
        "replicas": 1,
        "quota": { "memory_bytes": 512 << 20, "concurrency": 4, "reserve_bytes": 2u64 << 30 },
        "placement": { "node_selector": { "disk": "ssd" } },
    }))
    .unwrap();
    cluster.admin.apply_app("big", &spec).await.unwrap();
    let condition = cluster
        .wait("the Unschedulable condition", CONVERGE, |c| async move {
            let app = c.admin.app("big").await.ok()?;
            app.status
                .conditions
                .into_iter()
                .find(|c| c.kind == "Scheduled" && !c.status)
        })
        .await;
    assert_eq!(condition.reason, "Unschedulable");
    assert_eq!(
        condition.message,
        "1 replica(s) cannot be placed: 0/3 nodes fit: 2 insufficient memory, 1 selector mismatch"
    );
    let events = cluster.admin.events(Some("big"), 0, 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == skiff_sdk::api::EventKind::Unschedulable),
        "{events:?}"
    );
    // Requests for it get a clear 503 from any node, once the node has the
    // endpoints that list the app (a long-poll away): poll, with a limit.
    let reply = cluster
        .wait("n1 to know the app", CONVERGE, |c| async move {
            let reply = c.get("n1", "big", "/").await;
            (reply.status != StatusCode::NOT_FOUND).then_some(reply)
        })
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.reason(), Some("no-ready-replica"));

    // An app's extra host reaches it through every node; a second app
    // cannot claim the same host.
    let spec: AppSpec = serde_json::from_value(serde_json::json!({
        "artifact": artifact, "replicas": 1, "hosts": ["shop.example.com"],
        "quota": common::cluster::small_quota(),
    }))
    .unwrap();
    cluster.admin.apply_app("shop", &spec).await.unwrap();
    cluster.wait_ready("shop", 1, CONVERGE).await;
    cluster
        .wait(
            "every node to route shop.example.com",
            CONVERGE,
            |c| async move {
                for node in c.live_nodes() {
                    let reply = common::send(
                        c.node_addr(&node),
                        "shop.example.com",
                        http::Method::GET,
                        "/",
                        bytes::Bytes::new(),
                    )
                    .await;
                    if reply.status != StatusCode::OK {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
    let err = cluster.admin.apply_app("copycat", &spec).await.unwrap_err();
    assert_eq!(
        err.status(),
        Some(StatusCode::UNPROCESSABLE_ENTITY),
        "{err}"
    );
    assert!(
        err.to_string().contains("already reaches app \"shop\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_keep_serving_without_the_controller_and_converge_when_it_returns() {
    let mut cluster = Cluster::start(&NODES).await;
    cluster.deploy("hello", "hello", 3).await;
    let before = cluster.wait_ready("hello", 3, CONVERGE).await;
    reachable_through_every_node(&cluster, "hello").await;

    cluster.kill_controller();
    for _ in 0..20 {
        reachable_through_every_node(&cluster, "hello").await;
    }
    // A node restarted while the controller is down resumes its last
    // assignments from disk.
    cluster.kill_node("n2");
    cluster.start_node("n2");
    let reply = cluster.get("n2", "hello", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.headers["x-skiff-node"], "n2");
    reachable_through_every_node(&cluster, "hello").await;

    // The controller returns: the same three replicas, all Ready, no
    // duplicate and none lost.
    cluster.restart_controller();
    let after = cluster.wait_ready("hello", 3, CONVERGE).await;
    let ids =
        |r: &[skiff_sdk::api::Replica]| r.iter().map(|r| r.id.clone()).collect::<BTreeSet<_>>();
    assert_eq!(ids(&before), ids(&after));
    reachable_through_every_node(&cluster, "hello").await;
}

async fn is_leader(controller: &common::SkiffProcess) -> bool {
    let reply = common::send(
        controller.addr(),
        "controller",
        http::Method::GET,
        "/metrics",
        bytes::Bytes::new(),
    )
    .await;
    reply
        .text()
        .lines()
        .any(|l| l == "skiff_controller_leader 1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_controller_takes_over_reconciling_when_the_leader_is_killed() {
    let Some(database) = common::cluster::postgres_database().await else {
        return;
    };
    let db = ["--database-url", database.as_str(), "--lease-ttl", "2s"];
    let mut cluster = Cluster::start_with(&[], &db).await;
    // The second controller shares the database (and so the tokens); the
    // node and the admin talk to it, so the first can be killed.
    let dir = cluster.dir.path().join("controller-2");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"));
    command
        .args([
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .args(db);
    let second = common::SkiffProcess::spawn(command);
    cluster.node_controller = second.addr();
    cluster.set_labels("n1", "zone=a");
    cluster.start_node("n1");
    let first = cluster.controller.as_ref().unwrap();
    cluster
        .wait("the first controller to lead", CONVERGE, |_| async {
            is_leader(first).await.then_some(())
        })
        .await;
    assert!(!is_leader(&second).await, "exactly one leader");

    let token = std::fs::read_to_string(cluster.dir.path().join("controller/admin.token")).unwrap();
    let admin = skiff_sdk::Client::new(&format!("http://{}", second.addr()))
        .unwrap()
        .with_token(&token);
    cluster.admin = admin;
    cluster.deploy("hello", "hello", 1).await;
    cluster.wait_ready("hello", 1, CONVERGE).await;

    cluster.kill_controller();
    cluster
        .wait("the second controller to take over", CONVERGE, |_| async {
            is_leader(&second).await.then_some(())
        })
        .await;
    // Reconciling continues: a scale through the survivor is carried out.
    cluster.admin.scale("hello", 2).await.unwrap();
    cluster.wait_ready("hello", 2, CONVERGE).await;

    drop((cluster, second));
    common::cluster::drop_database(&database).await;
}

/// Hosts are compared in one form: any case and a trailing dot reach an app
/// through every node; a host that names no app is 404 (not a 503 to retry
/// for ever); two `Host` headers are 400; and an extra host cannot be
/// spelled so as to take another app's host or an app's own
/// `<name>.<domain>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_matched_in_one_form() {
    let cluster = Cluster::start(&NODES[..2]).await;
    let hello = cluster.deploy("hello", "hello", 1).await;
    cluster.wait_ready("hello", 1, CONVERGE).await;
    cluster
        .wait("endpoints on every node", CONVERGE, |c| async move {
            let mut all = true;
            for node in c.live_nodes() {
                all &= c.get(&node, "hello", "/").await.status == StatusCode::OK;
            }
            all.then_some(())
        })
        .await;
    for node in cluster.live_nodes() {
        let addr = cluster.node_addr(&node);
        for host in ["HELLO.localhost", "Hello.LocalHost.", "hello.localhost.:80"] {
            let reply = common::send(addr, host, http::Method::GET, "/", bytes::Bytes::new()).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{host} via {node}: {}",
                reply.text()
            );
        }
        let unknown = common::send(
            addr,
            "nope.localhost",
            http::Method::GET,
            "/",
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(
            unknown.status,
            StatusCode::NOT_FOUND,
            "via {node}: {}",
            unknown.text()
        );
        assert_eq!(unknown.reason(), Some("app-not-found"));
        assert!(!unknown.headers.contains_key(http::header::RETRY_AFTER));
        let two = common::raw::raw(
            addr,
            b"GET / HTTP/1.1\r\nHost: hello.localhost\r\nHost: other.localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(two.starts_with("HTTP/1.1 400"), "{two}");
        assert!(two.contains("duplicate-host"), "{two}");
    }

    let mut spec: AppSpec = serde_json::from_value(serde_json::json!({
        "artifact": hello.spec.artifact,
        "replicas": 0,
        "hosts": ["www.example.com"],
    }))
    .unwrap();
    cluster.admin.apply_app("site", &spec).await.unwrap();
    for (taken, why) in [
        ("WWW.Example.com.", "already reaches app"),
        ("www.example.com.", "already reaches app"),
        ("hello.localhost", "own host"),
        ("Hello.LOCALHOST.", "own host"),
    ] {
        spec.hosts = vec![taken.to_owned()];
        let refused = cluster.admin.apply_app("other", &spec).await.unwrap_err();
        assert_eq!(
            refused.status(),
            Some(StatusCode::UNPROCESSABLE_ENTITY),
            "{taken}: {refused}"
        );
        let skiff_sdk::ClientError::Api { body, .. } = &refused else {
            panic!("{refused}");
        };
        assert_eq!(body.error.field.as_deref(), Some("hosts[0]"), "{taken}");
        assert!(
            body.error.message.contains(why),
            "{taken}: {}",
            body.error.message
        );
    }
    // Stored in the compared form.
    spec.hosts = vec!["API.Example.com.".into()];
    let app = cluster.admin.apply_app("api", &spec).await.unwrap();
    assert_eq!(app.spec.hosts, ["api.example.com"]);
}

/// A node killed and started again at once keeps its name (it proves it
/// with the credential it stored), and damaged state files do not stop it:
/// they are set aside and fetched again from the controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarts_as_itself_even_from_damaged_state() {
    let mut cluster = Cluster::start(&NODES[..1]).await;
    cluster.deploy("hello", "hello", 1).await;
    let before = cluster.wait_ready("hello", 1, CONVERGE).await;
    cluster.kill_node("n1");
    let state = cluster.dir.path().join("nodes/n1");
    for file in ["assignments.json", "endpoints.json"] {
        std::fs::write(state.join(file), b"{ not json").unwrap();
    }
    cluster.start_node("n1");
    for file in ["assignments.json.corrupt", "endpoints.json.corrupt"] {
        assert!(state.join(file).is_file(), "{file}");
    }
    let after = cluster.wait_ready("hello", 1, CONVERGE).await;
    assert_eq!(
        after[0].id, before[0].id,
        "the same replica, on the same node"
    );
    cluster
        .wait("hello through the restarted node", CONVERGE, |c| async move {
            (c.get("n1", "hello", "/").await.status == StatusCode::OK).then_some(())
        })
        .await;
    let events = cluster.admin.events(None, 0, 1000).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == skiff_sdk::api::EventKind::NodeReregistered),
        "{events:?}"
    );
}
