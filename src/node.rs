//! `skiff node`: a worker that joins a controller and runs its replicas.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use skiff_runtime::engine::Allocator;
use skiff_runtime::node::disk::StateDir;
use skiff_runtime::node::router::NodeRouter;
use skiff_runtime::node::{Agent, NodeConfig};
use skiff_runtime::{Runtime, RuntimeConfig};
use skiff_sdk::{Client, quantity};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    #[arg(long, env = "SKIFF_DOMAIN", default_value = skiff_runtime::runtime::DEFAULT_DOMAIN)]
    pub(crate) domain: String,
    /// Heartbeat interval, e.g. `1s`.
    #[arg(long, env = "SKIFF_HEARTBEAT", default_value = "1s", value_parser = quantity::parse_duration)]
    pub(crate) heartbeat: Duration,
    /// Largest request body accepted, e.g. `16Mi`.
    #[arg(long, env = "SKIFF_MAX_BODY", default_value = "16Mi", value_parser = quantity::parse_bytes)]
    pub(crate) max_body: u64,
    /// Disk the compile cache may keep for components no replica here
    /// needs any more, least recently used first out (e.g. `1Gi`; what
    /// is assigned is always kept).
    #[arg(long, env = "SKIFF_CACHE_SIZE", default_value = "1Gi", value_parser = quantity::parse_bytes)]
    pub(crate) cache_size: u64,
    /// Do not use the pooling allocator (for hosts with little address space).
    #[arg(long, env = "SKIFF_NO_POOLING")]
    pub(crate) no_pooling: bool,
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

/// A node started by [`start`]: its tasks run until the shutdown token is
/// cancelled.
pub struct Started {
    pub addr: std::net::SocketAddr,
    pub name: String,
    pub data_dir: PathBuf,
    pub memory: u64,
    pub allocator: &'static str,
    pub resumed: usize,
}

/// Builds the runtime, resumes the stored assignments, binds the ingress,
/// and spawns the ingress and the agent onto `tasks`.
pub async fn start(
    args: &NodeArgs,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<Started> {
    let name = args.name.clone().unwrap_or_else(crate::hostname);
    skiff_sdk::api::validate_name(&name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let join_token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the join token {}", args.token_file.display()))?
        .trim()
        .to_owned();
    let memory = match args.memory {
        Some(m) => m,
        None => default_memory().context("cannot read the machine's memory; pass --memory")?,
    };
    let client = Client::new(&args.controller).with_context(|| "--controller")?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("skiff-data").join("nodes").join(&name));
    let state = StateDir::open(&data_dir)
        .with_context(|| format!("creating the state directory {}", data_dir.display()))?;

    let mut config = RuntimeConfig::new(state.cache_dir());
    config.domain = args.domain.clone();
    config.max_request_body = args.max_body;
    config.engine.pooling = !args.no_pooling;
    let runtime = Runtime::new(config)?;
    let router = NodeRouter::new(runtime.clone(), &name, &args.domain);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let agent = Agent::new(
        NodeConfig {
            name: name.clone(),
            labels: args.labels.clone(),
            memory_bytes: memory,
            ingress: args.advertise.clone().unwrap_or_else(|| addr.to_string()),
            heartbeat: args.heartbeat,
            cache_bytes: args.cache_size,
        },
        client,
        join_token,
        state,
        router.clone(),
    )
    .with_context(|| format!("reading the node state in {}", data_dir.display()))?;
    let resumed = agent.resume().await;
    tasks.spawn(agent.run(shutdown.clone()));
    let serving = shutdown.clone();
    let limits = args.limits.limits();
    tasks.spawn(async move {
        if let Err(error) =
            skiff_runtime::ingress::run(listener, router, limits, serving.clone()).await
        {
            tracing::error!(%error, "the ingress failed");
        }
        serving.cancel();
    });
    Ok(Started {
        addr,
        name,
        data_dir,
        memory,
        allocator: match runtime.allocator() {
            Allocator::Pooling => "pooling",
            Allocator::OnDemand { .. } => "on-demand",
        },
        resumed,
    })
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    crate::serve::on_shutdown_signal(shutdown.clone());
    let tasks = TaskTracker::new();
    let node = start(&args, &shutdown, &tasks).await?;
    println!(
        "{}",
        serde_json::json!({
            "listening": node.addr.to_string(),
            "role": "node",
            "name": node.name,
            "controller": args.controller,
            "data_dir": node.data_dir,
            "memory_bytes": node.memory,
            "resumed_replicas": node.resumed,
            "allocator": node.allocator,
        })
    );
    shutdown.cancelled().await;
    tasks.close();
    tasks.wait().await;
    tracing::info!("stopped");
    Ok(())
}
