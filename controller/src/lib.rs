//! The Skiff controller: the cluster's control plane and the only writer of
//! its state, reached through an HTTP API.
//!
//! It stores apps and their immutable revisions, artifacts (by sha256),
//! nodes, replicas and events in SQLite (default, a WAL file in the data
//! directory) or PostgreSQL (for several controllers), behind one narrow
//! [`Store`](store::Store) trait. It authenticates every `/v1` call with a
//! bearer token and answers every error as
//! `{"error":{"code","message","field"}}`. It never depends on wasmtime.
//!
//! # Layout
//!
//! - [`role`]: [`Controller::start`], the whole controller from a [`ControllerConfig`].
//! - [`store`]: the `Store` trait and its SQL implementation (+ migrations).
//! - [`api`]: axum routes, extractors, and the OpenAPI document.
//! - [`auth`]: tokens, hashing, and who may call what.
//! - [`error`]: the API error type, the only place that picks statuses.
//! - [`lease`]: leader election over a lease row.
//! - [`collector`]: removes artifacts no kept revision names any more.
//! - [`informer`]: the in-memory picture of apps, nodes and replicas, and node leases.
//! - [`reconciler`]: drives observed state towards desired state.
//! - [`jobs`]: the job controller: runs of jobs placed, retried and finished.
//! - [`autoscaler`]: replica counts that follow the demand nodes report (`[scale]`).
//! - [`scheduler`]: the pure placement of replicas onto nodes.

pub mod api;
pub mod auth;
pub mod autoscaler;
pub mod collector;
pub mod error;
pub mod informer;
pub mod jobs;
pub mod lease;
pub mod reconciler;
pub mod role;
pub mod scheduler;
pub mod store;
pub mod ui;

use std::path::PathBuf;
use std::time::Duration;

pub use role::{Controller, ControllerConfig};

/// Default node grace: a node that missed three default heartbeats (1 s
/// apart) is NotReady, and its replicas move that long after this
/// controller became leader. Long enough to ride out a GC pause or a
/// brief network hiccup, short enough that a dead node's traffic moves
/// within seconds.
pub const DEFAULT_NODE_GRACE: Duration = Duration::from_secs(3);

/// Why the controller could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The store failed (including a failed migration).
    #[error("state store")]
    Store(#[source] store::StoreError),
    /// The state store could not be opened (or migrated).
    #[error("opening the state store ({url})")]
    Open {
        /// The database URL, without its password.
        url: String,
        /// Why.
        #[source]
        source: store::StoreError,
    },
    /// A file in the data directory could not be used.
    #[error("{doing} {}", path.display())]
    Io {
        /// What the controller was doing.
        doing: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

pub use skiff_sdk::error_chain;

/// Serves the API on `listener` until `shutdown` is cancelled, then lets
/// in-flight requests finish.
/// `limits` bound what one client may hold (slow headers, header size,
/// connections).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: api::AppState,
    limits: skiff_sdk::serve::Limits,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let router = api::router(state);
    skiff_sdk::serve::serve(
        listener,
        limits,
        move || hyper_util::service::TowerToHyperService::new(router.clone()),
        shutdown,
    )
    .await
}
