//! The [`Store`] trait implemented on [`SqlStore`]: one transaction per
//! method (see the parent module for the SQL conventions).

use async_trait::async_trait;
use skiff_sdk::Digest;
use skiff_sdk::api::{
    App, AppSpec, Assignment, Assignments, Condition, Event, EventKind, Heartbeat, Node,
    RegisterNode, Replica, ReplicaStatus, Revision,
};
use sqlx::Row;

use super::super::rows::{check_version, json, not_found, parse, to_i64, to_u64};
use super::super::{
    Applied, ApplyCheck, ArtifactInfo, Changed, LogSource, NewEvent, Page, ReplicaChange, Result,
    StatusUpdate, Store, StoreError, TokenKind, now_ms,
};
use super::{Dialect, SqlStore, app_event};

#[async_trait]
impl Store for SqlStore {
    async fn install_tokens(&self, admin_hash: &str, join_hash: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let mut installed = 0;
        for (kind, hash) in [(TokenKind::Admin, admin_hash), (TokenKind::Join, join_hash)] {
            installed += sqlx::query(
                "INSERT INTO tokens (kind, hash, created_at) VALUES ($1, $2, $3) ON CONFLICT (kind) DO NOTHING",
            )
            .bind(kind.as_str())
            .bind(hash)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if installed == 2 {
            tx.commit().await?;
            Ok(true)
        } else {
            // Another controller (or an earlier start) installed them.
            tx.rollback().await?;
            Ok(false)
        }
    }

    async fn token_hash(&self, kind: TokenKind) -> Result<Option<String>> {
        let row = sqlx::query("SELECT hash FROM tokens WHERE kind = $1")
            .bind(kind.as_str())
            .fetch_optional(&self.reads)
            .await?;
        Ok(row.map(|r| r.try_get("hash")).transpose()?)
    }

    async fn put_artifact(&self, digest: &Digest, bytes: &[u8]) -> Result<bool> {
        self.put_artifact_bounded(digest, bytes).await
    }

    async fn artifact(&self, digest: &Digest) -> Result<Option<ArtifactInfo>> {
        self.artifact_info(digest).await
    }

    async fn artifact_chunk(&self, digest: &Digest, seq: u64) -> Result<Option<Vec<u8>>> {
        self.chunk(digest, seq).await
    }

    async fn collect_artifacts(&self, retention_ms: i64) -> Result<Vec<Digest>> {
        self.collect(retention_ms).await
    }

    async fn delete_artifact(&self, digest: &Digest) -> Result<bool> {
        self.remove_artifact(digest).await
    }

    async fn apply_app_checked(
        &self,
        name: &str,
        spec: AppSpec,
        check: &ApplyCheck<'_>,
    ) -> Result<Applied> {
        self.apply(name, spec, check).await
    }

    async fn app(&self, name: &str) -> Result<Option<App>> {
        let mut tx = self.reads.begin().await?;
        let app = self.load_app(&mut tx, name).await?;
        tx.commit().await?;
        Ok(app)
    }

    async fn apps(&self) -> Result<Vec<App>> {
        if self.dialect == Dialect::Sqlite {
            return self.apps_cached().await;
        }
        let rows = sqlx::query(
            "SELECT a.*, (SELECT COUNT(*) FROM replicas r WHERE r.app = a.name AND r.revision = a.revision \
             AND r.state = 'Ready') AS ready FROM apps a ORDER BY a.name",
        )
        .fetch_all(&self.reads)
        .await?;
        rows.iter()
            .map(|r| {
                self.app_from_row(r, u32::try_from(r.try_get::<i64, _>("ready")?).unwrap_or(0))
            })
            .collect()
    }

    async fn delete_app(&self, name: &str, if_version: Option<u64>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let current = self
            .load_app(&mut tx, name)
            .await?
            .ok_or_else(|| not_found("app", name))?;
        check_version("app", name, Some(current.version), if_version)?;
        let nodes = sqlx::query("SELECT DISTINCT node FROM replicas WHERE app = $1")
            .bind(name)
            .fetch_all(&mut *tx)
            .await?;
        let mut changed = Changed::app(name);
        for row in nodes {
            let node: String = row.try_get("node")?;
            self.bump_assignments(&mut tx, &node).await?;
            changed.nodes.insert(node);
        }
        sqlx::query("DELETE FROM replicas WHERE app = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM revisions WHERE app = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM apps WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.event_in(
            &mut tx,
            app_event(name, EventKind::AppDeleted, "app deleted"),
        )
        .await?;
        self.finish(tx, changed).await
    }

    async fn revisions(&self, name: &str) -> Result<Vec<Revision>> {
        let mut tx = self.reads.begin().await?;
        if self.load_app(&mut tx, name).await?.is_none() {
            return Err(not_found("app", name));
        }
        let rows = sqlx::query("SELECT * FROM revisions WHERE app = $1 ORDER BY number")
            .bind(name)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(Revision {
                    app: r.try_get("app")?,
                    number: to_u64(r.try_get("number")?),
                    spec: parse("revision spec", &r.try_get::<String, _>("spec")?)?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn rollback_app(
        &self,
        name: &str,
        to: Option<u64>,
        if_version: Option<u64>,
        cause: Option<NewEvent>,
    ) -> Result<App> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        if let Some(cause) = cause {
            self.event_in(&mut tx, cause).await?;
        }
        let current = self
            .load_app(&mut tx, name)
            .await?
            .ok_or_else(|| not_found("app", name))?;
        check_version("app", name, Some(current.version), if_version)?;
        let target = to.unwrap_or(current.revision.saturating_sub(1));
        let row = sqlx::query("SELECT spec FROM revisions WHERE app = $1 AND number = $2")
            .bind(name)
            .bind(to_i64(target))
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| not_found("revision", &format!("{name}@{target}")))?;
        let mut spec: AppSpec = parse("revision spec", &row.try_get::<String, _>("spec")?)?;
        spec.replicas = current.spec.replicas;
        let number = current.revision + 1;
        self.update_app(&mut tx, &current, &spec, number, now)
            .await?;
        self.insert_revision(&mut tx, name, number, &spec, now)
            .await?;
        let message = format!("rolled back to the spec of revision {target} as revision {number}");
        self.event_in(&mut tx, app_event(name, EventKind::AppRolledBack, message))
            .await?;
        self.commit_app(tx, name).await
    }

    async fn scale_app(&self, name: &str, replicas: u32, if_version: Option<u64>) -> Result<App> {
        self.scale_with(name, replicas, if_version, None).await
    }

    async fn autoscale_app(
        &self,
        name: &str,
        replicas: u32,
        if_version: Option<u64>,
        why: &str,
    ) -> Result<App> {
        self.scale_with(name, replicas, if_version, Some(why)).await
    }

    async fn set_good_revision(&self, name: &str, revision: u64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE apps SET good_revision = $1 WHERE name = $2")
            .bind(to_i64(revision))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.finish(tx, Changed::app(name)).await
    }

    async fn set_app_conditions(&self, name: &str, conditions: &[Condition]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE apps SET conditions = $1 WHERE name = $2")
            .bind(json(&conditions))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        self.finish(tx, Changed::app(name)).await
    }

    async fn register_node(
        &self,
        node: &RegisterNode,
        credential_hash: &str,
        claim: Option<&str>,
        silent_for_ms: i64,
    ) -> Result<(Node, bool)> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let holder = sqlx::query(
            "SELECT n.credential_hash AS credential_hash, l.renewed_at AS renewed_at \
             FROM nodes n LEFT JOIN node_leases l ON l.node = n.name WHERE n.name = $1",
        )
        .bind(&node.name)
        .fetch_optional(&mut *tx)
        .await?;
        let existed = holder.is_some();
        if let Some(row) = holder {
            let stored: Option<String> = row.try_get("credential_hash")?;
            let renewed_at: Option<i64> = row.try_get("renewed_at")?;
            let same_node = claim.is_some() && stored.as_deref() == claim;
            let gone = renewed_at.is_none_or(|at| now.saturating_sub(at) > silent_for_ms);
            if !same_node && !gone {
                return Err(StoreError::NameTaken(node.name.clone()));
            }
        }
        sqlx::query(
            "INSERT INTO nodes (name, labels, memory_bytes, ingress, credential_hash, version, registered_at, logs_key, offers_api) \
             VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8) \
             ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, memory_bytes = excluded.memory_bytes, \
             ingress = excluded.ingress, credential_hash = excluded.credential_hash, logs_key = excluded.logs_key, \
             offers_api = excluded.offers_api, \
             version = nodes.version + 1",
        )
        .bind(&node.name)
        .bind(json(&node.labels))
        .bind(to_i64(node.capacity.memory_bytes))
        .bind(&node.ingress)
        .bind(credential_hash)
        .bind(now)
        // Only the key's hash is stored, as for every secret.
        .bind(node.logs_key.as_deref().map(crate::auth::hash_secret))
        .bind(i64::from(node.logs_key.is_some()))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO node_leases (node, renewed_at) VALUES ($1, $2) \
             ON CONFLICT (node) DO UPDATE SET renewed_at = excluded.renewed_at",
        )
        .bind(&node.name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let (kind, message) = if existed {
            (
                EventKind::NodeReregistered,
                format!("node re-registered with ingress {}", node.ingress),
            )
        } else {
            (
                EventKind::NodeRegistered,
                format!("node registered with ingress {}", node.ingress),
            )
        };
        let event = NewEvent {
            app: None,
            node: Some(node.name.clone()),
            kind,
            message,
        };
        self.event_in(&mut tx, event).await?;
        let stored = self
            .load_node(&mut tx, &node.name)
            .await?
            .ok_or_else(|| not_found("node", &node.name))?;
        self.finish(tx, Changed::node(&node.name)).await?;
        Ok((stored, !existed))
    }

    async fn node(&self, name: &str) -> Result<Option<Node>> {
        let mut tx = self.reads.begin().await?;
        let node = self.load_node(&mut tx, name).await?;
        tx.commit().await?;
        Ok(node)
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        let rows = sqlx::query(
            "SELECT n.*, l.renewed_at AS renewed_at FROM nodes n LEFT JOIN node_leases l ON l.node = n.name ORDER BY n.name",
        )
        .fetch_all(&self.reads)
        .await?;
        rows.iter().map(|r| self.node_from_row(r)).collect()
    }

    async fn node_for_credential(&self, credential_hash: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT name FROM nodes WHERE credential_hash = $1")
            .bind(credential_hash)
            .fetch_optional(&self.reads)
            .await?;
        Ok(row.map(|r| r.try_get("name")).transpose()?)
    }

    async fn set_node_flags(
        &self,
        name: &str,
        cordoned: Option<bool>,
        draining: Option<bool>,
        if_version: Option<u64>,
    ) -> Result<Node> {
        let mut tx = self.pool.begin().await?;
        let node = self
            .load_node(&mut tx, name)
            .await?
            .ok_or_else(|| not_found("node", name))?;
        check_version("node", name, Some(node.version), if_version)?;
        let cordoned = cordoned.unwrap_or(node.cordoned);
        let draining = draining.unwrap_or(node.draining);
        if (cordoned, draining) != (node.cordoned, node.draining) {
            sqlx::query("UPDATE nodes SET cordoned = $1, draining = $2, version = version + 1 WHERE name = $3")
                .bind(i64::from(cordoned))
                .bind(i64::from(draining))
                .bind(name)
                .execute(&mut *tx)
                .await?;
            let message = format!("cordoned={cordoned} draining={draining}");
            let event = NewEvent {
                app: None,
                node: Some(name.into()),
                kind: EventKind::NodeUpdated,
                message,
            };
            self.event_in(&mut tx, event).await?;
        }
        let node = self
            .load_node(&mut tx, name)
            .await?
            .ok_or_else(|| not_found("node", name))?;
        self.finish(tx, Changed::node(name)).await?;
        Ok(node)
    }

    async fn delete_node(&self, name: &str, if_version: Option<u64>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let node = self
            .load_node(&mut tx, name)
            .await?
            .ok_or_else(|| not_found("node", name))?;
        check_version("node", name, Some(node.version), if_version)?;
        let mut changed = Changed::node(name);
        for row in sqlx::query("DELETE FROM replicas WHERE node = $1 RETURNING app")
            .bind(name)
            .fetch_all(&mut *tx)
            .await?
        {
            changed.apps.insert(row.try_get("app")?);
        }
        sqlx::query("DELETE FROM node_leases WHERE node = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM nodes WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let event = NewEvent {
            app: None,
            node: Some(name.into()),
            kind: EventKind::NodeDeleted,
            message: "node deleted".into(),
        };
        self.event_in(&mut tx, event).await?;
        self.finish(tx, changed).await
    }

    async fn heartbeat(&self, name: &str, heartbeat: &Heartbeat) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let renewed = sqlx::query("UPDATE node_leases SET renewed_at = $1 WHERE node = $2")
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if renewed == 0 {
            return Err(not_found("node", name));
        }
        let changed = self
            .replica_states_in(&mut tx, name, &heartbeat.replicas, now)
            .await?;
        let any = !changed.is_empty();
        self.finish(tx, changed).await?;
        Ok(any)
    }

    async fn change_replicas(&self, change: &ReplicaChange) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        // Each touched node's assignments version is bumped once.
        let mut touched = std::collections::BTreeSet::new();
        let mut changed = Changed::default();
        for id in &change.remove {
            let row = sqlx::query("DELETE FROM replicas WHERE id = $1 RETURNING node, app")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| not_found("replica", id))?;
            touched.insert(row.try_get::<String, _>("node")?);
            changed.apps.insert(row.try_get("app")?);
        }
        for id in &change.retire {
            if let Some(row) = sqlx::query(
                "UPDATE replicas SET retiring_at = $1 WHERE id = $2 AND retiring_at IS NULL RETURNING app",
            )
            .bind(now)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            {
                changed.apps.insert(row.try_get("app")?);
            }
        }
        for r in &change.add {
            if !touched.contains(&r.node) && self.load_node(&mut tx, &r.node).await?.is_none() {
                return Err(not_found("node", &r.node));
            }
            sqlx::query(
                "INSERT INTO replicas (id, app, revision, node, state, reason, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 'Pending', NULL, $5, $5)",
            )
            .bind(&r.id)
            .bind(&r.app)
            .bind(to_i64(r.revision))
            .bind(&r.node)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            touched.insert(r.node.clone());
            changed.apps.insert(r.app.clone());
        }
        for node in &touched {
            self.bump_assignments(&mut tx, node).await?;
        }
        for event in &change.events {
            self.event_in(&mut tx, event.clone()).await?;
        }
        changed.nodes = touched;
        self.finish(tx, changed).await
    }

    async fn log_sources(&self, app: &str) -> Result<Vec<LogSource>> {
        let rows = sqlx::query(
            "SELECT DISTINCT n.name, n.ingress, n.logs_key, n.offers_api FROM nodes n \
             JOIN replicas r ON r.node = n.name WHERE r.app = $1 ORDER BY n.name",
        )
        .bind(app)
        .fetch_all(&self.reads)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LogSource {
                    node: r.try_get("name")?,
                    ingress: r.try_get("ingress")?,
                    offers_api: r.try_get::<i64, _>("offers_api")? != 0,
                    logs_key_hash: r.try_get("logs_key")?,
                })
            })
            .collect()
    }

    async fn node_source(&self, node: &str) -> Result<Option<LogSource>> {
        let row =
            sqlx::query("SELECT name, ingress, logs_key, offers_api FROM nodes WHERE name = $1")
                .bind(node)
                .fetch_optional(&self.reads)
                .await?;
        row.map(|r| {
            Ok(LogSource {
                node: r.try_get("name")?,
                ingress: r.try_get("ingress")?,
                offers_api: r.try_get::<i64, _>("offers_api")? != 0,
                logs_key_hash: r.try_get("logs_key")?,
            })
        })
        .transpose()
    }

    async fn assignments(&self, node: &str) -> Result<Assignments> {
        let mut tx = self.reads.begin().await?;
        let version: i64 = sqlx::query("SELECT assign_version FROM nodes WHERE name = $1")
            .bind(node)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| not_found("node", node))?
            .try_get("assign_version")?;
        let rows = sqlx::query(
            "SELECT r.id, r.app, r.revision, v.spec, a.replicas FROM replicas r \
             JOIN revisions v ON v.app = r.app AND v.number = r.revision \
             JOIN apps a ON a.name = r.app WHERE r.node = $1 ORDER BY r.id",
        )
        .bind(node)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let replicas = rows
            .iter()
            .map(|r| {
                let mut spec: AppSpec = parse("revision spec", &r.try_get::<String, _>("spec")?)?;
                spec.replicas = u32::try_from(r.try_get::<i64, _>("replicas")?).unwrap_or(0);
                Ok(Assignment {
                    id: r.try_get("id")?,
                    app: r.try_get("app")?,
                    revision: to_u64(r.try_get("revision")?),
                    spec: std::sync::Arc::new(spec),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Assignments {
            version: to_u64(version),
            replicas,
            ..Assignments::default()
        })
    }

    async fn replicas(&self, app: Option<&str>) -> Result<Vec<Replica>> {
        let rows = match app {
            Some(app) => {
                sqlx::query("SELECT * FROM replicas WHERE app = $1 ORDER BY id")
                    .bind(app)
                    .fetch_all(&self.reads)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM replicas ORDER BY id")
                    .fetch_all(&self.reads)
                    .await?
            }
        };
        rows.iter().map(super::reads::replica_from_row).collect()
    }

    async fn record_event(&self, event: NewEvent) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        self.event_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn events(&self, app: Option<&str>, since: u64, limit: u32) -> Result<Vec<Event>> {
        let query = match app {
            Some(app) => {
                sqlx::query("SELECT * FROM events WHERE app = $1 AND id > $2 ORDER BY id LIMIT $3")
                    .bind(app.to_owned())
                    .bind(to_i64(since))
                    .bind(i64::from(limit))
            }
            None => sqlx::query("SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(to_i64(since))
                .bind(i64::from(limit)),
        };
        let rows = query.fetch_all(&self.reads).await?;
        rows.iter()
            .map(|r| {
                Ok(Event {
                    id: to_u64(r.try_get("id")?),
                    time: r.try_get("time")?,
                    app: r.try_get("app")?,
                    node: r.try_get("node")?,
                    kind: EventKind::parse(&r.try_get::<String, _>("kind")?),
                    message: r.try_get("message")?,
                })
            })
            .collect()
    }

    fn shared(&self) -> bool {
        self.dialect == Dialect::Postgres
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn record_statuses(&self, updates: &[StatusUpdate]) -> Result<()> {
        self.write_statuses(updates).await
    }

    async fn revisions_of(&self, apps: &[String]) -> Result<Vec<Revision>> {
        self.read_revisions_of(apps).await
    }

    fn take_changed(&self) -> Changed {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    async fn apps_named(&self, names: &[String]) -> Result<Vec<App>> {
        self.read_apps_named(names).await
    }

    async fn apps_page(&self, after: Option<&str>, limit: u32) -> Result<Page<App>> {
        self.read_apps_page(after, limit).await
    }

    async fn nodes_named(&self, names: &[String]) -> Result<Vec<Node>> {
        self.read_nodes_named(names).await
    }

    async fn assign_versions(&self, names: Option<&[String]>) -> Result<Vec<(String, u64)>> {
        self.read_assign_versions(names).await
    }

    async fn nodes_page(&self, after: Option<&str>, limit: u32) -> Result<Page<Node>> {
        self.read_nodes_page(after, limit).await
    }

    async fn replicas_of(&self, apps: &[String]) -> Result<Vec<Replica>> {
        self.read_replicas_of(apps).await
    }

    async fn replicas_page(&self, after: Option<&str>, limit: u32) -> Result<Page<Replica>> {
        self.read_replicas_page(after, limit).await
    }

    async fn revision_specs(
        &self,
        keys: &[(String, u64)],
    ) -> Result<Vec<((String, u64), AppSpec)>> {
        self.read_revision_specs(keys).await
    }

    async fn renew_leases(&self, renewals: &[(String, i64)], by: &str) -> Result<()> {
        self.write_leases(renewals, by).await
    }

    async fn leases_renewed_elsewhere(&self, since: i64, me: &str) -> Result<Vec<(String, i64)>> {
        self.read_leases_elsewhere(since, me).await
    }

    async fn report_replicas(&self, node: &str, states: &[ReplicaStatus]) -> Result<bool> {
        self.write_replica_states(node, states).await
    }

    async fn try_acquire_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
        let now = now_ms();
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at, renewed_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, \
             renewed_at = excluded.renewed_at WHERE leases.holder = excluded.holder OR leases.expires_at < excluded.renewed_at",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl_ms)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn lease_holder(&self, name: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT holder FROM leases WHERE name = $1 AND expires_at >= $2")
            .bind(name)
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("holder")).transpose()?)
    }
}
