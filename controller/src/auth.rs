//! Bearer-token authentication and who may do what.
//!
//! Three kinds of credential: the admin token (everything), the node join
//! token (only `POST /v1/nodes`), and per-node credentials issued at
//! registration (only that node's own heartbeat, assignments and record).
//! Only sha256 hashes are stored; secrets are 256-bit random values.

use std::path::Path;

use axum::http::HeaderMap;
use rand::RngCore;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::store::{Store, TokenKind};

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The operator.
    Admin,
    /// A node that wants to join.
    Joiner,
    /// A registered node, by name.
    Node(String),
}

/// A new random secret: 256 bits, hex, with a prefix saying what it is.
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::Unauthorized("missing Authorization: Bearer <token> header".into())
        })?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header must be \"Bearer <token>\"".into())
        })
}

fn matches(stored: Option<&str>, presented: &str) -> bool {
    stored.is_some_and(|h| bool::from(h.as_bytes().ct_eq(presented.as_bytes())))
}

/// The stored hashes of the admin and join tokens. They never change after
/// the first start, so the API reads them once.
#[derive(Clone, Debug, Default)]
pub struct TokenHashes {
    /// Hash of the admin token.
    pub admin: Option<String>,
    /// Hash of the node join token.
    pub join: Option<String>,
}

impl TokenHashes {
    /// Reads both hashes from the store.
    pub async fn load(store: &dyn Store) -> Result<Self, ApiError> {
        let read = ApiError::store("reading tokens");
        let admin = store.token_hash(TokenKind::Admin).await.map_err(read)?;
        let join = store
            .token_hash(TokenKind::Join)
            .await
            .map_err(ApiError::store("reading tokens"))?;
        Ok(Self { admin, join })
    }
}

/// Node credentials already looked up: credential hash to node name and the
/// node row's version then. An entry holds only while the informer's
/// picture shows the node at that version, so a re-registration (a new
/// credential, here or on another controller) or a deletion ends it.
#[derive(Debug, Default)]
pub struct CredentialCache {
    known: std::sync::Mutex<std::collections::HashMap<String, (String, u64)>>,
}

/// Entries kept at most; a full cache is cleared (and refilled on use).
const MAX_CACHED_CREDENTIALS: usize = 100_000;

impl CredentialCache {
    /// Forgets every credential of `node` (it registered again here).
    pub fn forget_node(&self, node: &str) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (n, _)| n != node);
    }

    fn get(&self, hash: &str, informer: &crate::informer::Informer) -> Option<String> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let (node, version) = known.get(hash)?;
        let picture = informer.read();
        (picture.nodes.get(node)?.version == *version).then(|| node.clone())
    }

    fn put(&self, hash: String, node: String, informer: &crate::informer::Informer) {
        let Some(version) = informer.read().nodes.get(&node).map(|n| n.version) else {
            return;
        };
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= MAX_CACHED_CREDENTIALS {
            known.clear();
        }
        known.insert(hash, (node, version));
    }
}

/// Identifies the caller from its bearer token.
pub async fn authenticate(
    state: &crate::api::AppState,
    tokens: &TokenHashes,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let token = bearer(headers)?;
    let hash = hash_secret(token);
    if matches(tokens.admin.as_deref(), &hash) {
        return Ok(Principal::Admin);
    }
    if matches(tokens.join.as_deref(), &hash) {
        return Ok(Principal::Joiner);
    }
    if let Some(node) = state.credentials.get(&hash, &state.informer) {
        return Ok(Principal::Node(node));
    }
    // Looked up by hash: the lookup time reveals nothing about the secret.
    match state
        .store
        .node_for_credential(&hash)
        .await
        .map_err(ApiError::store("reading node credentials"))?
    {
        Some(node) => {
            state.credentials.put(hash, node.clone(), &state.informer);
            Ok(Principal::Node(node))
        }
        None => Err(ApiError::Unauthorized("unknown token".into())),
    }
}

impl Principal {
    /// Only the admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            _ => Err(ApiError::Forbidden(
                "this route needs the admin token".into(),
            )),
        }
    }

    /// The admin or any registered node.
    pub fn require_member(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin | Principal::Node(_) => Ok(()),
            Principal::Joiner => Err(ApiError::Forbidden(
                "the join token may only register nodes".into(),
            )),
        }
    }

    /// The admin, or the node `name` itself.
    pub fn require_node(&self, name: &str) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Node(own) if own == name => Ok(()),
            Principal::Node(own) => Err(ApiError::Forbidden(format!(
                "node {own:?} may not act for node {name:?}"
            ))),
            Principal::Joiner => Err(ApiError::Forbidden(
                "the join token may only register nodes".into(),
            )),
        }
    }

    /// The node `name` itself and nobody else, not even the admin: what a
    /// node reports (heartbeats) and watches (assignments) speaks for that
    /// node only.
    pub fn require_the_node(&self, name: &str) -> Result<(), ApiError> {
        match self {
            Principal::Node(own) if own == name => Ok(()),
            Principal::Node(own) => Err(ApiError::Forbidden(format!(
                "node {own:?} may not act for node {name:?}"
            ))),
            Principal::Admin => Err(ApiError::Forbidden(
                "the admin token is not a node credential".into(),
            )),
            Principal::Joiner => Err(ApiError::Forbidden(
                "the join token may only register nodes".into(),
            )),
        }
    }

    /// The admin or the join token (registering nodes).
    pub fn require_join(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin | Principal::Joiner => Ok(()),
            Principal::Node(_) => Err(ApiError::Forbidden(
                "a node credential cannot register nodes".into(),
            )),
        }
    }
}

/// Tokens as written to the data directory on first start.
#[derive(Debug)]
pub struct TokenFiles {
    /// Path of the admin token file.
    pub admin: std::path::PathBuf,
    /// Path of the join token file.
    pub join: std::path::PathBuf,
    /// Whether this start created them.
    pub created: bool,
}

/// On first start, generates the admin and join tokens, stores their hashes,
/// and writes them to `<data_dir>/admin.token` and `join.token` (mode 0600).
/// Later starts (or other controllers on the same database) find them
/// installed and write nothing.
pub async fn bootstrap_tokens(
    store: &dyn Store,
    data_dir: &Path,
) -> Result<TokenFiles, crate::ControllerError> {
    let files = TokenFiles {
        admin: data_dir.join("admin.token"),
        join: data_dir.join("join.token"),
        created: false,
    };
    let admin = new_secret("skiff_admin");
    let join = new_secret("skiff_join");
    let created = store
        .install_tokens(&hash_secret(&admin), &hash_secret(&join))
        .await
        .map_err(crate::ControllerError::Store)?;
    if created {
        write_secret(&files.admin, &admin)?;
        write_secret(&files.join, &join)?;
    }
    Ok(TokenFiles { created, ..files })
}

fn write_secret(path: &Path, secret: &str) -> Result<(), crate::ControllerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| crate::ControllerError::Io {
        doing: "writing a token file",
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(format!("{secret}\n").as_bytes())
        .map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_hashes_compare() {
        let a = new_secret("x");
        let b = new_secret("x");
        assert_ne!(a, b);
        assert_eq!(a.len(), 2 + 64);
        assert!(matches(Some(&hash_secret(&a)), &hash_secret(&a)));
        assert!(!matches(Some(&hash_secret(&a)), &hash_secret(&b)));
        assert!(!matches(None, &hash_secret(&a)));
    }

    #[test]
    fn scopes() {
        let node = Principal::Node("n1".into());
        assert!(node.require_node("n1").is_ok());
        assert!(matches!(
            node.require_node("n2"),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(node.require_admin(), Err(ApiError::Forbidden(_))));
        assert!(Principal::Joiner.require_join().is_ok());
        assert!(node.require_the_node("n1").is_ok());
        assert!(Principal::Admin.require_the_node("n1").is_err());
        assert!(node.require_the_node("n2").is_err());
        assert!(Principal::Joiner.require_node("n1").is_err());
    }
}
