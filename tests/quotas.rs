//! Every quota, obeyed and violated, on a real runtime serving real guests
//! over loopback. Each violated case must fail if the quota is not enforced.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::time::Duration;

use common::{TestNode, eventually};
use http::StatusCode;
use skiff_runtime::Outcome;
use skiff_sdk::Quota;

fn quota() -> Quota {
    Quota::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_quota() {
    let node = TestNode::start(|_| {}).await;
    node.deploy(
        "hog",
        "memory-hog",
        Quota {
            memory_bytes: 32 << 20,
            ..quota()
        },
    )
    .await;

    let ok = node.get("hog", "/?mb=4").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(ok.text(), "held 4 MiB\n");

    let denied = node.get("hog", "/?mb=64").await;
    assert_eq!(
        denied.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        denied.text()
    );
    assert_eq!(denied.reason(), Some("memory-limit"));
    assert_eq!(denied.json()["error"]["code"], "memory-limit");
    assert_eq!(denied.json()["error"]["app"], "hog");

    let stats = node.runtime.app_stats("hog").unwrap();
    assert_eq!(stats.count(Outcome::Ok), 1);
    assert_eq!(stats.count(Outcome::Memory), 1);
    // The node is unaffected: the same app serves again right away.
    assert_eq!(node.get("hog", "/?mb=1").await.status, StatusCode::OK);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_quota() {
    let node = TestNode::start(|_| {}).await;
    node.deploy(
        "cpu",
        "cpu-loop",
        Quota {
            fuel: 20_000_000,
            ..quota()
        },
    )
    .await;

    let ok = node.get("cpu", "/?n=10000").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());

    let out = node.get("cpu", "/?n=1000000000").await;
    assert_eq!(
        out.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        out.text()
    );
    assert_eq!(out.reason(), Some("fuel-exhausted"));
    assert_eq!(
        node.runtime.app_stats("cpu").unwrap().count(Outcome::Fuel),
        1
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_quota_while_computing_and_while_waiting() {
    let node = TestNode::start(|_| {}).await;
    // Plenty of fuel, so only the clock can stop the loop.
    let q = Quota {
        timeout_ms: 300,
        fuel: skiff_sdk::quota::MAX_FUEL,
        ..quota()
    };
    node.deploy("spin", "cpu-loop", q).await;
    node.deploy("nap", "sleep", q).await;

    assert_eq!(node.get("spin", "/?n=1000").await.status, StatusCode::OK);
    assert_eq!(node.get("nap", "/?ms=1").await.status, StatusCode::OK);

    // Running Wasm is interrupted by the epoch deadline.
    let spin = node.get("spin", "/?n=100000000000").await;
    assert_eq!(spin.status, StatusCode::GATEWAY_TIMEOUT, "{}", spin.text());
    assert_eq!(spin.reason(), Some("timeout"));
    // A guest that is waiting is not running; the outer timer ends it.
    let nap = node.get("nap", "/?ms=60000").await;
    assert_eq!(nap.status, StatusCode::GATEWAY_TIMEOUT, "{}", nap.text());
    assert_eq!(nap.reason(), Some("timeout"));

    assert_eq!(
        node.runtime
            .app_stats("spin")
            .unwrap()
            .count(Outcome::Timeout),
        1
    );
    assert_eq!(
        node.runtime
            .app_stats("nap")
            .unwrap()
            .count(Outcome::Timeout),
        1
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_quota() {
    let node = TestNode::start(|c| c.queue_timeout = Duration::from_millis(50)).await;
    node.deploy(
        "nap",
        "sleep",
        Quota {
            concurrency: 2,
            ..quota()
        },
    )
    .await;

    // Two requests occupy both slots...
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let addr = node.addr;
            tokio::spawn(async move {
                common::send(
                    addr,
                    "nap.localhost",
                    http::Method::GET,
                    "/?ms=3000",
                    Default::default(),
                )
                .await
            })
        })
        .collect();
    let runtime = node.runtime.clone();
    eventually(Duration::from_secs(10), "both slots to be busy", || {
        (runtime.in_flight("nap") == Some(2)).then_some(())
    })
    .await;
    // ...so a third waits the queue timeout and is turned away.
    let third = node.get("nap", "/?ms=1").await;
    assert_eq!(
        third.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        third.text()
    );
    assert_eq!(third.reason(), Some("concurrency-limit"));
    assert_eq!(
        third
            .headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );

    for s in slow {
        assert_eq!(s.await.unwrap().status, StatusCode::OK);
    }
    // Once the slots are free, requests are admitted again.
    assert_eq!(node.get("nap", "/?ms=1").await.status, StatusCode::OK);
    assert_eq!(
        node.runtime
            .app_stats("nap")
            .unwrap()
            .count(Outcome::Overloaded),
        1
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_app_does_not_disturb_another() {
    let node = TestNode::start(|_| {}).await;
    node.deploy("hello", "hello", quota()).await;
    node.deploy("boom", "panic", quota()).await;

    let mut tasks = Vec::new();
    for i in 0..60 {
        let addr = node.addr;
        let host = if i % 2 == 0 {
            "hello.localhost"
        } else {
            "boom.localhost"
        };
        tasks.push(tokio::spawn(async move {
            (
                host,
                common::send(addr, host, http::Method::GET, "/", Default::default()).await,
            )
        }));
    }
    for task in tasks {
        let (host, reply) = task.await.unwrap();
        if host == "hello.localhost" {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert!(reply.text().starts_with("Hello from Skiff!"));
        } else {
            assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(reply.reason(), Some("guest-trap"));
        }
    }
    assert_eq!(
        node.runtime.app_stats("hello").unwrap().count(Outcome::Ok),
        30
    );
    assert_eq!(
        node.runtime.app_stats("boom").unwrap().count(Outcome::Trap),
        30
    );
    // The panicking app's stderr was captured.
    let logs = node.runtime.logs("boom", 0).unwrap();
    assert!(
        logs.iter().any(|l| l.line.contains("about to panic")),
        "{logs:?}"
    );
    assert_eq!(node.get("boom", "/ok").await.status, StatusCode::OK);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_apps_and_oversized_bodies_get_clear_errors() {
    let node = TestNode::start(|c| c.max_request_body = 1024).await;
    node.deploy("echo", "echo", quota()).await;

    let missing = node.get("nope", "/").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.reason(), Some("app-not-found"));
    assert_eq!(missing.json()["error"]["code"], "app-not-found");
    assert_eq!(node.runtime.unrouted_requests(), 1);

    let small = node
        .send("echo", http::Method::POST, "/", &[b'a'; 1000])
        .await;
    assert_eq!(small.status, StatusCode::OK);
    assert_eq!(small.body.len(), 1000);

    let big = node
        .send("echo", http::Method::POST, "/", &[b'a'; 4096])
        .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(big.reason(), Some("body-too-large"));
    node.stop().await;
}
