//! Component dependencies: `[dependencies]` in `skiff.toml` maps each
//! interface the app imports that the host does not provide to a component
//! exporting it (a path, or an `oci://` reference). `skiff build` composes
//! them with `wac-graph` (the Bytecode Alliance's composition library) into
//! one self-contained component that imports only `wasi:*`, and records
//! each dependency's digest in `skiff.lock` next to `skiff.toml`.
//!
//! The same inputs build the same bytes. An `oci://` dependency named by
//! tag is pinned by the lock: later builds use the manifest digest locked
//! until the lock entry is removed (or the reference changed).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use skiff_sdk::Digest;
use skiff_sdk::component::Interface;
use skiff_sdk::manifest::{Dependency, Manifest};
use skiff_sdk::oci::{OciRef, Registry, WASM_LAYER};
use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions};

use crate::Failure;

/// The lock file, next to `skiff.toml`.
pub const LOCK_FILE: &str = "skiff.lock";
const LOCK_VERSION: u32 = 1;
/// Largest dependency component read from a registry.
const MAX_DEPENDENCY_BYTES: u64 = 64 << 20;

/// `skiff.lock`: each dependency's source and digest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lock {
    version: u32,
    #[serde(default, rename = "dependency")]
    dependencies: Vec<Locked>,
}

/// One locked dependency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Locked {
    /// The interface it provides.
    interface: String,
    /// `path+RELATIVE/PATH`, or the `oci://` reference pinned to its
    /// manifest digest.
    source: String,
    /// The component's digest.
    digest: String,
}

/// Whether the host provides an import (everything else must come from a
/// dependency).
pub fn host_provides(import: &str) -> bool {
    import.starts_with("wasi:")
}

/// The imports of `bytes` the host does not provide, as an error naming
/// them (for `what`, a file).
pub fn check_imports(what: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let missing: Vec<String> = Interface::of(bytes)
        .imports
        .into_iter()
        .filter(|i| !host_provides(i))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Failure::Build(format!(
        "{}: imports {}, which the host does not provide (it provides wasi:* only)\n  hint: map each to a component that exports it in [dependencies] of skiff.toml",
        what.display(),
        missing.join(", ")
    ))
    .into())
}

/// Composes the app's component with its dependencies; writes `skiff.lock`
/// when what it records changed. Returns the composed component.
pub fn compose(file: &Path, manifest: &Manifest, app: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let root = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let lock_path = root.join(LOCK_FILE);
    let old = read_lock(&lock_path)?;
    let mut lock = Lock {
        version: LOCK_VERSION,
        dependencies: Vec::new(),
    };
    let mut components = Vec::new();
    for (interface, dependency) in &manifest.dependencies {
        let locked = old.dependencies.iter().find(|l| &l.interface == interface);
        let (source, bytes) = fetch(file, &root, interface, dependency, locked)?;
        let digest = Digest::of(&bytes).to_string();
        if let Some(l) = locked
            && l.source == source
            && l.digest != digest
            && dependency.oci.is_some()
        {
            return Err(Failure::Build(format!(
                "{}: {interface}: {source} is {digest}, but {LOCK_FILE} pins {}",
                file.display(),
                l.digest
            ))
            .into());
        }
        lock.dependencies.push(Locked {
            interface: interface.clone(),
            source,
            digest,
        });
        components.push((interface.as_str(), bytes));
    }
    let composed = plug(file, app, &components)?;
    if lock != old {
        write_lock(&lock_path, &lock)?;
        eprintln!("wrote {}", lock_path.display());
    }
    Ok(composed)
}

fn read_lock(path: &Path) -> anyhow::Result<Lock> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lock::default()),
        Err(e) => return Err(Failure::Usage(format!("{}: {e}", path.display())).into()),
    };
    let lock: Lock = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start].matches('\n').count() + 1)
            .map_or(String::new(), |l| format!(":{l}"));
        Failure::Usage(format!(
            "{}{line}: {}\n  hint: delete it and build again to lock the dependencies afresh",
            path.display(),
            e.message().trim()
        ))
    })?;
    if lock.version != LOCK_VERSION {
        return Err(Failure::Usage(format!(
            "{}: version {} is not supported; this skiff writes version {LOCK_VERSION}",
            path.display(),
            lock.version
        ))
        .into());
    }
    Ok(lock)
}

fn write_lock(path: &Path, lock: &Lock) -> anyhow::Result<()> {
    let text = format!(
        "# Written by `skiff build`: the component each [dependencies] entry resolved to.\n# Commit it; delete an entry to resolve that dependency again.\n{}",
        toml::to_string(lock)?
    );
    let partial = path.with_extension("lock.partial");
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| Failure::Usage(format!("writing {}: {e}", path.display())).into())
}

/// One dependency's source (as locked) and component bytes.
fn fetch(
    file: &Path,
    root: &Path,
    interface: &str,
    dependency: &Dependency,
    locked: Option<&Locked>,
) -> anyhow::Result<(String, Vec<u8>)> {
    let failed = |why: String| -> anyhow::Error {
        Failure::Build(format!(
            "{}: dependencies.\"{interface}\": {why}",
            file.display()
        ))
        .into()
    };
    if let Some(path) = &dependency.path {
        let full = root.join(path);
        let bytes = std::fs::read(&full).map_err(|e| {
            failed(format!(
                "{}: {e}\n  hint: build the dependency first (add it to component.build)",
                full.display()
            ))
        })?;
        return Ok((format!("path+{}", path.display()), bytes));
    }
    let text = dependency.oci.as_deref().unwrap_or_default();
    let wanted = OciRef::parse(text).map_err(|e| failed(e.0))?;
    // A tag is pinned by the lock while the reference is the same.
    let pinned_before = locked
        .and_then(|l| OciRef::parse(&l.source).ok())
        .filter(|l| {
            wanted.digest.is_none() && l.digest.as_ref().is_some_and(|d| wanted.pinned(d) == *l)
        });
    let registry = Registry::new(&wanted, &[], None);
    let pull = async {
        let pinned = match pinned_before {
            Some(p) => p,
            None => {
                let digest = registry.resolve(&wanted).await?;
                wanted.pinned(&digest)
            }
        };
        let manifest = registry.manifest(&pinned).await?;
        let Some(layer) = manifest.layers.iter().find(|l| l.media_type == WASM_LAYER) else {
            return Err(skiff_sdk::oci::RegistryError::Invalid(
                "no application/wasm layer".into(),
            ));
        };
        let digest: Digest = layer
            .digest
            .parse()
            .map_err(|e| skiff_sdk::oci::RegistryError::Invalid(format!("{e}")))?;
        let bytes = registry
            .blob(&pinned, &digest, MAX_DEPENDENCY_BYTES)
            .await?;
        Ok((pinned.to_string(), bytes))
    };
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(pull))
        .map_err(|e| failed(format!("{text}: {e}")))
}

/// The name under which `package` has `name` (exactly, or the same
/// interface at another version).
fn find(names: impl Iterator<Item = String>, name: &str) -> Option<String> {
    let bare = |n: &str| n.split('@').next().unwrap_or(n).to_owned();
    let names: Vec<String> = names.collect();
    names
        .iter()
        .find(|n| *n == name)
        .or_else(|| names.iter().find(|n| bare(n) == bare(name)))
        .cloned()
}

/// Instantiates the app with each dependency's export as the import it
/// provides; everything left unsatisfied is imported by the composition.
fn plug(file: &Path, app: Vec<u8>, dependencies: &[(&str, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    let failed = |interface: &str, why: String| -> anyhow::Error {
        Failure::Build(format!(
            "{}: dependencies.\"{interface}\": {why}",
            file.display()
        ))
        .into()
    };
    let mut graph = CompositionGraph::new();
    let app = Package::from_bytes("skiff:app", None, app, graph.types_mut())
        .map_err(|e| Failure::Build(format!("{}: the component: {e:#}", file.display())))?;
    let app = graph
        .register_package(app)
        .map_err(|e| Failure::Build(format!("{}: {e}", file.display())))?;
    let app_type = graph[app].ty();
    let instance = graph.instantiate(app);
    for (i, (interface, bytes)) in dependencies.iter().enumerate() {
        let imports = graph.types()[app_type].imports.keys().cloned();
        let Some(import) = find(imports, interface) else {
            return Err(failed(
                interface,
                format!("the app does not import {interface}: remove the entry"),
            ));
        };
        let package = Package::from_bytes(
            &format!("skiff:dependency-{i}"),
            None,
            bytes.clone(),
            graph.types_mut(),
        )
        .map_err(|e| failed(interface, format!("not a component: {e:#}")))?;
        let package_type = package.ty();
        let exports: Vec<String> = graph.types()[package_type]
            .exports
            .keys()
            .cloned()
            .collect();
        let Some(export) = find(exports.iter().cloned(), interface) else {
            return Err(failed(
                interface,
                format!(
                    "the component does not export {interface} (it exports {})",
                    if exports.is_empty() {
                        "nothing".to_owned()
                    } else {
                        exports.join(", ")
                    }
                ),
            ));
        };
        let package = graph
            .register_package(package)
            .map_err(|e| failed(interface, e.to_string()))?;
        let provider = graph.instantiate(package);
        let item = graph
            .alias_instance_export(provider, &export)
            .map_err(|e| failed(interface, e.to_string()))?;
        graph
            .set_instantiation_argument(instance, &import, item)
            .map_err(|e| {
                failed(
                    interface,
                    format!(
                        "its {export} does not satisfy the app's import: {}",
                        skiff_sdk::error_chain(&e)
                    ),
                )
            })?;
    }
    let exports: Vec<String> = graph.types()[app_type].exports.keys().cloned().collect();
    for name in exports {
        let item = graph
            .alias_instance_export(instance, &name)
            .map_err(|e| Failure::Build(format!("{}: exporting {name}: {e}", file.display())))?;
        graph
            .export(item, &name)
            .map_err(|e| Failure::Build(format!("{}: exporting {name}: {e}", file.display())))?;
    }
    let bytes = graph.encode(EncodeOptions::default()).map_err(|e| {
        Failure::Build(format!(
            "{}: composing: {}",
            file.display(),
            skiff_sdk::error_chain(&e)
        ))
    })?;
    check_imports(
        &PathBuf::from(format!("{} (composed)", file.display())),
        &bytes,
    )?;
    Ok(bytes)
}
