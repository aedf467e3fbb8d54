//! The sandbox under attack, on a real runtime serving real guests over
//! loopback: a guest built to escape (`examples/escape`) gets nothing it
//! was not granted and every denial is logged; grants open exactly what
//! they name; static files are the only files and read-only; capability
//! changes need approval. Misbehaving guests are in `guest_abuse.rs`,
//! misbehaving clients in `client_abuse.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{TestNode, example};
use http::StatusCode;
use skiff_runtime::{Capabilities, Deployment};
use skiff_sdk::Quota;
use skiff_sdk::capability::OutboundRules;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A plain HTTP server on loopback that answers `200 reached` and counts
/// the connections it accepted: the stand-in for "something on the node's
/// loopback" (the controller's API, a database, another app).
struct Target {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Target {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nreached\n")
                        .await;
                });
            }
        });
        Self { addr, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn deploy(
    node: &TestNode,
    name: &str,
    example_name: &str,
    quota: Quota,
    env: &[(&str, &str)],
    capabilities: Capabilities,
) {
    let digest = node
        .runtime
        .store_component(&example(example_name))
        .unwrap();
    node.runtime
        .deploy(Deployment {
            name: name.to_owned(),
            digest,
            quota,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            capabilities,
        })
        .unwrap();
    node.runtime.warm(name).await.unwrap();
}

fn grants(entries: &[String]) -> Capabilities {
    Capabilities {
        outbound: Arc::new(OutboundRules::parse(entries).unwrap()),
        files: None,
    }
}

/// The escape guest's verdict for `path`.
async fn attempt(node: &TestNode, app: &str, path: &str) -> String {
    let reply = node.get(app, path).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
    reply.text().trim_end().to_owned()
}

fn denied_lines(node: &TestNode, app: &str) -> Vec<String> {
    node.runtime
        .logs(app, 0)
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .filter(|l| l.starts_with("skiff: ") && l.contains(" denied: "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_built_to_escape_gets_nothing_it_was_not_granted() {
    let node = TestNode::start(|_| {}).await;
    let target = Target::start().await;
    // The test process has a rich environment (PATH, HOME, CARGO_*); none
    // of it may reach the guest.
    assert!(std::env::var_os("PATH").is_some());
    deploy(
        &node,
        "escape",
        "escape",
        Quota::default(),
        &[("GREETING", "hi")],
        Capabilities::default(),
    )
    .await;

    let ingress = node.addr;
    let cases = [
        format!("/fetch?url=http://{}/v1/apps", target.addr),
        format!("/fetch?url=http://{ingress}/"),
        format!("/fetch?url=http://localhost:{}/", target.addr.port()),
        "/fetch?url=http://169.254.169.254/latest/meta-data/".to_owned(),
        "/fetch?url=https://example.com/".to_owned(),
        format!("/connect?addr={}", target.addr),
        format!("/connect?addr={ingress}"),
    ];
    for case in &cases {
        let verdict = attempt(&node, "escape", case).await;
        assert!(verdict.starts_with("denied:"), "{case}: {verdict}");
    }
    assert_eq!(
        target.connections(),
        0,
        "nothing reached the loopback target"
    );

    for path in [
        "/etc/passwd",
        "/proc/self/environ",
        "./Cargo.toml",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("Cargo.toml")
            .to_str()
            .unwrap(),
    ] {
        let verdict = attempt(&node, "escape", &format!("/read?path={path}")).await;
        assert!(verdict.starts_with("denied:"), "{path}: {verdict}");
    }
    assert!(
        attempt(&node, "escape", "/ls?path=/")
            .await
            .starts_with("denied:")
    );
    assert!(
        attempt(&node, "escape", "/write?path=/tmp/pwned")
            .await
            .starts_with("denied:")
    );
    assert_eq!(
        attempt(&node, "escape", "/env").await,
        "allowed: GREETING=hi"
    );

    // Every denial is logged where the app's owner sees it, and counted:
    // five HTTP requests, two sockets and six file system attempts (the
    // environment is the app's own: nothing of the node's is there to deny).
    let stats = node.runtime.app_stats("escape").unwrap();
    assert_eq!(stats.denied(), 13);
    let lines = denied_lines(&node, "escape");
    assert_eq!(lines.len(), 13, "{lines:#?}");
    let files: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.starts_with("skiff: file system access to any file denied: the app declares no files")
        })
        .collect();
    assert_eq!(files.len(), 6, "{lines:#?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("outbound access to a tcp socket denied"))
            .count(),
        2,
        "{lines:#?}"
    );
    assert!(
        lines[0].contains("is not in the app's allowed_outbound_hosts"),
        "{}",
        lines[0]
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_open_exactly_what_they_name() {
    let node = TestNode::start(|_| {}).await;
    let target = Target::start().await;
    let other = Target::start().await;
    let port = target.addr.port();
    deploy(
        &node,
        "fetcher",
        "escape",
        Quota::default(),
        &[],
        grants(&[
            format!("http://127.0.0.1:{port}"),
            // A name that resolves to loopback is not a grant of loopback.
            format!("http://localhost:{}", other.addr.port()),
            format!("tcp://127.0.0.1:{port}"),
        ]),
    )
    .await;

    let allowed = attempt(
        &node,
        "fetcher",
        &format!("/fetch?url=http://127.0.0.1:{port}/"),
    )
    .await;
    assert_eq!(allowed, "allowed: status 200");
    let connected = attempt(&node, "fetcher", &format!("/connect?addr=127.0.0.1:{port}")).await;
    assert!(connected.starts_with("allowed:"), "{connected}");
    assert_eq!(target.connections(), 2);

    for case in [
        format!("/fetch?url=http://localhost:{}/", other.addr.port()),
        format!("/fetch?url=https://127.0.0.1:{port}/"),
        format!("/fetch?url=http://127.0.0.1:{}/", other.addr.port()),
        format!("/connect?addr={}", other.addr),
        format!("/connect?addr=127.0.0.2:{port}"),
    ] {
        let verdict = attempt(&node, "fetcher", &case).await;
        assert!(verdict.starts_with("denied:"), "{case}: {verdict}");
    }
    assert_eq!(other.connections(), 0);
    let lines = denied_lines(&node, "fetcher");
    assert!(
        lines[0].contains("resolves to 127.0.0.1, a loopback, private or link-local address"),
        "{lines:#?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_are_the_only_files_and_read_only() {
    let node = TestNode::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("static")).unwrap();
    std::fs::write(dir.path().join("static/index.html"), "<h1>hi</h1>").unwrap();
    deploy(
        &node,
        "site",
        "escape",
        Quota::default(),
        &[],
        Capabilities {
            outbound: Arc::default(),
            files: Some(dir.path().to_path_buf()),
        },
    )
    .await;
    assert_eq!(
        attempt(&node, "site", "/read?path=/static/index.html").await,
        "allowed: <h1>hi</h1>"
    );
    assert_eq!(
        attempt(&node, "site", "/ls?path=/").await,
        "allowed: static"
    );
    for path in [
        "/../../etc/passwd",
        "/static/../../etc/hostname",
        "/etc/passwd",
    ] {
        let verdict = attempt(&node, "site", &format!("/read?path={path}")).await;
        assert!(verdict.starts_with("denied:"), "{path}: {verdict}");
    }
    let write = attempt(&node, "site", "/write?path=/static/index.html").await;
    assert!(write.starts_with("denied:"), "{write}");
    // Each refused path is logged by name; what the app may read is not.
    let lines = denied_lines(&node, "site");
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for (line, path) in lines.iter().zip([
        "../../etc/passwd",
        "static/../../etc/hostname",
        "etc/passwd",
        "static/index.html",
    ]) {
        let prefix = format!("skiff: file system access to {path} denied: ");
        assert!(line.starts_with(&prefix), "{line}");
    }
    assert_eq!(node.runtime.app_stats("site").unwrap().denied(), 4);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("static/index.html")).unwrap(),
        "<h1>hi</h1>"
    );
    node.stop().await;
}

/// Through real `skiff controller` and `skiff node` processes: a revision
/// that widens what the app may reach needs approval and shows the
/// difference; granted static files travel by digest to the node and are
/// readable (only they); the escape guest cannot call the controller's API
/// and its denials reach `GET /v1/apps/{name}/logs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_changes_need_approval_and_denials_reach_the_app_logs() {
    let cluster = common::cluster::Cluster::start(&[("edge-1", "zone=a")]).await;
    let admin = &cluster.admin;
    let artifact = admin
        .upload_artifact(Bytes::from(example("escape")))
        .await
        .unwrap();
    let page = admin
        .upload_file(Bytes::from_static(b"<h1>static</h1>"))
        .await
        .unwrap();
    let spec = |hosts: &[String], files: bool| -> skiff_sdk::api::AppSpec {
        serde_json::from_value(serde_json::json!({
            "artifact": artifact.digest,
            "replicas": 1,
            "quota": common::cluster::small_quota(),
            "allowed_outbound_hosts": hosts,
            "files": if files { serde_json::json!({ "static/index.html": page.digest }) } else { serde_json::json!({}) },
        }))
        .unwrap()
    };
    // A new app with no grants needs no approval.
    admin.apply_app("escape", &spec(&[], false)).await.unwrap();

    // Widening: refused with the difference, then applied with approval.
    let wider = spec(&["https://api.example.com".to_owned()], true);
    let refused = admin.apply_app("escape", &wider).await.unwrap_err();
    let skiff_sdk::ClientError::Api { status, body, .. } = refused else {
        panic!("{refused}")
    };
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body.error.code, "capabilities_not_approved");
    assert_eq!(body.error.field.as_deref(), Some("approve_capabilities"));
    let diff = *body.error.capabilities.unwrap();
    assert_eq!(diff.added_outbound_hosts, ["https://api.example.com"]);
    assert_eq!(diff.added_files, ["static/index.html"]);
    assert_eq!(
        admin.app("escape").await.unwrap().revision,
        1,
        "nothing applied"
    );
    let applied = admin.apply_app_approved("escape", &wider).await.unwrap();
    assert_eq!(applied.revision, 2);
    assert_eq!(applied.capability_changes, Some(diff));
    // Narrowing, or the same grants again, needs no approval.
    let narrower = spec(&[], true);
    let applied = admin.apply_app("escape", &narrower).await.unwrap();
    assert_eq!(applied.revision, 3);
    assert_eq!(
        applied.capability_changes.unwrap().removed_outbound_hosts,
        ["https://api.example.com"]
    );
    // A file artifact cannot be run as the component, and a bad grant is
    // named.
    let mut bad = narrower.clone();
    bad.artifact = page.digest;
    let err = admin
        .apply_app("escape", &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a file, not a Wasm component"), "{err}");
    let mut bad = narrower.clone();
    bad.allowed_outbound_hosts = vec!["ftp://x".to_owned()];
    let err = admin.apply_app_approved("escape", &bad).await.unwrap_err();
    let skiff_sdk::ClientError::Api { body, .. } = err else {
        panic!()
    };
    assert_eq!(
        body.error.field.as_deref(),
        Some("allowed_outbound_hosts[0]")
    );

    cluster.wait_revision("escape", 3, 1).await;
    let controller = cluster.controller_addr;
    let verdict = |path: String| {
        let cluster = &cluster;
        async move {
            let reply = cluster.get("edge-1", "escape", &path).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            reply.text().trim_end().to_owned()
        }
    };
    // The revision 3 replica serves its file, and nothing else of the node.
    assert_eq!(
        verdict("/read?path=/static/index.html".to_owned()).await,
        "allowed: <h1>static</h1>"
    );
    assert!(
        verdict("/read?path=/etc/passwd".to_owned())
            .await
            .starts_with("denied:")
    );
    // The controller's API, over HTTP and over a socket: denied.
    let fetch = verdict(format!("/fetch?url=http://{controller}/v1/apps")).await;
    assert!(fetch.starts_with("denied:"), "{fetch}");
    let connect = verdict(format!("/connect?addr={controller}")).await;
    assert!(connect.starts_with("denied:"), "{connect}");
    let mut denials = Vec::new();
    admin
        .logs("escape", false, |entry| {
            if entry.line.starts_with("skiff: ") && entry.line.contains(" denied: ") {
                denials.push(entry.line);
            }
            true
        })
        .await
        .unwrap();
    // The file outside its own, the HTTP request and the socket.
    assert_eq!(denials.len(), 3, "{denials:#?}");
    assert!(
        denials[0].starts_with("skiff: file system access to etc/passwd denied"),
        "{denials:#?}"
    );
    let unknown = admin.node_metrics("nope").await.unwrap_err().to_string();
    assert!(unknown.contains("404"), "{unknown}");
    // The node counts them too (read through the controller).
    let metrics = admin.node_metrics("edge-1").await.unwrap();
    assert!(
        metrics.contains("skiff_node_access_denied_total{app=\"escape\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("skiff_node_requests_total{app=\"escape\",outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        denials[1].contains(&format!("http://{controller}/v1/apps")),
        "{denials:#?}"
    );

    // `skiff deploy` stops on a widening revision, shows the difference,
    // and applies it with --approve-capabilities; `skiff app` shows grants.
    let app = cluster.dir.path().join("site");
    std::fs::create_dir_all(app.join("static")).unwrap();
    std::fs::write(app.join("static/index.html"), "<h1>site</h1>").unwrap();
    std::fs::write(
        app.join("skiff.toml"),
        format!(
            "manifest_version = 1\nname = \"site\"\n\n[component]\nsource = {:?}\nfiles = [\"static/index.html\"]\n\n[resources]\nmemory = \"16Mi\"\nconcurrency = 4\n\n[capabilities]\nallowed_outbound_hosts = [\"https://*.example.com\"]\n",
            common::example_path("escape")
        ),
    )
    .unwrap();
    let token = std::fs::read_to_string(cluster.dir.path().join("controller/admin.token")).unwrap();
    let skiff = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(args)
            .arg("--controller")
            .arg(format!("http://{controller}"))
            .args(["--token", token.trim()])
            .output()
            .unwrap()
    };
    let site = app.to_str().unwrap();
    let refused = skiff(&["deploy", site, "--no-build"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("+ outbound https://*.example.com"),
        "{stderr}"
    );
    assert!(
        stderr.contains("+ file     static/index.html (read-only)"),
        "{stderr}"
    );
    assert!(stderr.contains("--approve-capabilities"), "{stderr}");
    let approved = skiff(&["deploy", site, "--no-build", "--approve-capabilities"]);
    let stderr = String::from_utf8_lossy(&approved.stderr);
    assert_eq!(approved.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("capabilities changed (approved)"),
        "{stderr}"
    );
    let served = cluster
        .get("edge-1", "site", "/read?path=/static/index.html")
        .await;
    assert_eq!(served.text(), "allowed: <h1>site</h1>\n");
    let described = skiff(&["app", "site"]);
    let described = String::from_utf8_lossy(&described.stdout);
    assert!(
        described.contains("Outbound:   https://*.example.com"),
        "{described}"
    );
    assert!(
        described.contains("Files:      static/index.html (read-only)"),
        "{described}"
    );

    // A tree of static files lives on the node while a replica uses it:
    // once `escape` drops its files, only `site`'s tree is left.
    let mounts = cluster.dir.path().join("nodes/edge-1/mounts");
    let trees = &|| std::fs::read_dir(&mounts).unwrap().count();
    assert_eq!(trees(), 2);
    admin.apply_app("escape", &spec(&[], false)).await.unwrap();
    cluster
        .wait(
            "escape's tree to be removed",
            Duration::from_secs(30),
            move |_| async move { (trees() == 1).then_some(()) },
        )
        .await;
}
