//! What the agent fetches and frees on disk: components and static files,
//! fetched by digest (from the OCI registry an app came from, else from
//! the controller: see `pull`), and the disk no assignment needs any more.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use skiff_sdk::api::Assignments;
use skiff_sdk::{ClientError, Digest};

use super::{Agent, lock};
use crate::Runtime;
use skiff_sdk::error_chain;

/// Whether a replica's component or files are here.
#[derive(Debug)]
pub(super) enum Load {
    /// Here (and, for a component, loaded).
    Ready,
    /// Not yet, and why: retried.
    Missing(String),
    /// Never, and why: the replica fails.
    Failed(String),
}

impl Agent {
    /// Makes sure an app's static files are laid out on disk (fetched by
    /// digest, like components).
    pub(super) async fn mount_files(
        &self,
        files: &BTreeMap<String, Digest>,
        source: Option<&str>,
    ) -> Load {
        if files.is_empty() || self.state.mount_dir(files).is_dir() {
            return Load::Ready;
        }
        let mut contents = BTreeMap::new();
        for digest in files.values() {
            if contents.contains_key(digest) {
                continue;
            }
            if let Some(bytes) = self.registry_copy(source, digest).await {
                contents.insert(*digest, bytes.into());
                continue;
            }
            let session = lock(&self.session).clone();
            let Some(client) = session else {
                return Load::Missing("waiting for the controller to fetch the app's files".into());
            };
            match client.download_artifact(digest).await {
                Ok(bytes) => {
                    self.pulled_from_controller();
                    contents.insert(*digest, bytes);
                }
                Err(e @ ClientError::DigestMismatch { .. }) => return Load::Failed(e.to_string()),
                Err(e) => {
                    return Load::Missing(format!("fetching a file: {}", error_chain(&e)));
                }
            }
        }
        let state = self.state.clone();
        let files = files.clone();
        match tokio::task::spawn_blocking(move || state.make_mount(&files, &contents)).await {
            Ok(Ok(_)) => Load::Ready,
            Ok(Err(e)) => Load::Missing(format!("laying out the app's files: {e}")),
            Err(e) => Load::Missing(format!("laying out the app's files: {e}")),
        }
    }

    /// Makes sure a component is here and loaded.
    pub(super) async fn load(
        &self,
        runtime: &Arc<Runtime>,
        digest: &Digest,
        source: Option<&str>,
    ) -> Load {
        if let Some(known) = lock(&self.loaded).get(digest) {
            return match known {
                Ok(_) => Load::Ready,
                Err(why) => Load::Failed(why.clone()),
            };
        }
        match self.fetch_component(runtime, digest, source).await {
            Load::Ready => {}
            not_here => return not_here,
        }
        let result = runtime
            .preload(*digest)
            .await
            .map(Arc::new)
            .map_err(|e| error_chain(&e));
        let load = match &result {
            Ok(_) => Load::Ready,
            Err(why) => Load::Failed(why.clone()),
        };
        lock(&self.loaded).insert(*digest, result);
        load
    }

    /// Makes sure a component is stored here (fetched by digest from the
    /// controller), without loading it.
    pub(super) async fn fetch_component(
        &self,
        runtime: &Arc<Runtime>,
        digest: &Digest,
        source: Option<&str>,
    ) -> Load {
        if runtime.has_component(digest) {
            return Load::Ready;
        }
        if let Some(bytes) = self.registry_copy(source, digest).await {
            return match runtime.store_component(&bytes) {
                Ok(_) => Load::Ready,
                Err(e) => Load::Missing(format!("storing the artifact: {}", error_chain(&e))),
            };
        }
        let session = lock(&self.session).clone();
        let Some(client) = session else {
            return Load::Missing("waiting for the controller to fetch the artifact".into());
        };
        match client.download_artifact(digest).await {
            Ok(bytes) => match runtime.store_component(&bytes) {
                Ok(_) => {
                    self.pulled_from_controller();
                    Load::Ready
                }
                Err(e) => Load::Missing(format!("storing the artifact: {}", error_chain(&e))),
            },
            Err(e @ ClientError::DigestMismatch { .. }) => Load::Failed(e.to_string()),
            Err(e) => Load::Missing(format!("fetching the artifact: {}", error_chain(&e))),
        }
    }

    /// Frees the disk no assignment needs: static file trees no replica
    /// uses, and components beyond the cache budget, least recently loaded
    /// first (so a rollback usually finds its component still compiled).
    pub(super) async fn prune(&self, runtime: Arc<Runtime>, assignments: &Assignments) {
        let state = self.state.clone();
        let budget = self.config.cache_bytes;
        let wanted: HashSet<Digest> = self.kept_components(assignments);
        let dormant = self.dormant_assignments();
        let mounts: HashSet<PathBuf> = assignments
            .replicas
            .iter()
            .chain(&dormant)
            .filter(|a| !a.spec.files.is_empty())
            .map(|a| state.mount_dir(&a.spec.files))
            .collect();
        let done = tokio::task::spawn_blocking(move || {
            (
                state.prune_mounts(&mounts),
                runtime.prune_components(&wanted, budget),
            )
        })
        .await;
        match done {
            Ok((mounts, components)) => {
                match mounts {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(trees = n, "unused static files removed"),
                    Err(error) => tracing::warn!(%error, "removing unused static files"),
                }
                match components {
                    Ok(p) if p.components > 0 => tracing::info!(
                        components = p.components,
                        freed_bytes = p.bytes,
                        kept_bytes = p.kept_bytes,
                        "compile cache pruned"
                    ),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(error = %error_chain(&error), "pruning the compile cache")
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "pruning the node's disk"),
        }
    }
}
