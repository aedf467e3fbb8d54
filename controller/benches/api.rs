//! Controller API benchmark, SQLite and PostgreSQL side by side (PostgreSQL
//! when `SKIFF_TEST_POSTGRES_URL` is set): apply latency while creating
//! 1,000 apps, `GET /v1/apps` and `GET /v1/apps/{name}` latency with 1,000
//! apps stored, and heartbeat throughput from 100 nodes over keep-alive
//! connections. Real HTTP on loopback to an in-process server.
//!
//! Run: `cargo bench -p skiff-controller --bench api`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use skiff_controller::api::ApiConfig;

const APPS: usize = 1000;
const NODES: usize = 100;
const READS: usize = 300;
const HEARTBEAT_SECONDS: u64 = 5;
const HEARTBEAT_CLIENTS: usize = 16;

/// One keep-alive HTTP/1.1 connection.
struct Conn(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn(sender)
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        token: &str,
        json: Option<String>,
    ) -> (u16, Bytes) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "c")
            .header("authorization", format!("Bearer {token}"));
        if json.is_some() {
            req = req.header("content-type", "application/json");
        }
        let body = Full::new(json.map(Bytes::from).unwrap_or_default());
        self.0.ready().await.unwrap();
        let resp = self.0.send_request(req.body(body).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }
}

fn pcts(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99))
}

struct Figures {
    apply: (f64, f64),
    list: (f64, f64),
    get: (f64, f64),
    heartbeats_per_s: f64,
}

async fn measure(t: &common::TestStore) -> Figures {
    let api = common::TestApi::start(t.store.clone(), ApiConfig::default()).await;
    let admin = api.admin.clone();
    let mut conn = Conn::open(api.addr).await;
    let art = {
        let r = api
            .call(
                Method::POST,
                "/v1/artifacts",
                Some(&admin),
                Some(("application/wasm", Bytes::from(common::component()))),
            )
            .await;
        r.json()["digest"].as_str().unwrap().to_owned()
    };
    let mut apply = Vec::with_capacity(APPS);
    for i in 0..APPS {
        let spec =
            serde_json::json!({ "artifact": art, "replicas": 3, "env": { "I": i.to_string() } })
                .to_string();
        let start = Instant::now();
        let (status, _) = conn
            .call(
                Method::PUT,
                &format!("/v1/apps/app-{i}"),
                &admin,
                Some(spec),
            )
            .await;
        apply.push(start.elapsed());
        assert_eq!(status, 201);
    }
    let mut list = Vec::with_capacity(READS);
    for _ in 0..READS {
        let start = Instant::now();
        let (status, body) = conn.call(Method::GET, "/v1/apps", &admin, None).await;
        list.push(start.elapsed());
        assert_eq!(status, 200);
        assert!(body.len() > APPS * 100);
    }
    let mut get = Vec::with_capacity(APPS);
    for i in 0..APPS {
        let start = Instant::now();
        let (status, _) = conn
            .call(Method::GET, &format!("/v1/apps/app-{i}"), &admin, None)
            .await;
        get.push(start.elapsed());
        assert_eq!(status, 200);
    }

    let mut creds = Vec::new();
    for i in 0..NODES {
        let reg = serde_json::json!({ "name": format!("node-{i}"), "capacity": {"memory_bytes": 1u64 << 32}, "ingress": "127.0.0.1:9000" });
        let (status, body) = conn
            .call(Method::POST, "/v1/nodes", &api.join, Some(reg.to_string()))
            .await;
        assert_eq!(status, 201);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        creds.push((
            format!("node-{i}"),
            v["credential"].as_str().unwrap().to_owned(),
        ));
    }
    let creds = Arc::new(creds);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(HEARTBEAT_SECONDS);
    let started = Instant::now();
    let clients: Vec<_> = (0..HEARTBEAT_CLIENTS)
        .map(|c| {
            let (creds, done, addr) = (creds.clone(), done.clone(), api.addr);
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await;
                let mut i = c;
                while Instant::now() < deadline {
                    let (name, cred) = &creds[i % creds.len()];
                    let (status, _) = conn
                        .call(
                            Method::PUT,
                            &format!("/v1/nodes/{name}/heartbeat"),
                            cred,
                            Some("{\"replicas\":[]}".into()),
                        )
                        .await;
                    assert_eq!(status, 204);
                    done.fetch_add(1, Ordering::Relaxed);
                    i += HEARTBEAT_CLIENTS;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let heartbeats_per_s = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    Figures {
        apply: pcts(apply),
        list: pcts(list),
        get: pcts(get),
        heartbeats_per_s,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut rows = Vec::new();
        for t in common::stores().await {
            let f = measure(&t).await;
            rows.push((t.backend, f));
            t.finish().await;
        }
        println!("{APPS} apps, {NODES} nodes, {HEARTBEAT_CLIENTS} heartbeat connections; latencies in ms (p50 / p99)");
        println!("{:<10} {:>20} {:>20} {:>20} {:>14}", "backend", "PUT app (apply)", "GET /v1/apps", "GET /v1/apps/{name}", "heartbeats/s");
        for (backend, f) in &rows {
            println!(
                "{backend:<10} {:>9.2} / {:>8.2} {:>9.2} / {:>8.2} {:>9.2} / {:>8.2} {:>14.0}",
                f.apply.0, f.apply.1, f.list.0, f.list.1, f.get.0, f.get.1, f.heartbeats_per_s
            );
        }
        for (backend, f) in &rows {
            if *backend == "sqlite" {
                let ok = f.list.1 < 10.0 && f.get.1 < 10.0;
                println!("target: read p99 < 10 ms with {APPS} apps on SQLite: {}", if ok { "MET" } else { "MISSED" });
            }
            let ok = f.heartbeats_per_s >= 2000.0;
            println!("target: >= 2000 heartbeats/s on {backend}: {} ({:.0}/s)", if ok { "MET" } else { "MISSED" }, f.heartbeats_per_s);
        }
    });
}
