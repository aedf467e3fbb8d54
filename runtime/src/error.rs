//! The error type of the runtime crate's public API.

use std::path::PathBuf;

use skiff_sdk::Digest;

/// What went wrong while the runtime was setting up or loading an app.
///
/// Request-time failures are not errors of this type: they become HTTP
/// responses (see [`crate::Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The wasmtime engine could not be created with this configuration.
    #[error("configuring the wasmtime engine")]
    Engine(#[source] wasmtime::Error),
    /// The epoch ticker thread could not be started.
    #[error("starting the epoch ticker thread")]
    Ticker(#[source] std::io::Error),
    /// A file or directory of the component cache could not be used.
    #[error("component cache: {action} {}", path.display())]
    CacheIo {
        /// What the cache was doing, e.g. "writing".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The cache has no source bytes for this digest.
    #[error("component {0} is not in the cache")]
    UnknownComponent(Digest),
    /// Compiling the component failed (it is not a valid component).
    #[error("compiling component {digest}")]
    Compile {
        /// The component.
        digest: Digest,
        /// wasmtime's explanation.
        #[source]
        source: wasmtime::Error,
    },
    /// The component does not fit this host: it imports something the host
    /// does not provide, or does not export `wasi:http/incoming-handler`.
    #[error("component {digest} cannot be served (it must be a wasi:http proxy component)")]
    Link {
        /// The component.
        digest: Digest,
        /// wasmtime's explanation, naming the missing import or export.
        #[source]
        source: wasmtime::Error,
    },
    /// The app's quota is invalid or exceeds what this node allows.
    #[error("app {app}: {reason}")]
    Quota {
        /// The app.
        app: String,
        /// What is wrong.
        reason: String,
    },
    /// No app of this name is deployed.
    #[error("no app named {0:?} is deployed")]
    UnknownApp(String),
    /// The app's component could not be loaded or linked.
    #[error("app {app} cannot be served")]
    AppUnavailable {
        /// The app.
        app: String,
        /// Why its component could not be loaded (kept for later requests).
        #[source]
        source: std::sync::Arc<RuntimeError>,
    },
    /// A background task that loads a component panicked or was cancelled.
    #[error("loading component {0} was interrupted")]
    LoadInterrupted(Digest),
}
