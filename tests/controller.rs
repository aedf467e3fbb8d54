//! `skiff controller` as a real process on the default SQLite store: the
//! README's first steps (find the token, upload hello, apply, read back),
//! a restart that keeps state and tokens, and a failed start that says why.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use bytes::Bytes;
use common::{SkiffProcess, example};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

async fn call(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    token: &str,
    ct: &str,
    body: Bytes,
) -> (StatusCode, serde_json::Value) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "controller")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", ct)
        .body(Full::new(body))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_apply_and_read_back_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let args = ["controller", "--listen", "127.0.0.1:0", "--data-dir", dir];
    let first = SkiffProcess::start(&args);
    assert_eq!(first.ready["role"], "controller");
    assert_eq!(first.ready["backend"], "sqlite");
    let token_file = first.ready["admin_token_file"].as_str().unwrap().to_owned();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "token files are private");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();

    let (status, art) = call(
        first.addr(),
        Method::POST,
        "/v1/artifacts",
        &token,
        "application/wasm",
        Bytes::from(example("hello")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{art}");
    let spec =
        serde_json::json!({ "artifact": art["digest"], "replicas": 1, "env": {"VERSION": "1"} });
    let (status, app) = call(
        first.addr(),
        Method::PUT,
        "/v1/apps/hello",
        &token,
        "application/json",
        Bytes::from(spec.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    assert!(
        first.terminate().success(),
        "SIGTERM stops the controller cleanly"
    );

    // Same data directory: state and tokens survive; no new tokens.
    let second = SkiffProcess::start(&args);
    let again = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(again, token);
    let (status, app) = call(
        second.addr(),
        Method::GET,
        "/v1/apps/hello",
        &token,
        "application/json",
        Bytes::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{app}");
    assert_eq!(app["spec"]["env"]["VERSION"], "1");
    assert_eq!(app["revision"], 1);
}

#[test]
fn an_unusable_database_stops_start_up_with_a_reason() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args([
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "mysql://nope/x",
        ])
        .current_dir(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unsupported database URL"), "{err}");
}
