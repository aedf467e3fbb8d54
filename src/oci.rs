//! OCI registries in the CLI: `skiff push` publishes an app in the Wasm OCI
//! artifact layout ([`skiff_sdk::oci`]); `skiff deploy oci://…` reads one
//! back, pinned to the manifest digest its tag named, every layer checked
//! against its digest.
//!
//! Registries on loopback addresses are reached over plain HTTP (as Docker
//! does for 127.0.0.0/8); any other needs HTTPS unless named with
//! `--insecure-registry`. Credentials come from `SKIFF_REGISTRY_USERNAME`
//! and `SKIFF_REGISTRY_PASSWORD` (basic auth, or a token exchange when the
//! registry asks for one); without them access is anonymous.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use skiff_sdk::oci::{FILE_LAYER, MANIFEST_LAYER, OciRef, TITLE, WASM_CONFIG, WASM_LAYER};

use skiff_sdk::bundle::BUNDLE_EXTENSION;

use crate::Failure;
use crate::deploy::{Built, Kind};

/// `skiff push [DIR | FILE.skiff] REGISTRY/REPO:TAG`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The app's directory (holding `skiff.toml`), the manifest itself, or
    /// a bundle made by `skiff package`.
    pub source: PathBuf,
    /// Where to publish it: `REGISTRY/REPOSITORY:TAG` (`oci://` optional).
    pub reference: String,
    /// Use the component as it is; do not run the build command.
    #[arg(long)]
    pub no_build: bool,
    /// A registry (`host[:port]`) reached over plain HTTP although it is
    /// not on a loopback address. Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure: Vec<String>,
}

/// Parses a reference the user typed, as a usage error naming it.
pub fn reference(text: &str) -> anyhow::Result<OciRef> {
    OciRef::parse(text).map_err(|e| Failure::Usage(e.to_string()).into())
}

fn client(reference: &OciRef, insecure: &[String]) -> Client {
    let mut plain: Vec<String> = insecure.to_vec();
    if reference.is_loopback() {
        plain.push(reference.registry.clone());
    }
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain),
        ..ClientConfig::default()
    })
}

fn auth() -> RegistryAuth {
    match (
        std::env::var("SKIFF_REGISTRY_USERNAME"),
        std::env::var("SKIFF_REGISTRY_PASSWORD"),
    ) {
        (Ok(user), Ok(password)) => RegistryAuth::Basic(user, password),
        _ => RegistryAuth::Anonymous,
    }
}

fn oci_reference(reference: &OciRef) -> anyhow::Result<Reference> {
    reference
        .plain()
        .parse::<Reference>()
        .map_err(|e| Failure::Usage(format!("{reference}: {e}")).into())
}

/// What went wrong talking to the registry, naming it (never the secret).
fn registry_error(
    reference: &OciRef,
    doing: &str,
    e: oci_client::errors::OciDistributionError,
) -> anyhow::Error {
    use oci_client::errors::OciDistributionError as E;
    use oci_client::errors::OciErrorCode as Code;
    let refused = || {
        let given = std::env::var_os("SKIFF_REGISTRY_USERNAME").is_some();
        format!(
            "the registry {} refused {} (SKIFF_REGISTRY_USERNAME and SKIFF_REGISTRY_PASSWORD)",
            reference.registry,
            if given {
                "the credentials"
            } else {
                "anonymous access: it needs credentials"
            }
        )
    };
    let why = match &e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => refused(),
        E::ServerError {
            code: 401 | 403, ..
        } => refused(),
        E::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, Code::Unauthorized | Code::Denied)) =>
        {
            refused()
        }
        E::ImageManifestNotFoundError(_) => "no such repository or tag".to_owned(),
        E::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, Code::ManifestUnknown | Code::NameUnknown)) =>
        {
            "no such repository or tag".to_owned()
        }
        E::RequestError(r) if r.is_connect() || r.is_timeout() => {
            format!("cannot reach the registry {} ({r})", reference.registry)
        }
        other => other.to_string(),
    };
    Failure::Usage(format!("{doing} {reference}: {why}")).into()
}

/// The Wasm OCI config for a component (deterministic: the same component
/// always makes the same config, so the same inputs push the same digest).
fn wasm_config(component_digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [component_digest],
    }))
    .unwrap_or_default()
}

/// `skiff push`: build (or unbundle), then publish; prints the digest.
pub async fn push(args: &PushArgs) -> anyhow::Result<()> {
    let target = reference(&args.reference)?;
    if target.digest.is_some() {
        return Err(Failure::Usage(format!(
            "{target}: push to a tag; the registry names the digest"
        ))
        .into());
    }
    let built = if args
        .source
        .extension()
        .is_some_and(|e| e == BUNDLE_EXTENSION)
    {
        crate::deploy::unbundle(&args.source, None)?
    } else {
        crate::deploy::build(&args.source, args.no_build)?
    };
    let component = ImageLayer::new(built.bytes.clone(), WASM_LAYER.to_owned(), None);
    let titled = |name: &str| Some(BTreeMap::from([(TITLE.to_owned(), name.to_owned())]));
    let mut layers = vec![
        component,
        ImageLayer::new(
            built.manifest_text.clone().into_bytes(),
            MANIFEST_LAYER.to_owned(),
            titled("skiff.toml"),
        ),
    ];
    for (path, bytes) in &built.files {
        layers.push(ImageLayer::new(
            bytes.clone(),
            FILE_LAYER.to_owned(),
            titled(&path.to_string_lossy()),
        ));
    }
    let config = Config::new(
        wasm_config(&layers[0].sha256_digest()),
        WASM_CONFIG.to_owned(),
        None,
    );
    let registry = client(&target, &args.insecure);
    let image = oci_reference(&target)?;
    eprintln!(
        "pushing {} ({}) to {target}",
        built.manifest.name,
        crate::commands::human_bytes(built.bytes.len() as u64)
    );
    registry
        .push(&image, &layers, config, &auth(), None)
        .await
        .map_err(|e| registry_error(&target, "pushing", e))?;
    let digest = registry
        .fetch_manifest_digest(&image, &auth())
        .await
        .map_err(|e| registry_error(&target, "resolving", e))?;
    eprintln!("pushed {}", target.pinned(&digest));
    println!(
        "{}",
        serde_json::json!({ "pushed": target.to_string(), "digest": digest })
    );
    Ok(())
}

/// Reads the app at `reference` back from its registry: the tag resolved
/// to a manifest digest first, so everything read is of that one manifest.
/// Returns the app as a build would, and the pinned reference.
pub async fn pull(
    text: &str,
    kind: Option<Kind>,
    insecure: &[String],
) -> anyhow::Result<(Built, OciRef)> {
    let wanted = reference(text)?;
    let registry = client(&wanted, insecure);
    let digest = match &wanted.digest {
        Some(digest) => digest.clone(),
        None => registry
            .fetch_manifest_digest(&oci_reference(&wanted)?, &auth())
            .await
            .map_err(|e| registry_error(&wanted, "resolving", e))?,
    };
    let pinned = wanted.pinned(&digest);
    let image = registry
        .pull(
            &oci_reference(&pinned)?,
            &auth(),
            vec![WASM_LAYER, MANIFEST_LAYER, FILE_LAYER],
        )
        .await
        .map_err(|e| registry_error(&pinned, "pulling", e))?;
    if image.digest.as_deref().is_some_and(|d| d != digest) {
        return Err(Failure::Usage(format!(
            "{pinned}: the registry answered a different manifest ({})",
            image.digest.unwrap_or_default()
        ))
        .into());
    }
    let invalid =
        |why: String| -> anyhow::Error { Failure::Usage(format!("{pinned}: {why}")).into() };
    let mut component = None;
    let mut manifest_text = None;
    let mut files = BTreeMap::new();
    for layer in image.layers {
        let title = layer
            .annotations
            .as_ref()
            .and_then(|a| a.get(TITLE))
            .cloned();
        match layer.media_type.as_str() {
            WASM_LAYER if component.is_none() => component = Some(layer.data.to_vec()),
            WASM_LAYER => return Err(invalid("more than one application/wasm layer".into())),
            MANIFEST_LAYER => {
                manifest_text = Some(
                    String::from_utf8(layer.data.to_vec())
                        .map_err(|_| invalid("its skiff.toml layer is not UTF-8 text".into()))?,
                );
            }
            _ => {
                let Some(title) = title.filter(|t| safe_relative(t)) else {
                    return Err(invalid(
                        "a file layer without a safe relative path in its title annotation".into(),
                    ));
                };
                files.insert(PathBuf::from(title), layer.data.to_vec());
            }
        }
    }
    let bytes = component.ok_or_else(|| invalid("no application/wasm layer".into()))?;
    let manifest_text = manifest_text.ok_or_else(|| {
        invalid(format!(
            "no skiff.toml layer ({MANIFEST_LAYER}): push the app with `skiff push`"
        ))
    })?;
    let manifest_file = PathBuf::from(format!("{pinned}!skiff.toml"));
    let manifest = skiff_sdk::manifest::Manifest::parse(&manifest_file, &manifest_text)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let path = PathBuf::from(format!("{pinned}!component.wasm"));
    crate::deploy::check_component(&path, &bytes, kind.unwrap_or_else(|| Kind::of(&manifest)))?;
    Ok((
        Built {
            manifest,
            manifest_file,
            manifest_text,
            path,
            bytes,
            files,
        },
        pinned,
    ))
}

/// A relative path with no `..`, root or prefix.
fn safe_relative(path: &str) -> bool {
    let path = Path::new(path);
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}
