//! The Skiff node runtime: an embedded wasmtime host that serves `wasi:http`
//! components under per-app quotas.
//!
//! One [`Runtime`] per process owns one wasmtime [`Engine`](wasmtime::Engine)
//! (pooling allocator with copy-on-write memory when the address space allows,
//! fuel metering, epoch interruption driven by a ticker thread), a
//! content-addressed on-disk compile cache, and the deployed apps. Every HTTP
//! request gets a fresh `Store` and instance from the app's pre-instantiated
//! `ProxyPre`, with the app's [`Quota`](skiff_sdk::Quota) applied: memory via a
//! [`ResourceLimiter`](wasmtime::ResourceLimiter), CPU via fuel, wall-clock
//! time via an epoch deadline plus an outer timer, and concurrency via a
//! semaphore. A request that breaks a quota gets a documented status and
//! reason ([`Outcome`]); nothing it does affects the node or other apps.
//!
//! # Layout
//!
//! - [`engine`]: building the engine (pooling or on-demand) and the epoch ticker.
//! - `error`: [`RuntimeError`], why an app cannot be deployed or loaded.
//! - [`cache`]: compile-once component cache keyed by digest and engine.
//! - [`quota`]: the memory limiter and the classification of failures.
//! - [`budget`]: the node's memory budget (admission, `node-memory-pressure`) and per-app use.
//! - [`host`]: per-request host state; what a guest is granted (little).
//! - [`logs`]: guest stdout/stderr into per-app ring buffers and tracing.
//! - [`body`]: streaming request-size limit and JSON error responses.
//! - [`routing`]: `Host: <app>.<domain>` to app name.
//! - `registry`: the [`Runtime`] and its deployed apps (deploy, remove, find, load).
//! - [`command`]: running a job's `wasi:cli/run` component to completion under its quota.
//! - `execute`: serving one request ([`Runtime::handle`]): store, instance, outcome.
//! - [`verdict`]: the first-requests verdict on a newly serving revision.
//! - [`ingress`]: the hyper server loop with graceful shutdown.
//! - [`node`]: the node agent (join, heartbeat, assignments, edge autonomy)
//!   and its router (serve locally or forward to a peer).

pub mod body;
pub mod budget;
pub mod cache;
pub mod command;
pub mod engine;
mod error;
mod execute;
pub mod host;
pub mod ingress;
pub mod logs;
pub mod node;
pub mod quota;
mod registry;
pub mod routing;
pub mod verdict;

pub use error::RuntimeError;
pub use execute::Target;
pub use host::Capabilities;
pub use quota::Outcome;
pub use registry::{
    AppRef, AppStats, DEFAULT_DOMAIN, DEFAULT_MAX_REQUEST_BODY, DEFAULT_QUEUE_TIMEOUT, Deployment,
    FUEL_YIELD_INTERVAL, LATENCY_BUCKETS_MS, Latency, Preloaded, Runtime, RuntimeConfig,
};
pub use skiff_sdk::error_chain;
