//! Talking to an OCI registry, as the CLI, the controller and the nodes all
//! do: a tag resolved to its manifest digest, a manifest read pinned to
//! that digest, and blobs pulled by digest with a size bound, every byte
//! checked against the digest before it is returned.
//!
//! Registries on loopback addresses are reached over plain HTTP (as Docker
//! does for 127.0.0.0/8); any other needs HTTPS unless it is named in the
//! `insecure` list. Errors name the registry, never a secret.

use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::OciRef;
use crate::Digest;

/// How long connecting to a registry may take: a registry that is down
/// must not hold a node's fetch (it falls back to the controller's copy).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one read from a registry may stall.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A user name and a password (or token) for one registry. Its `Debug`
/// never shows the password, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A registry with stored credentials, as the controller lists it (the
/// password is never returned).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RegistryLogin {
    /// The registry, `host[:port]`.
    pub registry: String,
    /// The user name.
    pub username: String,
    /// When they were last set (ms since the epoch).
    pub updated_at: i64,
}

/// Why a registry did not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused the credentials, or anonymous access.
    #[error("the registry {registry} refused {}", if *.with_credentials { "the credentials" } else { "anonymous access: it needs credentials" })]
    Refused {
        /// The registry.
        registry: String,
        /// Whether credentials were given.
        with_credentials: bool,
    },
    /// No such repository, tag, manifest or blob.
    #[error("no such repository or tag")]
    NotFound,
    /// The registry could not be reached.
    #[error("cannot reach the registry {registry} ({detail})")]
    Unreachable {
        /// The registry.
        registry: String,
        /// What the connection said.
        detail: String,
    },
    /// What the registry sent is not what was asked for: a digest that
    /// does not match the bytes, a blob too large, a manifest of another
    /// kind.
    #[error("{0}")]
    Invalid(String),
    /// Anything else the registry or the transport answered.
    #[error("{0}")]
    Other(String),
}

/// A client for one registry, with the credentials (if any) to use there.
pub struct Registry {
    client: Client,
    registry: String,
    auth: RegistryAuth,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("registry", &self.registry)
            .field(
                "credentials",
                &!matches!(self.auth, RegistryAuth::Anonymous),
            )
            .finish()
    }
}

impl Registry {
    /// A client for the registry `reference` names: plain HTTP when it is on
    /// loopback or named in `insecure` (`host[:port]`), HTTPS otherwise.
    pub fn new(reference: &OciRef, insecure: &[String], credentials: Option<&Credentials>) -> Self {
        let mut plain: Vec<String> = insecure.to_vec();
        if reference.is_loopback() {
            plain.push(reference.registry.clone());
        }
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            ..ClientConfig::default()
        });
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Self {
            client,
            registry: reference.registry.clone(),
            auth,
        }
    }

    /// The underlying client and auth, for pushing.
    pub fn parts(&self) -> (&Client, &RegistryAuth) {
        (&self.client, &self.auth)
    }

    /// What went wrong, in the words of [`RegistryError`].
    pub fn error(&self, e: OciDistributionError) -> RegistryError {
        use OciDistributionError as E;
        let refused = || RegistryError::Refused {
            registry: self.registry.clone(),
            with_credentials: !matches!(self.auth, RegistryAuth::Anonymous),
        };
        let coded = |codes: &[OciErrorCode]| match &e {
            E::RegistryError { envelope, .. } => {
                envelope.errors.iter().any(|e| codes.contains(&e.code))
            }
            _ => false,
        };
        if coded(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
            return refused();
        }
        if coded(&[
            OciErrorCode::ManifestUnknown,
            OciErrorCode::NameUnknown,
            OciErrorCode::BlobUnknown,
        ]) {
            return RegistryError::NotFound;
        }
        match e {
            E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => refused(),
            E::ServerError {
                code: 401 | 403, ..
            } => refused(),
            E::ServerError { code: 404, .. } | E::ImageManifestNotFoundError(_) => {
                RegistryError::NotFound
            }
            E::RequestError(r) if r.is_connect() || r.is_timeout() => RegistryError::Unreachable {
                registry: self.registry.clone(),
                detail: crate::error_chain(&r),
            },
            E::DigestError(d) => RegistryError::Invalid(format!("a digest does not match: {d}")),
            other => RegistryError::Other(other.to_string()),
        }
    }

    fn reference(reference: &OciRef) -> Result<Reference, RegistryError> {
        reference
            .plain()
            .parse::<Reference>()
            .map_err(|e| RegistryError::Invalid(format!("{reference}: {e}")))
    }

    /// The manifest digest `reference` names: its own digest if pinned,
    /// else what its tag points at now.
    pub async fn resolve(&self, reference: &OciRef) -> Result<String, RegistryError> {
        if let Some(digest) = &reference.digest {
            return Ok(digest.clone());
        }
        self.client
            .fetch_manifest_digest(&Self::reference(reference)?, &self.auth)
            .await
            .map_err(|e| self.error(e))
    }

    /// The image manifest of a pinned reference, checked to be the one its
    /// digest names.
    pub async fn manifest(&self, pinned: &OciRef) -> Result<OciImageManifest, RegistryError> {
        let (manifest, digest) = self
            .client
            .pull_image_manifest(&Self::reference(pinned)?, &self.auth)
            .await
            .map_err(|e| self.error(e))?;
        if pinned.digest.as_deref().is_some_and(|d| d != digest) {
            return Err(RegistryError::Invalid(format!(
                "the registry answered a different manifest ({digest})"
            )));
        }
        Ok(manifest)
    }

    /// The blob `digest` of the repository `reference` names, read whole
    /// only if it is at most `limit` bytes, and only if its bytes hash to
    /// `digest`.
    pub async fn blob(
        &self,
        reference: &OciRef,
        digest: &Digest,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let image = Self::reference(reference)?;
        self.client
            .store_auth_if_needed(&self.registry, &self.auth)
            .await;
        let layer = OciDescriptor {
            digest: digest.to_string(),
            ..OciDescriptor::default()
        };
        let too_large = || RegistryError::Invalid(format!("blob {digest} is over {limit} bytes"));
        let mut stream = self
            .client
            .pull_blob_stream(&image, &layer)
            .await
            .map_err(|e| self.error(e))?;
        if stream.content_length.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut bytes = Vec::with_capacity(stream.content_length.unwrap_or(0) as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| RegistryError::Unreachable {
                registry: self.registry.clone(),
                detail: format!("reading blob {digest}: {e}"),
            })?;
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(RegistryError::Invalid(format!(
                "blob {digest}: its bytes hash to {actual}, not its digest"
            )));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn credentials_never_show_the_password() {
        let c = Credentials {
            username: "skiff".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
        let registry = Registry::new(
            &OciRef::parse("127.0.0.1:5000/a/b:v1").unwrap(),
            &[],
            Some(&c),
        );
        assert!(!format!("{registry:?}").contains("s3cret"));
    }
}
