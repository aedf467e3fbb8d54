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
use oci_client::Reference;
use oci_client::client::{Config, ImageLayer};
use skiff_sdk::oci::{
    Credentials, FILE_LAYER, MANIFEST_LAYER, OciRef, Registry, RegistryError, TITLE, WASM_CONFIG,
    WASM_LAYER,
};

use skiff_sdk::bundle::BUNDLE_EXTENSION;

use crate::Failure;
use crate::deploy::{Built, Kind};

/// Largest layer read from a registry (as the controller's artifact limit).
const MAX_LAYER_BYTES: u64 = 64 << 20;

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
    #[command(flatten)]
    pub insecure: InsecureRegistries,
}

/// `--insecure-registry`, the same on every command that reaches a
/// registry (`push`, `deploy`, `controller`, `node`).
#[derive(Clone, Debug, Default, Args)]
pub struct InsecureRegistries {
    /// A registry (`host[:port]`) reached over plain HTTP although it is
    /// not on a loopback address (those always are). Repeatable.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST[:PORT]",
        env = "SKIFF_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub hosts: Vec<String>,
}

/// Parses a reference the user typed, as a usage error naming it.
pub fn reference(text: &str) -> anyhow::Result<OciRef> {
    OciRef::parse(text).map_err(|e| Failure::Usage(e.to_string()).into())
}

/// The credentials from `SKIFF_REGISTRY_USERNAME` and
/// `SKIFF_REGISTRY_PASSWORD`, if both are set.
fn credentials() -> Option<Credentials> {
    match (
        std::env::var("SKIFF_REGISTRY_USERNAME"),
        std::env::var("SKIFF_REGISTRY_PASSWORD"),
    ) {
        (Ok(username), Ok(password)) => Some(Credentials { username, password }),
        _ => None,
    }
}

fn registry(reference: &OciRef, insecure: &[String]) -> Registry {
    Registry::new(reference, insecure, credentials().as_ref())
}

/// What went wrong talking to the registry, as a usage error naming the
/// reference and the registry (never the secret).
fn failed(reference: &OciRef, doing: &str, e: RegistryError) -> anyhow::Error {
    let hint = match &e {
        RegistryError::Refused { .. } => " (SKIFF_REGISTRY_USERNAME and SKIFF_REGISTRY_PASSWORD)",
        _ => "",
    };
    Failure::Usage(format!("{doing} {reference}: {e}{hint}")).into()
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
    let registry = registry(&target, &args.insecure.hosts);
    let (client, auth) = registry.parts();
    let image = target
        .plain()
        .parse::<Reference>()
        .map_err(|e| Failure::Usage(format!("{target}: {e}")))?;
    eprintln!(
        "pushing {} ({}) to {target}",
        built.manifest.name,
        crate::commands::human_bytes(built.bytes.len() as u64)
    );
    client
        .push(&image, &layers, config, auth, None)
        .await
        .map_err(|e| failed(&target, "pushing", registry.error(e)))?;
    let digest = registry
        .resolve(&target)
        .await
        .map_err(|e| failed(&target, "resolving", e))?;
    eprintln!("pushed {}", target.pinned(&digest));
    println!(
        "{}",
        serde_json::json!({ "pushed": target.to_string(), "digest": digest })
    );
    Ok(())
}

/// An app image in a registry, opened: its reference pinned to the
/// manifest digest its tag named (everything read is of that one
/// manifest), its layers, and its `skiff.toml`.
pub struct Image {
    registry: Registry,
    /// The reference, pinned.
    pub pinned: OciRef,
    layers: Vec<oci_client::manifest::OciDescriptor>,
    /// The app's manifest, from its `skiff.toml` layer.
    pub manifest: skiff_sdk::manifest::Manifest,
    manifest_file: PathBuf,
    manifest_text: String,
}

/// Opens the app image `text` names: resolves its tag, reads its manifest
/// and its `skiff.toml`, and refuses layers of media types Skiff does not
/// push.
pub async fn open(text: &str, insecure: &[String]) -> anyhow::Result<Image> {
    let wanted = reference(text)?;
    let registry = registry(&wanted, insecure);
    let digest = registry
        .resolve(&wanted)
        .await
        .map_err(|e| failed(&wanted, "resolving", e))?;
    let pinned = wanted.pinned(&digest);
    let image = registry
        .manifest(&pinned)
        .await
        .map_err(|e| failed(&pinned, "pulling", e))?;
    let invalid =
        |why: String| -> anyhow::Error { Failure::Usage(format!("{pinned}: {why}")).into() };
    if let Some(layer) = image.layers.iter().find(|l| {
        !matches!(
            l.media_type.as_str(),
            WASM_LAYER | MANIFEST_LAYER | FILE_LAYER
        )
    }) {
        return Err(invalid(format!(
            "a layer of media type {}: not an app pushed with `skiff push`",
            layer.media_type
        )));
    }
    let Some(layer) = image.layers.iter().find(|l| l.media_type == MANIFEST_LAYER) else {
        return Err(invalid(format!(
            "no skiff.toml layer ({MANIFEST_LAYER}): push the app with `skiff push`"
        )));
    };
    let data = pull_layer(&registry, &pinned, layer).await?;
    let manifest_text = String::from_utf8(data)
        .map_err(|_| invalid("its skiff.toml layer is not UTF-8 text".into()))?;
    let manifest_file = PathBuf::from(format!("{pinned}!skiff.toml"));
    let manifest = skiff_sdk::manifest::Manifest::parse(&manifest_file, &manifest_text)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    Ok(Image {
        registry,
        pinned,
        layers: image.layers,
        manifest,
        manifest_file,
        manifest_text,
    })
}

/// One layer's bytes, checked against its digest.
async fn pull_layer(
    registry: &Registry,
    pinned: &OciRef,
    layer: &oci_client::manifest::OciDescriptor,
) -> anyhow::Result<Vec<u8>> {
    let digest: skiff_sdk::Digest = layer
        .digest
        .parse()
        .map_err(|e| Failure::Usage(format!("{pinned}: layer digest {}: {e}", layer.digest)))?;
    registry
        .blob(pinned, &digest, MAX_LAYER_BYTES)
        .await
        .map_err(|e| failed(pinned, "pulling", e))
}

impl Image {
    /// Pulls the component and the files, as a build would give them (the
    /// component checked to be what `kind` runs).
    pub async fn pull(self, kind: Option<Kind>) -> anyhow::Result<Built> {
        let pinned = &self.pinned;
        let invalid =
            |why: String| -> anyhow::Error { Failure::Usage(format!("{pinned}: {why}")).into() };
        let mut component = None;
        let mut files = BTreeMap::new();
        for layer in &self.layers {
            match layer.media_type.as_str() {
                WASM_LAYER if component.is_some() => {
                    return Err(invalid("more than one application/wasm layer".into()));
                }
                WASM_LAYER => component = Some(pull_layer(&self.registry, pinned, layer).await?),
                FILE_LAYER => {
                    let title = layer.annotations.as_ref().and_then(|a| a.get(TITLE));
                    let Some(title) = title.filter(|t| safe_relative(t)) else {
                        return Err(invalid(
                            "a file layer without a safe relative path in its title annotation"
                                .into(),
                        ));
                    };
                    let data = pull_layer(&self.registry, pinned, layer).await?;
                    files.insert(PathBuf::from(title), data);
                }
                _ => {}
            }
        }
        let bytes = component.ok_or_else(|| invalid("no application/wasm layer".into()))?;
        let path = PathBuf::from(format!("{pinned}!component.wasm"));
        let kind = kind.unwrap_or_else(|| Kind::of(&self.manifest));
        crate::deploy::check_component(&path, &bytes, kind)?;
        Ok(Built {
            manifest: self.manifest,
            manifest_file: self.manifest_file,
            manifest_text: self.manifest_text,
            path,
            bytes,
            files,
        })
    }
}

/// A relative path with no `..`, root or prefix.
fn safe_relative(path: &str) -> bool {
    let path = Path::new(path);
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// `skiff registry …`.
#[derive(Debug, clap::Subcommand)]
pub enum RegistryCommand {
    /// Store credentials for REGISTRY in the controller: the user name from
    /// --username (or SKIFF_REGISTRY_USERNAME), the password or token read
    /// from stdin with --password-stdin (or SKIFF_REGISTRY_PASSWORD).
    Login {
        /// The registry, `host[:port]`.
        registry: String,
        /// The user name.
        #[arg(long, short = 'u')]
        username: Option<String>,
        /// Read the password (or token) from stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget the credentials stored for REGISTRY.
    Logout {
        /// The registry, `host[:port]`.
        registry: String,
    },
    /// List the registries with stored credentials (user names only).
    List,
}

/// Runs a `skiff registry` command.
pub async fn registry_command(
    connect: &crate::client::Connect,
    command: RegistryCommand,
) -> anyhow::Result<()> {
    let client = connect.client()?;
    match command {
        RegistryCommand::Login {
            registry,
            username,
            password_stdin,
        } => {
            let username = username
                .or_else(|| std::env::var("SKIFF_REGISTRY_USERNAME").ok())
                .ok_or_else(|| {
                    Failure::Usage(
                        "give the user name with --username (or SKIFF_REGISTRY_USERNAME)".into(),
                    )
                })?;
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            } else {
                std::env::var("SKIFF_REGISTRY_PASSWORD").map_err(|_| {
                    Failure::Usage(
                        "give the password on stdin with --password-stdin (or SKIFF_REGISTRY_PASSWORD)"
                            .into(),
                    )
                })?
            };
            let login = client
                .registry_login(&registry, &Credentials { username, password })
                .await?;
            eprintln!(
                "credentials for {} stored as {} (the controller and the nodes running its apps pull with them)",
                login.registry, login.username
            );
            println!("{}", serde_json::to_string(&login)?);
        }
        RegistryCommand::Logout { registry } => {
            client.registry_logout(&registry).await?;
            eprintln!("credentials for {registry} removed");
        }
        RegistryCommand::List => {
            let logins = client.registry_logins().await?;
            println!("{:<32} USERNAME", "REGISTRY");
            for login in logins {
                println!("{:<32} {}", login.registry, login.username);
            }
        }
    }
    Ok(())
}
