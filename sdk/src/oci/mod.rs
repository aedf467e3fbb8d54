//! OCI references as Skiff takes them (`oci://REGISTRY/REPO:TAG`,
//! `oci://REGISTRY/REPO@sha256:…`, or both) and the media types of an app
//! published to a registry.
//!
//! The layout is the standard Wasm OCI artifact one (what `wkg oci push`
//! writes and `wkg oci pull` / `oras pull` read): the config has
//! [`WASM_CONFIG`], the component is an [`WASM_LAYER`] layer (the first
//! one). Skiff adds the app's `skiff.toml` ([`MANIFEST_LAYER`]) and its
//! static files ([`FILE_LAYER`], named by the `org.opencontainers.image.title`
//! annotation) as further layers, which it reads back.

use std::fmt;

mod registry;
pub use registry::{Credentials, Registry, RegistryError, RegistryLogin};

/// The config media type of a Wasm component artifact.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// The media type of the component layer.
pub const WASM_LAYER: &str = "application/wasm";
/// The media type of the layer holding the app's `skiff.toml`.
pub const MANIFEST_LAYER: &str = "application/vnd.skiff.manifest.v1+toml";
/// The media type of a layer holding one of the app's static files.
pub const FILE_LAYER: &str = "application/vnd.skiff.file.v1";
/// The annotation naming a layer's file.
pub const TITLE: &str = "org.opencontainers.image.title";

/// Longest reference accepted.
const MAX_LEN: usize = 512;

/// A parsed `oci://` reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciRef {
    /// `host[:port]`.
    pub registry: String,
    /// `path/of/repo`.
    pub repository: String,
    /// The tag, if one was given.
    pub tag: Option<String>,
    /// The manifest digest (`sha256:<64 hex>`), if one was given.
    pub digest: Option<String>,
}

/// Why a reference was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OciRefError(pub String);

impl OciRef {
    /// Parses `oci://REGISTRY/REPO:TAG`, `oci://REGISTRY/REPO@sha256:…` or
    /// `oci://REGISTRY/REPO:TAG@sha256:…` (the `oci://` prefix may be
    /// left out). A tag or a digest is required: Skiff never guesses
    /// `latest`.
    pub fn parse(text: &str) -> Result<Self, OciRefError> {
        let bad = |why: &str| Err(OciRefError(format!("{text:?}: {why}")));
        if text.len() > MAX_LEN {
            return bad(&format!("longer than {MAX_LEN} characters"));
        }
        let rest = text.strip_prefix("oci://").unwrap_or(text);
        let Some((registry, path)) = rest.split_once('/') else {
            return bad(
                "expected REGISTRY/REPOSITORY:TAG (e.g. oci://127.0.0.1:5000/apps/hello:v1)",
            );
        };
        if registry.is_empty()
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        {
            return bad("the registry must be a host name or address, with an optional :port");
        }
        let (path, digest) = match path.split_once('@') {
            Some((path, digest)) => (path, Some(digest)),
            None => (path, None),
        };
        if let Some(digest) = digest {
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
                return bad("the digest must be sha256: and 64 lowercase hex digits");
            }
        }
        // A colon after the last slash starts the tag.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (path, None),
        };
        if tag.is_none() && digest.is_none() {
            return bad("give a tag (:v1) or a digest (@sha256:…); Skiff does not assume :latest");
        }
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| matches!(ch, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component_ok) {
            return bad("the repository must be lowercase path components (a-z, 0-9, . _ -)");
        }
        if let Some(tag) = tag
            && (tag.is_empty()
                || tag.len() > 128
                || !tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                || tag.starts_with(['.', '-']))
        {
            return bad("a tag is 1–128 of A-Z a-z 0-9 . _ -, not starting with . or -");
        }
        Ok(Self {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }

    /// The same reference pinned to `digest` (the tag kept, for people).
    pub fn pinned(&self, digest: &str) -> Self {
        Self {
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }

    /// `REGISTRY/REPO[:TAG][@DIGEST]`, without the scheme (as registry
    /// clients take it).
    pub fn plain(&self) -> String {
        let mut out = format!("{}/{}", self.registry, self.repository);
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest);
        }
        out
    }

    /// Whether the registry is on a loopback address (`localhost`,
    /// 127.0.0.0/8, `[::1]`): reached over plain HTTP, as Docker does.
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => self.registry.split(':').next().unwrap_or(""),
        };
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for OciRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci://{}", self.plain())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn tags_digests_and_both_parse() {
        let r = OciRef::parse("oci://127.0.0.1:5000/apps/hello:v1").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "apps/hello");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.is_loopback());
        let pinned = OciRef::parse(&format!("ghcr.io/acme/hello:v1@{D}")).unwrap();
        assert_eq!(pinned.digest.as_deref(), Some(D));
        assert!(!pinned.is_loopback());
        assert_eq!(
            pinned.to_string(),
            format!("oci://ghcr.io/acme/hello:v1@{D}")
        );
        let by_digest = OciRef::parse(&format!("oci://localhost:5000/hello@{D}")).unwrap();
        assert_eq!(by_digest.tag, None);
        assert!(by_digest.is_loopback());
        assert!(
            OciRef::parse("oci://[::1]:5000/hello:v1")
                .unwrap()
                .is_loopback()
        );
        assert_eq!(
            r.pinned(D).plain(),
            format!("127.0.0.1:5000/apps/hello:v1@{D}")
        );
    }

    #[test]
    fn bad_references_say_why() {
        for (text, why) in [
            ("oci://127.0.0.1:5000/hello", "give a tag"),
            ("oci://hello:v1", "REGISTRY/REPOSITORY"),
            ("oci://r.io/Hello:v1", "lowercase"),
            ("oci://r.io/hello:-v1", "a tag is"),
            ("oci://r.io/hello@sha256:abc", "64 lowercase hex"),
            ("oci://r!o/hello:v1", "host name"),
        ] {
            let err = OciRef::parse(text).unwrap_err().0;
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
