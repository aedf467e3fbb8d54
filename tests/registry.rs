//! Apps in an OCI registry, against a real one: Debian's `docker-registry`
//! (the CNCF distribution registry) on loopback, and a real `skiff up`.
//! `skiff push` in the Wasm OCI layout (checked with plain HTTP against the
//! registry, as `wkg`/`oras` read it), `skiff deploy oci://…` by tag and by
//! digest, a moved tag that changes nothing until applied again, the
//! reference and digest in `skiff rollout history`, and bad references.
//!
//! Needs `docker-registry` (installed by `.ci/run`); skipped without it
//! outside CI, a failure in CI.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use common::registry::{push_raw, registry};
use common::send;
use http::{Method, StatusCode};

/// `skiff <args>` in `dir`: (exit code, stdout, stderr).
fn skiff(dir: &Path, args: &[&str]) -> (i32, String, String) {
    skiff_as(dir, args, None)
}

/// [`skiff`] with registry credentials `(user, password)`.
fn skiff_as(dir: &Path, args: &[&str], login: Option<(&str, &str)>) -> (i32, String, String) {
    let mut command = common::skiff_command(dir);
    if let Some((user, password)) = login {
        command
            .env("SKIFF_REGISTRY_USERNAME", user)
            .env("SKIFF_REGISTRY_PASSWORD", password);
    }
    command.args(args);
    common::outcome(command)
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = skiff(dir, args);
    assert_eq!(code, 0, "skiff {args:?} failed:\n{err}");
    out
}

fn fails(dir: &Path, args: &[&str], message: &str) {
    let (code, _, err) = skiff(dir, args);
    assert_ne!(code, 0, "skiff {args:?} should fail");
    assert!(
        err.contains(message),
        "skiff {args:?}: expected {message:?} in:\n{err}"
    );
}

/// A GET to the registry with an `Accept` for OCI manifests.
async fn registry_get(addr: std::net::SocketAddr, path: &str) -> (StatusCode, Vec<u8>) {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(
            http::header::ACCEPT,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

async fn hello_says(ingress: std::net::SocketAddr) -> String {
    send(ingress, "hello.localhost", Method::GET, "/", Bytes::new())
        .await
        .text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_deploy_from_a_registry_by_tag_and_by_digest() {
    let Some(registry) = registry(None).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    common::examples_dir();
    let reg = registry.addr.to_string();

    // Push: the digest printed, the layout as wkg and oras read it.
    let v1 = common::hello_manifest(work, "1.0.0");
    let tag = format!("{reg}/skiff/hello:v1");
    let out = ok(work, &["push", v1.to_str().unwrap(), &tag]);
    let pushed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let digest1 = pushed["digest"].as_str().unwrap().to_owned();
    assert!(digest1.starts_with("sha256:"), "{out}");
    let (status, body) = registry_get(registry.addr, "/v2/skiff/hello/manifests/v1").await;
    assert_eq!(status, StatusCode::OK);
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(
        manifest["layers"][1]["annotations"]["org.opencontainers.image.title"],
        "skiff.toml"
    );
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let (status, component) =
        registry_get(registry.addr, &format!("/v2/skiff/hello/blobs/{layer}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(component, common::example("hello"));
    // The same inputs push the same manifest.
    let again: serde_json::Value =
        serde_json::from_str(ok(work, &["push", v1.to_str().unwrap(), &tag]).trim()).unwrap();
    assert_eq!(again["digest"], digest1.as_str());

    // Deploy by tag, through a real cluster.
    let up = common::skiff_up(work);
    let ingress = up.ingress();
    ok(work, &["deploy", &format!("oci://{tag}")]);
    assert_eq!(
        hello_says(ingress).await,
        "Hello from Skiff! version=1.0.0\n"
    );
    let history = ok(work, &["rollout", "history", "hello"]);
    assert!(
        history.contains(&format!("oci://{tag}@{digest1}")),
        "{history}"
    );

    // The tag moves to 2.0.0: nothing changes until it is applied again.
    let v2 = common::hello_manifest(work, "2.0.0");
    let moved: serde_json::Value =
        serde_json::from_str(ok(work, &["push", v2.to_str().unwrap(), &tag]).trim()).unwrap();
    let digest2 = moved["digest"].as_str().unwrap().to_owned();
    assert_ne!(digest2, digest1);
    assert_eq!(
        hello_says(ingress).await,
        "Hello from Skiff! version=1.0.0\n"
    );
    ok(work, &["deploy", &format!("oci://{tag}")]);
    assert_eq!(
        hello_says(ingress).await,
        "Hello from Skiff! version=2.0.0\n"
    );

    // By digest: the first push again, whatever the tag says.
    ok(
        work,
        &["deploy", &format!("oci://{reg}/skiff/hello@{digest1}")],
    );
    assert_eq!(
        hello_says(ingress).await,
        "Hello from Skiff! version=1.0.0\n"
    );
    let history = ok(work, &["rollout", "history", "hello"]);
    assert!(history.contains(&format!("@{digest2}")), "{history}");
    // Roll back to the revision before (the moved tag's 2.0.0), pinned as
    // it was applied.
    ok(work, &["rollout", "undo", "hello"]);
    ok(work, &["rollout", "status", "hello"]);
    assert_eq!(
        hello_says(ingress).await,
        "Hello from Skiff! version=2.0.0\n"
    );
    ok(work, &["rollout", "undo", "hello"]);
    ok(work, &["rollout", "status", "hello"]);
    assert_eq!(
        hello_says(ingress).await,
        "Hello from Skiff! version=1.0.0\n"
    );

    // Bad input: each a clear error, and hello keeps serving.
    fails(
        work,
        &["deploy", &format!("oci://{reg}/skiff/hello")],
        "give a tag",
    );
    fails(
        work,
        &["deploy", &format!("oci://{reg}/skiff/nothing:v1")],
        "no such repository or tag",
    );
    fails(
        work,
        &["deploy", "oci://127.0.0.1:1/skiff/hello:v1"],
        "cannot reach the registry 127.0.0.1:1",
    );
    fails(
        work,
        &["deploy", "oci://no-such-registry.invalid/skiff/hello:v1"],
        "cannot reach the registry no-such-registry.invalid",
    );
    fails(
        work,
        &[
            "push",
            v1.to_str().unwrap(),
            &format!("{reg}/skiff/hello@{digest1}"),
        ],
        "push to a tag",
    );
    assert_eq!(
        hello_says(ingress).await,
        "Hello from Skiff! version=1.0.0\n"
    );
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_htpasswd_auth_takes_the_right_credentials_only() {
    let hash = bcrypt::hash("s3cret-pass", 5).unwrap();
    let Some(registry) = registry(Some(&format!("skiff:{hash}"))).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    common::examples_dir();
    let v1 = common::hello_manifest(work, "1.0.0");
    let tag = format!("{}/skiff/hello:v1", registry.addr);
    let push = ["push", v1.to_str().unwrap(), tag.as_str()];

    // Anonymous, then a wrong password: refused, naming the registry and
    // never the secret.
    let (code, _, err) = skiff_as(work, &push, None);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "the registry {} refused anonymous access",
            registry.addr
        )),
        "{err}"
    );
    let (code, _, err) = skiff_as(work, &push, Some(("skiff", "wrong-pass")));
    assert_ne!(code, 0);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("wrong-pass"), "the secret leaked: {err}");

    // The right ones push and deploy.
    let (code, out, err) = skiff_as(work, &push, Some(("skiff", "s3cret-pass")));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sha256:"), "{out}");
    assert!(!err.contains("s3cret-pass") && !out.contains("s3cret-pass"));
    let up = common::skiff_up(work);
    let ingress = up.ingress();
    let admin = common::cluster::admin_client_in(work, &up);
    let reg = registry.addr.to_string();
    let deploy = format!("oci://{tag}");
    let creds = Some(("skiff", "s3cret-pass"));
    // The CLI reads the app's skiff.toml with its own credentials ...
    let (code, _, err) = skiff_as(work, &["deploy", &deploy], None);
    assert_ne!(code, 0);
    assert!(err.contains("refused anonymous access"), "{err}");
    // ... the controller pulls with those `skiff registry login` stored.
    let (code, _, err) = skiff_as(work, &["deploy", &deploy], creds);
    assert_ne!(code, 0);
    assert!(
        err.contains("refused anonymous access") && err.contains("skiff registry login"),
        "{err}"
    );
    let (code, _, err) = login(work, &reg, "wrong-pass");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = skiff_as(work, &["deploy", &deploy], creds);
    assert_ne!(code, 0);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("wrong-pass"), "the secret leaked: {err}");
    let (code, _, err) = login(work, &reg, "s3cret-pass");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = skiff_as(work, &["deploy", &deploy], creds);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        hello_says(ingress).await,
        "Hello from Skiff! version=1.0.0\n"
    );

    // The node pulled the component from the registry itself, with the
    // credentials the controller handed it, and wrote them nowhere on its
    // disk; no listing shows the password.
    assert!(layer_pulls(&admin, "registry").await >= 1);
    assert_eq!(layer_pulls(&admin, "controller").await, 0);
    let listed = ok(work, &["registry", "list"]);
    assert!(
        listed.contains(&reg) && listed.contains("skiff"),
        "{listed}"
    );
    let logins = serde_json::to_string(&admin.registry_logins().await.unwrap()).unwrap();
    assert!(
        !listed.contains("s3cret") && !logins.contains("s3cret"),
        "{logins}"
    );
    assert_eq!(
        files_containing(&work.join("skiff-data/nodes"), b"s3cret-pass"),
        Vec::<String>::new()
    );
    // Only a node running an app from that registry gets them.
    let nodes = admin.nodes().await.unwrap();
    let other = admin
        .node_registry_credentials(&nodes[0].name, "127.0.0.1:1")
        .await
        .unwrap_err();
    assert_eq!(other.status(), Some(StatusCode::FORBIDDEN), "{other}");
    ok(work, &["registry", "logout", &reg]);
    assert_eq!(admin.registry_logins().await.unwrap(), vec![]);
    drop(up);
}

/// `skiff registry login REGISTRY --username skiff --password-stdin`.
fn login(dir: &Path, registry: &str, password: &str) -> (i32, String, String) {
    use std::io::Write as _;
    let mut child = common::skiff_command(dir)
        .args([
            "registry",
            "login",
            registry,
            "--username",
            "skiff",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// Layers every node counted fetching, `from` the registry or the
/// controller.
async fn layer_pulls(admin: &skiff_sdk::Client, from: &str) -> u64 {
    let key = format!("skiff_node_layer_pulls_total{{from=\"{from}\"}} ");
    let mut total = 0;
    for node in admin.nodes().await.unwrap() {
        let metrics = admin.node_metrics(&node.name).await.unwrap();
        total += metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap());
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_pull_from_the_registry_and_a_registry_stopped_mid_rollout_stops_nothing() {
    let Some(registry) = registry(None).await else {
        return;
    };
    let reg = registry.addr.to_string();
    let hello = common::example("hello");
    let echo = common::example("echo");
    let hello3 = common::variant(&hello, 3);
    for (tag, component) in [("v1", &hello), ("v2", &echo), ("v3", &hello3)] {
        push_raw(
            registry.addr,
            &format!("skiff/app:{tag}"),
            &[("application/wasm", component, None)],
        )
        .await;
    }
    let cluster =
        common::cluster::Cluster::start(&[("n1", "zone=a"), ("n2", "zone=b"), ("n3", "zone=c")])
            .await;
    let admin = &cluster.admin;
    let spec = common::cluster::hello_spec(skiff_sdk::Digest::of(b""), 1);
    let image = |tag: &str| format!("oci://{reg}/skiff/app:{tag}");

    // An app spec naming the image by tag: pinned when applied, and the
    // nodes pull the component from the registry, not the controller.
    let app = admin
        .apply_app_image("app", &spec, &image("v1"), false)
        .await
        .unwrap();
    let source = app.spec.source.clone().unwrap();
    assert!(
        source.starts_with(&format!("{}@sha256:", image("v1"))),
        "{source}"
    );
    assert_eq!(app.spec.artifact, skiff_sdk::Digest::of(&hello));
    cluster.wait_revision("app", app.revision, 3).await;
    assert!(layer_pulls(admin, "registry").await >= 1);
    assert_eq!(layer_pulls(admin, "controller").await, 0);

    // v3 read once by the controller (an app with no replicas, so no node
    // has it). Under load, v2 is applied by tag and the registry stops
    // while it rolls out: it completes, from the controller's copy where a
    // node had not pulled yet.
    let mut canary = spec.clone();
    canary.replicas = 0;
    let v3 = admin
        .apply_app_image("canary", &canary, &image("v3"), false)
        .await
        .unwrap()
        .spec
        .source
        .unwrap();
    let load = common::cluster::Load::start(&cluster.ingresses(), "app.localhost", 2).await;
    let v2 = admin
        .apply_app_image("app", &spec, &image("v2"), false)
        .await
        .unwrap();
    drop(registry);
    assert_eq!(v2.spec.artifact, skiff_sdk::Digest::of(&echo));
    cluster.wait_revision("app", v2.revision, 3).await;

    // By tag, the registry must be asked: a clear 422 naming it.
    let refused = admin
        .apply_app_image("app", &spec, &image("v2"), false)
        .await
        .unwrap_err();
    match &refused {
        skiff_sdk::ClientError::Api { status, body, .. } => {
            assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(body.error.field.as_deref(), Some("artifact"));
            assert!(
                body.error
                    .message
                    .contains(&format!("cannot reach the registry {reg}")),
                "{}",
                body.error.message
            );
        }
        other => panic!("expected a 422, got {other}"),
    }
    // Pinned to what the controller read before: every node takes the
    // controller's copy. Then a rollback, still without the registry.
    let before = layer_pulls(admin, "controller").await;
    let rolled = admin
        .apply_app_image("app", &spec, &v3, false)
        .await
        .unwrap();
    assert_eq!(rolled.spec.artifact, skiff_sdk::Digest::of(&hello3));
    cluster.wait_revision("app", rolled.revision, 3).await;
    assert!(layer_pulls(admin, "controller").await > before);
    let back = admin.rollback("app", None).await.unwrap();
    assert_eq!(back.spec.artifact, skiff_sdk::Digest::of(&echo));
    cluster.wait_revision("app", back.revision, 3).await;

    let seen = load.stop().await;
    let failed = seen.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(seen.ok.load(std::sync::atomic::Ordering::Relaxed) > 0);
    // echo answers GET / with an empty body; hello never does.
    assert_eq!(cluster.get("n1", "app", "/").await.text(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_foreign_artifacts_are_refused_and_the_app_keeps_serving() {
    let Some(registry) = registry(None).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    common::examples_dir();
    let reg = registry.addr.to_string();
    let v1 = common::hello_manifest(work, "1.0.0");
    ok(
        work,
        &[
            "push",
            v1.to_str().unwrap(),
            &format!("{reg}/skiff/hello:v1"),
        ],
    );
    let up = common::skiff_up(work);
    let ingress = up.ingress();
    ok(work, &["deploy", &format!("oci://{reg}/skiff/hello:v1")]);
    let manifest_toml = std::fs::read(v1.join("skiff.toml")).unwrap();

    // A layer that is not a component.
    push_raw(
        registry.addr,
        "skiff/foreign:v1",
        &[
            ("application/wasm", b"not a component", None),
            (
                skiff_sdk::oci::MANIFEST_LAYER,
                &manifest_toml,
                Some("skiff.toml"),
            ),
        ],
    )
    .await;
    fails(
        work,
        &["deploy", &format!("oci://{reg}/skiff/foreign:v1")],
        "not a valid Wasm component",
    );
    // A plain component artifact without Skiff's manifest layer.
    push_raw(
        registry.addr,
        "skiff/bare:v1",
        &[("application/wasm", &common::example("hello"), None)],
    )
    .await;
    fails(
        work,
        &["deploy", &format!("oci://{reg}/skiff/bare:v1")],
        "no skiff.toml layer",
    );
    // A layer of another media type.
    push_raw(
        registry.addr,
        "skiff/odd:v1",
        &[("application/vnd.oci.image.layer.v1.tar", b"tar", None)],
    )
    .await;
    fails(
        work,
        &["deploy", &format!("oci://{reg}/skiff/odd:v1")],
        "oci://",
    );

    // The registry's copy of a component tampered with before anything
    // read it: its bytes no longer match the digest the manifest names.
    // The controller refuses it and keeps nothing of it.
    let echo = common::example("echo");
    push_raw(
        registry.addr,
        "skiff/tampered:v1",
        &[
            ("application/wasm", &echo, None),
            (
                skiff_sdk::oci::MANIFEST_LAYER,
                &manifest_toml,
                Some("skiff.toml"),
            ),
        ],
    )
    .await;
    let hex = skiff_sdk::Digest::of(&echo).hex();
    let blob = registry
        .dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data");
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    fails(
        work,
        &["deploy", &format!("oci://{reg}/skiff/tampered:v1")],
        "digest",
    );
    let admin = common::cluster::admin_client_in(work, &up);
    let kept = admin
        .download_artifact(&skiff_sdk::Digest::of(&echo))
        .await
        .unwrap_err();
    assert_eq!(kept.status(), Some(StatusCode::NOT_FOUND), "{kept}");

    assert_eq!(
        hello_says(ingress).await,
        "Hello from Skiff! version=1.0.0\n"
    );
    let history = ok(work, &["rollout", "history", "hello"]);
    assert_eq!(history.lines().count(), 2, "one revision only:\n{history}");
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_from_a_registry_is_pinned_by_skiff_lock() {
    let Some(registry) = registry(None).await else {
        return;
    };
    common::examples_dir();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let reg = registry.addr.to_string();
    let greeter = common::example("greeter");
    push_raw(
        registry.addr,
        "deps/greeter:v1",
        &[("application/wasm", &greeter, None)],
    )
    .await;
    let app = common::greet_manifest(
        work,
        "greet",
        &format!(
            "\"{}\" = {{ oci = \"oci://{reg}/deps/greeter:v1\" }}",
            common::GREETER
        ),
    );
    let out = work.join("greet.skiff");
    let package = [
        "package",
        app.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-build",
    ];
    let first = ok(work, &package);
    let lock = std::fs::read_to_string(app.join("skiff.lock")).unwrap();
    assert!(
        lock.contains(&format!("source = \"oci://{reg}/deps/greeter:v1@sha256:"))
            && lock.contains(&skiff_sdk::Digest::of(&greeter).to_string()),
        "{lock}"
    );

    // The tag moves to a component that does not export the interface:
    // the lock keeps the build on what it pinned.
    push_raw(
        registry.addr,
        "deps/greeter:v1",
        &[("application/wasm", &common::example("hello"), None)],
    )
    .await;
    assert_eq!(ok(work, &package), first);
    // Without the lock the tag is resolved again, and the component it
    // names now is refused, naming the interface.
    std::fs::remove_file(app.join("skiff.lock")).unwrap();
    fails(
        work,
        &package,
        &format!("does not export {}", common::GREETER),
    );
}
