//! The state store: a narrow [`Store`] trait in domain words, implemented
//! once with sqlx's `Any` driver for both SQLite and PostgreSQL
//! ([`SqlStore`]), chosen by URL scheme.
//!
//! Guarantees every implementation gives:
//! - each method is one transaction: nothing is ever half-written, and the
//!   event that describes a change is written with it;
//! - mutable rows carry a `version`; a write with an expected version that
//!   is no longer current, or one that breaks a unique key, fails with
//!   [`StoreError::Conflict`];
//! - growth is bounded: heartbeats renew one row per node in place, events
//!   are capped, each app keeps its last [`KEEP_REVISIONS`] revisions plus
//!   the current one.

mod jobs;
mod registries;
mod rows;
mod sql;

pub use jobs::{Firing, JobChange, JobProgress, JobStore, NewRun};
pub use registries::CredentialStore;

use async_trait::async_trait;
use skiff_sdk::Digest;
use skiff_sdk::api::{
    App, AppSpec, Assignments, Condition, Event, EventKind, Heartbeat, Node, RegisterNode, Replica,
    ReplicaStatus, Revision,
};

pub use sql::{DEFAULT_ARTIFACT_STORE_BYTES, SqlStore, StoreOptions};

/// Revisions kept per app besides the current one.
pub const KEEP_REVISIONS: u64 = 10;
/// Events kept in all; older ones are dropped.
pub const DEFAULT_EVENT_CAP: u64 = 10_000;
/// Artifacts are stored in chunks of this size so they can be streamed out
/// without holding a whole artifact in memory.
pub const ARTIFACT_CHUNK: usize = 1 << 20;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// e.g. "app", "node", "revision".
        kind: &'static str,
        /// Its name or number.
        name: String,
    },
    /// Applying the app would widen its capabilities, and the apply did
    /// not approve that (decided by the caller's [`ApplyCheck`]).
    #[error("capabilities widen without approval")]
    CapabilitiesNotApproved(Box<skiff_sdk::capability::CapabilityDiff>),
    /// A version or uniqueness conflict: someone else changed it first.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A live node already holds the name, and the caller did not prove to
    /// be it.
    #[error(
        "node {0:?} is registered and alive; only that node (with its current credential) can register the name again"
    )]
    NameTaken(String),
    /// The database URL names no supported backend.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    /// Running the migrations failed; the controller must not start.
    #[error("migrating the database schema")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A stored document could not be decoded (a bug or manual tampering).
    #[error("decoding stored {what}")]
    Corrupt {
        /// Which document.
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The database failed.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// Storing the artifact would take the artifact store over its limit.
    #[error("the artifact store is full: {used} of {limit} bytes used, {size} more asked")]
    Full {
        /// Bytes stored now.
        used: u64,
        /// Bytes of the refused artifact.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The database file's permissions could not be set.
    #[error("restricting {} to its owner", path.display())]
    Permissions {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e.as_database_error() {
            Some(db) if db.is_unique_violation() => StoreError::Conflict(db.message().to_owned()),
            _ => StoreError::Database(e),
        }
    }
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which shared secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// Full API access.
    Admin,
    /// May only register nodes.
    Join,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Admin => "admin",
            TokenKind::Join => "join",
        }
    }
}

/// What applying a spec did.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The app after the apply.
    pub app: App,
    /// The app did not exist before.
    pub created: bool,
    /// A new revision was created (the spec changed beyond `replicas`).
    pub new_revision: bool,
}

/// What an apply decides against the app as stored: given it (or `None`)
/// and the spec about to be written, may adjust the spec and returns the
/// version the write must land on (`None`: whatever is stored), or an
/// error that refuses the apply (nothing is written).
pub type ApplyCheck<'a> =
    dyn Fn(Option<&App>, &mut AppSpec) -> Result<Option<u64>> + Send + Sync + 'a;

/// A stored artifact's size and chunk count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArtifactInfo {
    /// Bytes.
    pub size: u64,
    /// Number of chunks of [`ARTIFACT_CHUNK`] bytes (the last may be shorter).
    pub chunks: u64,
}

/// A replica to create, in state `Pending`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewReplica {
    /// Id, unique in the cluster.
    pub id: String,
    /// App.
    pub app: String,
    /// Revision number.
    pub revision: u64,
    /// Node.
    pub node: String,
}

/// Replicas to remove and add, and the events that describe it: one
/// transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaChange {
    /// Ids of replicas to remove (applied first).
    pub remove: Vec<String>,
    /// Ids of replicas to start retiring: they leave the endpoints now and
    /// keep running until removed.
    pub retire: Vec<String>,
    /// Replicas to add.
    pub add: Vec<NewReplica>,
    /// Events to record with it.
    pub events: Vec<NewEvent>,
}

/// A node to gather an app's logs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSource {
    /// Node name.
    pub node: String,
    /// Its ingress address.
    pub ingress: String,
    /// Whether it offers its API (it presented a key when it registered).
    pub offers_api: bool,
    /// The sha256 of that key, when the store has it (rows from before
    /// keys were hashed have none until the node registers again).
    pub logs_key_hash: Option<String>,
}

/// What was written: the names of the apps and nodes whose rows (or
/// replicas) changed. The informer re-reads exactly these.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Apps whose row, revisions or replicas changed (deleted ones too).
    pub apps: std::collections::BTreeSet<String>,
    /// Nodes whose row changed (deleted ones too).
    pub nodes: std::collections::BTreeSet<String>,
    /// Names may have been missed (a lost notification connection):
    /// re-read everything.
    pub everything: bool,
}

impl Changed {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty() && self.nodes.is_empty() && !self.everything
    }

    /// Adds `other` to this.
    pub fn merge(&mut self, other: Changed) {
        self.apps.extend(other.apps);
        self.nodes.extend(other.nodes);
        self.everything |= other.everything;
    }

    /// One app.
    pub fn app(name: &str) -> Self {
        Self {
            apps: [name.to_owned()].into(),
            ..Self::default()
        }
    }

    /// One node.
    pub fn node(name: &str) -> Self {
        Self {
            nodes: [name.to_owned()].into(),
            ..Self::default()
        }
    }
}

/// What the reconciler records about one app's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusUpdate {
    /// App.
    pub app: String,
    /// The revision that became fully available, if one did.
    pub good_revision: Option<u64>,
    /// The app's conditions, if they changed.
    pub conditions: Option<Vec<Condition>>,
}

/// One page of a list, in name (or id) order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// More items follow the last one.
    pub more: bool,
}

/// An event to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// App concerned.
    pub app: Option<String>,
    /// Node concerned.
    pub node: Option<String>,
    /// Kind.
    pub kind: EventKind,
    /// Message.
    pub message: String,
}

/// The controller's state, in domain words. One method, one transaction.
#[async_trait]
pub trait Store: JobStore + CredentialStore + Send + Sync + 'static {
    /// Stores the hashes of the admin and join tokens unless tokens exist
    /// already; returns whether these were stored (the first start).
    async fn install_tokens(&self, admin_hash: &str, join_hash: &str) -> Result<bool>;
    /// The stored hash of a token.
    async fn token_hash(&self, kind: TokenKind) -> Result<Option<String>>;

    /// Stores an artifact (idempotent); returns whether it was new.
    async fn put_artifact(&self, digest: &Digest, bytes: &[u8]) -> Result<bool>;
    /// Size and chunking of an artifact.
    async fn artifact(&self, digest: &Digest) -> Result<Option<ArtifactInfo>>;
    /// One chunk of an artifact.
    async fn artifact_chunk(&self, digest: &Digest, seq: u64) -> Result<Option<Vec<u8>>>;
    /// One collection pass: marks artifacts no kept revision names, and
    /// removes those unreferenced for at least `retention_ms`; returns the
    /// removed digests.
    async fn collect_artifacts(&self, retention_ms: i64) -> Result<Vec<Digest>>;
    /// Removes an artifact no kept revision names; `false` if there is no
    /// such artifact, [`StoreError::Conflict`] while one does.
    async fn delete_artifact(&self, digest: &Digest) -> Result<bool>;

    /// Creates or updates an app. A spec that differs from the current one
    /// other than in `replicas` creates a new revision; the same spec
    /// changes nothing. With `if_version`, fails with a conflict unless the
    /// app is at that version (0 means "must not exist").
    async fn apply_app(
        &self,
        name: &str,
        spec: &AppSpec,
        if_version: Option<u64>,
    ) -> Result<Applied> {
        self.apply_app_checked(name, spec.clone(), &|_, _| Ok(if_version))
            .await
    }
    /// [`Store::apply_app`], with `check` deciding against the app as
    /// stored, inside the apply's transaction (one read instead of a read
    /// before and another within): it may adjust the spec, returns the
    /// version the write must land on, or refuses with an error.
    async fn apply_app_checked(
        &self,
        name: &str,
        spec: AppSpec,
        check: &ApplyCheck<'_>,
    ) -> Result<Applied>;
    /// One app.
    async fn app(&self, name: &str) -> Result<Option<App>>;
    /// All apps, by name.
    async fn apps(&self) -> Result<Vec<App>>;
    /// Deletes an app, its revisions and its replicas.
    async fn delete_app(&self, name: &str, if_version: Option<u64>) -> Result<()>;
    /// An app's kept revisions, oldest first.
    async fn revisions(&self, name: &str) -> Result<Vec<Revision>>;
    /// Makes the spec of revision `to` (default: the one before the current)
    /// current again, as a new revision; keeps the replica count. `cause`
    /// (why the controller rolls back by itself) is recorded first, in the
    /// same transaction.
    async fn rollback_app(
        &self,
        name: &str,
        to: Option<u64>,
        if_version: Option<u64>,
        cause: Option<NewEvent>,
    ) -> Result<App>;
    /// Sets the desired replica count.
    async fn scale_app(&self, name: &str, replicas: u32, if_version: Option<u64>) -> Result<App>;
    /// Sets the replica count as the autoscaler decided, recording `why`
    /// as the `AppScaled` event.
    async fn autoscale_app(
        &self,
        name: &str,
        replicas: u32,
        if_version: Option<u64>,
        why: &str,
    ) -> Result<App>;
    /// Records the last revision that was fully available (reconciler).
    async fn set_good_revision(&self, name: &str, revision: u64) -> Result<()>;
    /// Records the app's conditions (written by the reconciler).
    async fn set_app_conditions(&self, name: &str, conditions: &[Condition]) -> Result<()>;
    /// Records good revisions and conditions of many apps in one
    /// transaction; apps that no longer exist are skipped.
    async fn record_statuses(&self, updates: &[StatusUpdate]) -> Result<()>;
    /// The kept revisions of the apps among `apps`, by app then number.
    async fn revisions_of(&self, apps: &[String]) -> Result<Vec<Revision>>;

    /// A counter of this store's committed writes of apps, nodes and
    /// replicas (not of tokens, artifacts, events or leases): every write
    /// path announces itself here, so nothing that waits for a change
    /// depends on a caller remembering to say so. Writes by other
    /// controllers sharing the database are not seen; watchers re-check
    /// periodically for those.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Whether other controllers may write the same database (PostgreSQL):
    /// a watch woken only by this controller's own writes must then also
    /// look again now and then for theirs.
    fn shared(&self) -> bool;
    /// The names written since the last call ([`Changed`]), by this store
    /// and — on PostgreSQL, through `LISTEN`/`NOTIFY` — by every other
    /// controller on the database. One consumer (the informer) drains it;
    /// [`Store::changes`] says when there is something to drain.
    fn take_changed(&self) -> Changed;

    /// The apps among `names` that exist, by name.
    async fn apps_named(&self, names: &[String]) -> Result<Vec<App>>;
    /// Up to `limit` apps with names after `after`, by name.
    async fn apps_page(&self, after: Option<&str>, limit: u32) -> Result<Page<App>>;
    /// The nodes among `names` that exist, by name.
    async fn nodes_named(&self, names: &[String]) -> Result<Vec<Node>>;
    /// The assignments versions of the nodes among `names` (all nodes with
    /// `None`).
    async fn assign_versions(&self, names: Option<&[String]>) -> Result<Vec<(String, u64)>>;
    /// Up to `limit` nodes with names after `after`, by name.
    async fn nodes_page(&self, after: Option<&str>, limit: u32) -> Result<Page<Node>>;
    /// The replicas of the apps among `apps`, by id.
    async fn replicas_of(&self, apps: &[String]) -> Result<Vec<Replica>>;
    /// Up to `limit` replicas with ids after `after`, by id.
    async fn replicas_page(&self, after: Option<&str>, limit: u32) -> Result<Page<Replica>>;
    /// The specs of the given `(app, revision)`s that are still kept.
    async fn revision_specs(&self, keys: &[(String, u64)])
    -> Result<Vec<((String, u64), AppSpec)>>;
    /// Persists lease renewals kept in memory (`(node, renewed_at)`), as
    /// renewed by controller `by`; unknown nodes are skipped.
    async fn renew_leases(&self, renewals: &[(String, i64)], by: &str) -> Result<()>;
    /// Lease renewals after `since` persisted by controllers other than
    /// `me`: how a leader learns of nodes that heartbeat elsewhere.
    async fn leases_renewed_elsewhere(&self, since: i64, me: &str) -> Result<Vec<(String, i64)>>;

    /// Registers a node, or re-registers it under the same name with a new
    /// credential hash, keeping its replicas. Also says whether the node is
    /// new (decided in the same transaction).
    ///
    /// A name already registered is taken over only by the same node:
    /// `claim` (the hash of the credential it presented) matches the stored
    /// one, or its lease has not been renewed for longer than
    /// `silent_for_ms` (the old node is gone). Otherwise
    /// [`StoreError::NameTaken`], and nothing changes.
    async fn register_node(
        &self,
        node: &RegisterNode,
        credential_hash: &str,
        claim: Option<&str>,
        silent_for_ms: i64,
    ) -> Result<(Node, bool)>;
    /// One node.
    async fn node(&self, name: &str) -> Result<Option<Node>>;
    /// All nodes, by name.
    async fn nodes(&self) -> Result<Vec<Node>>;
    /// The node a credential hash belongs to.
    async fn node_for_credential(&self, credential_hash: &str) -> Result<Option<String>>;
    /// Sets a node's cordoned/draining flags (absent: unchanged).
    async fn set_node_flags(
        &self,
        name: &str,
        cordoned: Option<bool>,
        draining: Option<bool>,
        if_version: Option<u64>,
    ) -> Result<Node>;
    /// Deletes a node and its replicas.
    async fn delete_node(&self, name: &str, if_version: Option<u64>) -> Result<()>;
    /// Renews the node's lease row in place and records the states of its
    /// replicas that changed; returns whether any did.
    async fn heartbeat(&self, name: &str, heartbeat: &Heartbeat) -> Result<bool>;
    /// Records the reported states of `node`'s replicas that differ from
    /// the stored ones, without touching its lease (leases are renewed in
    /// memory and persisted in batches: [`Store::renew_leases`]); returns
    /// whether any did.
    async fn report_replicas(&self, node: &str, states: &[ReplicaStatus]) -> Result<bool>;

    /// Removes and adds replicas and records events, all or nothing; bumps
    /// the assignments version of every node concerned once. Removing a
    /// replica that does not exist, or adding one to an unknown node or
    /// with a taken id, fails the whole change.
    async fn change_replicas(&self, change: &ReplicaChange) -> Result<()>;
    /// Assigns a new replica to a node.
    async fn assign_replica(&self, id: &str, app: &str, revision: u64, node: &str) -> Result<()> {
        self.change_replicas(&ReplicaChange {
            add: vec![NewReplica {
                id: id.into(),
                app: app.into(),
                revision,
                node: node.into(),
            }],
            ..ReplicaChange::default()
        })
        .await
    }
    /// Removes a replica.
    async fn remove_replica(&self, id: &str) -> Result<()> {
        self.change_replicas(&ReplicaChange {
            remove: vec![id.into()],
            ..ReplicaChange::default()
        })
        .await
    }
    /// The replicas a node should run, with their specs, and their version.
    async fn assignments(&self, node: &str) -> Result<Assignments>;
    /// The nodes that run replicas of `app`, and how to read their logs.
    async fn log_sources(&self, app: &str) -> Result<Vec<LogSource>>;
    /// How to reach one node's own API; `None` if it is not registered.
    async fn node_source(&self, node: &str) -> Result<Option<LogSource>>;
    /// Replicas, of one app or of all.
    async fn replicas(&self, app: Option<&str>) -> Result<Vec<Replica>>;

    /// Records an event (and drops the oldest beyond the cap).
    async fn record_event(&self, event: NewEvent) -> Result<()>;
    /// Events with id greater than `since`, oldest first, at most `limit`.
    async fn events(&self, app: Option<&str>, since: u64, limit: u32) -> Result<Vec<Event>>;

    /// Takes or renews the named lease for `holder` for `ttl_ms`; true if
    /// `holder` holds it now. Another holder's lease is taken only once it
    /// has expired.
    async fn try_acquire_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool>;
    /// Gives the lease up if `holder` has it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()>;
    /// Current holder of a lease that has not expired.
    async fn lease_holder(&self, name: &str) -> Result<Option<String>>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
