//! `[dependencies]` in `skiff.toml`: each interface the app imports that
//! the host does not provide, mapped to a component that exports it. `skiff
//! build` composes them into one component (and pins each dependency's
//! digest in `skiff.lock`).
//!
//! ```toml
//! [dependencies]
//! "example:greeting/greeter" = { path = "../greeter/greeter.wasm" }
//! "example:store/kv@0.2.0" = { oci = "oci://ghcr.io/acme/kv:0.2" }
//! ```

use std::path::PathBuf;

use serde::Deserialize;

/// Where the component providing one interface comes from: exactly one of
/// `path` or `oci`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    /// A component file, relative to the manifest's directory.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// An OCI reference (`oci://REGISTRY/REPO:TAG` or `…@sha256:…`) whose
    /// `application/wasm` layer is the component.
    #[serde(default)]
    pub oci: Option<String>,
}

/// Whether `name` is an interface name, `namespace:package/interface` with
/// an optional `@version`.
pub fn is_interface_name(name: &str) -> bool {
    let (name, version) = match name.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (name, None),
    };
    let label = |s: &str| {
        !s.is_empty()
            && s.split('-').all(|w| {
                !w.is_empty()
                    && w.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            })
    };
    let Some((package, interface)) = name.split_once('/') else {
        return false;
    };
    let Some((namespace, package)) = package.split_once(':') else {
        return false;
    };
    label(namespace)
        && label(package)
        && label(interface)
        && version.is_none_or(|v| !v.is_empty() && !v.contains(char::is_whitespace))
}

impl Dependency {
    /// What is wrong with this dependency for `interface`, if anything.
    pub fn problem(&self, interface: &str) -> Option<String> {
        if !is_interface_name(interface) {
            return Some(format!(
                "{interface:?} is not an interface name (namespace:package/interface, e.g. \"example:greeting/greeter\")"
            ));
        }
        match (&self.path, &self.oci) {
            (Some(_), Some(_)) | (None, None) => Some(
                "give exactly one of path = \"FILE.wasm\" or oci = \"oci://REGISTRY/REPO:TAG\""
                    .into(),
            ),
            (Some(path), None) if path.as_os_str().is_empty() => {
                Some("path must name a component file".into())
            }
            (None, Some(reference)) => crate::oci::OciRef::parse(reference)
                .err()
                .map(|e| format!("oci: {}", e.0)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(is_interface_name("example:greeting/greeter"));
        assert!(is_interface_name("wasi:http/types@0.2.3"));
        assert!(is_interface_name("my-org:kv-store/read-write"));
        assert!(!is_interface_name("greeter"));
        assert!(!is_interface_name("example:greeting"));
        assert!(!is_interface_name("Example:greeting/greeter"));
        assert!(!is_interface_name("example:greeting/greeter@"));
    }
}
