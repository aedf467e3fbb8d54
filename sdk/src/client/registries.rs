//! Calls about registry credentials: the admin's (`skiff registry login`,
//! `logout`, `list`) and the node agent's (the credentials for a registry
//! an app it runs comes from).

use http::{Method, StatusCode};

use super::{Call, Client, ClientError};
use crate::oci::{Credentials, RegistryLogin};

impl Client {
    /// Stores (or replaces) the credentials for `registry`.
    pub async fn registry_login(
        &self,
        registry: &str,
        credentials: &Credentials,
    ) -> Result<RegistryLogin, ClientError> {
        self.json(
            "storing registry credentials",
            Method::PUT,
            &format!("/v1/registries/{registry}"),
            Some(credentials),
        )
        .await
    }

    /// The registries with stored credentials.
    pub async fn registry_logins(&self) -> Result<Vec<RegistryLogin>, ClientError> {
        self.json(
            "listing registry credentials",
            Method::GET,
            "/v1/registries",
            None::<&()>,
        )
        .await
    }

    /// Forgets the credentials for `registry`.
    pub async fn registry_logout(&self, registry: &str) -> Result<(), ClientError> {
        let path = format!("/v1/registries/{registry}");
        self.send(Call::new(
            "removing registry credentials",
            Method::DELETE,
            &path,
        ))
        .await
        .map(drop)
    }

    /// The credentials node `node` pulls from `registry` with; `None` when
    /// the controller stores none (pull anonymously).
    pub async fn node_registry_credentials(
        &self,
        node: &str,
        registry: &str,
    ) -> Result<Option<Credentials>, ClientError> {
        let got = self
            .json(
                "reading registry credentials",
                Method::GET,
                &format!("/v1/nodes/{node}/registries/{registry}/credentials"),
                None::<&()>,
            )
            .await;
        match got {
            Ok(credentials) => Ok(Some(credentials)),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
