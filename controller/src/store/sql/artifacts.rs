//! Artifacts in the SQL store: chunked, content-addressed bytes, bounded in
//! total size, and collected once no kept revision refers to them.
//!
//! Collection marks each unreferenced artifact with the time it was first
//! seen so (`unreferenced_since`) and removes it once that is older than
//! the retention. Applying a spec clears the marks of the artifacts it
//! names in the same transaction, and fails if one is gone: an apply and a
//! collection never leave a revision pointing at a removed artifact.

use std::collections::{BTreeMap, HashSet};

use skiff_sdk::Digest;
use sqlx::Row;

use super::super::rows::{to_i64, to_u64};
use super::super::{ARTIFACT_CHUNK, ArtifactInfo, Result, StoreError, now_ms};
use super::{SqlStore, Tx};

/// The artifacts a stored spec names (the rest of it is not needed here).
#[derive(serde::Deserialize)]
struct Refs {
    artifact: Digest,
    #[serde(default)]
    files: BTreeMap<String, Digest>,
}

impl SqlStore {
    pub(super) async fn put_artifact_bounded(&self, digest: &Digest, bytes: &[u8]) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let key = digest.to_string();
        let size = bytes.len() as u64;
        let exists = sqlx::query("SELECT 1 AS one FROM artifacts WHERE digest = $1")
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if exists {
            tx.rollback().await?;
            return Ok(false);
        }
        let used = to_u64(
            sqlx::query("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS used FROM artifacts")
                .fetch_one(&mut *tx)
                .await?
                .try_get("used")?,
        );
        let limit = self.options.artifact_store_bytes;
        if used.saturating_add(size) > limit {
            tx.rollback().await?;
            return Err(StoreError::Full { used, size, limit });
        }
        let chunks = bytes.len().div_ceil(ARTIFACT_CHUNK) as u64;
        let inserted = sqlx::query(
            "INSERT INTO artifacts (digest, size, chunks, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO NOTHING",
        )
        .bind(&key)
        .bind(to_i64(size))
        .bind(to_i64(chunks))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // Another controller stored the same bytes meanwhile.
            tx.rollback().await?;
            return Ok(false);
        }
        for (seq, chunk) in bytes.chunks(ARTIFACT_CHUNK).enumerate() {
            sqlx::query("INSERT INTO artifact_chunks (digest, seq, data) VALUES ($1, $2, $3)")
                .bind(&key)
                .bind(seq as i64)
                .bind(chunk.to_vec())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn artifact_info(&self, digest: &Digest) -> Result<Option<ArtifactInfo>> {
        let row = sqlx::query("SELECT size, chunks FROM artifacts WHERE digest = $1")
            .bind(digest.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(ArtifactInfo {
                size: to_u64(r.try_get("size")?),
                chunks: to_u64(r.try_get("chunks")?),
            })
        })
        .transpose()
    }

    pub(super) async fn chunk(&self, digest: &Digest, seq: u64) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT data FROM artifact_chunks WHERE digest = $1 AND seq = $2")
            .bind(digest.to_string())
            .bind(to_i64(seq))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("data")).transpose()?)
    }

    /// Within an apply: the artifacts `digests` are referenced from now on
    /// (their collection marks are cleared); fails if one is gone.
    pub(super) async fn claim_artifacts(
        &self,
        tx: &mut Tx<'_>,
        digests: impl Iterator<Item = &Digest>,
    ) -> Result<()> {
        for digest in digests {
            let found =
                sqlx::query("UPDATE artifacts SET unreferenced_since = NULL WHERE digest = $1")
                    .bind(digest.to_string())
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
            if found == 0 {
                return Err(StoreError::NotFound {
                    kind: "artifact",
                    name: digest.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Every artifact a kept revision, an app's current spec or a job names.
    async fn referenced(&self, tx: &mut Tx<'_>) -> Result<HashSet<String>> {
        let rows = sqlx::query("SELECT spec FROM revisions UNION ALL SELECT spec FROM apps UNION ALL SELECT spec FROM jobs")
            .fetch_all(&mut **tx)
            .await?;
        let mut referenced = HashSet::new();
        for row in rows {
            let text: String = row.try_get("spec")?;
            let refs: Refs = super::super::rows::parse("revision spec", &text)?;
            referenced.insert(refs.artifact.to_string());
            referenced.extend(refs.files.values().map(Digest::to_string));
        }
        Ok(referenced)
    }

    pub(super) async fn collect(&self, retention_ms: i64) -> Result<Vec<Digest>> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let referenced = self.referenced(&mut tx).await?;
        let rows = sqlx::query("SELECT digest, unreferenced_since FROM artifacts")
            .fetch_all(&mut *tx)
            .await?;
        let mut removed = Vec::new();
        for row in rows {
            let key: String = row.try_get("digest")?;
            let since: Option<i64> = row.try_get("unreferenced_since")?;
            let (sql, at) = match (referenced.contains(&key), since) {
                (true, Some(_)) => (
                    "UPDATE artifacts SET unreferenced_since = NULL WHERE digest = $1",
                    None,
                ),
                (false, None) => (
                    "UPDATE artifacts SET unreferenced_since = $2 WHERE digest = $1",
                    Some(now),
                ),
                (false, Some(since)) if now.saturating_sub(since) >= retention_ms => (
                    // Re-checked in the statement: an apply that claimed it
                    // meanwhile cleared the mark.
                    "DELETE FROM artifacts WHERE digest = $1 AND unreferenced_since IS NOT NULL",
                    None,
                ),
                _ => continue,
            };
            let mut query = sqlx::query(sql).bind(&key);
            if let Some(at) = at {
                query = query.bind(at);
            }
            let changed = query.execute(&mut *tx).await?.rows_affected();
            if sql.starts_with("DELETE") && changed > 0 {
                removed.extend(key.parse::<Digest>().ok());
            }
        }
        tx.commit().await?;
        Ok(removed)
    }

    pub(super) async fn remove_artifact(&self, digest: &Digest) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let key = digest.to_string();
        if self.referenced(&mut tx).await?.contains(&key) {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "artifact {key} is referenced by a kept revision of an app"
            )));
        }
        let removed = sqlx::query("DELETE FROM artifacts WHERE digest = $1")
            .bind(&key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(removed > 0)
    }
}
