//! Serving behaviour on an in-process node over loopback: streaming bodies,
//! guest output capture, the compile cache, and lazy registration.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{TestNode, example};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use skiff_runtime::{Deployment, Runtime, RuntimeConfig};
use skiff_sdk::Quota;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_without_buffering() {
    let node = TestNode::start(|_| {}).await;
    node.deploy("echo", "echo", Quota::default()).await;

    let stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) =
        futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/stream")
        .header("host", "echo.localhost")
        .body(StreamBody::new(rx))
        .unwrap();
    let mut tx = tx;
    use futures::SinkExt;
    tx.send(Ok(Frame::data(Bytes::from_static(b"first chunk;"))))
        .await
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();

    // The first chunk comes back while the request body is still open: a
    // host that buffered either body whole would deadlock here.
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("first echoed chunk arrives before the request ends")
        .unwrap()
        .unwrap();
    assert_eq!(
        first.into_data().unwrap(),
        Bytes::from_static(b"first chunk;")
    );

    tx.send(Ok(Frame::data(Bytes::from_static(b"second chunk"))))
        .await
        .unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"second chunk"));

    // stdout of the guest reached the app's log buffer.
    let logs = node.runtime.logs("echo", 0).unwrap();
    assert!(
        logs.iter().any(|l| l.line == "echo: POST /stream"),
        "{logs:?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_reaches_the_guest_and_host_routing_works() {
    let node = TestNode::start(|_| {}).await;
    let digest = node.runtime.store_component(&example("hello")).unwrap();
    for (name, version) in [("blue", "1.0.0"), ("green", "2.0.0")] {
        let env = vec![("VERSION".to_owned(), version.to_owned())];
        node.runtime
            .deploy(Deployment {
                name: name.into(),
                digest,
                quota: Quota::default(),
                env,
                capabilities: Default::default(),
            })
            .unwrap();
    }
    assert_eq!(
        node.get("blue", "/").await.text(),
        "Hello from Skiff! version=1.0.0\n"
    );
    assert_eq!(
        node.get("green", "/").await.text(),
        "Hello from Skiff! version=2.0.0\n"
    );
    // Two apps, one digest: compiled at most once.
    assert!(node.runtime.cache_stats().compiled() + node.runtime.cache_stats().deserialized() <= 1);
    node.stop().await;
}

/// A distinct, tiny component: an empty component plus a custom section.
fn tiny_component(i: u32) -> Vec<u8> {
    let mut bytes = wat::parse_str("(component)").unwrap();
    let name = b"skiff-test";
    let payload = i.to_le_bytes();
    bytes.push(0); // custom section id
    bytes.push((1 + name.len() + payload.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&payload);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_many_components_compiles_nothing_and_a_restart_reuses_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = RuntimeConfig::new(dir.path());
        c.engine.max_instances = 50;
        c
    };
    let runtime = Runtime::new(config()).unwrap();
    for i in 0..1000 {
        let digest = runtime.store_component(&tiny_component(i)).unwrap();
        let spec = Deployment {
            name: format!("app{i}"),
            digest,
            quota: Quota::default(),
            env: vec![],
            capabilities: Default::default(),
        };
        runtime.deploy(spec).unwrap();
    }
    assert_eq!(runtime.apps().len(), 1000);
    assert_eq!(
        runtime.cache_stats().compiled(),
        0,
        "registration must not compile"
    );

    let hello = runtime.store_component(&example("hello")).unwrap();
    runtime
        .deploy(Deployment {
            name: "hello".into(),
            digest: hello,
            quota: Quota::default(),
            env: vec![],
            capabilities: Default::default(),
        })
        .unwrap();
    runtime.warm("hello").await.unwrap();
    assert_eq!(runtime.cache_stats().compiled(), 1);
    // A component that is not a wasi:http proxy is refused with a reason.
    let err = runtime.warm("app7").await.unwrap_err();
    assert!(format!("{err}").contains("app7"), "{err}");
    drop(runtime);

    // Same cache directory: nothing is compiled again.
    let runtime = Runtime::new(config()).unwrap();
    runtime
        .deploy(Deployment {
            name: "hello".into(),
            digest: hello,
            quota: Quota::default(),
            env: vec![],
            capabilities: Default::default(),
        })
        .unwrap();
    runtime.warm("hello").await.unwrap();
    assert_eq!(runtime.cache_stats().compiled(), 0);
    assert_eq!(runtime.cache_stats().deserialized(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_is_served() {
    let node = TestNode::start(|_| {}).await;
    node.deploy("hello", "hello", Quota::default()).await;
    let stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::builder()
            .uri("http://hello.localhost/")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"Hello from Skiff!"));
    }
    node.stop().await;
}

/// A revision that failed (or was rolled back) is removed from the node,
/// but its output is what the operator needs next: it stays readable, and
/// the revision that takes over continues the same buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_revisions_output_stays_readable() {
    let node = TestNode::start(|_| {}).await;
    node.deploy("app", "panic", Quota::default()).await;
    let reply = node.get("app", "/boom").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    let panicked = |node: &TestNode| {
        node.runtime
            .logs("app", 0)
            .unwrap_or_default()
            .iter()
            .any(|l| l.line.contains("about to panic on /boom"))
    };
    common::eventually(Duration::from_secs(10), "the panic line", || {
        panicked(&node).then_some(())
    })
    .await;
    assert!(node.runtime.remove("app"));
    assert!(panicked(&node), "readable after removal");
    node.deploy("app", "hello", Quota::default()).await;
    assert_eq!(node.get("app", "/").await.status, StatusCode::OK);
    assert!(panicked(&node), "kept by the revision that took over");
    node.stop().await;
}
