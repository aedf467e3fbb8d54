//! `skiff up`: a controller and one or more nodes in one process, SQLite in
//! a local data directory — the one-command local cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use skiff_sdk::quantity;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::controller::ControllerArgs;
use crate::node::NodeArgs;

/// Largest node count `skiff up` runs: it is for trying things locally.
const MAX_LOCAL_NODES: u16 = 16;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Data directory: SQLite database, tokens, node state.
    #[arg(long, env = "SKIFF_DATA_DIR", default_value = "skiff-data")]
    data_dir: PathBuf,
    /// Address of the controller API.
    #[arg(long, env = "SKIFF_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Ingress of the first node; node N listens on the next ports (port 0:
    /// free ports).
    #[arg(long, env = "SKIFF_INGRESS", default_value = "127.0.0.1:8080")]
    ingress: SocketAddr,
    /// Number of local nodes (each in its own zone), 1 to 16.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_LOCAL_NODES)))]
    nodes: u16,
    /// Memory each node offers, e.g. `2Gi` (default: 3/4 of the machine's
    /// memory shared between the nodes).
    #[arg(long, value_parser = quantity::parse_bytes)]
    memory: Option<u64>,
    /// Apps are reached as `Host: <app>.<domain>`.
    #[arg(long, default_value = skiff_runtime::runtime::DEFAULT_DOMAIN)]
    domain: String,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    crate::serve::on_shutdown_signal(shutdown.clone());
    let tasks = TaskTracker::new();
    let controller = crate::controller::start(
        &ControllerArgs {
            listen: args.listen,
            data_dir: args.data_dir.clone(),
            database_url: None,
            max_artifact: 64 << 20,
            max_artifact_store: skiff_controller::store::DEFAULT_ARTIFACT_STORE_BYTES,
            artifact_retention: skiff_controller::collector::DEFAULT_ARTIFACT_RETENTION,
            node_grace: Duration::from_secs(3),
            resync: skiff_controller::reconciler::DEFAULT_RESYNC,
            lease_ttl: skiff_controller::lease::DEFAULT_LEASE_TTL,
            id: Some("local".into()),
            domain: args.domain.clone(),
            limits: Default::default(),
        },
        &shutdown,
        &tasks,
    )
    .await?;
    let memory = args
        .memory
        .or_else(|| crate::node::default_memory().map(|m| m / u64::from(args.nodes)));
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        let port = if args.ingress.port() == 0 {
            0
        } else {
            args.ingress.port().saturating_add(i - 1)
        };
        let name = if args.nodes == 1 {
            "local".to_owned()
        } else {
            format!("local-{i}")
        };
        let node = crate::node::start(
            &NodeArgs {
                controller: format!("http://{}", controller.addr),
                token_file: controller.tokens.join.clone(),
                name: Some(name.clone()),
                labels: [("zone".to_owned(), format!("zone-{i}"))].into(),
                memory,
                listen: SocketAddr::new(args.ingress.ip(), port),
                advertise: None,
                data_dir: Some(args.data_dir.join("nodes").join(&name)),
                domain: args.domain.clone(),
                heartbeat: skiff_runtime::node::DEFAULT_HEARTBEAT,
                max_body: 16 << 20,
                cache_size: skiff_runtime::node::DEFAULT_CACHE_BYTES,
                no_pooling: false,
                limits: Default::default(),
            },
            &shutdown,
            &tasks,
        )
        .await?;
        nodes.push(node);
    }
    println!(
        "{}",
        serde_json::json!({
            "listening": controller.addr.to_string(),
            "role": "up",
            "api": format!("http://{}", controller.addr),
            "admin_token_file": controller.tokens.admin,
            "nodes": nodes.iter().map(|n| serde_json::json!({
                "name": n.name, "ingress": n.addr.to_string(), "allocator": n.allocator,
            })).collect::<Vec<_>>(),
        })
    );
    eprintln!("skiff is up");
    eprintln!(
        "  controller API  http://{}   (SQLite in {})",
        controller.addr,
        args.data_dir.display()
    );
    for n in &nodes {
        eprintln!(
            "  node {:<10} http://<app>.{}:{}/",
            n.name,
            args.domain,
            n.addr.port()
        );
    }
    eprintln!(
        "  admin token     {}  (the CLI finds it when run from this directory)",
        controller.tokens.admin.display()
    );
    eprintln!(
        "  try: skiff deploy examples/hello && curl http://hello.{}:{}/",
        args.domain,
        nodes.first().map(|n| n.addr.port()).unwrap_or(8080)
    );
    shutdown.cancelled().await;
    tasks.close();
    tasks.wait().await;
    Ok(())
}
