//! Calls about jobs and their runs: the user's (`/v1/jobs`) and the node
//! agent's (its runs to carry out, and its reports).

use std::time::Duration;

use http::Method;

use super::{Call, Client, ClientError, WATCH_SLACK, decode};
use crate::api::{Job, JobSpec, LogEntry, NodeRuns, Run, RunReport, RunReports};

impl Client {
    /// Creates or replaces a job (the same spec again changes nothing).
    pub async fn apply_job(&self, name: &str, spec: &JobSpec) -> Result<Job, ClientError> {
        self.json(
            "applying a job",
            Method::PUT,
            &format!("/v1/jobs/{name}"),
            Some(spec),
        )
        .await
    }

    /// One job.
    pub async fn job(&self, name: &str) -> Result<Job, ClientError> {
        self.json(
            "reading a job",
            Method::GET,
            &format!("/v1/jobs/{name}"),
            None::<&()>,
        )
        .await
    }

    /// All jobs, read a page at a time.
    pub async fn jobs(&self) -> Result<Vec<Job>, ClientError> {
        self.all_pages("listing jobs", "/v1/jobs").await
    }

    /// A job's kept runs, oldest first.
    pub async fn runs(&self, job: &str) -> Result<Vec<Run>, ClientError> {
        self.json(
            "listing runs",
            Method::GET,
            &format!("/v1/jobs/{job}/runs"),
            None::<&()>,
        )
        .await
    }

    /// Deletes a job; its runs stop.
    pub async fn delete_job(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/jobs/{name}");
        self.send(Call::new("deleting a job", Method::DELETE, &path))
            .await
            .map(drop)
    }

    /// One run's guest output, passed to `each` line by line; with
    /// `follow`, keeps reading until the run has finished and its output
    /// is all read, or `each` returns `false`.
    pub async fn run_logs(
        &self,
        job: &str,
        run: &str,
        follow: bool,
        each: impl FnMut(LogEntry) -> bool,
    ) -> Result<(), ClientError> {
        self.stream_logs(
            &format!("/v1/jobs/{job}/runs/{run}/logs?follow={follow}"),
            each,
        )
        .await
    }

    /// The runs placed on `node` that have not finished; with `after` (a
    /// version from an earlier answer), waits up to `wait` for a different
    /// set.
    pub async fn node_runs(
        &self,
        node: &str,
        after: Option<&str>,
        wait: Duration,
    ) -> Result<NodeRuns, ClientError> {
        let mut path = format!("/v1/nodes/{node}/runs?timeout_ms={}", wait.as_millis());
        if let Some(after) = after {
            path.push_str(&format!("&after={after}"));
        }
        let call = "watching runs";
        let reply = self
            .send(Call::new(call, Method::GET, &path).timeout(wait + WATCH_SLACK))
            .await?;
        decode(call, &reply)
    }

    /// Reports what became of runs on `node`.
    pub async fn report_runs(&self, node: &str, reports: &[RunReport]) -> Result<(), ClientError> {
        let path = format!("/v1/nodes/{node}/runs");
        let call = "reporting runs";
        let body = serde_json::to_vec(&RunReports {
            reports: reports.to_vec(),
        })
        .map_err(|e| ClientError::Unexpected {
            call,
            status: http::StatusCode::OK,
            detail: format!("encoding the request: {e}"),
        })?;
        self.send(Call::new(call, Method::POST, &path).body("application/json", body.into()))
            .await
            .map(drop)
    }
}
