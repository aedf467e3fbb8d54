//! The controller as a library entry point: [`Controller::start`] opens the
//! store (running its migrations), installs the tokens on first start, and
//! runs the API, the leader election, the reconciler and the artifact
//! collector until the shutdown token is cancelled. `skiff controller` and
//! `skiff up` only map their flags onto a [`ControllerConfig`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skiff_sdk::serve::Limits;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{ApiConfig, AppState};
use crate::auth::TokenFiles;
use crate::informer::{Informer, Leases};
use crate::reconciler::{Reconciler, ReconcilerOptions};
use crate::store::{SqlStore, Store, StoreOptions};
use crate::{ControllerError, DEFAULT_NODE_GRACE};

/// Everything a controller needs to start.
#[derive(Clone)]
pub struct ControllerConfig {
    /// Directory of the SQLite database (by default) and the token files.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://USER:PASS@HOST/DB`; `None` is SQLite
    /// at `<data_dir>/skiff.db`.
    pub database_url: Option<String>,
    /// Identity in the leader lease.
    pub id: String,
    /// Largest artifact accepted, in bytes.
    pub max_artifact_bytes: u64,
    /// Most bytes all stored artifacts may take.
    pub artifact_store_bytes: u64,
    /// How long an artifact no kept revision names is kept.
    pub artifact_retention: Duration,
    /// A node without a heartbeat for this long is NotReady (and, that long
    /// after this controller became leader, lost).
    pub node_grace: Duration,
    /// How often apps still moving are planned again without a change.
    pub resync: Duration,
    /// How often the whole picture is re-read and every app planned: the
    /// safety net under change-driven reconciling.
    pub full_resync: Duration,
    /// Leader lease duration.
    pub lease_ttl: Duration,
    /// The domain apps are reached under on the nodes.
    pub domain: String,
    /// What one client may make the API hold.
    pub limits: Limits,
    /// Registries (`host[:port]`) reached over plain HTTP although not on
    /// a loopback address.
    pub insecure_registries: Vec<String>,
}

impl std::fmt::Debug for ControllerConfig {
    // The database URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerConfig")
            .field("data_dir", &self.data_dir)
            .field("database_url", &self.database_url.as_deref().map(redact))
            .field("id", &self.id)
            .field("node_grace", &self.node_grace)
            .field("resync", &self.resync)
            .field("full_resync", &self.full_resync)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

impl ControllerConfig {
    /// A controller with its state in `data_dir` (SQLite), leading as `id`;
    /// every other setting at its default.
    pub fn new(data_dir: impl Into<PathBuf>, id: impl Into<String>) -> Self {
        Self {
            data_dir: data_dir.into(),
            database_url: None,
            id: id.into(),
            max_artifact_bytes: crate::api::DEFAULT_MAX_ARTIFACT_BYTES as u64,
            artifact_store_bytes: crate::store::DEFAULT_ARTIFACT_STORE_BYTES,
            artifact_retention: crate::collector::DEFAULT_ARTIFACT_RETENTION,
            node_grace: DEFAULT_NODE_GRACE,
            resync: crate::reconciler::DEFAULT_RESYNC,
            full_resync: crate::reconciler::DEFAULT_FULL_RESYNC,
            lease_ttl: crate::lease::DEFAULT_LEASE_TTL,
            domain: crate::api::DEFAULT_DOMAIN.to_owned(),
            limits: Limits::default(),
            insecure_registries: Vec::new(),
        }
    }

    /// The database URL in use.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("skiff.db").display()))
    }
}

/// A started controller: it runs until the shutdown token given to
/// [`Controller::start`] is cancelled.
pub struct Controller {
    /// The API's address.
    pub addr: std::net::SocketAddr,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Where the tokens are (and whether this start created them).
    pub tokens: TokenFiles,
    tasks: TaskTracker,
}

impl Controller {
    /// Starts a controller serving its API on `listener`.
    pub async fn start(
        config: ControllerConfig,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<Self, ControllerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ControllerError::Io {
            doing: "creating the data directory",
            path: config.data_dir.clone(),
            source,
        })?;
        let url = config.database_url();
        let options = StoreOptions {
            node_grace: config.node_grace,
            artifact_store_bytes: config.artifact_store_bytes,
            ..StoreOptions::default()
        };
        let store =
            SqlStore::connect(&url, options)
                .await
                .map_err(|source| ControllerError::Open {
                    url: redact(&url),
                    source,
                })?;
        let backend = store.backend();
        let store: Arc<dyn Store> = Arc::new(store);
        let tokens = crate::auth::bootstrap_tokens(store.as_ref(), &config.data_dir).await?;
        if tokens.created {
            tracing::info!(admin = %tokens.admin.display(), join = %tokens.join.display(), "generated the admin and node join tokens");
        }
        let addr = listener
            .local_addr()
            .map_err(|source| ControllerError::Io {
                doing: "reading the API address",
                path: PathBuf::new(),
                source,
            })?;

        let tasks = TaskTracker::new();
        let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
        tasks.spawn(crate::lease::run_election(
            store.clone(),
            config.id.clone(),
            config.lease_ttl,
            leader_tx,
            shutdown.clone(),
        ));
        let api = ApiConfig {
            max_artifact_bytes: usize::try_from(config.max_artifact_bytes).unwrap_or(usize::MAX),
            node_grace: config.node_grace,
            domain: config.domain.clone(),
            insecure_registries: config.insecure_registries.clone(),
        };
        let leases = Leases::new(config.node_grace);
        let informer = Informer::new(store.clone(), leases.clone());
        tasks.spawn(informer.clone().run(config.full_resync, shutdown.clone()));
        tasks.spawn(
            informer
                .detector()
                .clone()
                .run(leases.clone(), shutdown.clone()),
        );
        tasks.spawn(leases.run(store.clone(), config.id.clone(), shutdown.clone()));
        let state = AppState::new(store.clone(), informer.clone(), api, leader_rx.clone());
        tasks.spawn(crate::jobs::run(
            store.clone(),
            informer.clone(),
            state.runs.clone(),
            config.node_grace,
            leader_rx.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(crate::autoscaler::run(
            store.clone(),
            informer.clone(),
            leader_rx.clone(),
            shutdown.clone(),
        ));
        let reconciler = Reconciler::new(
            store.clone(),
            informer,
            ReconcilerOptions {
                node_grace: config.node_grace,
                resync: config.resync,
            },
        );
        tasks.spawn(reconciler.run(leader_rx.clone(), shutdown.clone()));
        tasks.spawn(crate::collector::run(
            store,
            config.artifact_retention,
            leader_rx,
            shutdown.clone(),
        ));
        let limits = config.limits;
        tasks.spawn(async move {
            if let Err(error) = crate::serve(listener, state, limits, shutdown.clone()).await {
                tracing::error!(%error, "the API server failed");
            }
            shutdown.cancel();
        });
        tasks.close();
        Ok(Self {
            addr,
            backend,
            tokens,
            tasks,
        })
    }

    /// Waits until the controller has stopped (after the shutdown token was
    /// cancelled and in-flight requests finished).
    pub async fn wait(&self) {
        self.tasks.wait().await;
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
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

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://skiff:secret@db/skiff"),
            "postgres://skiff:***@db/skiff"
        );
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
    }
}
