//! The Skiff SDK: the public contract between users, the controller and nodes.
//!
//! It holds the wire types of the HTTP API (plain `serde` types), the parsers
//! for the quantities users write (`64Mi`, `5s`), and, as the project grows,
//! the `skiff.toml` manifest and bundle packaging; and a typed async
//! [`Client`] of the API. The
//! controller and the runtime depend on this crate; it depends on neither.
//!
//! # Layout
//!
//! - [`api`]: wire types of the controller's HTTP API and name rules.
//! - [`bundle`]: deterministic app bundles (manifest, component, files).
//! - [`capability`]: outbound grants, address rules and capability diffs.
//! - [`client`]: a typed async client of that API (hyper, no TLS).
//! - [`delta`]: changes to the endpoints document, for watches that answer only what changed.
//! - [`component`]: is it a valid component, and what does it import and export.
//! - [`digest`]: `sha256:<hex>` content digests that name artifacts.
//! - [`manifest`]: `skiff.toml`, parsed with file:line:key errors.
//! - [`quantity`]: byte sizes (`64Mi`), durations (`5s`) and counts (`10k`).
//! - [`quota`]: the per-app [`Quota`] (memory, fuel, timeout, concurrency).
//! - [`scale`]: `[scale]` (autoscaling, sleep and wake), usage reports, activation.
//! - [`serve`]: the hardened accept loop of the controller and the nodes.
//! - [`spec`]: the rules of an app spec ([`api::AppSpec::validate`]), for the API and the manifest.
#![deny(missing_docs)]

pub mod api;
pub mod bundle;
pub mod capability;
pub mod client;
pub mod component;
pub mod delta;
pub mod digest;
pub mod manifest;
pub mod oci;
pub mod quantity;
pub mod quota;
pub mod scale;
pub mod serve;
pub mod spec;

pub use client::{Client, ClientError};
pub use digest::Digest;
pub use quota::Quota;

/// Formats an error with its whole `source` chain, `outer: inner: ...`:
/// for the one log line or message that has to say everything.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
