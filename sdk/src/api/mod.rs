//! Wire types of the controller's HTTP API (`/v1`). Plain data with `serde`
//! (unknown fields are rejected) and OpenAPI schemas. Timestamps are Unix
//! milliseconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::capability::CapabilityDiff;
use crate::{Digest, Quota};

mod agent;
mod jobs;
mod schedule;
pub use agent::{
    Assignment, Assignments, Heartbeat, HeartbeatReply, ReplicaDigest, ReplicaState, ReplicaStatus,
    replica_digest,
};
pub use jobs::{
    DEFAULT_BACKOFF_MS, DEFAULT_KEEP_RUNS, DEFAULT_RETRIES, Job, JobSpec, JobState, JobStatus,
    MAX_BACKOFF_MS, MAX_COMPLETIONS, MAX_PARALLELISM, NodeRuns, NodeSchedule, Run, RunAssignment,
    RunReport, RunReports, RunState, reason,
};
pub use schedule::{
    ConcurrencyPolicy, DEFAULT_KEEP_FAILED, DEFAULT_KEEP_SUCCEEDED, Schedule, ScheduleError, utc,
};

/// Default number of replicas of an app.
pub const DEFAULT_REPLICAS: u32 = 1;

/// The error body of every failed API call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`, `field`) and people (`message`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_name`, `conflict`.
    pub code: String,
    /// A sentence for humans.
    pub message: String,
    /// The request field at fault, as a dotted path, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// With `capabilities_not_approved`: what the new spec would grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Box<CapabilityDiff>>,
}

/// A stored artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// `sha256:<hex>` of the bytes.
    #[schema(value_type = String, example = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")]
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// A count or a percentage of the desired replicas (`1`, `"25%"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum IntOrPercent {
    /// An absolute number of replicas.
    Count(u32),
    /// A percentage of the desired replicas, written `"NN%"`.
    #[schema(value_type = String, example = "25%")]
    Percent(#[serde(with = "percent")] u32),
}

mod percent {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{value}%"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let s = String::deserialize(d)?;
        s.strip_suffix('%')
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n <= 100)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?} is not a percentage like \"25%\""))
            })
    }
}

impl IntOrPercent {
    /// The number of replicas this stands for out of `total`, rounding a
    /// percentage up (`round_up`) or down.
    pub fn resolve(self, total: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Count(n) => n,
            IntOrPercent::Percent(p) => {
                let scaled = u64::from(total) * u64::from(p);
                let n = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }
}

/// How a new revision replaces the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateStrategy {
    /// Replicas that may exist above the desired count during an update.
    pub max_surge: IntOrPercent,
    /// Replicas that may be missing below the desired count during an update.
    pub max_unavailable: IntOrPercent,
    /// A rollout not finished within this many milliseconds has failed.
    pub progress_deadline_ms: u64,
    /// Roll a failed rollout back to the last revision that was fully
    /// available, automatically.
    pub auto_rollback: bool,
}

/// Default progress deadline: a minute, far above a healthy rollout's
/// seconds yet short enough that a broken release does not linger.
pub const DEFAULT_PROGRESS_DEADLINE_MS: u64 = 60_000;

impl Default for UpdateStrategy {
    fn default() -> Self {
        Self {
            max_surge: IntOrPercent::Count(1),
            max_unavailable: IntOrPercent::Count(0),
            progress_deadline_ms: DEFAULT_PROGRESS_DEADLINE_MS,
            auto_rollback: true,
        }
    }
}

/// Where replicas may run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Placement {
    /// Only nodes with all these labels are eligible.
    pub node_selector: BTreeMap<String, String>,
    /// Spread replicas across nodes and `zone` labels (on by default).
    pub spread: Option<bool>,
    /// One replica on every node that matches `node_selector` (and is
    /// not draining), following nodes as they join and leave, instead of
    /// a replica count: Kubernetes' DaemonSet.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub every_node: bool,
}

/// An HTTP health check run by the node against each replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested with `GET`; any 2xx is healthy.
    #[schema(pattern = "^/")]
    pub path: String,
    /// Milliseconds between checks.
    #[serde(default = "default_health_interval_ms")]
    #[schema(minimum = 1)]
    pub interval_ms: u64,
    /// Consecutive failures before the replica is unhealthy.
    #[serde(default = "default_failure_threshold")]
    #[schema(minimum = 1)]
    pub failure_threshold: u32,
}

pub(crate) fn default_health_interval_ms() -> u64 {
    1000
}

pub(crate) fn default_failure_threshold() -> u32 {
    3
}

fn default_replicas() -> u32 {
    DEFAULT_REPLICAS
}

/// The desired state of an app, as applied with `PUT /v1/apps/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// The component to run: uploaded with `POST /v1/artifacts`, named by
    /// its digest. An apply may instead name an image in an OCI registry,
    /// `oci://REGISTRY/REPO:TAG` or `…@sha256:…`: the controller resolves
    /// the tag, keeps a copy of the component and the files the image holds
    /// (used as `files` when the spec names none), and stores the
    /// component's digest here and the pinned reference in `source`.
    #[schema(value_type = String, pattern = r"^(sha256:[0-9a-f]{64}|oci://.+)$")]
    pub artifact: Digest,
    /// Desired number of replicas.
    #[serde(default = "default_replicas")]
    #[schema(maximum = 1000)]
    pub replicas: u32,
    /// Resource limits per request.
    #[serde(default)]
    pub quota: Quota,
    /// Extra host names (besides `<name>.<domain>`) the app answers to.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Environment variables the guest sees (and the only ones: never the
    /// node's).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Destinations the guest may reach, e.g. `https://api.example.com`,
    /// `https://*.example.com:443`, `tcp://10.0.0.5:5432`. Empty: none.
    /// See [`crate::capability`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    /// Static files the guest may read (read-only, under `/`): guest path
    /// to the digest of a file uploaded with `POST /v1/artifacts?kind=file`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = BTreeMap<String, String>)]
    pub files: BTreeMap<String, Digest>,
    /// Where replicas may run.
    #[serde(default)]
    pub placement: Placement,
    /// How updates roll out.
    #[serde(default)]
    pub strategy: UpdateStrategy,
    /// Optional health check.
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// Replicas follow demand between `scale.min` and `scale.max` (then
    /// `replicas` is the count the autoscaler last set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<crate::scale::ScaleSpec>,
    /// What the component is: an HTTP handler (the default) or a worker.
    #[serde(default, skip_serializing_if = "AppKind::is_http")]
    pub kind: AppKind,
    /// A worker's arguments after the program name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Where the component came from, when it was deployed from an OCI
    /// registry: `oci://REGISTRY/REPO[:TAG]@sha256:…`, always pinned to the
    /// manifest digest the tag named when it was applied (shown by
    /// `skiff rollout history`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// What an app's component is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    /// Serves HTTP: exports `wasi:http/incoming-handler`; a fresh instance
    /// per request.
    #[default]
    Http,
    /// A worker: a command (exports `wasi:cli/run`) that each replica runs
    /// continuously, restarted when it exits, after a back-off that grows
    /// while it keeps exiting within [`WORKER_STABLE_MS`] of its start
    /// (`CrashLoopBackOff`). Its quota applies to each run: `fuel` and
    /// `timeout` bound one instance's whole life.
    Worker,
}

/// A worker that ran this long before exiting restarts at once, and its
/// back-off starts over.
pub const WORKER_STABLE_MS: u64 = 10_000;

impl AppKind {
    /// The default kind.
    pub fn is_http(&self) -> bool {
        *self == AppKind::Http
    }
}

/// One condition of an app, Kubernetes style.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// e.g. `Available`, `Progressing`, `Scheduled`.
    pub kind: String,
    /// Whether the condition holds.
    pub status: bool,
    /// One-word reason, e.g. `Unschedulable`.
    pub reason: String,
    /// Explanation for humans.
    pub message: String,
}

/// Observed state of an app.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppStatus {
    /// Desired replicas.
    pub desired_replicas: u32,
    /// Replicas reported ready by their nodes.
    pub ready_replicas: u32,
    /// Current conditions.
    pub conditions: Vec<Condition>,
    /// The last revision that was fully available (where an automatic
    /// rollback returns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub good_revision: Option<u64>,
}

/// An app as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The app's name (a DNS label).
    pub name: String,
    /// The desired state.
    pub spec: AppSpec,
    /// The revision the spec belongs to.
    pub revision: u64,
    /// Optimistic-concurrency version; send it as `If-Match` to update.
    pub version: u64,
    /// Observed state.
    pub status: AppStatus,
    /// Creation time (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
    /// In the answer to an apply only: how the capabilities changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_changes: Option<CapabilityDiff>,
    /// In `GET /v1/apps/{name}`: what the app really uses, as its nodes
    /// last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<crate::scale::Observed>,
}

/// An immutable, numbered snapshot of an app's spec (replica count aside).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revision {
    /// The app.
    pub app: String,
    /// 1, 2, 3, ...
    pub number: u64,
    /// The spec of this revision.
    pub spec: AppSpec,
    /// Creation time (Unix ms).
    pub created_at: i64,
}

/// Body of `POST /v1/apps/{name}/scale`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// New desired replica count.
    #[schema(maximum = 1000)]
    pub replicas: u32,
}

/// Body of `POST /v1/apps/{name}/rollback`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Revision to return to; the previous one when absent.
    #[serde(default)]
    pub revision: Option<u64>,
}

/// Resources a node offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeCapacity {
    /// Memory for replicas, in bytes.
    #[schema(minimum = 1)]
    pub memory_bytes: u64,
}

/// Body of `POST /v1/nodes`: a node joining (or rejoining) the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterNode {
    /// The node's name (a DNS label); a restart reuses it.
    #[schema(pattern = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")]
    pub name: String,
    /// Labels used by node selectors and spreading (e.g. `zone`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What it offers.
    pub capacity: NodeCapacity,
    /// Address of its ingress, `host:port`.
    pub ingress: String,
    /// A secret the node generated: the controller presents it to read the
    /// node's guest logs (`Host: _skiff`, `GET /v1/logs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_key: Option<String>,
    /// The credential this node was last issued, proving that a
    /// re-registration comes from the node that holds the name. Without it
    /// (a new node, or one that lost its disk) a name is taken only once
    /// its previous holder has been silent beyond the node grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// One line of guest output (`GET /v1/apps/{name}/logs`, newline-delimited
/// JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogEntry {
    /// The node whose replica wrote it.
    pub node: String,
    /// Sequence number within the app on that node.
    pub seq: u64,
    /// When (Unix ms).
    pub time: i64,
    /// `stdout`, `stderr`, or `skiff` for notes from Skiff itself (e.g. an
    /// unreachable node).
    pub stream: String,
    /// The text, without the newline.
    pub line: String,
}

/// Answer to a registration: the node and its credential (shown once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeRegistration {
    /// The node as stored.
    pub node: Node,
    /// Bearer token for this node's own routes only.
    pub credential: String,
}

/// Whether a node is heartbeating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum NodeState {
    /// Heartbeating within the grace period.
    Ready,
    /// No heartbeat within the grace period.
    NotReady,
}

/// A node as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Capacity.
    pub capacity: NodeCapacity,
    /// Ingress address.
    pub ingress: String,
    /// Ready or not.
    pub state: NodeState,
    /// No new replicas are placed here.
    pub cordoned: bool,
    /// Replicas are being moved off.
    pub draining: bool,
    /// Optimistic-concurrency version.
    pub version: u64,
    /// Last heartbeat (Unix ms), if any.
    pub last_heartbeat: Option<i64>,
    /// First registration (Unix ms).
    pub registered_at: i64,
    /// What the scheduler placed here (filled in by the API from the
    /// controller's picture; absent in a node's own records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<NodeAllocation>,
}

/// What the scheduler placed on a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeAllocation {
    /// Replicas assigned to the node.
    pub replicas: u32,
    /// Memory those replicas reserve, bytes (of the node's declared
    /// `capacity.memory_bytes`).
    pub reserved_bytes: u64,
}

/// A replica as placed by the scheduler and last reported by its node
/// (`GET /v1/apps/{name}/replicas`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    /// Replica id.
    pub id: String,
    /// App name.
    pub app: String,
    /// Revision it runs.
    pub revision: u64,
    /// Node it is assigned to.
    pub node: String,
    /// Last reported state.
    pub state: ReplicaState,
    /// Why, when failed or pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Retiring since then (Unix ms): out of the endpoints, removed once
    /// drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_since: Option<i64>,
}

/// A node where an app has a Ready replica.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The node's name.
    pub node: String,
    /// Its ingress address, `host:port`.
    pub address: String,
    /// Ready replicas of the app on it.
    pub replicas: u32,
}

/// Where every app can be served (`GET /v1/endpoints`): the nodes that are
/// Ready and have a Ready replica of it. Nodes watch this to forward
/// requests for apps they do not run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoints {
    /// App name to its endpoints, by node name.
    pub apps: BTreeMap<String, Vec<Endpoint>>,
    /// Extra hosts (an app's `hosts`, lowercase) to the app they reach.
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
    /// Apps that may sleep (`scale.min = 0`) to their activation timeout
    /// (ms): a request for one without a ready replica is held, not refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub activatable: BTreeMap<String, u64>,
}

/// Something that happened, for `GET /v1/events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Increasing id; pass as `since` to page.
    pub id: u64,
    /// When (Unix ms).
    pub time: i64,
    /// The app concerned, if any.
    pub app: Option<String>,
    /// The node concerned, if any.
    pub node: Option<String>,
    /// What kind of thing happened.
    pub kind: EventKind,
    /// Explanation.
    pub message: String,
}

macro_rules! event_kinds {
    ($($(#[doc = $doc:literal])* $kind:ident,)*) => {
        /// What kind of thing an [`Event`] records. Serialised as its name
        /// (`"NodeLost"`); a kind this version does not know (written by a
        /// newer controller) reads as [`EventKind::Other`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        pub enum EventKind {
            $($(#[doc = $doc])* $kind,)*
            /// A kind this version does not know.
            #[serde(other)]
            Other,
        }

        impl EventKind {
            /// Every known kind.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$kind,)*];

            /// Its name, as stored and sent.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$kind => stringify!($kind),)*
                    EventKind::Other => "Other",
                }
            }

            /// The kind named `name`; [`EventKind::Other`] for unknown names.
            pub fn parse(name: &str) -> Self {
                match name {
                    $(stringify!($kind) => EventKind::$kind,)*
                    _ => EventKind::Other,
                }
            }
        }
    };
}

event_kinds! {
    /// An app was created.
    AppCreated,
    /// An app's spec or replica count changed.
    AppUpdated,
    /// An app's replica count was set.
    AppScaled,
    /// An app returned to an earlier revision (by hand or automatically).
    AppRolledBack,
    /// An app was deleted.
    AppDeleted,
    /// A node joined.
    NodeRegistered,
    /// A known node registered again (restarted, or new credential).
    NodeReregistered,
    /// A node's cordon or drain flags changed.
    NodeUpdated,
    /// A node was deleted.
    NodeDeleted,
    /// A node missed its heartbeats for the grace period; its replicas are
    /// replaced.
    NodeLost,
    /// Replicas were placed on nodes.
    ReplicaScheduled,
    /// Replicas were removed because fewer are desired.
    ReplicaRemoved,
    /// Replicas were replaced by ones of the current revision or on
    /// another node.
    ReplicaReplaced,
    /// Replicas whose app or node no longer exists were removed.
    ReplicaOrphaned,
    /// An app's replicas could not all be placed.
    Unschedulable,
    /// A rollout failed and is rolled back.
    RolloutFailed,
    /// A job was created or its spec replaced (`app` names the job).
    JobCreated,
    /// A job's run failed (`app` names the job, `node` the node).
    JobRunFailed,
    /// A job's run is run again elsewhere: its node was lost.
    JobRunLost,
    /// A job reached its completions.
    JobComplete,
    /// A job failed: more runs failed than it tolerates.
    JobFailed,
    /// A job was deleted.
    JobDeleted,
    /// A schedule's firing was skipped or missed (why in the message).
    JobSkipped,
    /// A worker's replica exited and is restarted after a back-off
    /// (`CrashLoopBackOff`).
    ReplicaRestarting,
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a name is not a valid DNS label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a valid name: {reason}")]
pub struct NameError {
    /// The name given.
    pub name: String,
    /// The rule it breaks.
    pub reason: &'static str,
}

/// Checks the DNS-label rules (RFC 1123) that app and node names follow:
/// The name rule as a regular expression (for the OpenAPI document).
pub const NAME_PATTERN: &str = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$";

pub use crate::spec::{MAX_FILES, MAX_REPLICAS};

/// A DNS host name in the one form hosts are compared in: no trailing dot,
/// lowercase. The controller stores an app's extra hosts so, and a node
/// looks a request's host up so (after dropping its port).
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let bare = host.trim_end_matches('.');
    if bare.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(bare.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(bare)
    }
}

/// 1–63 characters, lowercase letters, digits and `-`, starting with a
/// letter and ending with a letter or digit ([`NAME_PATTERN`]).
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let err = |reason| {
        Err(NameError {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 63 {
        return err("it must be 1 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return err("only lowercase letters, digits and '-' are allowed");
    }
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return err("it must start with a lowercase letter");
    }
    if name.ends_with('-') {
        return err("it must end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_label_rules() {
        for ok in ["a", "hello", "hello-2", "a1"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "Hello", "1abc", "abc-", "a_b", "a.b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn specs_default_and_reject_unknown_fields() {
        let digest = Digest::of(b"x").to_string();
        let spec: AppSpec =
            serde_json::from_value(serde_json::json!({ "artifact": digest })).unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.strategy, UpdateStrategy::default());
        let bad = serde_json::json!({ "artifact": digest, "replica": 3 });
        let err = serde_json::from_value::<AppSpec>(bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `replica`"), "{err}");
        let pct: UpdateStrategy =
            serde_json::from_value(serde_json::json!({"max_surge": "25%", "max_unavailable": 0}))
                .unwrap();
        assert_eq!(pct.max_surge, IntOrPercent::Percent(25));
        assert_eq!(pct.max_surge.resolve(10, true), 3);
        assert!(
            serde_json::from_value::<UpdateStrategy>(serde_json::json!({"max_surge": "250%"}))
                .is_err()
        );
    }

    #[test]
    fn event_kinds_round_trip_by_name_and_unknown_ones_read_as_other() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), *kind);
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, serde_json::json!(kind.as_str()));
            assert_eq!(serde_json::from_value::<EventKind>(json).unwrap(), *kind);
        }
        assert_eq!(EventKind::parse("FromTheFuture"), EventKind::Other);
        assert_eq!(
            serde_json::from_value::<EventKind>(serde_json::json!("FromTheFuture")).unwrap(),
            EventKind::Other
        );
    }
}
