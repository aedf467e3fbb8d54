//! Reads by name and by page, lease batches, and replica-state reports:
//! what the informer and the paged lists need, each one bounded query (or a
//! few, for long name lists) instead of a scan of everything.

use skiff_sdk::api::{App, AppSpec, Node, Replica, ReplicaStatus, Revision};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::super::rows::{json, parse, parse_state, state_str, to_i64, to_u64};
use super::super::{Changed, Page, Result, StatusUpdate};
use super::{SqlStore, Tx};

/// Names bound per `IN (...)` query: far below SQLite's and PostgreSQL's
/// limits on bound parameters.
const CHUNK: usize = 500;

/// `$first, $first+1, ...` for `n` parameters.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const APP_SELECT: &str = "SELECT a.*, (SELECT COUNT(*) FROM replicas r WHERE r.app = a.name \
     AND r.revision = a.revision AND r.state = 'Ready') AS ready FROM apps a";
const NODE_SELECT: &str = "SELECT n.*, l.renewed_at AS renewed_at FROM nodes n \
     LEFT JOIN node_leases l ON l.node = n.name";

pub(super) fn replica_from_row(r: &AnyRow) -> Result<Replica> {
    Ok(Replica {
        id: r.try_get("id")?,
        app: r.try_get("app")?,
        revision: to_u64(r.try_get("revision")?),
        node: r.try_get("node")?,
        state: parse_state(&r.try_get::<String, _>("state")?),
        reason: r.try_get("reason")?,
        retiring_since: r.try_get("retiring_at")?,
    })
}

impl SqlStore {
    fn app_row(&self, r: &AnyRow) -> Result<App> {
        self.app_from_row(r, u32::try_from(r.try_get::<i64, _>("ready")?).unwrap_or(0))
    }

    /// Rows of `select ... WHERE column IN (names)`, in chunks.
    async fn rows_in(&self, select: &str, column: &str, names: &[String]) -> Result<Vec<AnyRow>> {
        let mut out = Vec::new();
        for chunk in names.chunks(CHUNK) {
            let sql = format!(
                "{select} WHERE {column} IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for name in chunk {
                query = query.bind(name.clone());
            }
            out.extend(query.fetch_all(&self.reads).await?);
        }
        Ok(out)
    }

    /// Rows of one page of `select`, ordered by `key`, after `after`.
    async fn page(
        &self,
        select: &str,
        key: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<AnyRow>, bool)> {
        let limit = limit.max(1);
        let sql = format!("{select} WHERE {key} > $1 ORDER BY {key} LIMIT $2");
        let mut rows = sqlx::query(&sql)
            .bind(after.unwrap_or("").to_owned())
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.reads)
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Ok((rows, more))
    }

    pub(super) async fn read_apps_named(&self, names: &[String]) -> Result<Vec<App>> {
        let rows = self.rows_in(APP_SELECT, "a.name", names).await?;
        let mut apps = rows
            .iter()
            .map(|r| self.app_row(r))
            .collect::<Result<Vec<_>>>()?;
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(apps)
    }

    pub(super) async fn read_apps_page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<App>> {
        let (rows, more) = self.page(APP_SELECT, "a.name", after, limit).await?;
        let items = rows
            .iter()
            .map(|r| self.app_row(r))
            .collect::<Result<_>>()?;
        Ok(Page { items, more })
    }

    pub(super) async fn read_nodes_named(&self, names: &[String]) -> Result<Vec<Node>> {
        let rows = self.rows_in(NODE_SELECT, "n.name", names).await?;
        let mut nodes = rows
            .iter()
            .map(|r| self.node_from_row(r))
            .collect::<Result<Vec<_>>>()?;
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    pub(super) async fn read_assign_versions(
        &self,
        names: Option<&[String]>,
    ) -> Result<Vec<(String, u64)>> {
        let select = "SELECT name, assign_version FROM nodes";
        let rows = match names {
            Some(names) => self.rows_in(select, "name", names).await?,
            None => sqlx::query(select).fetch_all(&self.reads).await?,
        };
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, to_u64(r.try_get("assign_version")?))))
            .collect()
    }

    pub(super) async fn read_nodes_page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Node>> {
        let (rows, more) = self.page(NODE_SELECT, "n.name", after, limit).await?;
        let items = rows
            .iter()
            .map(|r| self.node_from_row(r))
            .collect::<Result<_>>()?;
        Ok(Page { items, more })
    }

    pub(super) async fn read_replicas_of(&self, apps: &[String]) -> Result<Vec<Replica>> {
        let rows = self.rows_in("SELECT * FROM replicas", "app", apps).await?;
        let mut replicas = rows
            .iter()
            .map(replica_from_row)
            .collect::<Result<Vec<_>>>()?;
        replicas.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(replicas)
    }

    pub(super) async fn read_replicas_page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Replica>> {
        let (rows, more) = self
            .page("SELECT * FROM replicas", "id", after, limit)
            .await?;
        let items = rows.iter().map(replica_from_row).collect::<Result<_>>()?;
        Ok(Page { items, more })
    }

    pub(super) async fn read_revision_specs(
        &self,
        keys: &[(String, u64)],
    ) -> Result<Vec<((String, u64), AppSpec)>> {
        let mut out = Vec::with_capacity(keys.len());
        // One query per app, for the numbers asked of it.
        let mut by_app: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
        for (app, number) in keys {
            by_app.entry(app.as_str()).or_default().push(*number);
        }
        let names: Vec<String> = by_app.keys().map(|a| (*a).to_owned()).collect();
        let rows = self
            .rows_in("SELECT app, number, spec FROM revisions", "app", &names)
            .await?;
        for row in rows {
            let app: String = row.try_get("app")?;
            let number = to_u64(row.try_get("number")?);
            if by_app
                .get(app.as_str())
                .is_some_and(|n| n.contains(&number))
            {
                let spec: AppSpec = parse("revision spec", &row.try_get::<String, _>("spec")?)?;
                out.push(((app, number), spec));
            }
        }
        Ok(out)
    }

    pub(super) async fn read_revisions_of(&self, apps: &[String]) -> Result<Vec<Revision>> {
        let rows = self.rows_in("SELECT * FROM revisions", "app", apps).await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(Revision {
                    app: r.try_get("app")?,
                    number: to_u64(r.try_get("number")?),
                    spec: parse("revision spec", &r.try_get::<String, _>("spec")?)?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| (&a.app, a.number).cmp(&(&b.app, b.number)));
        Ok(out)
    }

    pub(super) async fn write_statuses(&self, updates: &[StatusUpdate]) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let mut changed = Changed::default();
        for update in updates {
            if let Some(revision) = update.good_revision {
                sqlx::query("UPDATE apps SET good_revision = $1 WHERE name = $2")
                    .bind(to_i64(revision))
                    .bind(&update.app)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(conditions) = &update.conditions {
                sqlx::query("UPDATE apps SET conditions = $1 WHERE name = $2")
                    .bind(json(conditions))
                    .bind(&update.app)
                    .execute(&mut *tx)
                    .await?;
            }
            changed.apps.insert(update.app.clone());
        }
        self.finish(tx, changed).await
    }

    pub(super) async fn write_leases(&self, renewals: &[(String, i64)], by: &str) -> Result<()> {
        if renewals.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        // Grouped by time (rounded down to 100 ms, which only ever makes a
        // lease look older), so a batch is a few statements, not one per
        // node.
        let mut by_time: std::collections::BTreeMap<i64, Vec<&str>> = Default::default();
        for (node, at) in renewals {
            by_time
                .entry(at - at.rem_euclid(100))
                .or_default()
                .push(node);
        }
        for (at, nodes) in by_time {
            for chunk in nodes.chunks(CHUNK) {
                let sql = format!(
                    "UPDATE node_leases SET renewed_at = $1, renewed_by = $2 \
                     WHERE renewed_at < $1 AND node IN ({})",
                    placeholders(3, chunk.len())
                );
                let mut query = sqlx::query(&sql).bind(at).bind(by.to_owned());
                for node in chunk {
                    query = query.bind((*node).to_owned());
                }
                query.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn read_leases_elsewhere(
        &self,
        since: i64,
        me: &str,
    ) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT node, renewed_at FROM node_leases WHERE renewed_at > $1 \
             AND (renewed_by IS NULL OR renewed_by <> $2)",
        )
        .bind(since)
        .bind(me.to_owned())
        .fetch_all(&self.reads)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("node")?, r.try_get("renewed_at")?)))
            .collect()
    }

    /// Records the reported states of `node`'s replicas that differ from
    /// the stored ones; names the apps concerned.
    pub(super) async fn replica_states_in(
        &self,
        tx: &mut Tx<'_>,
        node: &str,
        states: &[ReplicaStatus],
        now: i64,
    ) -> Result<Changed> {
        let mut changed = Changed::default();
        for replica in states {
            // Only this node's replicas, and only rows whose state changed.
            if let Some(row) = sqlx::query(
                "UPDATE replicas SET state = $1, reason = $2, updated_at = $3 \
                 WHERE id = $4 AND node = $5 AND (state <> $1 OR COALESCE(reason, '') <> COALESCE($2, '')) \
                 RETURNING app",
            )
            .bind(state_str(replica.state))
            .bind(replica.reason.clone())
            .bind(now)
            .bind(&replica.id)
            .bind(node)
            .fetch_optional(&mut **tx)
            .await?
            {
                changed.apps.insert(row.try_get("app")?);
            }
        }
        Ok(changed)
    }

    pub(super) async fn write_replica_states(
        &self,
        node: &str,
        states: &[ReplicaStatus],
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let changed = self
            .replica_states_in(&mut tx, node, states, super::now_ms())
            .await?;
        let any = !changed.is_empty();
        self.finish(tx, changed).await?;
        Ok(any)
    }
}
