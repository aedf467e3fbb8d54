//! Judging what serves: each serving revision's health check, every
//! `interval_ms`, and a newly serving revision's first requests (the
//! verdict of [`crate::verdict`]). A revision that fails either stops
//! serving here and its replicas are reported Failed.

use std::sync::Arc;
use std::time::Duration;

use skiff_sdk::api::{Assignment, ReplicaState};
use tokio_util::sync::CancellationToken;

use super::{Agent, lock, sleep_or_shutdown};
use crate::Runtime;
use crate::verdict::Verdict;

/// A serving app being judged.
pub(super) struct Judged {
    revision: u64,
    health: Option<(skiff_sdk::api::HealthCheck, tokio::time::Instant, u32)>,
    /// Whether its first requests are being judged ([`crate::verdict`]).
    judging: bool,
    /// The app's counters, and their activity when last looked at.
    stats: Option<(Arc<crate::registry::AppStats>, u32)>,
}
/// How often the judge loop looks.
const JUDGE_TICK: Duration = Duration::from_millis(100);

impl Agent {
    /// Every [`JUDGE_TICK`]: runs the health checks that are due and
    /// reads the verdicts of newly serving revisions.
    pub(super) async fn judge_loop(&self, shutdown: &CancellationToken) {
        let runtime = self.router.runtime().clone();
        let mut judged_requests = None;
        loop {
            if sleep_or_shutdown(JUDGE_TICK, shutdown).await {
                return;
            }
            let due: Vec<(String, u64, skiff_sdk::api::HealthCheck)> = {
                let now = tokio::time::Instant::now();
                lock(&self.judged)
                    .iter()
                    .filter_map(|(app, w)| {
                        let (check, next, _) = w.health.as_ref()?;
                        (now >= *next).then(|| (app.clone(), w.revision, check.clone()))
                    })
                    .collect()
            };
            for (app, revision, check) in due {
                let passed = health_once(&runtime, &app, &app, &check).await;
                let failing = {
                    let mut judged = lock(&self.judged);
                    let Some(w) = judged.get_mut(&app).filter(|w| w.revision == revision) else {
                        continue;
                    };
                    let Some((_, next, failures)) = w.health.as_mut() else {
                        continue;
                    };
                    *next = tokio::time::Instant::now() + Duration::from_millis(check.interval_ms);
                    *failures = match &passed {
                        Ok(()) => 0,
                        Err(_) => *failures + 1,
                    };
                    (*failures >= check.failure_threshold).then(|| passed.clone().err())
                };
                if let Some(why) = failing {
                    self.fail_app(
                        &runtime,
                        &app,
                        revision,
                        format!("health check failing: {}", why.unwrap_or_default()),
                    );
                }
            }
            // Only apps that served requests since the last look, and
            // only if any app did.
            let recorded = crate::verdict::judged_requests();
            if judged_requests.replace(recorded) == Some(recorded) {
                continue;
            }
            let judging: Vec<(String, u64, Arc<crate::registry::AppStats>)> = lock(&self.judged)
                .iter_mut()
                .filter(|(_, w)| w.judging)
                .filter_map(|(app, w)| {
                    let (stats, seen) = w.stats.as_mut()?;
                    let now = stats.probation().activity();
                    (now != *seen).then(|| {
                        *seen = now;
                        (app.clone(), w.revision, stats.clone())
                    })
                })
                .collect();
            for (app, revision, stats) in judging {
                let verdict = stats.probation().verdict();
                if verdict == Verdict::Judging {
                    continue;
                }
                stats.probation().stop();
                if let Some(w) = lock(&self.judged).get_mut(&app) {
                    w.judging = false;
                }
                if let Verdict::Failed { broken, counted } = verdict {
                    self.fail_app(&runtime, &app, revision, format!(
                        "the app failed {broken} of its first {counted} requests here (trapped or returned an error, for more than one client)"
                    ));
                }
            }
        }
    }

    /// Stops serving `app` here and reports its replicas at `revision`
    /// Failed; requests for it go to peers.
    pub(super) fn fail_app(&self, runtime: &Arc<Runtime>, app: &str, revision: u64, why: String) {
        tracing::warn!(%app, revision, reason = %why, "replica failed while serving");
        lock(&self.judged).remove(app);
        runtime.remove(app);
        let ids: Vec<String> = self
            .assignments
            .borrow()
            .iter()
            .flat_map(|a| a.replicas.iter())
            .filter(|a| a.app == app && a.revision == revision)
            .map(|a| a.id.clone())
            .collect();
        for id in ids {
            self.set_state(&id, ReplicaState::Failed, Some(why.clone()));
        }
        // Converge again: an older revision assigned here serves instead.
        self.reconverge(Some(&[app]));
    }

    /// Judges the revision `a` now serving `app`: its health check, and
    /// (when it just took over) its first requests.
    pub(super) fn judge(&self, runtime: &Arc<Runtime>, app: &str, a: &Assignment) {
        let mut judged = lock(&self.judged);
        if judged.get(app).is_some_and(|w| w.revision == a.revision) {
            return;
        }
        let stats = runtime.app_stats(app);
        if let Some(stats) = &stats {
            stats.probation().start();
        }
        let judging = stats.is_some();
        judged.insert(
            app.to_owned(),
            Judged {
                revision: a.revision,
                health: a.spec.health.clone().map(|h| {
                    let next = tokio::time::Instant::now() + Duration::from_millis(h.interval_ms);
                    (h, next, 0)
                }),
                judging,
                stats: stats.map(|s| (s, u32::MAX)),
            },
        );
    }
}

/// Passes once `GET health.path` answers 2xx; fails after
/// `failure_threshold` answers that are not, `interval_ms` apart.
pub(super) async fn health_gate(
    runtime: &Arc<Runtime>,
    candidate: &str,
    app: &str,
    health: &skiff_sdk::api::HealthCheck,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..health.failure_threshold.max(1) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(health.interval_ms)).await;
        }
        match health_once(runtime, candidate, app, health).await {
            Ok(()) => return Ok(()),
            Err(why) => last = why,
        }
    }
    Err(format!(
        "{last} {} time(s) in a row",
        health.failure_threshold
    ))
}

/// One `GET health.path` to the deployed app `name` (reached as `host`):
/// Ok on 2xx, else what it answered.
async fn health_once(
    runtime: &Arc<Runtime>,
    name: &str,
    host: &str,
    health: &skiff_sdk::api::HealthCheck,
) -> Result<(), String> {
    use http_body_util::BodyExt as _;
    let app = runtime
        .find(name)
        .ok_or_else(|| "the app was removed while being checked".to_owned())?;
    let body = http_body_util::Empty::<bytes::Bytes>::new()
        .map_err(|never| -> hyper::Error { match never {} });
    let req = http::Request::get(health.path.as_str())
        .header(http::header::HOST, host)
        .body(body)
        .map_err(|_| format!("health path {:?} is not a valid request path", health.path))?;
    let response = runtime.handle(crate::Target::App(app), req).await;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "health check GET {} answered {}",
            health.path,
            response.status()
        ))
    }
}
