//! Misbehaving guests (`examples/abuse` and friends), one abuse a test:
//! each ends with its documented status while the node keeps serving
//! another app and leaks nothing — no instance left running, descriptors
//! back to the baseline, memory bounded. The leak checks measure this
//! process, so each test runs in its own (`cargo nextest`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::post_raw;
use common::{TestNode, eventually};
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use skiff_runtime::Outcome;
use skiff_sdk::Quota;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap();
    kb << 10
}

/// GETs `path` of `app` and counts the body's bytes without keeping them;
/// stops after `limit` bytes (dropping the connection). Also says whether
/// the body ended complete (rather than cut off).
async fn count_body(
    addr: SocketAddr,
    app: &str,
    path: &str,
    limit: u64,
) -> (StatusCode, u64, bool) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, format!("{app}.localhost"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let mut body = response.into_body();
    let mut total = 0u64;
    let mut complete = false;
    while total < limit {
        match body.frame().await {
            Some(Ok(frame)) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
            Some(Err(_)) => break,
            None => {
                complete = true;
                break;
            }
        }
    }
    drop(body);
    drop(sender);
    conn.abort();
    (status, total, complete)
}

/// A node for one abuse: `hello` (which must keep serving) beside the
/// misbehaving guests under a tight quota, and the process's descriptors
/// and memory before the abuse (each test runs in its own process).
struct Abused {
    node: TestNode,
    fds: usize,
    rss: u64,
}

const ABUSED_APPS: [&str; 5] = ["hello", "abuse", "loop", "bomb", "nap"];

impl Abused {
    async fn start() -> Self {
        let node = TestNode::start(|c| {
            c.engine.max_instances = 100;
            c.queue_timeout = Duration::from_millis(200);
        })
        .await;
        let tight = Quota {
            memory_bytes: 64 << 20,
            fuel: 200_000_000,
            timeout_ms: 2_000,
            concurrency: 10,
            reserve_bytes: None,
        };
        node.deploy("hello", "hello", Quota::default()).await;
        node.deploy("abuse", "abuse", tight).await;
        node.deploy("loop", "cpu-loop", tight).await;
        node.deploy("bomb", "memory-hog", tight).await;
        node.deploy("nap", "sleep", tight).await;
        let abused = Self {
            node,
            fds: 0,
            rss: 0,
        };
        // Warm-up, then the baselines.
        abused.hello_ok().await;
        Self {
            fds: open_fds(),
            rss: rss_bytes(),
            ..abused
        }
    }

    /// The well-behaved app still answers.
    async fn hello_ok(&self) {
        let reply = common::send(
            self.node.addr,
            "hello.localhost",
            Method::GET,
            "/",
            Bytes::new(),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "hello stopped serving: {}",
            reply.text()
        );
    }

    /// `path` of `app` ends with `outcome`'s status and reason.
    async fn expect(&self, app: &str, path: &str, outcome: Outcome) {
        let reply = self.node.get(app, path).await;
        assert_eq!(reply.status, outcome.status(), "{}", reply.text());
        assert_eq!(reply.reason(), Some(outcome.reason()));
    }

    /// Nothing leaked: no instance left running, descriptors back to the
    /// baseline, memory bounded (pool slots keep up to 2 MiB resident), and
    /// no access refusal recorded (none of these guests touches a file or
    /// the network); then the node stops.
    async fn no_leaks(self) {
        self.hello_ok().await;
        for app in ABUSED_APPS {
            let runtime = self.node.runtime.clone();
            eventually(
                Duration::from_secs(10),
                &format!("{app} to go idle"),
                || (runtime.in_flight(app) == Some(0)).then_some(()),
            )
            .await;
        }
        let fds = self.fds;
        eventually(
            Duration::from_secs(10),
            "file descriptors to return to the baseline",
            || (open_fds() <= fds + 4).then_some(()),
        )
        .await;
        let grown = rss_bytes().saturating_sub(self.rss);
        eprintln!(
            "after the abuse: {} descriptors (baseline {fds}), RSS +{} MiB",
            open_fds(),
            grown >> 20
        );
        assert!(grown < 256 << 20, "RSS grew by {} MiB", grown >> 20);
        for app in ABUSED_APPS {
            assert_eq!(
                self.node.runtime.app_stats(app).unwrap().denied(),
                0,
                "{app}"
            );
        }
        self.node.stop().await;
    }
}

/// One abuse that ends with its outcome, then the leak check.
macro_rules! abuse_ends_with {
    ($(#[doc = $doc:literal])* $name:ident: $app:literal $path:literal => $outcome:ident) => {
        $(#[doc = $doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let abused = Abused::start().await;
            abused.expect($app, $path, Outcome::$outcome).await;
            abused.no_leaks().await;
        }
    };
}

abuse_ends_with! {
    /// An infinite loop runs out of fuel.
    an_infinite_loop_runs_out_of_fuel: "loop" "/?n=100000000000" => Fuel
}
abuse_ends_with! {
    /// A memory bomb: the limiter refuses growth past 64 MiB.
    a_memory_bomb_hits_the_limiter: "bomb" "/?mb=4096" => Memory
}
abuse_ends_with! {
    /// Unbounded recursion overflows the stack into a trap.
    unbounded_recursion_traps: "abuse" "/recurse" => Trap
}
abuse_ends_with! {
    /// A guest that waits forever is ended by the time quota.
    a_stalled_guest_is_ended_by_the_time_quota: "abuse" "/stall" => Timeout
}

/// A guest that never reads a large request body answers anyway, and its
/// instance ends at once, as a success (not held until the time quota by
/// the unread body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_ignoring_its_body_answers_and_ends() {
    let abused = Abused::start().await;
    let node = &abused.node;
    let stats = node.runtime.app_stats("abuse").unwrap();
    let ok_before = stats.count(Outcome::Ok);
    let ignored = post_raw(node.addr, "abuse.localhost", "/ignore-body", 8 << 20).await;
    assert!(ignored.starts_with("HTTP/1.1 200"), "{ignored}");
    let runtime = node.runtime.clone();
    let started = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the ignoring instance to end",
        || (runtime.in_flight("abuse") == Some(0)).then_some(()),
    )
    .await;
    assert_eq!(stats.count(Outcome::Ok), ok_before + 1);
    eprintln!(
        "ignore-body instance ended {:?} after the answer",
        started.elapsed()
    );
    abused.no_leaks().await;
}

/// A 1 GiB response is streamed, never held: the node's memory stays flat
/// while a client reads it all (within the 2 s quota it may be cut short by
/// the timeout, which is the documented end); a client that walks away
/// mid-body frees the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_response_streams_and_an_abandoned_one_ends() {
    let abused = Abused::start().await;
    let node = &abused.node;
    let stats = node.runtime.app_stats("abuse").unwrap();
    let sampling = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let peak = sampling.clone();
    let sampler = tokio::spawn(async move {
        loop {
            peak.fetch_max(rss_bytes(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let stopped = |s: &skiff_runtime::AppStats| s.count(Outcome::Timeout) + s.count(Outcome::Fuel);
    let before = stopped(&stats);
    let (status, read, complete) = count_body(node.addr, "abuse", "/big?mb=1024", u64::MAX).await;
    sampler.abort();
    assert_eq!(status, StatusCode::OK);
    // Either all of it arrived, or a quota (time, or fuel: which comes
    // first depends on the machine's speed) cut it, and then the client can
    // tell: the body ends with an error, not a clean end.
    if complete {
        assert_eq!(read, 1 << 30);
    } else {
        eventually(
            Duration::from_secs(10),
            "the cut body to be counted as stopped by a quota",
            || (stopped(&stats) == before + 1).then_some(()),
        )
        .await;
    }
    assert!(read > 64 << 20, "only {read} bytes streamed");
    let grown = sampling.load(Ordering::Relaxed).saturating_sub(abused.rss);
    eprintln!(
        "1 GiB body: {} MiB streamed ({}), peak RSS growth {} MiB",
        read >> 20,
        if complete {
            "complete"
        } else {
            "cut by a quota"
        },
        grown >> 20
    );
    assert!(
        grown < 256 << 20,
        "RSS grew by {} MiB while streaming {} MiB",
        grown >> 20,
        read >> 20
    );
    let (_, read, _) = count_body(node.addr, "abuse", "/big?mb=1024", 1 << 20).await;
    assert!(read >= 1 << 20);
    let runtime = node.runtime.clone();
    eventually(
        Duration::from_secs(10),
        "the abandoned instance to end",
        || (runtime.in_flight("abuse") == Some(0)).then_some(()),
    )
    .await;
    abused.no_leaks().await;
}

/// 1,000 concurrent requests against a concurrency limit of 10: at most 10
/// run, the rest are turned away with 503 concurrency-limit, and hello is
/// served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_meets_the_concurrency_limit() {
    let abused = Abused::start().await;
    let node = &abused.node;
    let flood: Vec<_> = (0..1000)
        .map(|_| {
            let addr = node.addr;
            tokio::spawn(async move {
                common::send(addr, "nap.localhost", Method::GET, "/?ms=300", Bytes::new()).await
            })
        })
        .collect();
    let runtime = node.runtime.clone();
    let watcher = tokio::spawn(async move {
        let mut most = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            most = most.max(runtime.in_flight("nap").unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        most
    });
    abused.hello_ok().await;
    let (mut ok, mut refused) = (0, 0);
    for request in flood {
        let reply = request.await.unwrap();
        match reply.reason() {
            None if reply.status == StatusCode::OK => ok += 1,
            Some("concurrency-limit") => refused += 1,
            other => panic!(
                "unexpected answer {} {other:?}: {}",
                reply.status,
                reply.text()
            ),
        }
    }
    let most = watcher.await.unwrap();
    eprintln!(
        "flood: {ok} served, {refused} refused (concurrency-limit), at most {most} in flight"
    );
    assert!(most <= 10);
    assert_eq!(ok + refused, 1000);
    assert!(ok >= 10, "{ok} served");
    abused.no_leaks().await;
}
