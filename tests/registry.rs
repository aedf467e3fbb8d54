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
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::send;
use http::{Method, StatusCode};

/// A registry process on a free loopback port, storing in a temp dir.
struct Registry {
    _child: common::KillOnDrop,
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

/// A registry; with `htpasswd`, one that asks for basic auth.
async fn registry(htpasswd: Option<&str>) -> Option<Registry> {
    let program = common::required_program("docker-registry", "docker-registry")?;
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{}",
            dir.path().join("data").display(),
            match htpasswd {
                Some(_) => format!(
                    "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                ),
                None => String::new(),
            }
        ),
    )
    .unwrap();
    if let Some(line) = htpasswd {
        std::fs::write(dir.path().join("htpasswd"), format!("{line}\n")).unwrap();
    }
    let child = Command::new(program)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let registry = Registry {
        _child: common::KillOnDrop(child),
        addr,
        dir,
    };
    common::poll(
        Duration::from_secs(30),
        "the registry answering /v2/",
        || async {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => {
                    let reply = send(addr, "localhost", Method::GET, "/v2/", Bytes::new()).await;
                    // 401 when it asks for auth: up all the same.
                    if reply.status == StatusCode::OK || reply.status == StatusCode::UNAUTHORIZED {
                        Ok(())
                    } else {
                        Err(reply.status.to_string())
                    }
                }
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    Some(registry)
}

/// `skiff <args>` in `dir`: (exit code, stdout, stderr).
fn skiff(dir: &Path, args: &[&str]) -> (i32, String, String) {
    skiff_as(dir, args, None)
}

/// [`skiff`] with registry credentials `(user, password)`.
fn skiff_as(dir: &Path, args: &[&str], login: Option<(&str, &str)>) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skiff"));
    command
        .env_remove("SKIFF_REGISTRY_USERNAME")
        .env_remove("SKIFF_REGISTRY_PASSWORD");
    if let Some((user, password)) = login {
        command
            .env("SKIFF_REGISTRY_USERNAME", user)
            .env("SKIFF_REGISTRY_PASSWORD", password);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .args(args)
        .current_dir(dir)
        .env_remove("SKIFF_CONTROLLER")
        .env_remove("SKIFF_TOKEN")
        .env_remove("SKIFF_DATA_DIR")
        .output()
        .unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
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
    let deploy = format!("oci://{tag}");
    let (code, _, err) = skiff_as(work, &["deploy", &deploy], None);
    assert_ne!(code, 0);
    assert!(err.contains("refused anonymous access"), "{err}");
    let (code, _, err) = skiff_as(work, &["deploy", &deploy], Some(("skiff", "s3cret-pass")));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        hello_says(ingress).await,
        "Hello from Skiff! version=1.0.0\n"
    );
    drop(up);
}

/// Pushes `layers` (media type, bytes) as an image with the Wasm config.
async fn push_raw(
    registry: std::net::SocketAddr,
    tag: &str,
    layers: &[(&str, &[u8], Option<&str>)],
) {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let layers: Vec<ImageLayer> = layers
        .iter()
        .map(|(media, bytes, title)| {
            ImageLayer::new(
                bytes.to_vec(),
                (*media).to_owned(),
                title.map(|t| {
                    std::collections::BTreeMap::from([(
                        skiff_sdk::oci::TITLE.to_owned(),
                        t.to_owned(),
                    )])
                }),
            )
        })
        .collect();
    let config = Config::new(b"{}".to_vec(), skiff_sdk::oci::WASM_CONFIG.to_owned(), None);
    let reference: oci_client::Reference = format!("{registry}/{tag}").parse().unwrap();
    client
        .push(
            &reference,
            &layers,
            config,
            &oci_client::secrets::RegistryAuth::Anonymous,
            None,
        )
        .await
        .unwrap();
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
        "component.wasm",
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

    // The registry's copy of the component tampered with: its bytes no
    // longer match the digest the manifest names.
    let (_, body) = registry_get(registry.addr, "/v2/skiff/hello/manifests/v1").await;
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let hex = layer.strip_prefix("sha256:").unwrap();
    let blob = registry
        .dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    fails(
        work,
        &["deploy", &format!("oci://{reg}/skiff/hello:v1")],
        "digest",
    );

    assert_eq!(
        hello_says(ingress).await,
        "Hello from Skiff! version=1.0.0\n"
    );
    let history = ok(work, &["rollout", "history", "hello"]);
    assert_eq!(history.lines().count(), 2, "one revision only:\n{history}");
    drop(up);
}
