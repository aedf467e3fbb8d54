//! Clients against the two servers (a node's ingress and the controller's
//! API): too large or too slow headers, garbage, oversized bodies, silent
//! and idle connections, one address trying to take every connection, and
//! clients trying to move a new revision's verdict.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::TestNode;
use common::raw::{connect_from, post_raw, raw, read_until_closed};
use skiff_runtime::Outcome;
use skiff_runtime::ingress::Limits;
use skiff_sdk::Quota;
use tokio::io::AsyncWriteExt as _;

/// A node with `limits` (and `tweak`ed runtime settings) serving the echo
/// example as `echo`.
async fn echo_node(
    tweak: impl FnOnce(&mut skiff_runtime::RuntimeConfig),
    limits: Limits,
) -> TestNode {
    let node = TestNode::start_with_limits(tweak, limits).await;
    node.deploy("echo", "echo", Quota::default()).await;
    node
}

/// Checks the client-abuse cases against a server on `addr` started with
/// a 300 ms header timeout.
async fn client_abuse(addr: SocketAddr, host: &str) {
    // Too large a header block, and too many header fields: 431.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    let answer = raw(addr, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: {host}\r\n{many}\r\n");
    let answer = raw(addr, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // Malformed: 400 (or a plain close), never a stack trace.
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    ] {
        let answer = raw(addr, garbage).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{answer}"
        );
        assert!(
            !answer.contains("panicked") && !answer.contains(".rs:"),
            "{answer}"
        );
    }
    // A client that never finishes its headers is cut off.
    let started = Instant::now();
    let answer = raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Slow:").as_bytes(),
    )
    .await;
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// Sends `GET /` on new connections until the answer satisfies `done`
/// (failing after 10 s); returns that answer.
async fn get_until(addr: SocketAddr, host: &str, done: impl Fn(&str) -> bool) -> String {
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    common::poll(Duration::from_secs(10), "the expected answer", || async {
        let answer = raw(addr, request.as_bytes()).await;
        if done(&answer) {
            Ok(answer)
        } else {
            Err(answer)
        }
    })
    .await
}

/// Holds `limit` idle connections to a server started with that
/// connection bound, and checks one more is refused with 503.
async fn connection_bound(addr: SocketAddr, host: &str, limit: usize) {
    let mut held = Vec::new();
    for _ in 0..limit {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The server may not have accepted them all yet: retry until it says no.
    let answer = get_until(addr, host, |a| a.starts_with("HTTP/1.1 503")).await;
    assert!(answer.contains("too-many-connections"), "{answer}");
    drop(held);
    // Once they are gone, service resumes.
    get_until(addr, host, |a| !a.starts_with("HTTP/1.1 503")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_abuse_on_the_ingress() {
    let node = echo_node(
        |c| c.max_request_body = 1 << 20,
        Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
    )
    .await;
    client_abuse(node.addr, "echo.localhost").await;
    // A body over the limit is 413 without reaching the guest.
    let big = post_raw(node.addr, "echo.localhost", "/", 2 << 20).await;
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    assert_eq!(
        node.runtime
            .app_stats("echo")
            .unwrap()
            .count(Outcome::BodyTooLarge),
        1
    );
    node.stop().await;

    let bounded = echo_node(
        |_| {},
        Limits {
            max_connections: 4,
            ..Limits::default()
        },
    )
    .await;
    connection_bound(bounded.addr, "echo.localhost", 4).await;
    bounded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_abuse_on_the_controller_api() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--header-timeout".to_owned(), "300ms".to_owned()];
    let controller = common::cluster::start_controller(&dir.path().join("a"), "127.0.0.1:0", &args);
    let addr = controller.addr();
    client_abuse(addr, "localhost").await;
    // Bodies: malformed JSON and oversized JSON are 4xx with a JSON error
    // naming the problem, never a 5xx or a trace.
    let token = std::fs::read_to_string(dir.path().join("a/admin.token")).unwrap();
    for (body, status, code) in [
        ("{\"artifact\": ", "400", "malformed_json"),
        ("{\"artifact\": 7}", "422", "invalid_field"),
    ] {
        let request = format!(
            "PUT /v1/apps/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            token.trim(),
            body.len()
        );
        let answer = raw(addr, request.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        assert!(answer.contains(code), "{answer}");
    }
    let request = format!(
        "PUT /v1/apps/x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        token.trim(),
        64 << 20
    );
    let answer = raw(addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let args = ["--max-connections".to_owned(), "4".to_owned()];
    let bounded = common::cluster::start_controller(&dir.path().join("b"), "127.0.0.1:0", &args);
    connection_bound(bounded.addr(), "localhost", 4).await;
    drop(controller);
    drop(bounded);
}

/// A connection that sends nothing, and one that stays idle after its
/// request, are closed once the header timeout has passed.
async fn silent_and_idle_connections_are_closed(addr: SocketAddr, host: &str, timeout: Duration) {
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let answer = read_until_closed(&mut silent).await;
    assert!(answer.is_empty(), "{answer}");
    assert!(started.elapsed() >= timeout);

    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
}

/// With a share of `share` connections per client address: one address
/// holding its share is refused one more, while another address is served.
async fn one_address_cannot_take_every_connection(addr: SocketAddr, host: &str, share: usize) {
    let mut held = Vec::new();
    for _ in 0..share {
        held.push(connect_from("127.0.0.1", addr).await);
    }
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    common::poll(
        Duration::from_secs(10),
        "one more to be refused",
        || async {
            let mut one_more = connect_from("127.0.0.1", addr).await;
            one_more.write_all(request.as_bytes()).await.unwrap();
            let answer = read_until_closed(&mut one_more).await;
            if answer.contains("too-many-connections") {
                Ok(())
            } else {
                Err(answer)
            }
        },
    )
    .await;
    let mut other = connect_from("127.0.0.2", addr).await;
    other.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut other).await;
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    assert!(!answer.contains("too-many-connections"), "{answer}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_closes_silent_connections_and_shares_its_connections() {
    let timeout = Duration::from_millis(300);
    let node = echo_node(
        |_| {},
        Limits {
            header_read_timeout: timeout,
            ..Limits::default()
        },
    )
    .await;
    silent_and_idle_connections_are_closed(node.addr, "echo.localhost", timeout).await;
    node.stop().await;

    let shared = echo_node(
        |_| {},
        Limits {
            max_connections: 8,
            max_connections_per_client: 4,
            ..Limits::default()
        },
    )
    .await;
    one_address_cannot_take_every_connection(shared.addr, "echo.localhost", 4).await;
    shared.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_closes_silent_connections_and_shares_its_connections() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--header-timeout", "300ms"].map(str::to_owned);
    let controller = common::cluster::start_controller(&dir.path().join("a"), "127.0.0.1:0", &args);
    silent_and_idle_connections_are_closed(
        controller.addr(),
        "localhost",
        Duration::from_millis(300),
    )
    .await;
    let args = [
        "--max-connections",
        "8",
        "--max-connections-per-client",
        "4",
    ]
    .map(str::to_owned);
    let shared = common::cluster::start_controller(&dir.path().join("b"), "127.0.0.1:0", &args);
    one_address_cannot_take_every_connection(shared.addr(), "localhost", 4).await;
}

/// Right after a deploy, one client sending requests that break the memory
/// quota on purpose (20 of them, twice the verdict's window) does not make
/// the new replica Failed: the revision keeps serving other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_fail_a_new_revision() {
    let cluster = common::cluster::Cluster::start(&[("n1", "zone=a")]).await;
    cluster.deploy("hog", "memory-hog", 1).await;
    let ready = cluster.wait_ready("hog", 1, Duration::from_secs(60)).await;
    let addr = cluster.node_addr("n1");
    for _ in 0..20 {
        let reply = common::get_from("127.0.0.1", addr, "hog.localhost", "/?mb=64").await;
        assert_eq!(reply.reason(), Some("memory-limit"), "{}", reply.text());
    }
    for _ in 0..5 {
        let reply = common::get_from("127.0.0.2", addr, "hog.localhost", "/?mb=1").await;
        assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
    }
    // The node judges every 100 ms and reports a failure at once: watch
    // the replica for well over that.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let replicas = cluster.admin.replicas("hog").await.unwrap();
        assert_eq!(replicas.len(), 1);
        assert_eq!(replicas[0].id, ready[0].id);
        assert_eq!(
            replicas[0].state,
            skiff_sdk::api::ReplicaState::Ready,
            "{replicas:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = common::get_from("127.0.0.3", addr, "hog.localhost", "/?mb=1").await;
    assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
}

/// The join token registers new nodes only: re-registering the name of a
/// live node without its credential is refused with 409 naming `name`, and
/// the live node keeps its address and its credential. The admin token is
/// no node credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_token_cannot_take_over_a_live_node() {
    use skiff_sdk::api::{Heartbeat, NodeCapacity, RegisterNode};
    let cluster = common::cluster::Cluster::start(&[("n1", "zone=a")]).await;
    let node = |c: &common::cluster::Cluster| {
        let admin = c.admin.clone();
        async move {
            admin
                .nodes()
                .await
                .unwrap()
                .into_iter()
                .find(|n| n.name == "n1")
                .unwrap()
        }
    };
    let before = node(&cluster).await;
    let join = std::fs::read_to_string(cluster.join_token_file()).unwrap();
    let joiner = skiff_sdk::Client::new(&format!("http://{}", cluster.controller_addr))
        .unwrap()
        .with_token(join.trim());
    let impostor = RegisterNode {
        name: "n1".into(),
        labels: Default::default(),
        capacity: NodeCapacity {
            memory_bytes: 1 << 30,
        },
        ingress: "127.0.0.1:9".into(),
        logs_key: None,
        credential: None,
    };
    for credential in [None, Some("skiff_node_guessed".to_owned())] {
        let refused = joiner
            .register_node(&RegisterNode {
                credential,
                ..impostor.clone()
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.status(),
            Some(http::StatusCode::CONFLICT),
            "{refused}"
        );
        let skiff_sdk::ClientError::Api { body, .. } = &refused else {
            panic!("{refused}");
        };
        assert_eq!(body.error.field.as_deref(), Some("name"), "{refused}");
    }
    let after = node(&cluster).await;
    assert_eq!(after.ingress, before.ingress);
    assert_eq!(after.version, before.version);
    // The real node still serves with its own credential: it stays Ready
    // and answers through its ingress.
    cluster.deploy("hello", "hello", 1).await;
    cluster
        .wait_ready("hello", 1, Duration::from_secs(60))
        .await;

    let admin_as_node = cluster
        .admin
        .heartbeat("n1", &Heartbeat::default())
        .await
        .unwrap_err();
    assert_eq!(admin_as_node.status(), Some(http::StatusCode::FORBIDDEN));
    let admin_watch = cluster
        .admin
        .assignments("n1", None, Duration::from_millis(10))
        .await
        .unwrap_err();
    assert_eq!(admin_watch.status(), Some(http::StatusCode::FORBIDDEN));
}
