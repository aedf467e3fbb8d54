//! `skiff up`: a controller and one or more nodes in one process, SQLite in
//! a local data directory — the one-command local cluster.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use skiff_sdk::quantity;
use tokio_util::sync::CancellationToken;

use anyhow::Context as _;
use skiff_runtime::node::{Node, NodeConfig};

use skiff_controller::ControllerConfig;

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
    #[arg(long, default_value = skiff_runtime::DEFAULT_DOMAIN)]
    domain: String,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    crate::serve::on_shutdown_signal(shutdown.clone());
    let config = ControllerConfig {
        domain: args.domain.clone(),
        ..ControllerConfig::new(&args.data_dir, "local")
    };
    let controller = crate::controller::start_config(config, args.listen, &shutdown).await?;
    let memory = match args.memory {
        Some(m) => m,
        None => crate::node::default_memory()
            .map(|m| m / u64::from(args.nodes))
            .context("cannot read the machine's memory; pass --memory")?,
    };
    let join_token = std::fs::read_to_string(&controller.tokens.join)
        .with_context(|| format!("reading {}", controller.tokens.join.display()))?
        .trim()
        .to_owned();
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
        let listen = SocketAddr::new(args.ingress.ip(), port);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let config = NodeConfig {
            labels: [("zone".to_owned(), format!("zone-{i}"))].into(),
            domain: args.domain.clone(),
            ..NodeConfig::new(
                &name,
                memory,
                format!("http://{}", controller.addr),
                &join_token,
                args.data_dir.join("nodes").join(&name),
            )
        };
        let node = Node::start(config, listener, shutdown.clone())
            .await
            .map_err(|e| anyhow::anyhow!(skiff_sdk::error_chain(&e)))?;
        nodes.push((name, node));
    }
    println!(
        "{}",
        serde_json::json!({
            "listening": controller.addr.to_string(),
            "role": "up",
            "api": format!("http://{}", controller.addr),
            "dashboard": format!("http://{}/ui", controller.addr),
            "admin_token_file": controller.tokens.admin,
            "nodes": nodes.iter().map(|(name, n)| serde_json::json!({
                "name": name, "ingress": n.addr.to_string(), "allocator": crate::node::allocator_name(&n.allocator),
            })).collect::<Vec<_>>(),
        })
    );
    eprintln!("skiff is up");
    eprintln!(
        "  controller API  http://{}   (SQLite in {})",
        controller.addr,
        args.data_dir.display()
    );
    eprintln!(
        "  dashboard       http://{}/ui   (sign in with the admin token file's content)",
        controller.addr
    );
    for (name, n) in &nodes {
        eprintln!(
            "  node {:<10} http://<app>.{}:{}/",
            name,
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
        nodes.first().map(|(_, n)| n.addr.port()).unwrap_or(8080)
    );
    controller.wait().await;
    for (_, node) in &nodes {
        node.wait().await;
    }
    Ok(())
}
