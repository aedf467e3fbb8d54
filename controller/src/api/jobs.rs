//! `/v1/jobs`: apply, read, list, delete jobs; their runs and each run's
//! output. And the node's side: `GET /v1/nodes/{name}/runs` (a long-poll
//! of the runs placed on it) and `POST /v1/nodes/{name}/runs` (reports).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use skiff_sdk::Digest;
use skiff_sdk::api::{
    ErrorBody, Job, JobSpec, LogEntry, NodeRuns, NodeSchedule, Run, RunAssignment, RunReports,
    validate_name,
};
use skiff_sdk::component::Interface;

use super::artifacts::looks_like_component;
use super::inspected::Use;
use super::{AppState, Auth, JsonBody, QueryParams};
use crate::error::ApiError;
use crate::store::StoreError;

/// How often a runs watch re-reads the store without being rung, when
/// other controllers share it: runs placed by another controller (the
/// leader) reach a node watching this one within it. With one controller
/// (SQLite) every change rings, and a watch costs nothing while waiting.
const RUNS_RECHECK: Duration = Duration::from_secs(1);
/// How often a followed run's output is read again.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);
/// Longest name of a schedule: its jobs add `-<unix seconds>` (11
/// characters) and must still be DNS labels.
const MAX_SCHEDULE_NAME: usize = 52;
/// Largest component read back to check what it exports.
const MAX_INSPECTED: u64 = 256 << 20;

/// The checks a job's or a worker's component passes: stored, a
/// component, a command (exports `wasi:cli/run`) and not an HTTP app. 422
/// naming `artifact`.
pub(super) async fn check_command(state: &AppState, artifact: &Digest) -> Result<(), ApiError> {
    if state.inspected.passed(artifact, Use::Command) {
        return Ok(());
    }
    let invalid = |message: String| ApiError::invalid("invalid_field", "artifact", message);
    let info = state
        .store
        .artifact(artifact)
        .await
        .map_err(ApiError::store("looking up an artifact"))?
        .ok_or_else(|| {
            ApiError::invalid(
                "unknown_artifact",
                "artifact",
                format!(
                    "artifact {} has not been uploaded (POST /v1/artifacts)",
                    artifact
                ),
            )
        })?;
    if info.size > MAX_INSPECTED {
        return Err(invalid(format!(
            "artifact {} is too large for a job",
            artifact
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(info.size).unwrap_or(0));
    for seq in 0..info.chunks {
        let chunk = state
            .store
            .artifact_chunk(artifact, seq)
            .await
            .map_err(ApiError::store("reading an artifact"))?
            .unwrap_or_default();
        bytes.extend_from_slice(&chunk);
    }
    if !looks_like_component(&bytes) {
        return Err(invalid(format!(
            "artifact {} is a file, not a Wasm component",
            artifact
        )));
    }
    let interface = Interface::of(&bytes);
    if interface.serves_http() {
        return Err(invalid(format!(
            "artifact {} is an HTTP component (it exports wasi:http/incoming-handler): deploy it as an app; a job runs a command that exports wasi:cli/run",
            artifact
        )));
    }
    if !interface
        .exports
        .iter()
        .any(|e| e.starts_with("wasi:cli/run"))
    {
        return Err(invalid(format!(
            "artifact {} does not export wasi:cli/run (it exports {}): a job runs a command component, e.g. a Rust `fn main` built for wasm32-wasip2",
            artifact,
            if interface.exports.is_empty() {
                "nothing".to_owned()
            } else {
                interface.exports.join(", ")
            }
        )));
    }
    state.inspected.pass(artifact, Use::Command);
    Ok(())
}

/// Create a job, or replace one whose spec differs (it starts over).
#[utoipa::path(put, path = "/v1/jobs/{name}", request_body = JobSpec,
    params(("name" = String, Path, description = "Job name (DNS label)")),
    responses((status = 200, body = Job, description = "Unchanged"), (status = 201, body = Job, description = "Created or replaced"),
        (status = 422, body = ErrorBody)))]
pub async fn apply(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    body: JsonBody<JobSpec>,
) -> Result<impl IntoResponse, ApiError> {
    who.require_admin()?;
    let spec: JobSpec = body.decode()?;
    validate_name(&name).map_err(|e| ApiError::invalid("invalid_name", "name", e.to_string()))?;
    spec.validate()
        .map_err(|e| ApiError::invalid("invalid_field", &e.field, e.message))?;
    if spec.schedule.is_some() && name.len() > MAX_SCHEDULE_NAME {
        return Err(ApiError::invalid(
            "invalid_name",
            "name",
            format!(
                "a schedule's name has at most {MAX_SCHEDULE_NAME} characters: its jobs are named <name>-<unix seconds>"
            ),
        ));
    }
    check_command(&state, &spec.artifact).await?;
    let old_nodes = node_set(&state, &name).await;
    let was_local = state
        .store
        .job(&name)
        .await
        .ok()
        .flatten()
        .is_some_and(|j| j.spec.placement.every_node);
    let (job, changed) = state
        .store
        .apply_job(&name, &spec)
        .await
        .map_err(|e| match e {
            StoreError::NotFound {
                kind: "artifact",
                name,
            } => ApiError::invalid(
                "unknown_artifact",
                "artifact",
                format!("artifact {name} is no longer stored (upload it again)"),
            ),
            e => ApiError::store("applying a job")(e),
        })?;
    if changed {
        // The old runs are gone: their nodes stop them.
        for node in old_nodes {
            state.runs.ring_node(&node);
        }
        if was_local || job.spec.placement.every_node {
            // Every node looks at its node-local schedules again.
            state.runs.ring_all();
        }
        state.runs.ring_jobs();
    }
    let status = if changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(job)))
}

/// The nodes a job's unfinished runs are on, and those of the jobs it
/// started (to wake when they stop).
async fn node_set(state: &AppState, job: &str) -> Vec<String> {
    let mut names = vec![job.to_owned()];
    names.extend(
        state
            .store
            .children(job)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.name),
    );
    let mut nodes = Vec::new();
    for name in names {
        nodes.extend(
            state
                .store
                .runs(&name)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|r| !r.state.finished())
                .map(|r| r.node),
        );
    }
    nodes.sort();
    nodes.dedup();
    nodes
}

/// Jobs by name, a page at a time (`limit`, `continue`).
#[utoipa::path(get, path = "/v1/jobs", params(super::paging::PageQuery),
    responses((status = 200, body = Vec<Job>)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(who): Auth,
    QueryParams(page): QueryParams<super::paging::PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.require_admin()?;
    let after = page.after("jobs")?;
    let found = state
        .store
        .jobs_page(after.as_deref(), page.limit())
        .await
        .map_err(ApiError::store("listing jobs"))?;
    let last = found
        .more
        .then(|| found.items.last().map(|j| j.name.clone()))
        .flatten();
    let headers = super::paging::next_page("jobs", "/v1/jobs", page.limit(), last.as_deref());
    Ok((headers, Json(found.items)))
}

async fn load(state: &AppState, name: &str) -> Result<Job, ApiError> {
    state
        .store
        .job(name)
        .await
        .map_err(ApiError::store("reading a job"))?
        .ok_or_else(|| ApiError::NotFound(format!("job {name:?} not found")))
}

/// One job: spec and status.
#[utoipa::path(get, path = "/v1/jobs/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
) -> Result<Json<Job>, ApiError> {
    who.require_admin()?;
    Ok(Json(load(&state, &name).await?))
}

/// Delete a job and its runs (running ones stop).
#[utoipa::path(delete, path = "/v1/jobs/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.require_admin()?;
    let nodes = node_set(&state, &name).await;
    let local = load(&state, &name).await?.spec.placement.every_node;
    state
        .store
        .delete_job(&name)
        .await
        .map_err(ApiError::store("deleting a job"))?;
    for node in nodes {
        state.runs.ring_node(&node);
    }
    if local {
        state.runs.ring_all();
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A job's kept runs, oldest first.
#[utoipa::path(get, path = "/v1/jobs/{name}/runs", params(("name" = String, Path)),
    responses((status = 200, body = Vec<Run>), (status = 404, body = ErrorBody)))]
pub async fn runs(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
) -> Result<Json<Vec<Run>>, ApiError> {
    who.require_admin()?;
    load(&state, &name).await?;
    Ok(Json(
        state
            .store
            .runs(&name)
            .await
            .map_err(ApiError::store("listing runs"))?,
    ))
}

/// Query of the run logs route.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunLogsQuery {
    /// Keep the answer open until the run has finished and its output is
    /// all sent.
    follow: Option<bool>,
}

async fn find_run(state: &AppState, job: &str, id: &str) -> Result<Run, ApiError> {
    state
        .store
        .runs(job)
        .await
        .map_err(ApiError::store("listing runs"))?
        .into_iter()
        .find(|r| {
            r.id == id || r.id.strip_prefix(job).and_then(|n| n.strip_prefix('.')) == Some(id)
        })
        .ok_or_else(|| ApiError::NotFound(format!("run {id:?} of job {job:?} not found")))
}

/// One run's guest output (from the node that ran it), as
/// newline-delimited JSON. The run is named by its id (`<job>.<n>`) or
/// its number `n`.
#[utoipa::path(get, path = "/v1/jobs/{name}/runs/{run}/logs", params(("name" = String, Path), ("run" = String, Path), RunLogsQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = LogEntry), (status = 404, body = ErrorBody)))]
pub async fn run_logs(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((job, id)): Path<(String, String)>,
    QueryParams(query): QueryParams<RunLogsQuery>,
) -> Result<Response, ApiError> {
    who.require_admin()?;
    let run = find_run(&state, &job, &id).await?;
    let follow = query.follow.unwrap_or(false);
    Ok(super::logs::ndjson(|tx| {
        gather(state, job, run, follow, tx)
    }))
}

/// Sends a run's output; with `follow`, until it has finished.
async fn gather(state: AppState, job: String, mut run: Run, follow: bool, tx: super::logs::Sender) {
    let client = super::node_proxy::client();
    let mut since = 0;
    let mut warned = false;
    loop {
        // Read the state first: output read after the run was seen
        // finished is all of it.
        let finished = run.state.finished();
        let source = state.store.node_source(&run.node).await.ok().flatten();
        let entries = match &source {
            Some(source) => {
                super::logs::read_node(&client, &state.node_keys, source, &run.id, since).await
            }
            None => Err(format!("node {} is not registered", run.node)),
        };
        let batch = match entries {
            Ok(entries) => entries,
            Err(why) if !warned => {
                warned = true;
                vec![LogEntry {
                    node: run.node.clone(),
                    seq: 0,
                    time: crate::store::now_ms(),
                    stream: "skiff".into(),
                    line: format!("cannot read logs from node {}: {why}", run.node),
                }]
            }
            Err(_) => Vec::new(),
        };
        for entry in batch {
            if entry.stream != "skiff" {
                since = entry.seq + 1;
            }
            if !super::logs::send_entry(&tx, &entry).await {
                return;
            }
        }
        if !follow || finished {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            () = tx.closed() => return,
        }
        match find_run(&state, &job, &run.id).await {
            Ok(now) => run = now,
            Err(_) => return,
        }
    }
}

/// Query of the node runs watch.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunsWatchQuery {
    /// Answer once the set differs from this version (absent: at once).
    after: Option<String>,
    /// Longest wait in milliseconds (default 30,000, at most 60,000).
    timeout_ms: Option<u64>,
}

/// The version of a node's set of runs and schedules: a digest of their
/// ids and versions.
fn runs_version(runs: &[RunAssignment], schedules: &[NodeSchedule]) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    for run in runs {
        hash.update(run.id.as_bytes());
        hash.update(b"\n");
    }
    for schedule in schedules {
        hash.update(format!("{}@{}\n", schedule.job, schedule.version).as_bytes());
    }
    hex::encode(&hash.finalize()[..12])
}

/// The node-local schedules (`placement.every_node`) whose selector
/// matches `node`'s labels.
async fn local_schedules(state: &AppState, node: &str) -> Result<Vec<NodeSchedule>, ApiError> {
    let labels = match state.informer.read().nodes.get(node) {
        Some(n) => n.labels.clone(),
        None => return Ok(Vec::new()),
    };
    let schedules = state
        .store
        .schedules()
        .await
        .map_err(ApiError::store("reading schedules"))?;
    Ok(schedules
        .into_iter()
        .filter(|j| j.spec.placement.every_node)
        .filter(|j| {
            j.spec
                .placement
                .node_selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .map(|j| NodeSchedule {
            job: j.name,
            version: j.version,
            spec: std::sync::Arc::new(j.spec),
        })
        .collect())
}

/// The runs placed on the node that have not finished; long-polls with
/// `after`.
#[utoipa::path(get, path = "/v1/nodes/{name}/runs", params(("name" = String, Path), RunsWatchQuery),
    responses((status = 200, body = NodeRuns), (status = 403, body = ErrorBody)))]
pub async fn node_runs(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    QueryParams(query): QueryParams<RunsWatchQuery>,
) -> Result<Json<NodeRuns>, ApiError> {
    who.require_the_node(&name)?;
    let wait = query
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(super::DEFAULT_WATCH)
        .min(super::MAX_WATCH);
    let deadline = tokio::time::Instant::now() + wait;
    let mut bell = state.runs.node(&name);
    loop {
        bell.borrow_and_update();
        let runs = state
            .store
            .node_runs(&name)
            .await
            .map_err(ApiError::store("reading a node's runs"))?;
        let schedules = local_schedules(&state, &name).await?;
        let version = runs_version(&runs, &schedules);
        let now = tokio::time::Instant::now();
        if query.after.as_deref() != Some(version.as_str()) || now >= deadline {
            return Ok(Json(NodeRuns {
                version,
                runs,
                schedules,
            }));
        }
        let recheck = if state.store.shared() {
            RUNS_RECHECK.min(deadline - now)
        } else {
            deadline - now
        };
        tokio::select! {
            _ = bell.changed() => {}
            () = tokio::time::sleep(recheck) => {}
        }
    }
}

/// What became of runs on the node: `Running`, then `Succeeded` or
/// `Failed`. Reports about runs not on this node, or already finished,
/// are ignored.
#[utoipa::path(post, path = "/v1/nodes/{name}/runs", params(("name" = String, Path)), request_body = RunReports,
    responses((status = 204), (status = 403, body = ErrorBody)))]
pub async fn report(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    body: JsonBody<RunReports>,
) -> Result<StatusCode, ApiError> {
    who.require_the_node(&name)?;
    let RunReports { reports } = body.decode()?;
    let jobs = state
        .store
        .report_runs(&name, &reports)
        .await
        .map_err(ApiError::store("recording runs"))?;
    if !jobs.is_empty() {
        if reports.iter().any(|r| r.state.finished()) {
            // A finished run frees its node's runs set.
            state.runs.ring_node(&name);
        }
        state.runs.ring_jobs();
    }
    Ok(StatusCode::NO_CONTENT)
}
