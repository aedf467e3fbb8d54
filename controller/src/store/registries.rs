//! The part of the store that keeps registry credentials (see
//! `skiff registry login`). The password is written and read back only for
//! pulling: nothing in the API returns it.

use async_trait::async_trait;
use skiff_sdk::oci::{Credentials, RegistryLogin};

use super::Result;

/// Registry credentials in the store.
#[async_trait]
pub trait CredentialStore: Send + Sync + 'static {
    /// Sets (or replaces) the credentials for `registry`; true if new.
    async fn put_registry_credentials(
        &self,
        registry: &str,
        credentials: &Credentials,
    ) -> Result<bool>;
    /// The credentials for `registry`, if any are stored.
    async fn registry_credentials(&self, registry: &str) -> Result<Option<Credentials>>;
    /// Every registry with credentials, by name.
    async fn registry_logins(&self) -> Result<Vec<RegistryLogin>>;
    /// Forgets the credentials for `registry`; false if there were none.
    async fn delete_registry_credentials(&self, registry: &str) -> Result<bool>;
}
