//! Layers pulled straight from the OCI registry an app's revision came
//! from (`spec.source`), each checked against its digest, with the
//! controller's copy as the fallback: an edge node pulls from a registry or
//! mirror near it instead of through one controller, and a node that
//! cannot reach the registry still starts the app. A node that holds a
//! component keeps serving it whatever the registry does.
//!
//! Credentials for a registry are asked of the controller, which hands them
//! only to nodes running an app from that registry; they are kept in memory
//! only, never written to the node's disk.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use skiff_sdk::Digest;
use skiff_sdk::oci::{OciRef, Registry, RegistryError};

use super::{Agent, lock};

/// How long a registry that could not be reached is not tried again (its
/// layers come from the controller meanwhile).
const BACKOFF: Duration = Duration::from_secs(30);
/// How long a client (with the credentials it was made with) is used
/// before the controller is asked for the credentials again.
const CREDENTIALS_TTL: Duration = Duration::from_secs(300);
/// Largest layer pulled, as from the controller.
const MAX_LAYER: u64 = skiff_sdk::client::MAX_ARTIFACT as u64;

/// Where the node's layers came from, for its metrics.
#[derive(Debug, Default)]
pub struct PullStats {
    /// Layers pulled from an OCI registry.
    pub from_registry: AtomicU64,
    /// Layers downloaded from the controller.
    pub from_controller: AtomicU64,
    /// Registry pulls that failed (the controller's copy was used).
    pub registry_failures: AtomicU64,
}

/// The registry clients of a node.
#[derive(Default)]
pub(super) struct Registries {
    /// Per registry: a client and when it was made.
    clients: std::sync::Mutex<HashMap<String, (Arc<Registry>, Instant)>>,
    /// Registries that could not be reached, and until when they are
    /// skipped.
    down: std::sync::Mutex<HashMap<String, Instant>>,
}

impl Agent {
    /// The bytes of `digest` from the registry `source` names, if the
    /// revision came from one and the registry gives them; `None` means
    /// "use the controller's copy" (the reason is logged).
    pub(super) async fn registry_copy(
        &self,
        source: Option<&str>,
        digest: &Digest,
    ) -> Option<Vec<u8>> {
        let reference = OciRef::parse(source?).ok()?;
        let name = reference.registry.clone();
        if lock(&self.registries.down)
            .get(&name)
            .is_some_and(|until| Instant::now() < *until)
        {
            return None;
        }
        let registry = self.registry_client(&reference).await;
        let stats = &self.router.pulls;
        match registry.blob(&reference, digest, MAX_LAYER).await {
            Ok(bytes) => {
                stats.from_registry.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(registry = %name, %digest, "layer pulled from the registry");
                Some(bytes)
            }
            Err(error) => {
                stats.registry_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(registry = %name, %digest, %error,
                    "pulling from the registry failed; using the controller's copy");
                match error {
                    RegistryError::Unreachable { .. } => {
                        lock(&self.registries.down).insert(name, Instant::now() + BACKOFF);
                    }
                    // Ask for the credentials again next time.
                    RegistryError::Refused { .. } => {
                        lock(&self.registries.clients).remove(&name);
                    }
                    _ => {}
                }
                None
            }
        }
    }

    /// Counts a layer downloaded from the controller.
    pub(super) fn pulled_from_controller(&self) {
        self.router
            .pulls
            .from_controller
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A client for `reference`'s registry, with the credentials the
    /// controller hands this node for it (anonymous if none, or if the
    /// controller cannot be asked).
    async fn registry_client(&self, reference: &OciRef) -> Arc<Registry> {
        let name = &reference.registry;
        if let Some((client, made)) = lock(&self.registries.clients).get(name)
            && made.elapsed() < CREDENTIALS_TTL
        {
            return client.clone();
        }
        let session = lock(&self.session).clone();
        let credentials = match session {
            Some(client) => match client
                .node_registry_credentials(&self.config.name, name)
                .await
            {
                Ok(credentials) => credentials,
                Err(error) => {
                    tracing::warn!(registry = %name, error = %skiff_sdk::error_chain(&error),
                        "asking the controller for registry credentials; pulling anonymously");
                    None
                }
            },
            None => None,
        };
        let client = Arc::new(Registry::new(
            reference,
            &self.config.insecure_registries,
            credentials.as_ref(),
        ));
        lock(&self.registries.clients).insert(name.clone(), (client.clone(), Instant::now()));
        client
    }
}
