//! What the benchmarks share: knobs, percentiles, verdicts, process CPU and
//! RSS, and starting release `skiff` processes with their logs quiet.
#![allow(dead_code)] // not every benchmark uses every helper

use std::process::Command;
use std::time::Duration;

use crate::common::SkiffProcess;

/// A numeric setting from the environment, or `default`.
pub fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Milliseconds, fractional.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How a figure compares with its target.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "meets" } else { "MISSES" }
}

/// CPU time (user + system, in clock ticks of 10 ms) and RSS (KiB) of a
/// process.
pub fn proc_stats(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

/// A controller on a free port (`db`: a PostgreSQL URL, else SQLite in `dir`).
pub fn start_controller(dir: &std::path::Path, db: Option<&str>, id: &str) -> SkiffProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skiff"));
    command.args([
        "controller",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
        "--id",
        id,
        "--max-connections",
        "20000",
        "--max-connections-per-client",
        "20000",
    ]);
    if let Some(url) = db {
        command.args(["--database-url", url]);
    }
    command.env(
        "SKIFF_LOG",
        std::env::var("SKIFF_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
    );
    SkiffProcess::spawn(command)
}

/// The content of a token file named in a process's readiness line.
pub fn token(process: &SkiffProcess, which: &str) -> String {
    std::fs::read_to_string(process.ready[which].as_str().unwrap())
        .unwrap()
        .trim()
        .to_owned()
}

/// A node named `edge` declaring `memory`, joined to `controller`.
pub fn start_node(controller: &SkiffProcess, dir: &std::path::Path, memory: &str) -> SkiffProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skiff"));
    command.args([
        "node",
        "--controller",
        &format!("http://{}", controller.addr()),
        "--token-file",
        controller.ready["join_token_file"].as_str().unwrap(),
        "--name",
        "edge",
        "--memory",
        memory,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    command.env(
        "SKIFF_LOG",
        std::env::var("SKIFF_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
    );
    SkiffProcess::spawn(command)
}

/// What one `wrk --latency` run printed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

fn to_ms(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = value.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => return None,
    })
}

/// A controller (SQLite, or PostgreSQL at `db`) and one node declaring
/// `memory`, with an admin client and the `hello` example uploaded.
pub async fn one_node(
    dir: &std::path::Path,
    db: Option<&str>,
    memory: &str,
) -> (
    SkiffProcess,
    SkiffProcess,
    skiff_sdk::Client,
    skiff_sdk::Digest,
) {
    let controller = start_controller(&dir.join("controller"), db, "c1");
    let node = start_node(&controller, &dir.join("node"), memory);
    let admin = skiff_sdk::Client::new(&format!("http://{}", controller.addr()))
        .unwrap()
        .with_token(&token(&controller, "admin_token_file"));
    let artifact = admin
        .upload_artifact(bytes::Bytes::from(crate::common::example("hello")))
        .await
        .unwrap();
    (controller, node, admin, artifact.digest)
}

/// Runs `wrk` against `addr` with `extra` arguments (headers, a script).
pub fn wrk(
    addr: std::net::SocketAddr,
    threads: u32,
    connections: u32,
    seconds: u32,
    extra: &[&str],
) -> Run {
    let out = Command::new("wrk")
        .args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
        ])
        .args(extra)
        .arg(format!("http://{addr}/"))
        .output()
        .expect("running wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut run = Run::default();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => run.rps = v.parse().unwrap_or(0.0),
            (Some("50%"), Some(v)) => run.p50_ms = to_ms(v).unwrap_or(f64::NAN),
            (Some("99%"), Some(v)) => run.p99_ms = to_ms(v).unwrap_or(f64::NAN),
            (Some("Non-2xx"), _) => {
                run.errors += line
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            }
            (Some("Socket"), Some("errors:")) => {
                run.errors += line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>()
            }
            _ => {}
        }
    }
    assert!(run.rps > 0.0, "could not read wrk's output:\n{text}");
    run
}
