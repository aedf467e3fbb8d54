//! Converging: make the runtime run what the assignments say. For each
//! app, the newest revision whose component loads and starts serves; the
//! replicas of older revisions assigned here are served by it.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skiff_sdk::api::{Assignment, Assignments, ReplicaState};
use skiff_sdk::capability::OutboundRules;
use tokio_util::sync::CancellationToken;

use super::fetch::Load;
use super::{Agent, gates, lock, sleep_or_shutdown};
use crate::{Capabilities, Deployment, Runtime};
use skiff_sdk::error_chain;

/// Whether a new revision's health gate runs inline or in the background
/// (see `gates`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gating {
    Inline,
    Background,
}

/// What starting a revision came to.
enum Started {
    /// It serves.
    Serving,
    /// Its health gate is still running.
    Checking,
}

/// How often replicas whose artifact could not be fetched are retried.
const PENDING_RETRY: Duration = Duration::from_secs(2);

/// Which apps the next converge looks at.
#[derive(Debug, Default)]
pub(super) struct Unconverged {
    all: bool,
    apps: HashSet<String>,
}

impl Unconverged {
    pub(super) fn everything() -> Self {
        Self {
            all: true,
            apps: HashSet::new(),
        }
    }

    pub(super) fn mark<'a>(&mut self, apps: impl IntoIterator<Item = &'a str>) {
        if !self.all {
            self.apps.extend(apps.into_iter().map(str::to_owned));
        }
    }

    pub(super) fn mark_all(&mut self) {
        self.all = true;
        self.apps.clear();
    }

    /// The apps to converge (`None`: all), leaving none marked.
    fn take(&mut self) -> Option<HashSet<String>> {
        let apps = std::mem::take(&mut self.apps);
        (!std::mem::take(&mut self.all)).then_some(apps)
    }
}

/// How often the disk is pruned at most (after changes to the assignments).
const PRUNE_EVERY: Duration = Duration::from_secs(1);

impl Agent {
    /// Converges on every change of the assignments (and retries those
    /// still waiting for an artifact).
    pub(super) async fn converge_loop(self: &Arc<Self>, shutdown: &CancellationToken) {
        let mut rx = self.assignments.subscribe();
        loop {
            let (current, apps) = {
                // Taken together with what marks them (see `reconverge`).
                let mut unconverged = lock(&self.unconverged);
                (rx.borrow_and_update().clone(), unconverged.take())
            };
            let pending = match &current {
                Some(assignments) => {
                    self.converge_apps(assignments, apps.as_ref(), Gating::Background)
                        .await
                }
                None => Vec::new(),
            };
            let retry = !pending.is_empty();
            if retry {
                lock(&self.unconverged).mark(pending.iter().map(String::as_str));
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = self.gate_done.notified() => {}
                () = tokio::time::sleep(PENDING_RETRY), if retry => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Prunes the disk after the assignments changed, at most once per
    /// [`PRUNE_EVERY`] (a burst of 10,000 changes is one prune).
    pub(super) async fn prune_loop(self: &Arc<Self>, shutdown: &CancellationToken) {
        loop {
            tokio::select! {
                () = self.prune_wanted.notified() => {}
                () = shutdown.cancelled() => return,
            }
            let current = self.assignments.borrow().clone();
            if let Some(assignments) = current {
                // Local activations serve dormant copies, which are kept.
                let kept = self.kept_components(&assignments);
                lock(&self.loaded).retain(|digest, _| kept.contains(digest));
                self.prune(self.router.runtime().clone(), &assignments)
                    .await;
            }
            if sleep_or_shutdown(PRUNE_EVERY, shutdown).await {
                return;
            }
        }
    }

    /// Brings the runtime in line with all of `assignments`; returns
    /// whether some replica still waits for its artifact.
    /// Health gates run inline: used before the ingress opens, so a
    /// restarted node serves from its first request.
    pub(super) async fn converge(&self, assignments: &Assignments) -> bool {
        !self
            .converge_apps(assignments, None, Gating::Inline)
            .await
            .is_empty()
    }

    /// Brings `apps` (all: `None`) in line with `assignments`; returns the
    /// apps with a replica still waiting for its artifact.
    async fn converge_apps(
        &self,
        assignments: &Assignments,
        apps: Option<&HashSet<String>>,
        gating: Gating,
    ) -> Vec<String> {
        let mut ended = Vec::new();
        let assignments = &*self.effective(assignments, &mut ended);
        let with_ended: Option<HashSet<String>>;
        let apps = match apps {
            Some(apps) if !ended.is_empty() => {
                with_ended = Some(apps.iter().cloned().chain(ended).collect());
                with_ended.as_ref()
            }
            apps => apps,
        };
        let pending = self.converge_on(assignments, apps, gating).await;
        self.remember_dormant(assignments, apps);
        // Held requests look again at what serves now.
        self.router.routes_changed();
        if pending.is_empty() {
            self.prune_wanted.notify_one();
        }
        pending
    }

    async fn converge_on(
        &self,
        assignments: &Assignments,
        apps: Option<&HashSet<String>>,
        gating: Gating,
    ) -> Vec<String> {
        let runtime = self.router.runtime().clone();
        let wanted = |app: &str| apps.is_none_or(|apps| apps.contains(app));
        let mut by_app: BTreeMap<&str, Vec<&Assignment>> = BTreeMap::new();
        for a in assignments.replicas.iter().filter(|a| wanted(&a.app)) {
            by_app.entry(a.app.as_str()).or_default().push(a);
        }

        // Forget what is no longer assigned.
        let gone: Vec<String> = match apps {
            None => runtime
                .apps()
                .into_iter()
                .filter(|app| !by_app.contains_key(app.as_str()))
                .collect(),
            Some(apps) => apps
                .iter()
                .filter(|app| !by_app.contains_key(app.as_str()))
                .cloned()
                .collect(),
        };
        for app in gone {
            lock(&self.judged).remove(&app);
            lock(&self.gates).stop(&app);
            if runtime.remove(&app) {
                tracing::info!(%app, "app no longer assigned here: removed");
            }
        }
        // The states of replicas no longer assigned go (by set, not by
        // scanning: a node may hold 10,000 assignments).
        let forgotten = {
            let mut converged = lock(&self.converged);
            let mut forgotten = Vec::new();
            let looked_at: Vec<String> = match apps {
                None => converged.keys().cloned().collect(),
                Some(apps) => apps.iter().cloned().collect(),
            };
            for app in looked_at {
                let now: Vec<String> = by_app
                    .get(app.as_str())
                    .map(|rs| rs.iter().map(|a| a.id.clone()).collect())
                    .unwrap_or_default();
                let before = converged.remove(&app).unwrap_or_default();
                forgotten.extend(before.into_iter().filter(|id| !now.contains(id)));
                if !now.is_empty() {
                    converged.insert(app, now);
                }
            }
            for (app, rs) in &by_app {
                converged
                    .entry((*app).to_owned())
                    .or_insert_with(|| rs.iter().map(|a| a.id.clone()).collect());
            }
            forgotten
        };
        let all_ids: Option<HashSet<&str>> = apps
            .is_none()
            .then(|| assignments.replicas.iter().map(|a| a.id.as_str()).collect());
        {
            let mut replicas = lock(&self.replicas);
            for id in &forgotten {
                replicas.remove(id);
            }
            if let Some(all) = &all_ids {
                let unassigned: Vec<String> = replicas
                    .ids()
                    .filter(|id| !all.contains(id.as_str()))
                    .cloned()
                    .collect();
                for id in unassigned {
                    replicas.remove(&id);
                }
            }
        }

        self.follow_workers(apps, &by_app);
        let mut pending = Vec::new();
        for (app, replicas) in by_app {
            let http: Vec<&Assignment> = replicas
                .iter()
                .filter(|a| a.spec.kind.is_http())
                .copied()
                .collect();
            if http.is_empty() {
                // Workers only (see `workers`): nothing serves HTTP.
                runtime.remove(app);
                continue;
            }
            if self.converge_app(&runtime, app, &http, gating).await {
                pending.push(app.to_owned());
            }
        }
        pending
    }

    async fn converge_app(
        &self,
        runtime: &Arc<Runtime>,
        app: &str,
        replicas: &[&Assignment],
        gating: Gating,
    ) -> bool {
        // Load every revision's component (and files), then plan.
        let mut loads = Vec::with_capacity(replicas.len());
        for &a in replicas {
            let load = match self
                .load(runtime, &a.spec.artifact, a.spec.source.as_deref())
                .await
            {
                Load::Ready => {
                    self.mount_files(&a.spec.files, a.spec.source.as_deref())
                        .await
                }
                other => other,
            };
            loads.push((a, load));
        }
        let plan = serving_plan(loads, |id| self.state_of(id));
        for (a, why) in &plan.pending {
            self.set_state(&a.id, ReplicaState::Pending, Some(why.clone()));
        }
        for (a, why) in &plan.failed {
            self.set_state(&a.id, ReplicaState::Failed, Some(why.clone()));
        }
        let pending = !plan.pending.is_empty();
        for candidate in &plan.candidates {
            let (revision, serving) = (candidate.revision, &candidate.serving);
            let started = if candidate.running {
                // Already serving (re-deploying the same spec is a no-op).
                runtime
                    .deploy(self.app_spec(app, serving[0], serving.len()))
                    .map(|()| Started::Serving)
                    .map_err(|e| error_chain(&e))
            } else {
                for a in serving {
                    self.set_state(&a.id, ReplicaState::Starting, None);
                }
                self.start_revision(runtime, app, serving, gating).await
            };
            match started {
                // What serves now keeps serving; the gate wakes the loop.
                Ok(Started::Checking) => return true,
                Ok(Started::Serving) => {
                    for a in &candidate.up_to {
                        self.set_state(&a.id, ReplicaState::Ready, None);
                    }
                    self.judge(runtime, app, serving[0]);
                    return pending;
                }
                Err(why) => {
                    tracing::warn!(%app, revision, error = %why, "replica failed to start");
                    for a in serving {
                        self.set_state(&a.id, ReplicaState::Failed, Some(why.clone()));
                    }
                }
            }
        }
        runtime.remove(app);
        lock(&self.judged).remove(app);
        pending
    }

    /// Starts a revision and switches the app's traffic to it only once it
    /// proved itself: instantiated under its quota and, when it has a
    /// health check, answering 2xx on it. Until then the previous revision
    /// (if any) keeps serving; a candidate with a health check is tried
    /// under a name no request can route to.
    /// In the background (see `gates`), a revision whose gate is still
    /// running is `Checking`.
    async fn start_revision(
        &self,
        runtime: &Arc<Runtime>,
        app: &str,
        serving: &[&Assignment],
        gating: Gating,
    ) -> Result<Started, String> {
        let first = serving[0];
        let spec = self.app_spec(app, first, serving.len());
        if let Some(health) = &first.spec.health {
            match gating {
                Gating::Inline => {
                    let candidate = format!("{app}@{}", first.revision);
                    gates::check(runtime, &candidate, app, spec.clone(), health).await?;
                }
                Gating::Background => match self.gate_verdict(runtime, app, first, &spec, health) {
                    None => return Ok(Started::Checking),
                    Some(verdict) => verdict?,
                },
            }
        }
        runtime.deploy(spec).map_err(|e| error_chain(&e))?;
        runtime
            .instantiate_once(app)
            .await
            .map(|_| Started::Serving)
            .map_err(|e| error_chain(&e))
    }

    pub(super) fn app_spec(&self, app: &str, a: &Assignment, replicas: usize) -> Deployment {
        let files = (!a.spec.files.is_empty()).then(|| self.state.mount_dir(&a.spec.files));
        app_spec(app, a, replicas, files)
    }
}

/// The runtime spec of `app` running `a`'s revision with `replicas`
/// replicas' worth of concurrency, its files laid out in `files`.
fn app_spec(app: &str, a: &Assignment, replicas: usize, files: Option<PathBuf>) -> Deployment {
    let mut quota = a.spec.quota;
    // Each replica brings its own concurrency slots (and reservation).
    quota.concurrency = quota
        .concurrency
        .saturating_mul(u32::try_from(replicas).unwrap_or(u32::MAX));
    Deployment {
        name: app.to_owned(),
        digest: a.spec.artifact,
        quota,
        env: a.spec.env.clone().into_iter().collect(),
        capabilities: Capabilities {
            outbound: granted(app, &a.spec.allowed_outbound_hosts),
            files,
        },
    }
}

/// The outbound grants of `app` (an app's, a job's or a worker's). The
/// controller validated the entries; one that does not parse here grants
/// nothing rather than everything.
pub(super) fn granted(app: &str, hosts: &[String]) -> Arc<OutboundRules> {
    Arc::new(OutboundRules::parse(hosts).unwrap_or_else(|(i, e)| {
        tracing::warn!(%app, entry = i, error = %e, "outbound grant ignored");
        OutboundRules::default()
    }))
}

/// What converging one app means, decided from plain data: the replicas
/// whose component or files are not here yet, those that can never run
/// here, and the revisions to try, newest first.
#[derive(Debug, Default)]
pub(super) struct ServingPlan<'a> {
    /// Waiting for their component or files, and why (retried).
    pub pending: Vec<(&'a Assignment, String)>,
    /// Cannot load here, and why (their revision would fail the same way).
    pub failed: Vec<(&'a Assignment, String)>,
    /// The revisions to try, newest first: the first that starts serves,
    /// and with it every older replica assigned here.
    pub candidates: Vec<Candidate<'a>>,
}

/// One revision to try.
#[derive(Debug)]
pub(super) struct Candidate<'a> {
    /// Its number.
    pub revision: u64,
    /// Its replicas here.
    pub serving: Vec<&'a Assignment>,
    /// The replicas it serves once it runs: its own and older revisions'.
    pub up_to: Vec<&'a Assignment>,
    /// Whether it already serves (all its replicas are Ready).
    pub running: bool,
}

/// Plans one app from each replica's load result and its reported state.
/// Pure: no runtime, no disk, no clock.
pub(super) fn serving_plan<'a>(
    loads: Vec<(&'a Assignment, Load)>,
    state_of: impl Fn(&str) -> Option<ReplicaState>,
) -> ServingPlan<'a> {
    let mut plan = ServingPlan::default();
    let mut loadable: Vec<&Assignment> = Vec::new();
    for (a, load) in loads {
        match load {
            // A replica that failed stays failed: its revision would fail
            // the same way here.
            Load::Ready if state_of(&a.id) == Some(ReplicaState::Failed) => {}
            Load::Ready => loadable.push(a),
            Load::Missing(why) => plan.pending.push((a, why)),
            Load::Failed(why) => plan.failed.push((a, why)),
        }
    }
    let mut revisions: Vec<u64> = loadable.iter().map(|a| a.revision).collect();
    revisions.sort_unstable();
    revisions.dedup();
    for &revision in revisions.iter().rev() {
        let serving: Vec<&Assignment> = loadable
            .iter()
            .copied()
            .filter(|a| a.revision == revision)
            .collect();
        let up_to = loadable
            .iter()
            .copied()
            .filter(|a| a.revision <= revision)
            .collect();
        let running = serving
            .iter()
            .all(|a| state_of(&a.id) == Some(ReplicaState::Ready));
        plan.candidates.push(Candidate {
            revision,
            serving,
            up_to,
            running,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(id: &str, revision: u64) -> Assignment {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "app": "web",
            "revision": revision,
            "spec": { "artifact": skiff_sdk::Digest::of(&revision.to_le_bytes()) },
        }))
        .unwrap()
    }

    fn ids(list: &[&Assignment]) -> Vec<String> {
        list.iter().map(|a| a.id.clone()).collect()
    }

    #[test]
    fn the_newest_loadable_revision_is_tried_first_and_serves_the_older_ones() {
        let (old, new, newer) = (replica("a", 1), replica("b", 2), replica("c", 3));
        let plan = serving_plan(
            vec![
                (&old, Load::Ready),
                (&new, Load::Ready),
                (&newer, Load::Missing("downloading".into())),
            ],
            |id| (id == "a").then_some(ReplicaState::Ready),
        );
        assert_eq!(
            ids(&plan.pending.iter().map(|(a, _)| *a).collect::<Vec<_>>()),
            ["c"]
        );
        assert!(plan.failed.is_empty());
        let tried: Vec<(u64, bool)> = plan
            .candidates
            .iter()
            .map(|c| (c.revision, c.running))
            .collect();
        assert_eq!(tried, [(2, false), (1, true)]);
        assert_eq!(ids(&plan.candidates[0].up_to), ["a", "b"]);
        assert_eq!(ids(&plan.candidates[1].up_to), ["a"]);
    }

    #[test]
    fn failed_replicas_stay_failed_and_unloadable_ones_fail() {
        let (old, new) = (replica("a", 1), replica("b", 2));
        let plan = serving_plan(
            vec![
                (&old, Load::Ready),
                (&new, Load::Failed("not a component".into())),
            ],
            |_| None,
        );
        assert_eq!(plan.failed.len(), 1);
        assert_eq!(plan.failed[0].0.id, "b");
        assert_eq!(plan.candidates.len(), 1);
        assert_eq!(plan.candidates[0].revision, 1);

        let plan = serving_plan(vec![(&new, Load::Ready)], |_| Some(ReplicaState::Failed));
        assert!(
            plan.candidates.is_empty(),
            "a failed revision is not retried here"
        );
        assert!(plan.failed.is_empty() && plan.pending.is_empty());
    }

    #[test]
    fn a_revision_is_running_only_when_all_its_replicas_are_ready() {
        let (one, two) = (replica("a", 4), replica("b", 4));
        let plan = serving_plan(vec![(&one, Load::Ready), (&two, Load::Ready)], |id| {
            (id == "a").then_some(ReplicaState::Ready)
        });
        assert_eq!(plan.candidates.len(), 1);
        assert!(!plan.candidates[0].running);
        assert_eq!(ids(&plan.candidates[0].serving), ["a", "b"]);
    }
}
