//! The part of the store that keeps jobs and their runs (see
//! [`skiff_sdk::api::JobSpec`] for what a job is). Same guarantees as
//! [`Store`](super::Store): one method, one transaction.

use async_trait::async_trait;
use skiff_sdk::api::{Job, JobSpec, JobState, Run, RunAssignment, RunReport};

use super::{NewEvent, Page, Result};

/// A job with what its runs add up to: what the job controller plans with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobProgress {
    /// The job (its status counts filled in).
    pub job: Job,
    /// Its runs that have not finished.
    pub active: Vec<Run>,
    /// When its last run failed (not counting lost nodes).
    pub last_failure: Option<i64>,
}

/// A run to create, `Pending`, on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRun {
    /// The node.
    pub node: String,
    /// Memory it reserves there while it has not finished.
    pub reservation: u64,
}

/// What one pass of the job controller changes of one job: all or nothing,
/// and only if the job is still at `version` (else a conflict: it was
/// replaced or deleted meanwhile).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobChange {
    /// The job.
    pub job: String,
    /// The version it was planned at.
    pub version: u64,
    /// Runs to create.
    pub add: Vec<NewRun>,
    /// Unfinished runs that end `Failed` with this reason (their node was
    /// lost, or the job finished).
    pub end: Vec<(String, String)>,
    /// The job finished so.
    pub finish: Option<JobState>,
    /// The job's status message (when changed).
    pub message: Option<String>,
    /// Events to record with it.
    pub events: Vec<NewEvent>,
}

/// What one pass does to one schedule: all or nothing, and only if the
/// schedule is still at `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firing {
    /// The schedule.
    pub schedule: String,
    /// The version it was planned at.
    pub version: u64,
    /// The time it fired for (recorded as `last_fired`), if it did.
    pub fired_for: Option<i64>,
    /// The job to start: its name and spec.
    pub start: Option<(String, JobSpec)>,
    /// Its jobs to delete (stopped by `replace`, or beyond the history).
    pub delete: Vec<String>,
    /// Events to record with it.
    pub events: Vec<NewEvent>,
}

/// Jobs and runs in the store.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Creates a job, or replaces one whose spec differs (its runs are
    /// removed, so they stop, and it starts over); the same spec changes
    /// nothing. Returns the job and whether it changed.
    async fn apply_job(&self, name: &str, spec: &JobSpec) -> Result<(Job, bool)>;
    /// One job, with its status counts.
    async fn job(&self, name: &str) -> Result<Option<Job>>;
    /// Up to `limit` jobs with names after `after`, by name.
    async fn jobs_page(&self, after: Option<&str>, limit: u32) -> Result<Page<Job>>;
    /// Deletes a job and its runs (a schedule: with the jobs it started).
    async fn delete_job(&self, name: &str) -> Result<()>;
    /// A job's kept runs, oldest first.
    async fn runs(&self, job: &str) -> Result<Vec<Run>>;
    /// Every job that is `Active`, with its unfinished runs.
    async fn active_jobs(&self) -> Result<Vec<JobProgress>>;
    /// Memory reserved on each node by unfinished runs.
    async fn run_reservations(&self) -> Result<Vec<(String, u64)>>;
    /// Applies one pass's change of one job (see [`JobChange`]); when it
    /// finishes the job, also drops its finished runs beyond `keep_runs`.
    async fn change_job(&self, change: &JobChange) -> Result<()>;
    /// The finished jobs whose spec sets `keep_finished_ms`, with when
    /// they finished.
    async fn expiring_jobs(&self) -> Result<Vec<(String, i64, u64)>>;
    /// Every schedule (a job whose state is `Scheduled`).
    async fn schedules(&self) -> Result<Vec<Job>>;
    /// The jobs a schedule started, oldest first.
    async fn children(&self, schedule: &str) -> Result<Vec<Job>>;
    /// Applies one pass's firing of one schedule (see [`Firing`]).
    async fn fire(&self, firing: &Firing) -> Result<()>;
    /// The unfinished runs placed on `node`, with their specs.
    async fn node_runs(&self, node: &str) -> Result<Vec<RunAssignment>>;
    /// Records what `node` reports of its runs. A report about a run that
    /// is not on that node, or that has finished already, is ignored (the
    /// first end recorded wins). Returns the jobs whose runs changed.
    async fn report_runs(&self, node: &str, reports: &[RunReport]) -> Result<Vec<String>>;
}
