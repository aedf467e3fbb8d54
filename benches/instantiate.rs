//! In-process per-request cost of the `hello` example on the real runtime:
//! store creation + instantiation alone, and a whole request through
//! `Runtime::handle` (routing, quotas, instantiate, guest, response body),
//! without the network. Prints p50/p99 and checks the instantiation target.
//!
//! Run: `cargo bench --bench instantiate` (set `SKIFF_BENCH_ITERATIONS`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use skiff_runtime::{Deployment, Runtime, RuntimeConfig};
use skiff_sdk::Quota;

/// Target from the runtime issue: per-request instantiation p50 ≤ 10 µs.
const INSTANTIATE_P50_TARGET: Duration = Duration::from_micros(10);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let p50 = percentile(&samples, 0.50);
    let p99 = percentile(&samples, 0.99);
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{what:<44} n={:<6} p50={:>8.2?} p99={:>8.2?} mean={:>8.2?}",
        samples.len(),
        p50,
        p99,
        mean
    );
    p50
}

async fn request(runtime: &Arc<Runtime>) -> Duration {
    let req = http::Request::builder()
        .uri("/")
        .header("host", "hello.localhost")
        .body(
            Empty::<Bytes>::new().map_err(|never| -> wasmtime_wasi_http::Error { match never {} }),
        )
        .unwrap();
    let started = Instant::now();
    let response = runtime.handle(skiff_runtime::Target::ByHost, req).await;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let elapsed = started.elapsed();
    assert!(body.starts_with(b"Hello from Skiff!"));
    elapsed
}

fn main() {
    let n: usize = std::env::var("SKIFF_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(RuntimeConfig::new(dir.path())).unwrap();
        println!("allocator: {:?}", runtime.allocator());
        let digest = runtime.store_component(&common::example("hello")).unwrap();
        runtime
            .deploy(Deployment {
                name: "hello".into(),
                digest,
                quota: Quota::default(),
                env: vec![],
                capabilities: Default::default(),
            })
            .unwrap();
        runtime.warm("hello").await.unwrap();
        for _ in 0..2_000 {
            runtime.instantiate_once("hello").await.unwrap();
            request(&runtime).await;
        }

        let mut inst = Vec::with_capacity(n);
        for _ in 0..n {
            inst.push(runtime.instantiate_once("hello").await.unwrap());
        }
        let p50 = report("store + instantiate (sequential)", inst);

        let mut loaded = Vec::new();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let runtime = runtime.clone();
                tokio::spawn(async move {
                    let mut v = Vec::with_capacity(n / 2);
                    for _ in 0..n / 2 {
                        v.push(runtime.instantiate_once("hello").await.unwrap());
                    }
                    v
                })
            })
            .collect();
        for w in workers {
            loaded.extend(w.await.unwrap());
        }
        report("store + instantiate (2 concurrent tasks)", loaded);

        let mut whole = Vec::with_capacity(n);
        for _ in 0..n {
            whole.push(request(&runtime).await);
        }
        report("whole request via Runtime::handle", whole);

        let verdict = if p50 <= INSTANTIATE_P50_TARGET {
            "MET"
        } else {
            "MISSED"
        };
        println!("target: instantiation p50 <= {INSTANTIATE_P50_TARGET:?}: {verdict} ({p50:.2?})");
    });
}
