//! [`CredentialStore`] on SQL: the `registry_credentials` table
//! (migration 0010).

use async_trait::async_trait;
use skiff_sdk::oci::{Credentials, RegistryLogin};
use sqlx::Row;

use super::super::registries::CredentialStore;
use super::super::{Result, now_ms};
use super::SqlStore;

#[async_trait]
impl CredentialStore for SqlStore {
    async fn put_registry_credentials(
        &self,
        registry: &str,
        credentials: &Credentials,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let existed = sqlx::query("SELECT 1 FROM registry_credentials WHERE registry = $1")
            .bind(registry)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        sqlx::query(
            "INSERT INTO registry_credentials (registry, username, password, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (registry) DO UPDATE SET username = excluded.username, password = excluded.password, updated_at = excluded.updated_at",
        )
        .bind(registry)
        .bind(&credentials.username)
        .bind(&credentials.password)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(!existed)
    }

    async fn registry_credentials(&self, registry: &str) -> Result<Option<Credentials>> {
        let row =
            sqlx::query("SELECT username, password FROM registry_credentials WHERE registry = $1")
                .bind(registry)
                .fetch_optional(&self.reads)
                .await?;
        row.map(|r| {
            Ok(Credentials {
                username: r.try_get("username")?,
                password: r.try_get("password")?,
            })
        })
        .transpose()
    }

    async fn registry_logins(&self) -> Result<Vec<RegistryLogin>> {
        let rows = sqlx::query(
            "SELECT registry, username, updated_at FROM registry_credentials ORDER BY registry",
        )
        .fetch_all(&self.reads)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RegistryLogin {
                    registry: r.try_get("registry")?,
                    username: r.try_get("username")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    async fn delete_registry_credentials(&self, registry: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM registry_credentials WHERE registry = $1")
            .bind(registry)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
