//! Jobs: `wasi:cli/run` components run to completion (`/v1/jobs`), their
//! runs, and what a node and the controller exchange about runs.
//!
//! A job asks for `completions` successful runs, at most `parallelism` at
//! once. A failed run is retried after a back-off that doubles with each
//! failure (`backoff_ms`, `2 × backoff_ms`, … capped at
//! [`MAX_BACKOFF_MS`]) until `retries` runs have failed; then the job is
//! `Failed`. A run whose node is lost is run again elsewhere without
//! counting as a failure: a run is carried out **at least once**, so a job
//! whose runs have effects outside the node should make them idempotent.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Placement;
use super::schedule::Schedule;
use crate::spec::SpecError;
use crate::{Digest, Quota};

/// Default [`JobSpec::retries`]: a transient failure is retried a few
/// times, a broken job stops within seconds.
pub const DEFAULT_RETRIES: u32 = 3;
/// Default [`JobSpec::backoff_ms`]: a second, doubling; short because an
/// edge node's failures are mostly local and brief (Kubernetes starts at
/// 10 s for pods that also pull images).
pub const DEFAULT_BACKOFF_MS: u64 = 1_000;
/// Longest back-off between retries: five minutes.
pub const MAX_BACKOFF_MS: u64 = 5 * 60 * 1000;
/// Default [`JobSpec::keep_runs`]: enough finished runs to see a pattern.
pub const DEFAULT_KEEP_RUNS: u32 = 20;
/// Most completions (and so runs kept while a job is active) one job asks
/// for.
pub const MAX_COMPLETIONS: u32 = 100_000;
/// Most runs of one job at once.
pub const MAX_PARALLELISM: u32 = 1_000;
/// Most arguments, and most bytes of all arguments together.
pub const MAX_ARGS: usize = 256;
const MAX_ARG_BYTES: usize = 64 << 10;

fn one() -> u32 {
    1
}
fn default_retries() -> u32 {
    DEFAULT_RETRIES
}
fn default_backoff_ms() -> u64 {
    DEFAULT_BACKOFF_MS
}
fn default_keep_runs() -> u32 {
    DEFAULT_KEEP_RUNS
}

/// The desired state of a job, as applied with `PUT /v1/jobs/{name}`.
///
/// The quota applies to each run as a whole: `fuel` is the CPU budget of
/// the entire run, `timeout_ms` its wall-clock limit, `memory_bytes` its
/// linear memory (`concurrency` is not used: a run is one instance).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The command component (it exports `wasi:cli/run`), uploaded with
    /// `POST /v1/artifacts`.
    #[schema(value_type = String, pattern = r"^sha256:[0-9a-f]{64}$")]
    pub artifact: Digest,
    /// Arguments after the program name (`argv[1..]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables the guest sees (and the only ones).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Limits of each run (see above).
    #[serde(default)]
    pub quota: Quota,
    /// Successful runs that complete the job.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 100000)]
    pub completions: u32,
    /// Most runs at once.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 1000)]
    pub parallelism: u32,
    /// Failed runs tolerated: one more fails the job.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Delay before the first retry, in milliseconds; it doubles with each
    /// failure, up to five minutes.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Finished runs kept once the job has finished (the newest).
    #[serde(default = "default_keep_runs")]
    pub keep_runs: u32,
    /// A finished job, with its runs, is deleted this many milliseconds
    /// after it finished (Kubernetes' `ttlSecondsAfterFinished`). Absent:
    /// kept until deleted (a schedule's jobs go by its history limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_finished_ms: Option<u64>,
    /// Destinations the guest may reach (as for apps). Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    /// Where runs may go.
    #[serde(default)]
    pub placement: Placement,
    /// Run at these times instead of once: each firing starts a job of
    /// its own from this spec (see [`Schedule`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

impl JobSpec {
    /// A job running `artifact` once, with default limits.
    pub fn new(artifact: Digest) -> Self {
        Self {
            artifact,
            args: Vec::new(),
            env: BTreeMap::new(),
            quota: Quota::default(),
            completions: 1,
            parallelism: 1,
            retries: DEFAULT_RETRIES,
            backoff_ms: DEFAULT_BACKOFF_MS,
            keep_runs: DEFAULT_KEEP_RUNS,
            keep_finished_ms: None,
            allowed_outbound_hosts: Vec::new(),
            placement: Placement::default(),
            schedule: None,
        }
    }

    /// Checks every rule the types do not express, naming the first field
    /// that breaks one.
    pub fn validate(&self) -> Result<(), SpecError> {
        let broken = |field: &str, message: String| {
            Err(SpecError {
                field: field.to_owned(),
                message,
            })
        };
        if !(1..=MAX_COMPLETIONS).contains(&self.completions) {
            return broken(
                "completions",
                format!("must be between 1 and {MAX_COMPLETIONS}"),
            );
        }
        if !(1..=MAX_PARALLELISM).contains(&self.parallelism) {
            return broken(
                "parallelism",
                format!("must be between 1 and {MAX_PARALLELISM}"),
            );
        }
        if self.backoff_ms > MAX_BACKOFF_MS {
            return broken(
                "backoff_ms",
                format!("must be at most {MAX_BACKOFF_MS} (five minutes)"),
            );
        }
        if self.args.len() > MAX_ARGS
            || self.args.iter().map(String::len).sum::<usize>() > MAX_ARG_BYTES
        {
            return broken(
                "args",
                format!("at most {MAX_ARGS} arguments of 64 KiB in all"),
            );
        }
        if let Some(i) = self.args.iter().position(|a| a.contains('\0')) {
            return broken(
                &format!("args[{i}]"),
                "an argument may not contain a NUL character".into(),
            );
        }
        if let Some(schedule) = &self.schedule
            && let Err(e) = schedule.validate()
        {
            return broken(&format!("schedule.{}", e.field), e.message);
        }
        if self.placement.every_node && self.schedule.is_none() {
            return broken(
                "placement.every_node",
                "every-node placement is for schedules (each matching node fires it by its own clock); give the job a schedule".into(),
            );
        }
        // Quota, environment and outbound hosts follow the app rules.
        let mut app = super::AppSpec {
            artifact: self.artifact,
            replicas: 1,
            quota: self.quota,
            hosts: Vec::new(),
            env: self.env.clone(),
            allowed_outbound_hosts: self.allowed_outbound_hosts.clone(),
            files: BTreeMap::new(),
            placement: self.placement.clone(),
            strategy: super::UpdateStrategy::default(),
            health: None,
            scale: None,
            kind: super::AppKind::Worker,
            args: self.args.clone(),
            source: None,
        };
        app.quota.concurrency = 1;
        app.validate()
    }

    /// The delay before the run that follows `failures` failed runs.
    pub fn backoff(&self, failures: u32) -> u64 {
        if failures == 0 {
            return 0;
        }
        let doubled = self
            .backoff_ms
            .saturating_mul(1u64 << failures.saturating_sub(1).min(32));
        doubled.min(MAX_BACKOFF_MS)
    }
}

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum JobState {
    /// A schedule: it starts jobs at its times and never finishes.
    Scheduled,
    /// Runs are pending, running or waiting out a back-off.
    Active,
    /// `completions` runs succeeded.
    Complete,
    /// More than `retries` runs failed.
    Failed,
}

/// Observed state of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobStatus {
    /// Where it stands.
    pub state: JobState,
    /// Runs that succeeded.
    pub succeeded: u32,
    /// Runs that failed (node-lost runs are not counted: they run again).
    pub failed: u32,
    /// Runs pending or running.
    pub active: u32,
    /// When it finished (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// A schedule: the time it last fired for (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired: Option<i64>,
    /// Why it is where it is, for humans (e.g. the last failure, or why no
    /// node fits).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Name (a DNS label; its own namespace, apart from apps).
    pub name: String,
    /// Bumped on every change to the row (optimistic concurrency).
    pub version: u64,
    /// The spec.
    pub spec: JobSpec,
    /// Created (Unix ms): when the spec was last applied.
    pub created_at: i64,
    /// The schedule that started it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Observed state.
    pub status: JobStatus,
}

/// A run's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum RunState {
    /// Created and placed on a node; not started yet.
    Pending,
    /// The guest's `run` was called.
    Running,
    /// It returned success.
    Succeeded,
    /// It failed (see the reason).
    Failed,
}

impl RunState {
    /// `Succeeded` or `Failed`.
    pub fn finished(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed)
    }

    /// The name as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "Pending",
            RunState::Running => "Running",
            RunState::Succeeded => "Succeeded",
            RunState::Failed => "Failed",
        }
    }

    /// Parses [`RunState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Pending" => RunState::Pending,
            "Running" => RunState::Running,
            "Succeeded" => RunState::Succeeded,
            "Failed" => RunState::Failed,
            _ => return None,
        })
    }
}

/// Why a run failed, as reported in [`Run::reason`].
pub mod reason {
    /// The run burned its whole fuel budget.
    pub const FUEL: &str = "fuel-exhausted";
    /// The guest asked for more memory than its limit.
    pub const MEMORY: &str = "memory-limit";
    /// The run outlived its wall-clock limit.
    pub const TIMEOUT: &str = "timeout";
    /// The guest trapped (a Wasm fault).
    pub const TRAP: &str = "trap";
    /// The node running it stopped heartbeating.
    pub const NODE_LOST: &str = "node-lost";
    /// The component could not be fetched, loaded or instantiated here.
    pub const START: &str = "start-failed";
    /// The node had no memory left for the run.
    pub const NODE_MEMORY: &str = "node-memory-pressure";

    /// `exit N`: the guest exited unsuccessfully with this status.
    pub fn exit(code: i32) -> String {
        format!("exit {code}")
    }
}

/// One run of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// `<job>.<n>`: unique in the cluster, never an app name (apps have
    /// no dots), numbered from 1 in creation order.
    pub id: String,
    /// The job.
    pub job: String,
    /// State.
    pub state: RunState,
    /// The node it was placed on.
    pub node: String,
    /// Created (Unix ms).
    pub created_at: i64,
    /// Started on the node (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// Finished (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// The guest's exit status, once it exited (0: success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed: `fuel-exhausted`, `memory-limit`, `timeout`, `trap`,
    /// `exit N`, `node-lost`, `start-failed`, `node-memory-pressure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details for humans (the trap message, the load error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A run a node should carry out (`GET /v1/nodes/{name}/runs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunAssignment {
    /// Run id.
    pub id: String,
    /// The job.
    pub job: String,
    /// The job's spec.
    #[schema(value_type = JobSpec)]
    pub spec: Arc<JobSpec>,
}

/// A node's runs to carry out: those placed on it that have not finished,
/// and the node-local schedules it fires itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeRuns {
    /// Identifies this set; pass as `after` to wait for a different one.
    pub version: String,
    /// The runs.
    pub runs: Vec<RunAssignment>,
    /// Schedules with `placement.every_node` whose selector matches this
    /// node: it fires them by its own clock, also while the controller is
    /// unreachable, and reports their runs (ids
    /// `<schedule>.<node>.<unix seconds>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<NodeSchedule>,
}

/// A schedule a node fires itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSchedule {
    /// The schedule's name.
    pub job: String,
    /// Its version (a new spec is a new version).
    pub version: u64,
    /// Its spec (with `schedule` set).
    #[schema(value_type = JobSpec)]
    pub spec: Arc<JobSpec>,
}

/// What a node reports of a run (`POST /v1/nodes/{name}/runs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunReport {
    /// Run id.
    pub id: String,
    /// `Running`, `Succeeded` or `Failed`.
    pub state: RunState,
    /// When the guest started (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// When it finished (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// Exit status, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A run of a node-local schedule (which the controller did not
    /// create): the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// With `job`: the time it fired for (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_for: Option<i64>,
}

/// Body of `POST /v1/nodes/{name}/runs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunReports {
    /// The reports, oldest first.
    pub reports: Vec<RunReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let spec = JobSpec {
            backoff_ms: 100,
            ..JobSpec::new(Digest::of(b"x"))
        };
        assert_eq!([0, 1, 2, 3].map(|f| spec.backoff(f)), [0, 100, 200, 400]);
        assert_eq!(spec.backoff(60), MAX_BACKOFF_MS);
    }

    #[test]
    fn each_rule_names_its_field() {
        let ok = JobSpec::new(Digest::of(b"x"));
        assert_eq!(ok.validate(), Ok(()));
        let field = |spec: JobSpec| spec.validate().unwrap_err().field;
        assert_eq!(
            field(JobSpec {
                parallelism: 0,
                ..ok.clone()
            }),
            "parallelism"
        );
        assert_eq!(
            field(JobSpec {
                completions: 0,
                ..ok.clone()
            }),
            "completions"
        );
        assert_eq!(
            field(JobSpec {
                args: vec!["a".into(), "b\0".into()],
                ..ok.clone()
            }),
            "args[1]"
        );
        let mut quota = ok.clone();
        quota.quota.fuel = 0;
        assert_eq!(field(quota), "quota.fuel");
    }
}
