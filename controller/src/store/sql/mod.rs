//! [`Store`](super::Store) on SQLite or PostgreSQL through sqlx's `Any` driver.
//!
//! Queries are checked at run time (no database at build time) and written
//! in the SQL both dialects share: `$n` placeholders (numbered in order of
//! first use, which SQLite requires), `ON CONFLICT ... DO UPDATE`,
//! `RETURNING`, integers as `i64`, JSON as text. Only the schema differs,
//! in `migrations/<dialect>/`.
//!
//! SQLite allows one writer at a time, so its pool has a single connection:
//! requests queue in the pool instead of failing with `SQLITE_BUSY`, and a
//! read-then-write transaction can never deadlock. In WAL mode with
//! `synchronous=NORMAL` a commit survives a process crash (`kill -9`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_sdk::api::{
    App, AppSpec, AppStatus, Condition, EventKind, Node, NodeCapacity, NodeState,
};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use super::rows::{check_version, json, not_found, parse, revision_identity, to_i64, to_u64};
use super::{Changed, DEFAULT_EVENT_CAP, KEEP_REVISIONS, NewEvent, Result, StoreError, now_ms};

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// Knobs of the SQL store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// A node whose last heartbeat is older than this is `NotReady`.
    pub node_grace: Duration,
    /// Events kept.
    pub event_cap: u64,
    /// Pool size for PostgreSQL (SQLite always uses one connection).
    pub max_connections: u32,
    /// Most bytes all stored artifacts may take; an upload beyond is
    /// refused ([`StoreError::Full`]).
    pub artifact_store_bytes: u64,
}

/// Default [`StoreOptions::artifact_store_bytes`]: 8 GiB holds over a
/// hundred revisions of the largest (64 MiB) artifact while keeping a
/// runaway uploader from filling the controller's disk.
pub const DEFAULT_ARTIFACT_STORE_BYTES: u64 = 8 << 30;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            node_grace: crate::DEFAULT_NODE_GRACE,
            event_cap: DEFAULT_EVENT_CAP,
            max_connections: 16,
            artifact_store_bytes: DEFAULT_ARTIFACT_STORE_BYTES,
        }
    }
}

/// The SQL implementation of [`Store`].
#[derive(Clone)]
pub struct SqlStore {
    /// Writes (and reads inside write transactions).
    pool: AnyPool,
    /// Reads outside transactions. On SQLite a pool of its own: in WAL
    /// mode readers never wait for the one writer (nor it for them), and a
    /// read sees every commit made before it began. On PostgreSQL the same
    /// pool as writes.
    reads: AnyPool,
    options: StoreOptions,
    dialect: Dialect,
    /// Bumped after every committed write that can change the app list.
    generation: Arc<AtomicU64>,
    /// SQLite only: the last app list and the generation read before it was
    /// queried. On SQLite this process is the only writer, so a list tagged
    /// with the current generation is current. (PostgreSQL may have other
    /// controllers writing, so it always queries.)
    list_cache: Arc<Mutex<Option<CachedList>>>,
    /// Counts this store's committed writes of apps, nodes and replicas
    /// ([`Store::changes`]).
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Names written and not yet taken ([`Store::take_changed`]).
    pending: Arc<Mutex<Changed>>,
    /// This store's id in change notifications, so it skips its own.
    writer: Arc<str>,
    /// PostgreSQL: the task that listens for other controllers' writes.
    _listener: Option<Arc<tokio_util::task::AbortOnDropHandle<()>>>,
}

/// Read connections to a SQLite database: enough for the API's reads and
/// the informer to proceed side by side on two cores.
const SQLITE_READERS: u32 = 4;

/// The PostgreSQL channel that carries [`Changed`] names between
/// controllers.
const CHANGES_CHANNEL: &str = "skiff_changes";
/// Largest notification payload sent (PostgreSQL allows 8,000 bytes).
const MAX_NOTIFY_BYTES: usize = 7_000;

/// One change notification on [`CHANGES_CHANNEL`].
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Notice {
    /// Writer id.
    w: String,
    /// App names.
    #[serde(default)]
    a: Vec<String>,
    /// Node names.
    #[serde(default)]
    n: Vec<String>,
}

/// An app list and the write generation it was read at.
type CachedList = (u64, Arc<Vec<App>>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// The file a `sqlite:` URL (after the scheme) names, unless in memory.
fn sqlite_path(rest: &str) -> Option<std::path::PathBuf> {
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| path.into())
}

/// Makes the SQLite database (and its WAL and shared-memory files, which
/// SQLite creates with the database's mode) readable by its owner only: it
/// holds the cluster's state and every credential's hash. A new database
/// file is created so before SQLite opens it.
fn restrict_to_owner(db: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let denied = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| StoreError::Permissions { path, source }
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(denied(db)(e)),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = std::path::PathBuf::from(name);
        match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(denied(&path)(e)),
        }
    }
    Ok(())
}

impl SqlStore {
    /// Connects to `url` (`sqlite://PATH` or `postgres://...`), runs the
    /// migrations of that dialect, and returns the store. A failed
    /// migration is an error: the controller must not start on a schema it
    /// does not know.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (dialect, pool, reads) = if let Some(rest) = url.strip_prefix("sqlite:") {
            if let Some(path) = sqlite_path(rest) {
                restrict_to_owner(&path)?;
            }
            // Create the file if missing unless the URL says otherwise.
            let url = if rest.contains("mode=") {
                url.to_owned()
            } else if rest.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                             PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect(&url)
                .await?;
            let reads = AnyPoolOptions::new()
                .max_connections(SQLITE_READERS)
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        conn.execute("PRAGMA busy_timeout=5000; PRAGMA query_only=ON;")
                            .await?;
                        Ok(())
                    })
                })
                .connect(&url)
                .await?;
            (Dialect::Sqlite, pool, reads)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = AnyPoolOptions::new()
                .max_connections(options.max_connections)
                .connect(url)
                .await?;
            (Dialect::Postgres, pool.clone(), pool)
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let migrator = match dialect {
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrator.run(&pool).await.map_err(StoreError::Migrate)?;
        let mut store = Self {
            pool,
            reads,
            options,
            dialect,
            generation: Arc::default(),
            changes: Arc::new(tokio::sync::watch::channel(0).0),
            list_cache: Arc::default(),
            pending: Arc::default(),
            writer: format!("c{:016x}", rand::random::<u64>()).into(),
            _listener: None,
        };
        if dialect == Dialect::Postgres {
            let listener = sqlx::postgres::PgListener::connect(url).await?;
            let task = tokio::spawn(store.clone().listen(listener));
            store._listener = Some(Arc::new(tokio_util::task::AbortOnDropHandle::new(task)));
        }
        Ok(store)
    }

    /// Receives other controllers' change notifications until aborted. A
    /// lost connection may have lost notifications: everything is re-read.
    async fn listen(self, mut listener: sqlx::postgres::PgListener) {
        let mut subscribed = false;
        loop {
            if !subscribed {
                match listener.listen(CHANGES_CHANNEL).await {
                    Ok(()) => subscribed = true,
                    Err(error) => {
                        tracing::warn!(error = %crate::error_chain(&error), "listening for other controllers' writes; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            match listener.try_recv().await {
                Ok(Some(message)) => {
                    let Ok(notice) = serde_json::from_str::<Notice>(message.payload()) else {
                        continue;
                    };
                    if *notice.w == *self.writer {
                        continue;
                    }
                    self.record(Changed {
                        apps: notice.a.into_iter().collect(),
                        nodes: notice.n.into_iter().collect(),
                        everything: false,
                    });
                }
                // Reconnected: whatever was sent meanwhile is lost.
                Ok(None) => self.record(Changed {
                    everything: true,
                    ..Changed::default()
                }),
                Err(error) => {
                    tracing::warn!(error = %crate::error_chain(&error), "change notifications failed; re-reading everything");
                    self.record(Changed {
                        everything: true,
                        ..Changed::default()
                    });
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Commits `tx`, which wrote `changed`. On PostgreSQL the names are
    /// sent to the other controllers in the same transaction, so they
    /// arrive exactly when (and only if) the write is visible.
    async fn finish(&self, mut tx: Tx<'_>, changed: Changed) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            for payload in self.notices(&changed) {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANGES_CHANNEL)
                    .bind(payload)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        self.wrote(changed);
        Ok(())
    }

    /// `changed` as notification payloads of at most [`MAX_NOTIFY_BYTES`].
    fn notices(&self, changed: &Changed) -> Vec<String> {
        let mut out = Vec::new();
        let mut notice = Notice {
            w: self.writer.to_string(),
            ..Notice::default()
        };
        let mut size = 64 + notice.w.len();
        let names = changed
            .apps
            .iter()
            .map(|a| (true, a))
            .chain(changed.nodes.iter().map(|n| (false, n)));
        for (is_app, name) in names {
            if size + name.len() + 3 > MAX_NOTIFY_BYTES {
                out.push(serde_json::to_string(&notice).unwrap_or_default());
                notice.a.clear();
                notice.n.clear();
                size = 64 + notice.w.len();
            }
            size += name.len() + 3;
            if is_app {
                notice.a.push(name.clone());
            } else {
                notice.n.push(name.clone());
            }
        }
        if !notice.a.is_empty() || !notice.n.is_empty() {
            out.push(serde_json::to_string(&notice).unwrap_or_default());
        }
        out
    }

    /// Adds names to the pending set and wakes whoever waits for changes.
    fn record(&self, changed: Changed) {
        if changed.is_empty() {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .merge(changed);
        self.generation.fetch_add(1, Ordering::Release);
        self.changes.send_modify(|n| *n += 1);
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// Closes the pools (waits for connections to be returned).
    pub async fn close(&self) {
        self.reads.close().await;
        self.pool.close().await;
    }

    async fn event_in(&self, tx: &mut Tx<'_>, event: NewEvent) -> Result<()> {
        let now = now_ms();
        let row = sqlx::query("INSERT INTO events (time, app, node, kind, message) VALUES ($1, $2, $3, $4, $5) RETURNING id")
            .bind(now)
            .bind(event.app)
            .bind(event.node)
            .bind(event.kind.as_str())
            .bind(event.message)
            .fetch_one(&mut **tx)
            .await?;
        let id: i64 = row.try_get("id")?;
        // Trimmed in batches (every `batch`th event drops the oldest
        // `batch` beyond the cap at once), so that one event in `batch`,
        // not every one, pays for the trim; never more than the cap kept.
        let cap = to_i64(self.options.event_cap);
        let batch = (cap / 4).clamp(1, 64);
        if id % batch != 0 {
            return Ok(());
        }
        let floor = id - cap + batch;
        // On PostgreSQL concurrent writers would delete overlapping ranges
        // and deadlock: one transaction at a time trims (the others leave
        // it to the next writer, so the cap is overshot by a few rows at
        // most). SQLite has one writer.
        let trim = floor > 0
            && match self.dialect {
                Dialect::Sqlite => true,
                Dialect::Postgres => sqlx::query("SELECT pg_try_advisory_xact_lock(7131) AS got")
                    .fetch_one(&mut **tx)
                    .await?
                    .try_get::<bool, _>("got")?,
            };
        if trim {
            // An indexed range delete of a batch keeps the cap.
            sqlx::query("DELETE FROM events WHERE id <= $1")
                .bind(floor)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    fn app_from_row(&self, row: &AnyRow, ready: u32) -> Result<App> {
        let mut spec: AppSpec = parse("app spec", &row.try_get::<String, _>("spec")?)?;
        let replicas = u32::try_from(row.try_get::<i64, _>("replicas")?).unwrap_or(0);
        spec.replicas = replicas;
        let conditions: Vec<Condition> =
            parse("app conditions", &row.try_get::<String, _>("conditions")?)?;
        Ok(App {
            name: row.try_get("name")?,
            spec,
            revision: to_u64(row.try_get("revision")?),
            version: to_u64(row.try_get("version")?),
            status: AppStatus {
                desired_replicas: replicas,
                ready_replicas: ready,
                conditions,
                good_revision: row.try_get::<Option<i64>, _>("good_revision")?.map(to_u64),
            },
            created_at: row.try_get("created_at")?,
            capability_changes: None,
            observed: None,
            updated_at: row.try_get("updated_at")?,
        })
    }

    async fn load_app(&self, tx: &mut Tx<'_>, name: &str) -> Result<Option<App>> {
        let Some(row) = sqlx::query("SELECT * FROM apps WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
        else {
            return Ok(None);
        };
        let ready: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM replicas WHERE app = $1 AND revision = $2 AND state = 'Ready'",
        )
        .bind(name)
        .bind(row.try_get::<i64, _>("revision")?)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
        self.app_from_row(&row, u32::try_from(ready).unwrap_or(0))
            .map(Some)
    }

    async fn insert_revision(
        &self,
        tx: &mut Tx<'_>,
        name: &str,
        number: u64,
        spec: &AppSpec,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO revisions (app, number, spec, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(to_i64(number))
        .bind(json(spec))
        .bind(now)
        .execute(&mut **tx)
        .await?;
        // Until there are more than KEEP_REVISIONS there is none to drop.
        if number > KEEP_REVISIONS {
            sqlx::query("DELETE FROM revisions WHERE app = $1 AND number < $2")
                .bind(name)
                .bind(to_i64(number - KEEP_REVISIONS))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Writes a new spec/revision/replica count for an existing app row.
    async fn update_app(
        &self,
        tx: &mut Tx<'_>,
        current: &App,
        spec: &AppSpec,
        revision: u64,
        now: i64,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE apps SET spec = $1, replicas = $2, revision = $3, version = version + 1, updated_at = $4 \
             WHERE name = $5 AND version = $6",
        )
        .bind(json(&revision_identity(spec)))
        .bind(i64::from(spec.replicas))
        .bind(to_i64(revision))
        .bind(now)
        .bind(&current.name)
        .bind(to_i64(current.version))
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "app {:?} changed concurrently",
                current.name
            )));
        }
        Ok(())
    }

    fn node_from_row(&self, row: &AnyRow) -> Result<Node> {
        let labels: BTreeMap<String, String> =
            parse("node labels", &row.try_get::<String, _>("labels")?)?;
        let last: Option<i64> = row.try_get("renewed_at")?;
        let grace = i64::try_from(self.options.node_grace.as_millis()).unwrap_or(i64::MAX);
        let ready = last.is_some_and(|t| now_ms() - t <= grace);
        Ok(Node {
            name: row.try_get("name")?,
            labels,
            capacity: NodeCapacity {
                memory_bytes: to_u64(row.try_get("memory_bytes")?),
            },
            ingress: row.try_get("ingress")?,
            state: if ready {
                NodeState::Ready
            } else {
                NodeState::NotReady
            },
            cordoned: row.try_get::<i64, _>("cordoned")? != 0,
            draining: row.try_get::<i64, _>("draining")? != 0,
            version: to_u64(row.try_get("version")?),
            last_heartbeat: last,
            registered_at: row.try_get("registered_at")?,
            allocation: None,
        })
    }

    async fn load_node(&self, tx: &mut Tx<'_>, name: &str) -> Result<Option<Node>> {
        let row = sqlx::query(
            "SELECT n.*, l.renewed_at AS renewed_at FROM nodes n LEFT JOIN node_leases l ON l.node = n.name WHERE n.name = $1",
        )
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
        row.map(|r| self.node_from_row(&r)).transpose()
    }

    /// Records a committed write: cached lists are stale from now on, and
    /// whoever waits for a change (the long-polls, the reconciler) is woken.
    /// Called after the commit, so a reader that saw the old generation can
    /// only ever tag a result with a generation that is already past.
    fn wrote(&self, changed: Changed) {
        self.generation.fetch_add(1, Ordering::Release);
        self.record(changed);
    }

    /// All apps on SQLite, from the list cache when nothing was written
    /// since it was filled.
    async fn apps_cached(&self) -> Result<Vec<App>> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Ok(cache) = self.list_cache.lock()
            && let Some((g, apps)) = cache.as_ref()
            && *g == generation
        {
            return Ok(apps.as_ref().clone());
        }
        let apps = self.apps_sqlite().await?;
        if let Ok(mut cache) = self.list_cache.lock() {
            *cache = Some((generation, Arc::new(apps.clone())));
        }
        Ok(apps)
    }

    /// All apps on SQLite, aggregated by SQLite into one JSON document:
    /// sqlx-sqlite hands each row over from its worker thread separately,
    /// which for 1,000 apps costs more than the query itself.
    async fn apps_sqlite(&self) -> Result<Vec<App>> {
        #[derive(serde::Deserialize)]
        struct Row {
            name: String,
            spec: AppSpec,
            replicas: u32,
            revision: u64,
            conditions: Vec<Condition>,
            version: u64,
            created_at: i64,
            updated_at: i64,
            ready: u32,
            good_revision: Option<u64>,
        }
        let row = sqlx::query(
            "SELECT json_group_array(json_object('name', a.name, 'spec', json(a.spec), \
             'replicas', a.replicas, 'revision', a.revision, 'conditions', json(a.conditions), \
             'version', a.version, 'created_at', a.created_at, 'updated_at', a.updated_at, \
             'good_revision', a.good_revision, \
             'ready', (SELECT COUNT(*) FROM replicas r WHERE r.app = a.name AND r.revision = a.revision \
             AND r.state = 'Ready')) ORDER BY a.name) AS apps FROM apps a",
        )
        .fetch_one(&self.pool)
        .await?;
        let rows: Vec<Row> = parse("app list", &row.try_get::<String, _>("apps")?)?;
        Ok(rows
            .into_iter()
            .map(|r| App {
                name: r.name,
                spec: AppSpec {
                    replicas: r.replicas,
                    ..r.spec
                },
                revision: r.revision,
                version: r.version,
                status: AppStatus {
                    desired_replicas: r.replicas,
                    ready_replicas: r.ready,
                    conditions: r.conditions,
                    good_revision: r.good_revision,
                },
                created_at: r.created_at,
                capability_changes: None,
                observed: None,
                updated_at: r.updated_at,
            })
            .collect())
    }

    /// Sets an app's replica count, with an `AppScaled` event saying `why`
    /// (or from what to what).
    async fn scale_with(
        &self,
        name: &str,
        replicas: u32,
        if_version: Option<u64>,
        why: Option<&str>,
    ) -> Result<App> {
        let mut tx = self.pool.begin().await?;
        let current = self
            .load_app(&mut tx, name)
            .await?
            .ok_or_else(|| not_found("app", name))?;
        check_version("app", name, Some(current.version), if_version)?;
        if current.spec.replicas != replicas {
            let spec = AppSpec {
                replicas,
                ..current.spec.clone()
            };
            self.update_app(&mut tx, &current, &spec, current.revision, now_ms())
                .await?;
            let message = why.map_or_else(
                || {
                    format!(
                        "scaled from {} to {replicas} replicas",
                        current.spec.replicas
                    )
                },
                str::to_owned,
            );
            self.event_in(&mut tx, app_event(name, EventKind::AppScaled, message))
                .await?;
        }
        self.commit_app(tx, name).await
    }

    /// Reads the app back as the transaction left it, then commits.
    async fn commit_app(&self, mut tx: Tx<'_>, name: &str) -> Result<App> {
        let app = self
            .load_app(&mut tx, name)
            .await?
            .ok_or_else(|| not_found("app", name))?;
        self.finish(tx, Changed::app(name)).await?;
        Ok(app)
    }

    async fn bump_assignments(&self, tx: &mut Tx<'_>, node: &str) -> Result<()> {
        sqlx::query("UPDATE nodes SET assign_version = assign_version + 1 WHERE name = $1")
            .bind(node)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

mod apply;
mod artifacts;
mod jobs;
mod reads;
mod registries;
mod store_impl;

/// An event about app `name`.
fn app_event(name: &str, kind: EventKind, message: impl Into<String>) -> NewEvent {
    NewEvent {
        app: Some(name.into()),
        node: None,
        kind,
        message: message.into(),
    }
}
