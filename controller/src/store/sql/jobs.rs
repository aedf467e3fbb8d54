//! [`JobStore`] on SQL: the `jobs` and `job_runs` tables (migration 0009).
//!
//! A job's live counts are counted from its runs while it is active
//! (indexed by job); when it finishes they are frozen in its row, and its
//! finished runs beyond `keep_runs` are dropped.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use skiff_sdk::api::{
    Job, JobSpec, JobState, JobStatus, Run, RunAssignment, RunReport, RunState, reason,
};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::super::jobs::{Firing, JobChange, JobProgress, JobStore};
use super::super::rows::{json, not_found, parse, to_i64, to_u64};
use super::super::{NewEvent, Page, Result, StoreError, now_ms};
use super::{SqlStore, Tx};

fn job_state_str(state: JobState) -> &'static str {
    match state {
        JobState::Active => "Active",
        JobState::Complete => "Complete",
        JobState::Failed => "Failed",
        JobState::Scheduled => "Scheduled",
    }
}

fn parse_job_state(s: &str) -> JobState {
    match s {
        "Complete" => JobState::Complete,
        "Failed" => JobState::Failed,
        "Scheduled" => JobState::Scheduled,
        _ => JobState::Active,
    }
}

fn run_from_row(row: &AnyRow) -> Result<Run> {
    Ok(Run {
        id: row.try_get("id")?,
        job: row.try_get("job")?,
        state: RunState::parse(&row.try_get::<String, _>("state")?).unwrap_or(RunState::Failed),
        node: row.try_get("node")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        exit_code: row
            .try_get::<Option<i64>, _>("exit_code")?
            .map(|c| i32::try_from(c).unwrap_or(i32::MAX)),
        reason: row.try_get("reason")?,
        message: row.try_get("message")?,
    })
}

/// Counts of a job's runs: (succeeded, failed, active).
type Counts = (u32, u32, u32);

impl SqlStore {
    fn job_from_row(&self, row: &AnyRow, counts: Option<Counts>) -> Result<Job> {
        let state = parse_job_state(&row.try_get::<String, _>("state")?);
        let frozen = (
            u32::try_from(row.try_get::<i64, _>("succeeded")?).unwrap_or(0),
            u32::try_from(row.try_get::<i64, _>("failed")?).unwrap_or(0),
            0,
        );
        let (succeeded, failed, active) = match state {
            JobState::Active => counts.unwrap_or_default(),
            JobState::Scheduled => (0, 0, 0),
            _ => frozen,
        };
        Ok(Job {
            name: row.try_get("name")?,
            version: to_u64(row.try_get("version")?),
            spec: parse("job spec", &row.try_get::<String, _>("spec")?)?,
            created_at: row.try_get("created_at")?,
            owner: row.try_get("owner")?,
            status: JobStatus {
                state,
                succeeded,
                failed,
                active,
                finished_at: row.try_get("finished_at")?,
                last_fired: row.try_get("last_fired")?,
                message: row.try_get("message")?,
            },
        })
    }

    async fn load_job(&self, tx: &mut Tx<'_>, name: &str) -> Result<Option<Job>> {
        let Some(row) = sqlx::query("SELECT * FROM jobs WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
        else {
            return Ok(None);
        };
        let counts = self.counts_of(&mut **tx, name).await?;
        self.job_from_row(&row, Some(counts)).map(Some)
    }

    async fn counts_of<'e, E>(&self, exec: E, job: &str) -> Result<Counts>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let rows = sqlx::query(
            "SELECT state, CAST(SUM(CASE WHEN reason IS NULL OR reason <> $1 THEN 1 ELSE 0 END) AS BIGINT) AS n, \
             CAST(COUNT(*) AS BIGINT) AS total FROM job_runs WHERE job = $2 GROUP BY state",
        )
        .bind(reason::NODE_LOST)
        .bind(job)
        .fetch_all(exec)
        .await?;
        let mut counts = Counts::default();
        for row in rows {
            let n = u32::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0);
            let total = u32::try_from(row.try_get::<i64, _>("total")?).unwrap_or(0);
            match RunState::parse(&row.try_get::<String, _>("state")?) {
                Some(RunState::Succeeded) => counts.0 += n,
                Some(RunState::Failed) => counts.1 += n,
                Some(RunState::Pending | RunState::Running) => counts.2 += total,
                None => {}
            }
        }
        Ok(counts)
    }

    /// Records a run a node fired for one of its node-local schedules (a
    /// report about a run the controller did not create), keeping that
    /// node's newest `keep_runs` finished runs of it; `None` if `job` is no
    /// such schedule (or the run is known already).
    async fn insert_local_run(
        &self,
        tx: &mut Tx<'_>,
        node: &str,
        job: &str,
        at: i64,
        report: &RunReport,
    ) -> Result<Option<AnyRow>> {
        let Some(row) =
            sqlx::query("SELECT spec FROM jobs WHERE name = $1 AND state = 'Scheduled'")
                .bind(job)
                .fetch_optional(&mut **tx)
                .await?
        else {
            return Ok(None);
        };
        let spec: JobSpec = parse("job spec", &row.try_get::<String, _>("spec")?)?;
        if !spec.placement.every_node || !report.id.starts_with(&format!("{job}.{node}.")) {
            return Ok(None);
        }
        let inserted = sqlx::query(
            "INSERT INTO job_runs (id, job, seq, node, state, reservation, created_at, started_at, finished_at, exit_code, reason, message) \
             VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING RETURNING job",
        )
        .bind(&report.id)
        .bind(job)
        .bind(at.div_euclid(1000))
        .bind(node)
        .bind(report.state.as_str())
        .bind(at)
        .bind(report.started_at)
        .bind(report.finished_at)
        .bind(report.exit_code.map(i64::from))
        .bind(report.reason.clone())
        .bind(report.message.clone())
        .fetch_optional(&mut **tx)
        .await?;
        sqlx::query(
            "DELETE FROM job_runs WHERE job = $1 AND node = $2 AND state IN ('Succeeded', 'Failed') AND seq NOT IN \
             (SELECT seq FROM job_runs WHERE job = $1 AND node = $2 ORDER BY seq DESC LIMIT $3)",
        )
        .bind(job)
        .bind(node)
        .bind(i64::from(spec.keep_runs))
        .execute(&mut **tx)
        .await?;
        Ok(inserted)
    }

    async fn job_event(&self, tx: &mut Tx<'_>, events: &[NewEvent]) -> Result<()> {
        for event in events {
            self.event_in(tx, event.clone()).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl JobStore for SqlStore {
    async fn apply_job(&self, name: &str, spec: &JobSpec) -> Result<(Job, bool)> {
        let mut tx = self.pool.begin().await?;
        let existing = sqlx::query("SELECT spec, version FROM jobs WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let version = match &existing {
            Some(row) => {
                let old: JobSpec = parse("job spec", &row.try_get::<String, _>("spec")?)?;
                if old == *spec {
                    let job = self.load_job(&mut tx, name).await?;
                    tx.rollback().await?;
                    return job
                        .map(|j| (j, false))
                        .ok_or_else(|| not_found("job", name));
                }
                to_u64(row.try_get("version")?) + 1
            }
            None => 1,
        };
        self.claim_artifacts(&mut tx, std::iter::once(&spec.artifact))
            .await?;
        // Replacing a job starts it over: its runs go (their nodes stop them).
        sqlx::query("DELETE FROM job_runs WHERE job = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let now = now_ms();
        // A schedule counts its times from now: none before it was applied
        // fires.
        let (state, last_fired) = match spec.schedule {
            Some(_) => ("Scheduled", Some(now)),
            None => ("Active", None),
        };
        sqlx::query(
            "INSERT INTO jobs (name, spec, state, message, next_run, version, created_at, finished_at, succeeded, failed, owner, last_fired) \
             VALUES ($1, $2, $5, '', 1, $3, $4, NULL, 0, 0, NULL, $6) \
             ON CONFLICT (name) DO UPDATE SET spec = $2, state = $5, message = '', next_run = 1, \
             version = $3, created_at = $4, finished_at = NULL, succeeded = 0, failed = 0, last_fired = $6",
        )
        .bind(name)
        .bind(json(spec))
        .bind(to_i64(version))
        .bind(now)
        .bind(state)
        .bind(last_fired)
        .execute(&mut *tx)
        .await?;
        let verb = if existing.is_some() {
            "replaced"
        } else {
            "created"
        };
        self.job_event(
            &mut tx,
            &[NewEvent {
                app: Some(name.to_owned()),
                node: None,
                kind: skiff_sdk::api::EventKind::JobCreated,
                message: format!(
                    "job {name} {verb}: {} completion(s), {} at once",
                    spec.completions, spec.parallelism
                ),
            }],
        )
        .await?;
        let job = self.load_job(&mut tx, name).await?;
        tx.commit().await?;
        job.map(|j| (j, true)).ok_or_else(|| not_found("job", name))
    }

    async fn job(&self, name: &str) -> Result<Option<Job>> {
        let mut tx = self.reads.begin().await?;
        let job = self.load_job(&mut tx, name).await?;
        tx.rollback().await?;
        Ok(job)
    }

    async fn jobs_page(&self, after: Option<&str>, limit: u32) -> Result<Page<Job>> {
        let rows = sqlx::query("SELECT * FROM jobs WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.reads)
            .await?;
        let more = rows.len() > limit as usize;
        let mut items = Vec::new();
        for row in rows.iter().take(limit as usize) {
            let name: String = row.try_get("name")?;
            let counts = self.counts_of(&self.reads, &name).await?;
            items.push(self.job_from_row(row, Some(counts))?);
        }
        Ok(Page { items, more })
    }

    async fn delete_job(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM job_runs WHERE job = $1 OR job IN (SELECT name FROM jobs WHERE owner = $1)")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM jobs WHERE owner = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let gone = sqlx::query("DELETE FROM jobs WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            tx.rollback().await?;
            return Err(not_found("job", name));
        }
        self.job_event(
            &mut tx,
            &[NewEvent {
                app: Some(name.to_owned()),
                node: None,
                kind: skiff_sdk::api::EventKind::JobDeleted,
                message: format!("job {name} deleted"),
            }],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn runs(&self, job: &str) -> Result<Vec<Run>> {
        let rows = sqlx::query("SELECT * FROM job_runs WHERE job = $1 ORDER BY seq")
            .bind(job)
            .fetch_all(&self.reads)
            .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn active_jobs(&self) -> Result<Vec<JobProgress>> {
        let mut tx = self.reads.begin().await?;
        let rows = sqlx::query("SELECT * FROM jobs WHERE state = 'Active' ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        let mut progress = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name")?;
            let counts = self.counts_of(&mut *tx, &name).await?;
            let job = self.job_from_row(&row, Some(counts))?;
            let active = sqlx::query(
                "SELECT * FROM job_runs WHERE job = $1 AND state IN ('Pending', 'Running') ORDER BY seq",
            )
            .bind(&name)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(run_from_row)
            .collect::<Result<Vec<_>>>()?;
            let last_failure: Option<i64> = sqlx::query(
                "SELECT MAX(finished_at) AS at FROM job_runs WHERE job = $1 AND state = 'Failed' AND (reason IS NULL OR reason <> $2)",
            )
            .bind(&name)
            .bind(reason::NODE_LOST)
            .fetch_one(&mut *tx)
            .await?
            .try_get("at")?;
            progress.push(JobProgress {
                job,
                active,
                last_failure,
            });
        }
        tx.rollback().await?;
        Ok(progress)
    }

    async fn run_reservations(&self) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(
            "SELECT node, CAST(SUM(reservation) AS BIGINT) AS held FROM job_runs WHERE state IN ('Pending', 'Running') GROUP BY node",
        )
        .fetch_all(&self.reads)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("node")?, to_u64(r.try_get("held")?))))
            .collect()
    }

    async fn change_job(&self, change: &JobChange) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT version, next_run, spec FROM jobs WHERE name = $1")
            .bind(&change.job)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(not_found("job", &change.job));
        };
        if to_u64(row.try_get("version")?) != change.version {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "job {:?} changed since it was planned",
                change.job
            )));
        }
        let now = now_ms();
        for (id, why) in &change.end {
            sqlx::query(
                "UPDATE job_runs SET state = 'Failed', reason = $1, finished_at = $2 \
                 WHERE id = $3 AND state IN ('Pending', 'Running')",
            )
            .bind(why)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let mut next = row.try_get::<i64, _>("next_run")?;
        for run in &change.add {
            sqlx::query(
                "INSERT INTO job_runs (id, job, seq, node, state, reservation, created_at) \
                 VALUES ($1, $2, $3, $4, 'Pending', $5, $6)",
            )
            .bind(format!("{}.{next}", change.job))
            .bind(&change.job)
            .bind(next)
            .bind(&run.node)
            .bind(to_i64(run.reservation))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            next += 1;
        }
        let counts = self.counts_of(&mut *tx, &change.job).await?;
        match change.finish {
            Some(state) => {
                let spec: JobSpec = parse("job spec", &row.try_get::<String, _>("spec")?)?;
                sqlx::query(
                    "UPDATE jobs SET state = $1, finished_at = $2, succeeded = $3, failed = $4, \
                     next_run = $5, message = COALESCE($6, message), version = version + 1 WHERE name = $7",
                )
                .bind(job_state_str(state))
                .bind(now)
                .bind(i64::from(counts.0))
                .bind(i64::from(counts.1))
                .bind(next)
                .bind(change.message.clone())
                .bind(&change.job)
                .execute(&mut *tx)
                .await?;
                // Keep the newest `keep_runs` finished runs.
                sqlx::query(
                    "DELETE FROM job_runs WHERE job = $1 AND seq NOT IN \
                     (SELECT seq FROM job_runs WHERE job = $1 ORDER BY seq DESC LIMIT $2)",
                )
                .bind(&change.job)
                .bind(i64::from(spec.keep_runs))
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query(
                    "UPDATE jobs SET next_run = $1, message = COALESCE($2, message) WHERE name = $3",
                )
                .bind(next)
                .bind(change.message.clone())
                .bind(&change.job)
                .execute(&mut *tx)
                .await?;
            }
        }
        self.job_event(&mut tx, &change.events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn expiring_jobs(&self) -> Result<Vec<(String, i64, u64)>> {
        // The retention is in the spec: finished jobs are read and those
        // without one skipped (a pass every `EXPIRY_EVERY` at most).
        let rows = sqlx::query(
            "SELECT name, finished_at, spec FROM jobs WHERE state IN ('Complete', 'Failed') AND spec LIKE '%keep_finished_ms%'",
        )
        .fetch_all(&self.reads)
        .await?;
        let mut expiring = Vec::new();
        for row in rows {
            let spec: JobSpec = parse("job spec", &row.try_get::<String, _>("spec")?)?;
            if let (Some(keep), Some(at)) = (spec.keep_finished_ms, row.try_get("finished_at")?) {
                expiring.push((row.try_get("name")?, at, keep));
            }
        }
        Ok(expiring)
    }

    async fn schedules(&self) -> Result<Vec<Job>> {
        let rows = sqlx::query("SELECT * FROM jobs WHERE state = 'Scheduled' ORDER BY name")
            .fetch_all(&self.reads)
            .await?;
        rows.iter().map(|r| self.job_from_row(r, None)).collect()
    }

    async fn children(&self, schedule: &str) -> Result<Vec<Job>> {
        let mut tx = self.reads.begin().await?;
        let rows = sqlx::query("SELECT * FROM jobs WHERE owner = $1 ORDER BY created_at, name")
            .bind(schedule)
            .fetch_all(&mut *tx)
            .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name")?;
            let counts = self.counts_of(&mut *tx, &name).await?;
            jobs.push(self.job_from_row(&row, Some(counts))?);
        }
        tx.rollback().await?;
        Ok(jobs)
    }

    async fn fire(&self, firing: &Firing) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let version =
            sqlx::query("SELECT version FROM jobs WHERE name = $1 AND state = 'Scheduled'")
                .bind(&firing.schedule)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get::<i64, _>("version"))
                .transpose()?;
        if version.map(to_u64) != Some(firing.version) {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "schedule {:?} changed since it was planned",
                firing.schedule
            )));
        }
        for name in &firing.delete {
            sqlx::query("DELETE FROM job_runs WHERE job = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM jobs WHERE name = $1 AND owner = $2")
                .bind(name)
                .bind(&firing.schedule)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(at) = firing.fired_for {
            sqlx::query("UPDATE jobs SET last_fired = $1 WHERE name = $2")
                .bind(at)
                .bind(&firing.schedule)
                .execute(&mut *tx)
                .await?;
        }
        if let Some((name, spec)) = &firing.start {
            self.claim_artifacts(&mut tx, std::iter::once(&spec.artifact))
                .await?;
            sqlx::query(
                "INSERT INTO jobs (name, spec, state, message, next_run, version, created_at, owner) \
                 VALUES ($1, $2, 'Active', '', 1, 1, $3, $4)",
            )
            .bind(name)
            .bind(json(spec))
            .bind(now_ms())
            .bind(&firing.schedule)
            .execute(&mut *tx)
            .await?;
        }
        self.job_event(&mut tx, &firing.events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn node_runs(&self, node: &str) -> Result<Vec<RunAssignment>> {
        let rows = sqlx::query(
            "SELECT r.id AS id, r.job AS job, j.spec AS spec FROM job_runs r JOIN jobs j ON j.name = r.job \
             WHERE r.node = $1 AND r.state IN ('Pending', 'Running') ORDER BY r.id",
        )
        .bind(node)
        .fetch_all(&self.reads)
        .await?;
        let mut specs: BTreeMap<String, Arc<JobSpec>> = BTreeMap::new();
        let mut runs = Vec::with_capacity(rows.len());
        for row in rows {
            let job: String = row.try_get("job")?;
            let spec = match specs.get(&job) {
                Some(spec) => spec.clone(),
                None => {
                    let spec: Arc<JobSpec> =
                        Arc::new(parse("job spec", &row.try_get::<String, _>("spec")?)?);
                    specs.insert(job.clone(), spec.clone());
                    spec
                }
            };
            runs.push(RunAssignment {
                id: row.try_get("id")?,
                job,
                spec,
            });
        }
        Ok(runs)
    }

    async fn report_runs(&self, node: &str, reports: &[RunReport]) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let mut jobs = Vec::new();
        for report in reports {
            let sql = match report.state {
                RunState::Running => {
                    "UPDATE job_runs SET state = 'Running', started_at = $1 \
                     WHERE id = $2 AND node = $3 AND state = 'Pending' RETURNING job"
                }
                RunState::Succeeded | RunState::Failed => {
                    "UPDATE job_runs SET state = $4, started_at = COALESCE(started_at, $1), finished_at = $5, \
                     exit_code = $6, reason = $7, message = $8 \
                     WHERE id = $2 AND node = $3 AND state IN ('Pending', 'Running') RETURNING job"
                }
                RunState::Pending => continue,
            };
            let mut query = sqlx::query(sql)
                .bind(report.started_at.unwrap_or_else(now_ms))
                .bind(&report.id)
                .bind(node);
            if report.state.finished() {
                query = query
                    .bind(report.state.as_str())
                    .bind(report.finished_at.unwrap_or_else(now_ms))
                    .bind(report.exit_code.map(i64::from))
                    .bind(report.reason.clone())
                    .bind(report.message.as_ref().map(|m| truncate(m, 2048)));
            }
            let mut updated = query.fetch_optional(&mut *tx).await?;
            if updated.is_none()
                && let (Some(job), Some(at)) = (&report.job, report.fired_for)
            {
                updated = self
                    .insert_local_run(&mut tx, node, job, at, report)
                    .await?;
            }
            if let Some(row) = updated {
                let job: String = row.try_get("job")?;
                if report.state == RunState::Failed {
                    let why = report.reason.as_deref().unwrap_or("failed");
                    self.event_in(
                        &mut tx,
                        NewEvent {
                            app: Some(job.clone()),
                            node: Some(node.to_owned()),
                            kind: skiff_sdk::api::EventKind::JobRunFailed,
                            message: format!("run {} failed on {node}: {why}", report.id),
                        },
                    )
                    .await?;
                }
                if !jobs.contains(&job) {
                    jobs.push(job);
                }
            }
        }
        tx.commit().await?;
        Ok(jobs)
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
