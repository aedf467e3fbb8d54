//! `skiff run`, `skiff jobs`, `skiff job NAME`: jobs from the command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use skiff_sdk::api::{Job, JobState, Run, RunState};
use skiff_sdk::bundle::BUNDLE_EXTENSION;
use skiff_sdk::manifest::Manifest;

use crate::Failure;
use crate::client::{Connect, Output};
use crate::commands::{age, outln, table};
use crate::deploy::{Kind, build_as, unbundle};

/// `skiff run DIR|FILE.skiff [-- ARGS…]`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The command's directory (holding `skiff.toml`), the manifest itself,
    /// or a bundle made by `skiff package`.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Use the component as it is; do not run the build command.
    #[arg(long)]
    pub no_build: bool,
    /// Keep the job (and its run's record) after it finished; by default
    /// it is deleted.
    #[arg(long)]
    pub keep: bool,
    /// Arguments for the guest (after `--`), replacing the manifest's.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// The guest's exit status, for `main` to exit with.
#[derive(Debug, thiserror::Error)]
#[error("the run exited with status {0}")]
pub struct GuestExit(pub u8);

/// How often `skiff run` looks for its run to be placed.
const PLACED_POLL: Duration = Duration::from_millis(20);

/// `skiff run`: runs a command component once on the cluster, streams its
/// output, and exits with its exit status.
pub async fn run(connect: &Connect, args: &RunArgs) -> anyhow::Result<()> {
    let built = if args.dir.extension().is_some_and(|e| e == BUNDLE_EXTENSION) {
        unbundle(&args.dir, Some(Kind::Command))?
    } else {
        let (file, manifest) =
            Manifest::load(&args.dir).map_err(|e| Failure::Usage(e.to_string()))?;
        build_as(file, manifest, args.no_build, Kind::Command)?
    };
    let client = connect.client()?;
    let artifact = client
        .upload_artifact(bytes::Bytes::from(built.bytes))
        .await?;
    let mut spec = built.manifest.to_job_spec(artifact.digest);
    if !args.args.is_empty() {
        spec.args = args.args.clone();
    }
    // Once: its exit status is the answer.
    spec.completions = 1;
    spec.parallelism = 1;
    spec.retries = 0;
    let name = run_name(&built.manifest.name);
    client.apply_job(&name, &spec).await?;
    let outcome = follow(&client, &name).await;
    if !args.keep {
        let _ = client.delete_job(&name).await;
    }
    let run = outcome?;
    match (run.state, run.exit_code, run.reason.as_deref()) {
        (RunState::Succeeded, _, _) => Ok(()),
        (_, Some(code), _) => Err(GuestExit(u8::try_from(code.clamp(1, 255)).unwrap_or(1)).into()),
        (_, None, why) => {
            eprintln!(
                "error: run {} on {} failed: {}{}",
                run.id,
                run.node,
                why.unwrap_or("failed"),
                run.message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            );
            Err(GuestExit(1).into())
        }
    }
}

/// A job name for one `skiff run` of `base`: unique, a DNS label.
fn run_name(base: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tag = (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)) & 0xff_ffff;
    let base: String = base.chars().take(50).collect();
    format!("{}-run-{tag:06x}", base.trim_end_matches('-'))
}

/// Streams the job's one run's output until it has finished; returns it.
async fn follow(client: &skiff_sdk::Client, job: &str) -> anyhow::Result<Run> {
    let run = loop {
        if let Some(run) = client.runs(job).await?.into_iter().next() {
            break run;
        }
        let state = client.job(job).await?;
        if state.status.state != JobState::Active {
            return Err(Failure::Rejected(format!(
                "job {job} ended without a run: {}",
                state.status.message
            ))
            .into());
        }
        tokio::time::sleep(PLACED_POLL).await;
    };
    let mut closed = false;
    client
        .run_logs(job, &run.id, true, |entry| {
            use std::io::Write as _;
            let written = match entry.stream.as_str() {
                "stdout" => writeln!(std::io::stdout(), "{}", entry.line),
                _ => writeln!(std::io::stderr(), "{}", entry.line),
            };
            closed = written.is_err();
            !closed
        })
        .await?;
    // The output ends once the run has finished; its record says how.
    loop {
        let found = client.runs(job).await?.into_iter().find(|r| r.id == run.id);
        match found {
            Some(run) if run.state.finished() => return Ok(run),
            Some(_) => tokio::time::sleep(PLACED_POLL).await,
            None => {
                return Err(
                    Failure::Rejected(format!("run {} of job {job} is gone", run.id)).into(),
                );
            }
        }
    }
}

/// `skiff jobs`.
pub async fn jobs(connect: &Connect) -> anyhow::Result<()> {
    let client = connect.client()?;
    let jobs = client.jobs().await?;
    if connect.output == Output::Json {
        return outln!("{}", serde_json::to_string_pretty(&jobs)?);
    }
    let rows: Vec<Vec<String>> = jobs.iter().map(job_row).collect();
    table(
        &["NAME", "STATE", "SUCCEEDED", "FAILED", "ACTIVE", "AGE"],
        &rows,
    )
}

fn job_row(job: &Job) -> Vec<String> {
    vec![
        job.name.clone(),
        format!("{:?}", job.status.state),
        format!("{}/{}", job.status.succeeded, job.spec.completions),
        job.status.failed.to_string(),
        job.status.active.to_string(),
        age(job.created_at),
    ]
}

/// `skiff job NAME`: the job and its runs.
pub async fn job(connect: &Connect, name: &str) -> anyhow::Result<()> {
    let client = connect.client()?;
    let job = client.job(name).await?;
    let runs = client.runs(name).await?;
    if connect.output == Output::Json {
        let both = serde_json::json!({ "job": job, "runs": runs });
        return outln!("{}", serde_json::to_string_pretty(&both)?);
    }
    outln!(
        "job {}: {:?}, {}/{} succeeded, {} failed, {} active (at most {} at once, {} retries)",
        job.name,
        job.status.state,
        job.status.succeeded,
        job.spec.completions,
        job.status.failed,
        job.status.active,
        job.spec.parallelism,
        job.spec.retries
    )?;
    if !job.status.message.is_empty() {
        outln!("  {}", job.status.message)?;
    }
    if let Some(schedule) = &job.spec.schedule {
        outln!(
            "  schedule {:?} ({}), concurrency {:?}; last fired for {}",
            schedule.cron,
            schedule.timezone.as_deref().unwrap_or("UTC"),
            schedule.concurrency_policy,
            job.status
                .last_fired
                .map(skiff_sdk::api::utc)
                .unwrap_or_else(|| "-".into())
        )?;
        if job.spec.placement.every_node {
            outln!("  fired by each matching node's own clock; its runs:")?;
            return runs_table(&runs);
        }
        let started: Vec<Vec<String>> = client
            .jobs()
            .await?
            .iter()
            .filter(|j| j.owner.as_deref() == Some(name))
            .map(job_row)
            .collect();
        return table(
            &["JOB", "STATE", "SUCCEEDED", "FAILED", "ACTIVE", "AGE"],
            &started,
        );
    }
    runs_table(&runs)
}

fn runs_table(runs: &[Run]) -> anyhow::Result<()> {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.state.as_str().to_owned(),
                r.node.clone(),
                r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                r.reason.clone().unwrap_or_default(),
                match (r.started_at, r.finished_at) {
                    (Some(a), Some(b)) => format!("{} ms", b - a),
                    (Some(_), None) => "running".to_owned(),
                    _ => String::new(),
                },
            ]
        })
        .collect();
    table(&["RUN", "STATE", "NODE", "EXIT", "REASON", "TOOK"], &rows)
}

/// `skiff logs NAME --run ID`: one run's output.
pub async fn run_logs(connect: &Connect, job: &str, run: &str, follow: bool) -> anyhow::Result<()> {
    let client = connect.client()?;
    let as_json = connect.output == Output::Json;
    let mut closed = None;
    client
        .run_logs(job, run, follow, |entry| {
            // A run is on one node: its lines alone.
            closed = crate::commands::print_entry(&entry, as_json, false).err();
            closed.is_none()
        })
        .await?;
    closed.map_or(Ok(()), Err)
}
