//! `skiff serve <component.wasm>`: one component, standalone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use skiff_runtime::engine::Allocator;
use skiff_runtime::{Deployment, Runtime, RuntimeConfig};
use skiff_sdk::serve::Limits;
use skiff_sdk::{Quota, quantity};
use tokio_util::sync::CancellationToken;

/// Default listen address: loopback only, like every Skiff listener; pass
/// `--addr 0.0.0.0:8080` to expose it.
const DEFAULT_ADDR: &str = "127.0.0.1:8080";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The wasi:http component to serve.
    #[arg(value_name = "COMPONENT.wasm")]
    component: PathBuf,
    /// Address to listen on (port 0 picks a free port; the readiness line
    /// on stdout says which).
    #[arg(long, env = "SKIFF_ADDR", default_value = DEFAULT_ADDR)]
    addr: SocketAddr,
    /// Max linear memory per instance, e.g. `128Mi`.
    #[arg(long, env = "SKIFF_MEMORY", default_value = "128Mi", value_parser = quantity::parse_bytes)]
    memory: u64,
    /// Fuel (CPU budget) per request, e.g. `1G` or `500000000`.
    #[arg(long, env = "SKIFF_FUEL", default_value = "1G", value_parser = quantity::parse_count)]
    fuel: u64,
    /// Wall-clock limit per request, e.g. `30s` or `500ms`.
    #[arg(long, env = "SKIFF_TIMEOUT", default_value = "30s", value_parser = quantity::parse_duration)]
    timeout: Duration,
    /// Max instances serving at once; further requests wait briefly, then
    /// get 503 with Retry-After.
    #[arg(long, env = "SKIFF_CONCURRENCY", default_value_t = skiff_sdk::quota::DEFAULT_CONCURRENCY)]
    concurrency: u32,
    /// Environment variable for the guest, `KEY=VALUE` (repeatable). The
    /// guest sees these and nothing of the host's environment.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Name of the app (it also answers at `<name>.localhost`).
    #[arg(long, env = "SKIFF_APP_NAME")]
    name: Option<String>,
    /// Directory of the compile cache; a second start with the same
    /// directory compiles nothing. Defaults to `$XDG_CACHE_HOME/skiff` or
    /// `~/.cache/skiff`.
    #[arg(long, env = "SKIFF_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Largest request body accepted, e.g. `16Mi`.
    #[arg(long, env = "SKIFF_MAX_BODY", default_value = "16Mi", value_parser = quantity::parse_bytes)]
    max_body: u64,
    /// Do not use the pooling allocator (for hosts with little address space).
    #[arg(long, env = "SKIFF_NO_POOLING")]
    no_pooling: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

/// What one client may hold of a server (`skiff serve`, `node`,
/// `controller`).
#[derive(Clone, Debug, clap::Args)]
pub struct LimitArgs {
    /// Time a client has to send a request's headers, e.g. `10s`; a slower
    /// or idle connection is closed.
    #[arg(long, env = "SKIFF_HEADER_TIMEOUT", default_value = "10s", value_parser = quantity::parse_duration)]
    pub(crate) header_timeout: Duration,
    /// Connections open at once; one more is answered 503 and closed.
    #[arg(long, env = "SKIFF_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    pub(crate) max_connections: usize,
    /// Connections one client address (an IPv6 client by its /64) may hold
    /// at once; one more is answered 503 and closed.
    #[arg(long, env = "SKIFF_MAX_CONNECTIONS_PER_CLIENT", default_value_t = Limits::default().max_connections_per_client)]
    pub(crate) max_connections_per_client: usize,
}

impl Default for LimitArgs {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            header_timeout: limits.header_read_timeout,
            max_connections: limits.max_connections,
            max_connections_per_client: limits.max_connections_per_client,
        }
    }
}

impl LimitArgs {
    /// The server limits these flags give.
    pub fn limits(&self) -> Limits {
        Limits {
            header_read_timeout: self.header_timeout,
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            ..Limits::default()
        }
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// The cache directory when none is given: the user's cache directory.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("skiff");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("skiff"),
        None => std::env::temp_dir().join("skiff-cache"),
    }
}

fn app_name(args: &ServeArgs) -> String {
    if let Some(name) = &args.name {
        return name.clone();
    }
    let stem = args
        .component
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("app");
    let label: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "app".to_owned()
    } else {
        label.to_owned()
    }
}

/// Cancels `token` on the first SIGINT or SIGTERM; exits the process at once
/// on the second.
pub fn on_shutdown_signal(token: CancellationToken) {
    tokio::spawn(async move {
        for n in 0.. {
            wait_for_signal().await;
            if n == 0 {
                tracing::info!("shutting down gracefully (signal again to force)");
                token.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let quota = Quota {
        memory_bytes: args.memory,
        fuel: args.fuel,
        timeout_ms: u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX),
        concurrency: args.concurrency,
        reserve_bytes: None,
    };
    quota.validate()?;
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("reading component {}", args.component.display()))?;

    let mut config = RuntimeConfig::new(args.cache_dir.clone().unwrap_or_else(default_cache_dir));
    config.single_app_any_host = true;
    config.max_request_body = args.max_body;
    config.engine.pooling = !args.no_pooling;
    let runtime = Runtime::new(config)?;
    let digest = runtime.store_component(&bytes)?;
    let name = app_name(&args);
    runtime.deploy(Deployment {
        name: name.clone(),
        digest,
        quota,
        env: args.env.clone(),
        capabilities: Default::default(),
    })?;
    runtime
        .warm(&name)
        .await
        .with_context(|| format!("loading {}", args.component.display()))?;

    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let addr = listener.local_addr()?;
    println!(
        "{}",
        serde_json::json!({
            "listening": addr.to_string(),
            "role": "serve",
            "app": name,
            "digest": digest.to_string(),
            "allocator": match runtime.allocator() { Allocator::Pooling => "pooling", Allocator::OnDemand { .. } => "on-demand" },
            "cache": { "compiled": runtime.cache_stats().compiled(), "loaded": runtime.cache_stats().deserialized() },
        })
    );
    let shutdown = CancellationToken::new();
    on_shutdown_signal(shutdown.clone());
    skiff_runtime::ingress::run(listener, runtime, args.limits.limits(), shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
