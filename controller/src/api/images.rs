//! Apps whose artifact is an image in an OCI registry (`"artifact":
//! "oci://REGISTRY/REPO:TAG"` or `…@sha256:…` in `PUT /v1/apps/{name}`).
//!
//! The tag is resolved to its manifest digest when the app is applied, so a
//! revision is always pinned to bytes; a tag moved later changes nothing
//! until the app is applied again. The controller keeps its own copy of the
//! component and files (every blob checked against its digest): the nodes
//! pull from the registry directly and fall back to that copy, so a
//! registry that goes away stops no rollout.

use std::collections::BTreeMap;

use skiff_sdk::Digest;
use skiff_sdk::api::AppSpec;
use skiff_sdk::oci::{
    FILE_LAYER, MANIFEST_LAYER, OciRef, Registry, RegistryError, TITLE, WASM_LAYER,
};

use super::artifacts::validate_component;
use super::{AppState, JsonBody, decode_json};
use crate::error::ApiError;

/// What an image gave an app: its component, its files by guest path, and
/// the reference pinned to the manifest digest.
#[derive(Debug)]
pub struct Imported {
    /// The component's digest (its layer's digest).
    pub artifact: Digest,
    /// The files the image holds, by the path in their title annotation.
    pub files: BTreeMap<String, Digest>,
    /// `oci://REGISTRY/REPO[:TAG]@sha256:…`.
    pub source: String,
}

/// The apply body as a spec, and the `oci://` reference its `artifact`
/// named, if it did (the spec's `artifact` is then a placeholder until the
/// image is imported). Bodies without `"oci://` are decoded directly.
pub fn decode_spec(body: JsonBody<AppSpec>) -> Result<(AppSpec, Option<String>), ApiError> {
    const OCI: &[u8] = b"\"oci://";
    if !body.is_json || !body.bytes.windows(OCI.len()).any(|w| w == OCI) {
        return Ok((body.decode()?, None));
    }
    let mut value: serde_json::Value = decode_json(&body.bytes)?;
    let reference = match value.get("artifact") {
        Some(serde_json::Value::String(s)) if s.starts_with("oci://") => s.clone(),
        _ => return Ok((decode_json(&body.bytes)?, None)),
    };
    if value.get("source").is_some() {
        return Err(ApiError::invalid(
            "invalid_field",
            "source",
            "set from the image when artifact is an oci:// reference; leave it out",
        ));
    }
    value["artifact"] = serde_json::Value::String(Digest::of(b"").to_string());
    let bytes = serde_json::to_vec(&value).map_err(|e| ApiError::BadRequest {
        code: "invalid_json",
        message: e.to_string(),
        field: None,
    })?;
    Ok((decode_json(&bytes)?, Some(reference)))
}

/// A registry error as a 422 on `artifact`, naming the reference.
fn failed(reference: &OciRef, e: RegistryError) -> ApiError {
    let code = match &e {
        RegistryError::Refused { .. } => "registry_refused",
        RegistryError::NotFound => "unknown_image",
        RegistryError::Unreachable { .. } => "registry_unreachable",
        RegistryError::Invalid(_) | RegistryError::Other(_) => "invalid_image",
    };
    let hint = match &e {
        RegistryError::Refused { .. } => format!(
            " (store credentials with `skiff registry login {}`)",
            reference.registry
        ),
        _ => String::new(),
    };
    ApiError::invalid(code, "artifact", format!("{reference}: {e}{hint}"))
}

/// Entries kept before the cache of image layouts starts over.
const CAPACITY: usize = 4096;

/// One layer of an image, as the app takes it.
#[derive(Clone, Debug)]
struct Layer {
    digest: Digest,
    /// The component (else a file).
    component: bool,
    /// A file's guest path.
    title: Option<String>,
}

/// The layers of images already read, by pinned reference: a manifest
/// digest names its bytes forever, so applying an image read before (a
/// rollback, a second app, a retry) needs no registry while the controller
/// still holds its layers.
#[derive(Default)]
pub(crate) struct Imports {
    layouts: std::sync::Mutex<std::collections::HashMap<String, Vec<Layer>>>,
}

impl Imports {
    fn key(pinned: &OciRef) -> String {
        format!(
            "{}/{}@{}",
            pinned.registry,
            pinned.repository,
            pinned.digest.as_deref().unwrap_or_default()
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Vec<Layer>>> {
        self.layouts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The layers the app takes from the manifest of `pinned`.
async fn read_layout(
    registry: &Registry,
    pinned: &OciRef,
    limit: u64,
) -> Result<Vec<Layer>, ApiError> {
    let manifest = registry
        .manifest(pinned)
        .await
        .map_err(|e| failed(pinned, e))?;
    let invalid =
        |why: String| ApiError::invalid("invalid_image", "artifact", format!("{pinned}: {why}"));
    let mut layers = Vec::new();
    for layer in &manifest.layers {
        let component = match layer.media_type.as_str() {
            WASM_LAYER if layers.iter().any(|l: &Layer| l.component) => {
                return Err(invalid("more than one application/wasm layer".into()));
            }
            WASM_LAYER => true,
            FILE_LAYER => false,
            MANIFEST_LAYER => continue,
            other => return Err(invalid(format!("a layer of media type {other}"))),
        };
        let digest: Digest = layer
            .digest
            .parse()
            .map_err(|e| invalid(format!("layer digest {}: {e}", layer.digest)))?;
        if u64::try_from(layer.size).is_ok_and(|n| n > limit) {
            return Err(invalid(format!(
                "layer {digest} is over the artifact limit ({limit} bytes)"
            )));
        }
        let title = layer
            .annotations
            .as_ref()
            .and_then(|a| a.get(TITLE))
            .cloned();
        if !component && title.is_none() {
            return Err(invalid(format!(
                "file layer {digest} has no {TITLE} annotation"
            )));
        }
        layers.push(Layer {
            digest,
            component,
            title,
        });
    }
    if !layers.iter().any(|l| l.component) {
        return Err(invalid("no application/wasm layer".into()));
    }
    Ok(layers)
}

/// Resolves `text` to a manifest digest and stores every layer the app
/// needs that is not stored yet (the component checked to be one).
pub async fn import(state: &AppState, text: &str) -> Result<Imported, ApiError> {
    let reference =
        OciRef::parse(text).map_err(|e| ApiError::invalid("invalid_field", "artifact", e.0))?;
    // Made only if the registry must be asked: an image read before whose
    // layers are all stored needs none.
    let registry = tokio::sync::OnceCell::new();
    let registry = || {
        registry.get_or_try_init(|| async {
            let credentials = state
                .store
                .registry_credentials(&reference.registry)
                .await
                .map_err(ApiError::store("reading registry credentials"))?;
            Ok::<_, ApiError>(Registry::new(
                &reference,
                &state.config.insecure_registries,
                credentials.as_ref(),
            ))
        })
    };
    let limit = state.config.max_artifact_bytes as u64;
    let known = reference
        .digest
        .as_ref()
        .and_then(|_| state.images.lock().get(&Imports::key(&reference)).cloned());
    let (pinned, layers) = match known {
        Some(layers) => (reference.clone(), layers),
        None => {
            let registry = registry().await?;
            let digest = registry
                .resolve(&reference)
                .await
                .map_err(|e| failed(&reference, e))?;
            let pinned = reference.pinned(&digest);
            let layers = read_layout(registry, &pinned, limit).await?;
            (pinned, layers)
        }
    };
    let mut files = BTreeMap::new();
    for layer in &layers {
        let stored = state
            .store
            .artifact(&layer.digest)
            .await
            .map_err(ApiError::store("looking up an artifact"))?
            .is_some();
        if !stored {
            let bytes = registry()
                .await?
                .blob(&pinned, &layer.digest, limit)
                .await
                .map_err(|e| failed(&pinned, e))?;
            if layer.component {
                validate_component(&bytes).map_err(|message| ApiError::Invalid {
                    code: "invalid_component",
                    message: format!("{pinned}: its application/wasm layer is not a valid Wasm component: {message}"),
                    field: Some("artifact".into()),
                })?;
            }
            state
                .store
                .put_artifact(&layer.digest, &bytes)
                .await
                .map_err(ApiError::store("storing an artifact"))?;
        }
        if let (false, Some(title)) = (layer.component, &layer.title) {
            files.insert(title.clone(), layer.digest);
        }
    }
    let artifact = layers
        .iter()
        .find(|l| l.component)
        .map(|l| l.digest)
        .ok_or_else(|| {
            ApiError::invalid(
                "invalid_image",
                "artifact",
                format!("{pinned}: no application/wasm layer"),
            )
        })?;
    {
        let mut layouts = state.images.lock();
        if layouts.len() >= CAPACITY {
            layouts.clear();
        }
        layouts.insert(Imports::key(&pinned), layers);
    }
    tracing::info!(source = %pinned, %artifact, files = files.len(), "image imported");
    Ok(Imported {
        artifact,
        files,
        source: pinned.to_string(),
    })
}
