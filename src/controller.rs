//! `skiff controller`: the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use skiff_controller::api::{ApiConfig, AppState};
use skiff_controller::reconciler::{Reconciler, ReconcilerOptions};
use skiff_controller::store::{SqlStore, StoreOptions};
use skiff_sdk::quantity;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Default API address: loopback only; expose it deliberately.
const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default data directory (SQLite database and token files).
const DEFAULT_DATA_DIR: &str = "skiff-data";

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Address of the HTTP API (port 0 picks a free port; the readiness
    /// line on stdout says which).
    #[arg(long, env = "SKIFF_LISTEN", default_value = DEFAULT_LISTEN)]
    pub(crate) listen: SocketAddr,
    /// Directory for the SQLite database and the token files.
    #[arg(long, env = "SKIFF_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub(crate) data_dir: PathBuf,
    /// Database URL: `sqlite://PATH` or `postgres://USER:PASS@HOST/DB`.
    /// Defaults to `sqlite://<data-dir>/skiff.db` (WAL mode).
    #[arg(long, env = "SKIFF_DATABASE_URL")]
    pub(crate) database_url: Option<String>,
    /// Largest artifact accepted, e.g. `64Mi`.
    #[arg(long, env = "SKIFF_MAX_ARTIFACT", default_value = "64Mi", value_parser = quantity::parse_bytes)]
    pub(crate) max_artifact: u64,
    /// Most bytes all stored artifacts may take, e.g. `8Gi`; an upload
    /// beyond is answered 507.
    #[arg(long, env = "SKIFF_MAX_ARTIFACT_STORE", default_value = "8Gi", value_parser = quantity::parse_bytes)]
    pub(crate) max_artifact_store: u64,
    /// How long an artifact no kept revision names is kept, e.g. `1h`.
    #[arg(long, env = "SKIFF_ARTIFACT_RETENTION", default_value = "1h", value_parser = quantity::parse_duration)]
    pub(crate) artifact_retention: Duration,
    /// A node without a heartbeat for this long is NotReady, e.g. `3s`.
    #[arg(long, env = "SKIFF_NODE_GRACE", default_value = "3s", value_parser = quantity::parse_duration)]
    pub(crate) node_grace: Duration,
    /// How often the reconciler re-checks everything even without a change
    /// (how soon a lost node is noticed after its grace period; matches
    /// `skiff_controller::reconciler::DEFAULT_RESYNC`).
    #[arg(long, env = "SKIFF_RESYNC", default_value = "500ms", value_parser = quantity::parse_duration)]
    pub(crate) resync: Duration,
    /// Leader lease duration; a dead leader is replaced within it.
    #[arg(long, env = "SKIFF_LEASE_TTL", default_value = "5s", value_parser = quantity::parse_duration)]
    pub(crate) lease_ttl: Duration,
    /// The domain apps are reached under on the nodes (`Host:
    /// <app>.<domain>`): an app's extra hosts may not be another app's own
    /// host under it.
    #[arg(long, env = "SKIFF_DOMAIN", default_value = skiff_controller::api::DEFAULT_DOMAIN)]
    pub(crate) domain: String,
    /// Identity in the leader lease (default: hostname and pid).
    #[arg(long, env = "SKIFF_CONTROLLER_ID")]
    pub(crate) id: Option<String>,
    #[command(flatten)]
    pub(crate) limits: crate::serve::LimitArgs,
}

/// A controller started by [`start`]: its tasks run until the shutdown
/// token is cancelled.
pub struct Started {
    pub addr: std::net::SocketAddr,
    pub id: String,
    pub backend: &'static str,
    pub tokens: skiff_controller::auth::TokenFiles,
}

/// Opens the store, bootstraps tokens, binds the API and spawns the API,
/// the leader election and the reconciler onto `tasks`.
pub async fn start(
    args: &ControllerArgs,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<Started> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", args.data_dir.join("skiff.db").display()));
    let options = StoreOptions {
        node_grace: args.node_grace,
        artifact_store_bytes: args.max_artifact_store,
        ..StoreOptions::default()
    };
    let store = SqlStore::connect(&url, options)
        .await
        .map_err(|e| anyhow::anyhow!(skiff_controller::error_chain(&e)))
        .with_context(|| format!("opening the state store ({})", redact(&url)))?;
    let backend = store.backend();
    let store: Arc<dyn skiff_controller::store::Store> = Arc::new(store);
    let tokens = skiff_controller::auth::bootstrap_tokens(store.as_ref(), &args.data_dir)
        .await
        .map_err(|e| anyhow::anyhow!(skiff_controller::error_chain(&e)))?;
    if tokens.created {
        tracing::info!(admin = %tokens.admin.display(), join = %tokens.join.display(), "generated the admin and node join tokens");
    }

    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", crate::hostname(), std::process::id()));
    tasks.spawn(skiff_controller::lease::run_election(
        store.clone(),
        id.clone(),
        args.lease_ttl,
        leader_tx,
        shutdown.clone(),
    ));

    let config = ApiConfig {
        max_artifact_bytes: usize::try_from(args.max_artifact).unwrap_or(usize::MAX),
        node_grace: args.node_grace,
        domain: args.domain.clone(),
    };
    let state = AppState::new(store.clone(), config, leader_rx.clone());
    let reconciler = Reconciler::new(
        store,
        ReconcilerOptions {
            node_grace: args.node_grace,
            resync: args.resync,
        },
        state.changes.clone(),
    );
    tasks.spawn(reconciler.run(leader_rx.clone(), shutdown.clone()));
    tasks.spawn(skiff_controller::collector::run(
        state.store.clone(),
        args.artifact_retention,
        leader_rx,
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Where the CLI finds this controller when run from the same directory.
    crate::client::write_controller_file(&args.data_dir, addr)?;
    let serving = shutdown.clone();
    let limits = args.limits.limits();
    tasks.spawn(async move {
        if let Err(error) = skiff_controller::serve(listener, state, limits, serving.clone()).await
        {
            tracing::error!(%error, "the API server failed");
        }
        serving.cancel();
    });
    Ok(Started {
        addr,
        id,
        backend,
        tokens,
    })
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    crate::serve::on_shutdown_signal(shutdown.clone());
    let tasks = TaskTracker::new();
    let started = start(&args, &shutdown, &tasks).await?;
    let Started {
        addr,
        id,
        backend,
        tokens,
    } = started;
    println!(
        "{}",
        serde_json::json!({
            "listening": addr.to_string(),
            "role": "controller",
            "id": id,
            "backend": backend,
            "admin_token_file": tokens.admin,
            "join_token_file": tokens.join,
        })
    );
    eprintln!(
        "skiff controller on http://{addr} ({backend}); admin token in {}, node join token in {}",
        tokens.admin.display(),
        tokens.join.display()
    );
    shutdown.cancelled().await;
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
