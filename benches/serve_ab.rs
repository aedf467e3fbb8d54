//! Requests/s and latency of the `hello` example under `skiff serve` and
//! under `wasmtime serve` (the reference host), driven by the same `wrk`
//! settings, alternating A/B/A/B so both see the same machine state.
//!
//! Run: `cargo bench --bench serve_ab`. Needs `wrk` (`apt-get install wrk`);
//! uses `wasmtime` from `$SKIFF_BENCH_WASMTIME`, `$PATH` or `~/.cargo/bin`
//! (`cargo install wasmtime-cli --version 48.0.8 --locked`) and measures
//! Skiff alone if it is missing. Extra `wasmtime serve` flags (e.g.
//! `-O pooling-allocator=y`) come from `SKIFF_BENCH_WASMTIME_ARGS`. Knobs: `SKIFF_BENCH_ROUNDS` (default 3),
//! `SKIFF_BENCH_SECONDS` (5), `SKIFF_BENCH_CONNECTIONS` (32),
//! `SKIFF_BENCH_THREADS` (2).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{SkiffProcess, example_path};
use support::Run;

fn wrk(addr: SocketAddr, threads: u32, connections: u32, seconds: u32) -> Run {
    support::wrk(
        addr,
        threads,
        connections,
        seconds,
        &["-H", "Host: hello.localhost"],
    )
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn find_wasmtime() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SKIFF_BENCH_WASMTIME") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("wasmtime"))
        .find(|p| p.is_file());
    on_path.or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/wasmtime");
        p.is_file().then_some(p)
    })
}

/// `wasmtime serve` on a free loopback port; killed on drop.
struct WasmtimeServe {
    child: Child,
    addr: SocketAddr,
}

impl WasmtimeServe {
    fn start(bin: &PathBuf, component: &PathBuf) -> Self {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new(bin)
            .args(["serve", "-S", "cli", "--addr", &addr.to_string()])
            .args(
                std::env::var("SKIFF_BENCH_WASMTIME_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .arg(component)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning wasmtime serve");
        let deadline = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "wasmtime serve did not start listening on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn summary(name: &str, runs: &[Run]) -> Run {
    let s = Run {
        rps: median(runs.iter().map(|r| r.rps).collect()),
        p50_ms: median(runs.iter().map(|r| r.p50_ms).collect()),
        p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
        errors: runs.iter().map(|r| r.errors).sum(),
    };
    println!(
        "{name:<16} median of {}: {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  errors {}",
        runs.len(),
        s.rps,
        s.p50_ms,
        s.p99_ms,
        s.errors
    );
    s
}

fn main() {
    let rounds: usize = env_or("SKIFF_BENCH_ROUNDS", 3);
    let seconds: u32 = env_or("SKIFF_BENCH_SECONDS", 5);
    let connections: u32 = env_or("SKIFF_BENCH_CONNECTIONS", 32);
    let threads: u32 = env_or("SKIFF_BENCH_THREADS", 2);
    let hello = example_path("hello");
    let cache = tempfile::tempdir().unwrap();

    let skiff = SkiffProcess::start(&[
        "serve",
        hello.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--cache-dir",
        cache.path().to_str().unwrap(),
        "--concurrency",
        "1000",
    ]);
    let wasmtime_bin = find_wasmtime();
    let wasmtime = wasmtime_bin
        .as_ref()
        .map(|bin| WasmtimeServe::start(bin, &hello));
    println!(
        "wrk -t{threads} -c{connections} -d{seconds}s, {rounds} rounds, alternating; skiff at {}, wasmtime serve {}",
        skiff.addr(),
        match (&wasmtime, &wasmtime_bin) {
            (Some(w), Some(bin)) => format!("({}) at {}", bin.display(), w.addr),
            _ => "not installed: measuring skiff only".to_owned(),
        }
    );
    // Warm both up (page cache, pool slots, CPU frequency).
    wrk(skiff.addr(), threads, connections, 1);
    if let Some(w) = &wasmtime {
        wrk(w.addr, threads, connections, 1);
    }

    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let r = wrk(skiff.addr(), threads, connections, seconds);
        println!(
            "round {round} skiff serve    {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  errors {}",
            r.rps, r.p50_ms, r.p99_ms, r.errors
        );
        a.push(r);
        if let Some(w) = &wasmtime {
            let r = wrk(w.addr, threads, connections, seconds);
            println!(
                "round {round} wasmtime serve {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  errors {}",
                r.rps, r.p50_ms, r.p99_ms, r.errors
            );
            b.push(r);
        }
    }
    let sa = summary("skiff serve", &a);
    if !b.is_empty() {
        let sb = summary("wasmtime serve", &b);
        let ratio = sa.rps / sb.rps;
        let verdict = if ratio >= 1.0 { "MET" } else { "MISSED" };
        println!("ratio skiff/wasmtime requests/s: {ratio:.2}x (target >= 1.0x: {verdict})");
    }
}
