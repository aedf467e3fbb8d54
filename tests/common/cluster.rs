//! A real cluster on loopback: a `skiff controller` process and `skiff node`
//! processes, driven through the SDK's typed client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use skiff_sdk::Client;
use skiff_sdk::Quota;
use skiff_sdk::api::{App, AppSpec, Replica, ReplicaState};

use super::{Reply, SkiffProcess, example, send};

/// A small quota: 16Mi × 4 instances per replica, reserving 16Mi.
pub fn small_quota() -> Quota {
    Quota {
        memory_bytes: 16 << 20,
        concurrency: 4,
        ..Quota::default()
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub controller: Option<SkiffProcess>,
    pub controller_addr: SocketAddr,
    /// The controller nodes started from now on talk to.
    pub node_controller: SocketAddr,
    pub admin: Client,
    /// Extra controller arguments (kept for restarts).
    controller_args: Vec<String>,
    pub nodes: BTreeMap<String, Option<SkiffProcess>>,
    node_addrs: BTreeMap<String, SocketAddr>,
    node_labels: BTreeMap<String, String>,
    /// `--memory` per node (default 1Gi).
    node_memory: BTreeMap<String, String>,
}

impl Cluster {
    /// A controller (SQLite in a temporary directory) and nodes with these
    /// names and labels (`k=v,...`), each offering 1Gi.
    pub async fn start(nodes: &[(&str, &str)]) -> Self {
        Self::start_with(nodes, &[]).await
    }

    pub async fn start_with(nodes: &[(&str, &str)], controller_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let controller_args: Vec<String> = controller_args.iter().map(|s| s.to_string()).collect();
        let controller = start_controller(
            &dir.path().join("controller"),
            "127.0.0.1:0",
            &controller_args,
        );
        let controller_addr = controller.addr();
        let admin = admin_client(&controller);
        let mut cluster = Self {
            dir,
            controller: Some(controller),
            controller_addr,
            node_controller: controller_addr,
            admin,
            controller_args,
            nodes: BTreeMap::new(),
            node_addrs: BTreeMap::new(),
            node_labels: BTreeMap::new(),
            node_memory: BTreeMap::new(),
        };
        for (name, labels) in nodes {
            cluster
                .node_labels
                .insert(name.to_string(), labels.to_string());
            cluster.start_node(name);
        }
        let count = nodes.len();
        cluster
            .wait(
                "every node Ready",
                Duration::from_secs(30),
                |c| async move {
                    let nodes = c.admin.nodes().await.ok()?;
                    (nodes.len() == count
                        && nodes
                            .iter()
                            .all(|n| n.state == skiff_sdk::api::NodeState::Ready))
                    .then_some(())
                },
            )
            .await;
        cluster
    }

    pub fn join_token_file(&self) -> PathBuf {
        self.dir.path().join("controller/join.token")
    }

    pub fn set_labels(&mut self, node: &str, labels: &str) {
        self.node_labels.insert(node.to_owned(), labels.to_owned());
    }

    /// The memory a node started from now on declares (`64Mi`, ...).
    pub fn set_memory(&mut self, node: &str, memory: &str) {
        self.node_memory.insert(node.to_owned(), memory.to_owned());
    }

    /// Starts (or restarts, on its previous port and state) a node.
    pub fn start_node(&mut self, name: &str) {
        let listen = self
            .node_addrs
            .get(name)
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1:0".to_owned());
        let mut command = Command::new(env!("CARGO_BIN_EXE_skiff"));
        command.args([
            "node",
            "--controller",
            &format!("http://{}", self.node_controller),
            "--token-file",
            self.join_token_file().to_str().unwrap(),
            "--name",
            name,
            "--labels",
            &self.node_labels[name],
            "--memory",
            self.node_memory.get(name).map_or("1Gi", String::as_str),
            "--listen",
            &listen,
            "--data-dir",
            self.dir.path().join("nodes").join(name).to_str().unwrap(),
        ]);
        let node = SkiffProcess::spawn(command);
        assert_eq!(node.ready["role"], "node");
        self.node_addrs.insert(name.to_owned(), node.addr());
        self.nodes.insert(name.to_owned(), Some(node));
    }

    /// SIGKILLs a node.
    pub fn kill_node(&mut self, name: &str) {
        let node = self.nodes.get_mut(name).unwrap().take().unwrap();
        kill9(node);
    }

    /// SIGKILLs the controller.
    pub fn kill_controller(&mut self) {
        kill9(self.controller.take().unwrap());
    }

    /// Starts the controller again on its port and data directory.
    pub fn restart_controller(&mut self) {
        let controller = start_controller(
            &self.dir.path().join("controller"),
            &self.controller_addr.to_string(),
            &self.controller_args,
        );
        self.controller = Some(controller);
    }

    pub fn node_addr(&self, name: &str) -> SocketAddr {
        self.node_addrs[name]
    }

    pub fn live_nodes(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Uploads an example and applies an app running it.
    pub async fn deploy(&self, app: &str, example_name: &str, replicas: u32) -> App {
        let artifact = self
            .admin
            .upload_artifact(Bytes::from(example(example_name)))
            .await
            .unwrap();
        let spec: AppSpec = serde_json::from_value(serde_json::json!({
            "artifact": artifact.digest,
            "replicas": replicas,
            "quota": small_quota(),
        }))
        .unwrap();
        self.admin.apply_app(app, &spec).await.unwrap()
    }

    /// A GET of `app` through node `node`'s ingress.
    pub async fn get(&self, node: &str, app: &str, path: &str) -> Reply {
        send(
            self.node_addr(node),
            &format!("{app}.localhost"),
            Method::GET,
            path,
            Bytes::new(),
        )
        .await
    }

    /// Polls `check` until it answers, failing after `limit`.
    pub async fn wait<'a, T, F, Fut>(&'a self, what: &str, limit: Duration, check: F) -> T
    where
        F: Fn(&'a Self) -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        super::poll(limit, what, || async { check(self).await.ok_or(()) }).await
    }

    /// Waits until `app` has exactly `n` replicas, all Ready, and returns
    /// them.
    /// Waits until `node` is registered and Ready.
    pub async fn wait_ready_node(&self, node: &str, limit: Duration) {
        self.wait(&format!("node {node} Ready"), limit, |c| async move {
            let nodes = c.admin.nodes().await.ok()?;
            nodes
                .iter()
                .any(|n| n.name == node && n.state == skiff_sdk::api::NodeState::Ready)
                .then_some(())
        })
        .await
    }

    pub async fn wait_ready(&self, app: &str, n: usize, limit: Duration) -> Vec<Replica> {
        self.wait(
            &format!("{n} ready replicas of {app}"),
            limit,
            |c| async move {
                let replicas = c.admin.replicas(app).await.ok()?;
                let status = c.admin.app(app).await.ok()?.status;
                (replicas.len() == n
                    && replicas.iter().all(|r| r.state == ReplicaState::Ready)
                    && status.ready_replicas as usize == n)
                    .then_some(replicas)
            },
        )
        .await
    }
}

pub fn start_controller(dir: &std::path::Path, listen: &str, extra: &[String]) -> SkiffProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skiff"));
    command
        .args([
            "controller",
            "--listen",
            listen,
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .args(extra);
    let controller = SkiffProcess::spawn(command);
    assert_eq!(controller.ready["role"], "controller");
    controller
}

pub fn admin_client(controller: &SkiffProcess) -> Client {
    admin_client_in(std::path::Path::new(""), controller)
}

/// An admin client of the controller `process` runs (a `skiff controller`
/// or `skiff up`) started in `dir` (its token file may be relative to it).
pub fn admin_client_in(dir: &std::path::Path, controller: &SkiffProcess) -> Client {
    let file = dir.join(controller.ready["admin_token_file"].as_str().unwrap());
    let token = std::fs::read_to_string(file).unwrap();
    Client::new(&format!("http://{}", controller.addr()))
        .unwrap()
        .with_token(&token)
}

pub fn kill9(mut process: SkiffProcess) {
    process.child.kill().unwrap();
    process.child.wait().unwrap();
}

/// The hello spec for rollout tests: 3 replicas, `VERSION=version`, a fast
/// health check.
pub fn hello_spec(artifact: skiff_sdk::Digest, version: u32) -> AppSpec {
    serde_json::from_value(serde_json::json!({
        "artifact": artifact,
        "replicas": 3,
        "quota": small_quota(),
        "env": { "VERSION": version.to_string() },
        "health": { "path": "/healthz", "interval_ms": 100, "failure_threshold": 3 },
    }))
    .unwrap()
}

impl Cluster {
    /// Deploys `hello` as [`hello_spec`] version 1 and waits for its three
    /// replicas; returns the artifact.
    pub async fn hello_v1(&self) -> skiff_sdk::Digest {
        self.hello_v1_with(3).await
    }

    /// [`Cluster::hello_v1`] with `replicas` replicas, waiting until the
    /// revision is proven (the controller's `good_revision`).
    pub async fn hello_v1_with(&self, replicas: u32) -> skiff_sdk::Digest {
        let artifact = self.deploy("hello", "hello", replicas).await.spec.artifact;
        let mut spec = hello_spec(artifact, 1);
        spec.replicas = replicas;
        let app = self.admin.apply_app("hello", &spec).await.unwrap();
        self.wait_revision("hello", app.revision, replicas as usize)
            .await;
        self.wait_proven("hello", app.revision).await;
        artifact
    }

    /// Waits until `revision` is `app`'s good revision (the target of
    /// automatic rollbacks).
    pub async fn wait_proven(&self, app: &str, revision: u64) {
        self.wait(
            &format!("revision {revision} of {app} to be proven"),
            Duration::from_secs(30),
            |c| async move {
                (c.admin.app(app).await.ok()?.status.good_revision == Some(revision)).then_some(())
            },
        )
        .await;
    }

    /// The ingress of every live node, by name.
    pub fn ingresses(&self) -> Vec<(String, SocketAddr)> {
        self.live_nodes()
            .into_iter()
            .map(|n| (n.clone(), self.node_addr(&n)))
            .collect()
    }

    /// Waits until exactly `n` replicas of `app` run, all of `revision`
    /// and Ready.
    pub async fn wait_revision(&self, app: &str, revision: u64, n: usize) {
        self.wait(
            &format!("{n} replicas of {app} at revision {revision}"),
            Duration::from_secs(60),
            |c| async move {
                let replicas = c.admin.replicas(app).await.ok()?;
                (replicas.len() == n
                    && replicas
                        .iter()
                        .all(|r| r.revision == revision && r.state == ReplicaState::Ready))
                .then_some(())
            },
        )
        .await;
    }
}

/// Keep-alive clients sending `GET /` for one app as fast as they can,
/// recording each answer's latency, failures and the last body per client.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    pub seen: std::sync::Arc<Seen>,
}

/// What the load generator saw.
#[derive(Default)]
pub struct Seen {
    pub ok: std::sync::atomic::AtomicU64,
    pub failed: std::sync::Mutex<Vec<String>>,
    pub last: std::sync::Mutex<Vec<String>>,
    /// Every distinct OK body.
    pub bodies: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// (seconds since start, latency) of every OK answer.
    pub latencies: std::sync::Mutex<Vec<(f64, Duration)>>,
}

impl Load {
    /// `per_addr` clients on each of `addrs`, asking `host`.
    pub async fn start(addrs: &[(String, SocketAddr)], host: &str, per_addr: usize) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(Seen::default());
        let origin = Instant::now();
        let mut clients = Vec::new();
        for (node, addr) in addrs {
            for _ in 0..per_addr {
                let (stop, seen, node, addr) = (stop.clone(), seen.clone(), node.clone(), *addr);
                let host = host.to_owned();
                clients.push(tokio::spawn(async move {
                    let mut client = super::Client::connect(addr).await;
                    let mut last = String::new();
                    let mut latencies = Vec::new();
                    let mut bodies = std::collections::BTreeSet::new();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        let reply = client.send(&host, Method::GET, "/", Bytes::new()).await;
                        if reply.status == http::StatusCode::OK {
                            latencies
                                .push((sent.duration_since(origin).as_secs_f64(), sent.elapsed()));
                            seen.ok.fetch_add(1, Ordering::Relaxed);
                            last = reply.text();
                            if !bodies.contains(&last) {
                                bodies.insert(last.clone());
                            }
                        } else {
                            seen.failed.lock().unwrap().push(format!(
                                "via {node}: {} {}",
                                reply.status,
                                reply.text()
                            ));
                        }
                    }
                    seen.last.lock().unwrap().push(last);
                    seen.bodies.lock().unwrap().extend(bodies);
                    seen.latencies.lock().unwrap().extend(latencies);
                }));
            }
        }
        Self {
            stop,
            clients,
            seen,
        }
    }

    /// Answers so far.
    pub fn ok(&self) -> u64 {
        self.seen.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the clients and waits for them.
    pub async fn stop(self) -> std::sync::Arc<Seen> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        self.seen
    }
}

/// A fresh PostgreSQL database for this test, or `None` (skipped) when no
/// server is configured; under CI a missing server is a failure.
pub async fn postgres_database() -> Option<String> {
    let Ok(url) = std::env::var("SKIFF_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set SKIFF_TEST_POSTGRES_URL (see .ci/run)"
        );
        eprintln!("SKIFF_TEST_POSTGRES_URL is not set: skipping the PostgreSQL case");
        return None;
    };
    use sqlx::Connection as _;
    let mut admin = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
    let name = format!("skiff_cluster_{}_{}", std::process::id(), rand_suffix());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let base = url.rsplit_once('/').unwrap().0;
    Some(format!("{base}/{name}"))
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .into()
}

pub async fn drop_database(url: &str) {
    use sqlx::Connection as _;
    let (base, name) = url.rsplit_once('/').unwrap();
    let admin_url = format!(
        "{base}/{}",
        std::env::var("SKIFF_TEST_POSTGRES_URL")
            .unwrap()
            .rsplit_once('/')
            .unwrap()
            .1
    );
    let mut admin = sqlx::postgres::PgConnection::connect(&admin_url)
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}
