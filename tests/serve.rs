//! `skiff serve` as a real process: readiness line, any-host routing, the
//! compile cache across restarts, graceful stop, bad input, and memory
//! stability over many requests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::process::Command;

use common::{Client, SkiffProcess, example_path};
use http::{Method, StatusCode};

fn serve_args<'a>(component: &'a str, cache: &'a str) -> Vec<&'a str> {
    vec![
        "serve",
        component,
        "--addr",
        "127.0.0.1:0",
        "--cache-dir",
        cache,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_hello_and_a_restart_compiles_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap().to_owned();
    let hello = example_path("hello").to_str().unwrap().to_owned();
    let mut args = serve_args(&hello, &cache);
    args.extend(["--env", "VERSION=1.2.3"]);

    let first = SkiffProcess::start(&args);
    assert_eq!(first.ready["app"], "hello");
    assert_eq!(first.ready["cache"]["compiled"], 1, "{}", first.ready);
    // Any Host header reaches the only app.
    let reply = common::send(
        first.addr(),
        "whatever.example",
        Method::GET,
        "/",
        Default::default(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "Hello from Skiff! version=1.2.3\n");
    assert!(
        first.terminate().success(),
        "SIGTERM stops skiff serve cleanly"
    );

    let second = SkiffProcess::start(&args);
    assert_eq!(second.ready["cache"]["compiled"], 0, "{}", second.ready);
    assert_eq!(second.ready["cache"]["loaded"], 1, "{}", second.ready);
    let reply = common::send(
        second.addr(),
        "hello.localhost",
        Method::GET,
        "/",
        Default::default(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_leave_rss_bounded() {
    let cache = common::shared_cache_dir();
    let hello = example_path("hello").to_str().unwrap().to_owned();
    let skiff = SkiffProcess::start(&serve_args(&hello, cache.to_str().unwrap()));
    let mut client = Client::connect(skiff.addr()).await;
    let mut round = async |n: usize| {
        for _ in 0..n {
            let reply = client
                .send("hello.localhost", Method::GET, "/", Default::default())
                .await;
            assert_eq!(reply.status, StatusCode::OK);
        }
    };
    // Warm up: pool slots, allocator arenas and caches reach steady state.
    round(1_000).await;
    let before = skiff.rss_bytes();
    round(10_000).await;
    let after = skiff.rss_bytes();
    let growth = after.saturating_sub(before);
    eprintln!(
        "RSS before {} KiB, after {} KiB, growth {} KiB",
        before >> 10,
        after >> 10,
        growth >> 10
    );
    assert!(
        growth < 16 << 20,
        "RSS grew by {} KiB over 10,000 requests",
        growth >> 10
    );
}

fn skiff(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_gets_a_clear_message_and_exit_code() {
    let (code, err) = skiff(&["serve", "/nonexistent/app.wasm", "--addr", "127.0.0.1:0"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("reading component /nonexistent/app.wasm"),
        "{err}"
    );

    let not_wasm = common::root().join("Cargo.toml");
    let cache = tempfile::tempdir().unwrap();
    let (code, err) = skiff(&[
        "serve",
        not_wasm.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--cache-dir",
        cache.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Cargo.toml") && err.contains("compiling component"),
        "{err}"
    );

    let (code, err) = skiff(&["serve", "x.wasm", "--memory", "64Mb"]);
    assert_eq!(code, 2);
    assert!(err.contains("did you mean \"64Mi\"?"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_address_space_falls_back_to_on_demand_allocation() {
    let cache = tempfile::tempdir().unwrap();
    let script = format!(
        "ulimit -v 3000000 && exec {} serve {} --addr 127.0.0.1:0 --cache-dir {}",
        env!("CARGO_BIN_EXE_skiff"),
        example_path("hello").display(),
        cache.path().display()
    );
    let mut command = Command::new("sh");
    command.args(["-c", &script]);
    let skiff = SkiffProcess::spawn(command);
    assert_eq!(skiff.ready["allocator"], "on-demand", "{}", skiff.ready);
    for _ in 0..20 {
        let reply = common::send(
            skiff.addr(),
            "hello.localhost",
            Method::GET,
            "/",
            Default::default(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
}
