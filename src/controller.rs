//! `skiff controller`: the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use skiff_controller::{Controller, ControllerConfig, api, collector, lease, reconciler, store};
use tokio_util::sync::CancellationToken;

use crate::flags::{Dur, Size};

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
    #[arg(long, env = "SKIFF_MAX_ARTIFACT", default_value_t = Size(api::DEFAULT_MAX_ARTIFACT_BYTES as u64))]
    pub(crate) max_artifact: Size,
    /// Most bytes all stored artifacts may take, e.g. `8Gi`; an upload
    /// beyond is answered 507.
    #[arg(long, env = "SKIFF_MAX_ARTIFACT_STORE", default_value_t = Size(store::DEFAULT_ARTIFACT_STORE_BYTES))]
    pub(crate) max_artifact_store: Size,
    /// How long an artifact no kept revision names is kept, e.g. `1h`.
    #[arg(long, env = "SKIFF_ARTIFACT_RETENTION", default_value_t = Dur(collector::DEFAULT_ARTIFACT_RETENTION))]
    pub(crate) artifact_retention: Dur,
    /// A node without a heartbeat for this long is NotReady, e.g. `3s`.
    #[arg(long, env = "SKIFF_NODE_GRACE", default_value_t = Dur(skiff_controller::DEFAULT_NODE_GRACE))]
    pub(crate) node_grace: Dur,
    /// How often apps still moving (rolling out, draining) are planned again
    /// without a change.
    #[arg(long, env = "SKIFF_RESYNC", default_value_t = Dur(reconciler::DEFAULT_RESYNC))]
    pub(crate) resync: Dur,
    /// How often the controller re-reads everything and plans every app, a
    /// safety net under change-driven reconciling.
    #[arg(long, env = "SKIFF_FULL_RESYNC", default_value_t = Dur(reconciler::DEFAULT_FULL_RESYNC))]
    pub(crate) full_resync: Dur,
    /// Leader lease duration; a dead leader is replaced within it.
    #[arg(long, env = "SKIFF_LEASE_TTL", default_value_t = Dur(lease::DEFAULT_LEASE_TTL))]
    pub(crate) lease_ttl: Dur,
    /// The domain apps are reached under on the nodes (`Host:
    /// <app>.<domain>`): an app's extra hosts may not be another app's own
    /// host under it.
    #[arg(long, env = "SKIFF_DOMAIN", default_value = skiff_controller::api::DEFAULT_DOMAIN)]
    pub(crate) domain: String,
    #[command(flatten)]
    pub(crate) insecure: crate::oci::InsecureRegistries,
    /// Identity in the leader lease (default: hostname and pid).
    #[arg(long, env = "SKIFF_CONTROLLER_ID")]
    pub(crate) id: Option<String>,
    #[command(flatten)]
    pub(crate) limits: crate::serve::LimitArgs,
}

/// Maps the flags to a [`ControllerConfig`] and starts the controller.
pub async fn start(
    args: &ControllerArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<Controller> {
    let config = ControllerConfig {
        database_url: args.database_url.clone(),
        max_artifact_bytes: args.max_artifact.0,
        artifact_store_bytes: args.max_artifact_store.0,
        artifact_retention: args.artifact_retention.0,
        node_grace: args.node_grace.0,
        resync: args.resync.0,
        full_resync: args.full_resync.0,
        lease_ttl: args.lease_ttl.0,
        domain: args.domain.clone(),
        limits: args.limits.limits(),
        insecure_registries: args.insecure.hosts.clone(),
        ..ControllerConfig::new(
            &args.data_dir,
            args.id
                .clone()
                .unwrap_or_else(|| format!("{}-{}", crate::hostname(), std::process::id())),
        )
    };
    start_config(config, args.listen, shutdown).await
}

/// Binds the API on `listen` and starts a controller with `config`;
/// records where the CLI finds it (`skiff controller` and `skiff up`).
pub async fn start_config(
    config: ControllerConfig,
    listen: SocketAddr,
    shutdown: &CancellationToken,
) -> anyhow::Result<Controller> {
    let data_dir = config.data_dir.clone();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let controller = Controller::start(config, listener, shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!(skiff_controller::error_chain(&e)))?;
    // Where the CLI finds this controller when run from the same directory.
    crate::client::write_controller_file(&data_dir, controller.addr)?;
    Ok(controller)
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    crate::serve::on_shutdown_signal(shutdown.clone());
    let controller = start(&args, &shutdown).await?;
    let (addr, backend, tokens) = (controller.addr, controller.backend, &controller.tokens);
    println!(
        "{}",
        serde_json::json!({
            "listening": addr.to_string(),
            "role": "controller",
            "backend": backend,
            "dashboard": format!("http://{addr}/ui"),
            "admin_token_file": tokens.admin,
            "join_token_file": tokens.join,
        })
    );
    eprintln!(
        "skiff controller on http://{addr} ({backend}), dashboard http://{addr}/ui; admin token in {}, node join token in {}",
        tokens.admin.display(),
        tokens.join.display()
    );
    controller.wait().await;
    Ok(())
}
