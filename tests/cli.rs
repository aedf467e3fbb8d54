//! The CLI end to end against a real `skiff up` process: deploy the hello
//! example, curl it, scale, deploy a new revision and roll it back, and
//! every error a user can provoke, each with its message and exit code.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{root, send};
use http::{Method, StatusCode};

/// `skiff <args>` run in `dir`; returns (exit code, stdout, stderr).
fn skiff(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut command = common::skiff_command(dir);
    command.args(args);
    common::outcome(command)
}

/// `skiff <args>` with its stdout a pipe whose reader is already gone (as
/// `| head` once it has its lines); returns (exit code, stderr).
fn with_stdout_closed(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut child = common::skiff_command(dir)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = skiff(dir, args);
    assert_eq!(code, 0, "skiff {args:?} failed:\n{err}");
    out
}

fn fails(dir: &Path, args: &[&str], code: i32, message: &str) {
    let (got, _, err) = skiff(dir, args);
    assert_eq!(got, code, "skiff {args:?}: exit {got}, stderr:\n{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error: ")).count(),
        1,
        "one error line: {err}"
    );
    assert!(
        err.contains(message),
        "skiff {args:?}: expected {message:?} in:\n{err}"
    );
}

async fn get(addr: std::net::SocketAddr, app: &str) -> common::Reply {
    send(
        addr,
        &format!("{app}.localhost"),
        Method::GET,
        "/",
        Bytes::new(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_build_package_deploy_curl_scale_logs_and_roll_back_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    common::examples_dir();
    let up = common::skiff_up(work);
    assert_eq!(up.ready["role"], "up");
    let ingress = up.ingress();

    // The real example's manifest, built by its own build command.
    let out = ok(
        work,
        &["deploy", root().join("examples/hello").to_str().unwrap()],
    );
    let ready: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(ready["app"], "hello");
    assert_eq!(ready["revision"], 1);
    let reply = get(ingress, "hello").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "Hello from Skiff! version=1.0.0\n");

    // Tables and JSON.
    let apps = ok(work, &["apps"]);
    assert!(apps.starts_with("NAME"), "{apps}");
    assert!(
        apps.lines()
            .any(|l| l.starts_with("hello") && l.contains("1/1")),
        "{apps}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(work, &["apps", "-o", "json"])).unwrap();
    assert_eq!(json[0]["name"], "hello");
    let nodes = ok(work, &["nodes"]);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("local") && l.contains("Ready")),
        "{nodes}"
    );

    // Scale, and see it in `skiff app`.
    ok(work, &["scale", "hello", "2"]);
    let app = common::poll(Duration::from_secs(30), "hello scaled to 2", || async {
        let app: serde_json::Value =
            serde_json::from_str(&ok(work, &["app", "hello", "-o", "json"])).unwrap();
        if app["app"]["status"]["ready_replicas"] == 2 {
            Ok(app)
        } else {
            Err(app)
        }
    })
    .await;
    assert_eq!(app["replicas"].as_array().unwrap().len(), 2);
    let shown = ok(work, &["app", "hello"]);
    for part in ["Replicas:", "Conditions:", "Events:", "AppScaled"] {
        assert!(shown.contains(part), "{part} missing in:\n{shown}");
    }

    // A new revision, then back.
    let v2 = common::hello_manifest(work, "2.0.0");
    let out = ok(work, &["deploy", v2.to_str().unwrap()]);
    assert!(out.contains("\"revision\":2"), "{out}");
    assert_eq!(
        get(ingress, "hello").await.text(),
        "Hello from Skiff! version=2.0.0\n"
    );
    let history = ok(work, &["rollout", "history", "hello"]);
    assert!(
        history
            .lines()
            .any(|l| l.starts_with('2') && l.contains("current")),
        "{history}"
    );
    ok(work, &["rollout", "undo", "hello"]);
    // `rollout status` follows the rollback to its end.
    let (code, out, err) = skiff(work, &["rollout", "status", "hello"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("hello is ready"), "{err}");
    assert!(out.contains("\"revision\":3"), "{out}");
    common::poll(Duration::from_secs(30), "the rollback served", || async {
        let text = get(ingress, "hello").await.text();
        if text == "Hello from Skiff! version=1.0.0\n" {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;

    // A release whose health check fails: deploy reports the automatic
    // rollback and exits 8; the app still answers with the good version
    // (once the current one has settled as the good revision).
    common::poll(
        Duration::from_secs(30),
        "the current revision proven",
        || async {
            let app: serde_json::Value =
                serde_json::from_str(&ok(work, &["app", "hello", "-o", "json"])).unwrap();
            if app["app"]["status"]["good_revision"] == app["app"]["revision"] {
                Ok(())
            } else {
                Err(app)
            }
        },
    )
    .await;
    let broken = common::hello_manifest_unhealthy(work, "broken");
    fails(
        work,
        &["deploy", broken.to_str().unwrap()],
        8,
        "the rollout failed and was rolled back",
    );
    assert_eq!(
        get(ingress, "hello").await.text(),
        "Hello from Skiff! version=1.0.0\n"
    );

    // Logs: the guest's output from every replica, through the controller.
    ok(
        work,
        &["deploy", root().join("examples/echo").to_str().unwrap()],
    );
    for path in ["/one", "/two"] {
        let reply = send(ingress, "echo.localhost", Method::GET, path, Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let logs = ok(work, &["logs", "echo"]);
    assert!(logs.contains("local | echo: GET /one"), "{logs}");
    assert!(logs.contains("local | echo: GET /two"), "{logs}");
    // `skiff logs … | head` and `skiff events | head`: the reader closes
    // the pipe; the command exits 0 without a panic.
    for args in [&["logs", "echo"][..], &["events"][..]] {
        let (code, stderr) = with_stdout_closed(work, args);
        assert_eq!(code, 0, "skiff {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "skiff {args:?}: {stderr}");
    }
    // A node's logs are the controller's to read: without the key, 401.
    let stolen = send(
        ingress,
        "_skiff",
        Method::GET,
        "/v1/logs?app=echo",
        Bytes::new(),
    )
    .await;
    assert_eq!(stolen.status, StatusCode::UNAUTHORIZED);
    // Following: a line written after the command started shows up.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["logs", "echo", "-f"])
        .current_dir(work)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    'follow: loop {
        send(
            ingress,
            "echo.localhost",
            Method::GET,
            "/three",
            Bytes::new(),
        )
        .await;
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if line.contains("echo: GET /three") {
                break 'follow;
            }
            seen.push(line);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "followed lines: {seen:?}"
        );
    }
    follow.kill().unwrap();
    follow.wait().unwrap();

    // A new app from the template: build, package (twice: same bytes), and
    // deploy the bundle.
    ok(work, &["new", "my-app"]);
    let first: serde_json::Value =
        serde_json::from_str(ok(work, &["package", "my-app", "-O", "a.skiff"]).trim()).unwrap();
    let again: serde_json::Value =
        serde_json::from_str(ok(work, &["package", "my-app", "-O", "b.skiff"]).trim()).unwrap();
    assert_eq!(
        first["digest"], again["digest"],
        "packaging is deterministic"
    );
    let out = ok(work, &["deploy", "a.skiff"]);
    assert!(out.contains("\"app\":\"my-app\""), "{out}");
    let reply = get(ingress, "my-app").await;
    assert_eq!(reply.text(), "Hello from my-app! version=0.1.0\n");
    fails(work, &["new", "my-app"], 2, "my-app already exists");

    // Errors a user can provoke, each with its message and exit code.
    fails(
        work,
        &["deploy", "no-such-dir"],
        2,
        "no-such-dir/skiff.toml: not found",
    );
    let bad = work.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let write = |text: &str| std::fs::write(bad.join("skiff.toml"), text).unwrap();
    write(
        "manifest_version = 1\nname = \"bad\"\n\n[component]\nsource = \"bad.wasm\"\n\n[resources]\nmemory = \"64MB\"\n",
    );
    fails(
        work,
        &["deploy", "bad"],
        2,
        "bad/skiff.toml:8: resources.memory: \"64MB\" is not a quantity",
    );
    fails(work, &["deploy", "bad"], 2, "did you mean \"64Mi\"?");
    write(
        "manifest_version = 1\nname = \"bad\"\ncolour = \"red\"\n\n[component]\nsource = \"bad.wasm\"\n",
    );
    fails(
        work,
        &["deploy", "bad"],
        2,
        "bad/skiff.toml:3: colour: unknown field `colour`",
    );
    write(
        "manifest_version = 1\nname = \"bad\"\n\n[component]\nsource = \"bad.wasm\"\nbuild = \"echo not wasm > bad.wasm\"\n",
    );
    fails(
        work,
        &["deploy", "bad"],
        3,
        "bad.wasm: not a Wasm component",
    );
    write(
        "manifest_version = 1\nname = \"bad\"\n\n[component]\nsource = \"bad.wasm\"\nbuild = \"exit 7\"\n",
    );
    fails(work, &["deploy", "bad"], 3, "the build command failed");
    fails(
        work,
        &["apps", "--controller", "http://127.0.0.1:1"],
        4,
        "cannot reach the controller at http://127.0.0.1:1",
    );
    fails(
        work,
        &["apps", "--token", "wrong"],
        5,
        "the controller refused the token",
    );
    fails(work, &["app", "ghost"], 6, "app \"ghost\" not found");
    fails(
        work,
        &["rollout", "undo", "echo"],
        7,
        "app \"echo\" has no earlier revision to return to (revision)",
    );
    fails(
        work,
        &["rollout", "undo", "hello", "--to", "99"],
        7,
        "app \"hello\" has no revision 99",
    );
    let elsewhere = tempfile::tempdir().unwrap();
    fails(elsewhere.path(), &["apps"], 2, "no admin token");
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_stuck_in_its_health_check_holds_up_no_other_app() {
    common::examples_dir();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let up = common::skiff_up(work);
    let ingress = up.ingress();
    let v1 = common::hello_manifest(work, "1.0.0");
    ok(work, &["deploy", v1.to_str().unwrap()]);

    // Revision 2 keeps failing its health check, given up only after 1,000
    // checks a second apart: its rollout stays in progress ...
    let stuck = common::hello_manifest_unhealthy(work, "stuck");
    let manifest = std::fs::read_to_string(stuck.join("skiff.toml"))
        .unwrap()
        .replace(
            "interval = \"100ms\"",
            "interval = \"1s\"\nfailure_threshold = 1000",
        );
    std::fs::write(stuck.join("skiff.toml"), manifest).unwrap();
    ok(work, &["deploy", "--no-wait", stuck.to_str().unwrap()]);

    // ... while another app on the same node deploys and serves at once,
    // and hello keeps serving revision 1.
    let other = common::hello_manifest(work, "other");
    let manifest = std::fs::read_to_string(other.join("skiff.toml"))
        .unwrap()
        .replace("name = \"hello\"", "name = \"other\"");
    std::fs::write(other.join("skiff.toml"), manifest).unwrap();
    ok(
        work,
        &["deploy", "--timeout", "30s", other.to_str().unwrap()],
    );
    assert_eq!(
        get(ingress, "other").await.text(),
        "Hello from Skiff! version=other\n"
    );
    assert_eq!(
        get(ingress, "hello").await.text(),
        "Hello from Skiff! version=1.0.0\n"
    );
    let app = ok(work, &["app", "hello", "-o", "json"]);
    let app: serde_json::Value = serde_json::from_str(&app).unwrap();
    assert_eq!(app["app"]["revision"], 2, "{app}");
    drop(up);
}
