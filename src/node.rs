//! `skiff node`: a worker that joins a controller and runs its replicas.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use skiff_runtime::engine::Allocator;
use skiff_runtime::node::{Node, NodeConfig};
use skiff_sdk::quantity;

use crate::flags::{Dur, Size};
use tokio_util::sync::CancellationToken;

/// Default controller: the one `skiff controller` starts with its defaults.
const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:7070";
/// Default join token: where a controller started in the same directory
/// with its default data directory writes it.
const DEFAULT_TOKEN_FILE: &str = "skiff-data/join.token";
/// Default ingress address: loopback only; expose it deliberately.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Share of the machine's memory offered by default: the rest is left to
/// the host, the node process and the compile cache.
const DEFAULT_MEMORY_SHARE: (u64, u64) = (3, 4);

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Controller API URL.
    #[arg(long, env = "SKIFF_CONTROLLER", default_value = DEFAULT_CONTROLLER)]
    pub(crate) controller: String,
    /// File holding the node join token (the controller writes it as
    /// `join.token` in its data directory).
    #[arg(long, env = "SKIFF_TOKEN_FILE", default_value = DEFAULT_TOKEN_FILE)]
    pub(crate) token_file: PathBuf,
    /// Node name, its identity across restarts (default: the hostname).
    #[arg(long, env = "SKIFF_NODE_NAME")]
    pub(crate) name: Option<String>,
    /// Labels for node selectors, `k=v,k2=v2` (`zone` spreads replicas).
    #[arg(long, env = "SKIFF_LABELS", default_value = "", value_parser = parse_labels)]
    pub(crate) labels: BTreeMap<String, String>,
    /// Memory offered to replicas, e.g. `4Gi` (default: 3/4 of the
    /// machine's memory). Each replica reserves memory × concurrency.
    #[arg(long, env = "SKIFF_MEMORY", value_parser = quantity::parse_bytes)]
    pub(crate) memory: Option<u64>,
    /// Ingress address (port 0 picks a free port; the readiness line on
    /// stdout says which).
    #[arg(long, env = "SKIFF_LISTEN", default_value = DEFAULT_LISTEN)]
    pub(crate) listen: SocketAddr,
    /// Address other nodes use to reach this ingress (default: the bound
    /// listen address).
    #[arg(long, env = "SKIFF_ADVERTISE")]
    pub(crate) advertise: Option<String>,
    /// State directory: last assignments and endpoints, compile
    /// cache (default: `skiff-data/nodes/<name>`).
    #[arg(long, env = "SKIFF_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Apps are reached as `Host: <app>.<domain>`.
    #[arg(long, env = "SKIFF_DOMAIN", default_value = skiff_runtime::DEFAULT_DOMAIN)]
    pub(crate) domain: String,
    /// Heartbeat interval, e.g. `1s`.
    #[arg(long, env = "SKIFF_HEARTBEAT", default_value_t = Dur(skiff_runtime::node::DEFAULT_HEARTBEAT))]
    pub(crate) heartbeat: Dur,
    /// Largest request body accepted, e.g. `16Mi`.
    #[arg(long, env = "SKIFF_MAX_BODY", default_value_t = Size(skiff_runtime::DEFAULT_MAX_REQUEST_BODY))]
    pub(crate) max_body: Size,
    /// Disk the compile cache may keep for components no replica here
    /// needs any more, least recently used first out (e.g. `1Gi`; what
    /// is assigned is always kept).
    #[arg(long, env = "SKIFF_CACHE_SIZE", default_value_t = Size(skiff_runtime::node::DEFAULT_CACHE_BYTES))]
    pub(crate) cache_size: Size,
    /// Do not use the pooling allocator (for hosts with little address space).
    #[arg(long, env = "SKIFF_NO_POOLING")]
    pub(crate) no_pooling: bool,
    #[command(flatten)]
    pub(crate) insecure: crate::oci::InsecureRegistries,
    #[command(flatten)]
    pub(crate) limits: crate::serve::LimitArgs,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                labels.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            _ => return Err(format!("label {item:?} is not key=value")),
        }
    }
    Ok(labels)
}

/// The memory a node offers by default: a share of the machine's.
pub fn default_memory() -> Option<u64> {
    machine_memory().map(|m| m / DEFAULT_MEMORY_SHARE.1 * DEFAULT_MEMORY_SHARE.0)
}

/// Total memory from /proc/meminfo, if readable.
fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A node started by [`start`]: it runs until the shutdown token is
/// cancelled; [`Node::wait`] returns once it has stopped.
pub struct Started {
    pub node: Node,
    pub name: String,
    pub data_dir: PathBuf,
    pub memory: u64,
}

/// What a readiness line says of an allocator.
pub fn allocator_name(allocator: &Allocator) -> &'static str {
    match allocator {
        Allocator::Pooling => "pooling",
        Allocator::OnDemand { .. } => "on-demand",
    }
}

/// Maps the flags to a [`NodeConfig`], binds the ingress and starts the
/// node.
pub async fn start(args: &NodeArgs, shutdown: &CancellationToken) -> anyhow::Result<Started> {
    let name = args.name.clone().unwrap_or_else(crate::hostname);
    let join_token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the join token {}", args.token_file.display()))?
        .trim()
        .to_owned();
    let memory = match args.memory {
        Some(m) => m,
        None => default_memory().context("cannot read the machine's memory; pass --memory")?,
    };
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("skiff-data").join("nodes").join(&name));
    let config = NodeConfig {
        labels: args.labels.clone(),
        advertise: args.advertise.clone(),
        domain: args.domain.clone(),
        heartbeat: args.heartbeat.0,
        max_body: args.max_body.0,
        cache_bytes: args.cache_size.0,
        pooling: !args.no_pooling,
        limits: args.limits.limits(),
        insecure_registries: args.insecure.hosts.clone(),
        ..NodeConfig::new(&name, memory, &args.controller, join_token, &data_dir)
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let node = Node::start(config, listener, shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!(skiff_sdk::error_chain(&e)))?;
    Ok(Started {
        node,
        name,
        data_dir,
        memory,
    })
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    crate::serve::on_shutdown_signal(shutdown.clone());
    let started = start(&args, &shutdown).await?;
    println!(
        "{}",
        serde_json::json!({
            "listening": started.node.addr.to_string(),
            "role": "node",
            "name": started.name,
            "controller": args.controller,
            "data_dir": started.data_dir,
            "memory_bytes": started.memory,
            "resumed_replicas": started.node.resumed,
            "allocator": allocator_name(&started.node.allocator),
        })
    );
    started.node.wait().await;
    tracing::info!("stopped");
    Ok(())
}
