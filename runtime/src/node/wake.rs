//! Waking sleeping apps. A request for an app with no ready replica that
//! may sleep (`scale.min = 0`) is held by the router, which asks the agent
//! to wake the app. The agent then
//!
//! - activates it **locally** at once when it still has the app's last
//!   assignment here (the app slept on this node; its component stays
//!   loaded while it sleeps), so the held requests are served in
//!   milliseconds whether or not the controller answers; and
//! - asks the controller for a replica (`POST /v1/nodes/{name}/activate`),
//!   saying whether it serves the app locally already: the controller then
//!   prefers to place the replica here. A local activation the controller
//!   has not acknowledged is reported again every [`TELL_AGAIN`] (the
//!   controller may be away: edge autonomy).
//!
//! A local activation ends once the controller's assignments give this
//! node a replica of the app (which then serves), or a peer serves it.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use skiff_sdk::Digest;
use skiff_sdk::api::{Assignment, Assignments, ReplicaState};
use skiff_sdk::scale::Activate;
use tokio_util::sync::CancellationToken;

use super::{Agent, lock};

/// Ids of locally activated replicas start with this (never a controller's
/// replica id); they are not reported with heartbeats.
pub(super) const LOCAL_PREFIX: &str = "~local/";
/// How often a local activation the controller has not acknowledged is
/// reported again.
const TELL_AGAIN: Duration = Duration::from_secs(1);

/// An app this node serves from its own copy while asleep elsewhere.
#[derive(Debug)]
pub(super) struct LocalActivation {
    assignment: Assignment,
    acknowledged: bool,
}

impl Agent {
    /// Wakes the apps the router holds requests for, and reports local
    /// activations until the controller has heard of them.
    pub(super) async fn wake_loop(self: &Arc<Self>, shutdown: &CancellationToken) {
        let mut again = tokio::time::interval(TELL_AGAIN);
        again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The controller is told in tasks of their own, so that a slow
        // answer never delays the next wake-up (owned here: dropped, they
        // are aborted).
        let mut telling = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                () = self.router.wake_requested.notified() => {}
                _ = again.tick() => {}
                Some(_) = telling.join_next() => continue,
                () = shutdown.cancelled() => return,
            }
            let wakes = self.router.take_wakes();
            // Locally first, all of them: serving must not wait for the
            // controller's answers.
            let asks: Vec<(String, bool)> = wakes
                .into_iter()
                .map(|app| {
                    let local = self.activate_locally(&app);
                    (app, local)
                })
                .collect();
            let unacknowledged: Vec<(String, bool)> = lock(&self.local)
                .iter()
                .filter(|(app, l)| !l.acknowledged && !asks.iter().any(|(a, _)| a == *app))
                .map(|(app, _)| (app.clone(), true))
                .collect();
            for (app, local) in asks.into_iter().chain(unacknowledged) {
                let agent = self.clone();
                telling.spawn(async move { agent.tell(&app, local).await });
            }
        }
    }

    /// Starts serving `app` from its last assignment here, if there is one;
    /// returns whether the app is (now) served locally.
    fn activate_locally(&self, app: &str) -> bool {
        if lock(&self.local).contains_key(app) {
            return true;
        }
        let Some(mut assignment) = lock(&self.dormant).get(app).cloned() else {
            return false;
        };
        assignment.id = format!("{LOCAL_PREFIX}{app}");
        tracing::info!(%app, "waking a sleeping app from its copy on this node");
        // Served at once: this revision already proved itself here (it was
        // Ready) and its component is still loaded. The next converge
        // takes it over like any replica.
        let deployed = self
            .router
            .runtime()
            .deploy(self.app_spec(app, &assignment, 1));
        if let Err(error) = deployed {
            tracing::warn!(%app, error = %skiff_sdk::error_chain(&error), "waking locally failed");
            return false;
        }
        self.set_state(&assignment.id, ReplicaState::Ready, None);
        self.router.routes_changed();
        lock(&self.local).insert(
            app.to_owned(),
            LocalActivation {
                assignment,
                acknowledged: false,
            },
        );
        self.reconverge(Some(&[app]));
        true
    }

    async fn tell(&self, app: &str, local: bool) {
        let session = lock(&self.session).clone();
        let Some(client) = session else {
            return;
        };
        let ask = Activate {
            app: app.to_owned(),
            local,
        };
        match client.activate(&self.config.name, &ask).await {
            Ok(()) => {
                if let Some(l) = lock(&self.local).get_mut(app) {
                    l.acknowledged = true;
                }
            }
            Err(error) => {
                tracing::debug!(%app, error = %skiff_sdk::error_chain(&error), "asking for an activation failed")
            }
        }
    }

    /// Remembers the replicas of apps that may sleep once they proved
    /// themselves here (Ready), so that a request after they slept can wake
    /// them here.
    pub(super) fn remember_dormant(
        &self,
        assignments: &Assignments,
        apps: Option<&std::collections::HashSet<String>>,
    ) {
        let mut dormant = lock(&self.dormant);
        let looked_at = assignments
            .replicas
            .iter()
            .filter(|a| apps.is_none_or(|apps| apps.contains(&a.app)));
        for a in looked_at {
            let sleeps = a.spec.scale.is_some_and(|s| s.min == 0);
            if sleeps
                && dormant.get(&a.app).is_none_or(|d| d.revision < a.revision)
                && self.state_of(&a.id) == Some(ReplicaState::Ready)
            {
                dormant.insert(a.app.clone(), a.clone());
            }
        }
    }

    /// The assignments to converge on: the controller's, plus the local
    /// activations still needed.
    /// The apps whose local activation ends are added to `ended` (they
    /// are converged anew).
    pub(super) fn effective<'a>(
        &self,
        assignments: &'a Assignments,
        ended: &mut Vec<String>,
    ) -> Cow<'a, Assignments> {
        let mut local = lock(&self.local);
        if local.is_empty() {
            return Cow::Borrowed(assignments);
        }
        let assigned: HashSet<&str> = assignments
            .replicas
            .iter()
            .map(|a| a.app.as_str())
            .collect();
        local.retain(|app, _| {
            let keep = !assigned.contains(app.as_str()) && !self.router.has_peers(app);
            if !keep {
                tracing::info!(%app, "local activation handed over to the controller's replica");
                ended.push(app.clone());
            }
            keep
        });
        if local.is_empty() {
            return Cow::Borrowed(assignments);
        }
        let mut all = assignments.clone();
        all.replicas
            .extend(local.values().map(|l| l.assignment.clone()));
        Cow::Owned(all)
    }

    /// Components to keep loaded: the assigned ones and those of apps
    /// asleep here (so waking costs no compile or load).
    pub(super) fn kept_components(&self, assignments: &Assignments) -> HashSet<Digest> {
        assignments
            .replicas
            .iter()
            .map(|a| a.spec.artifact)
            .chain(lock(&self.dormant).values().map(|a| a.spec.artifact))
            .collect()
    }

    /// The assignments of apps asleep here, for pruning: their components
    /// and files stay on disk.
    pub(super) fn dormant_assignments(&self) -> Vec<Assignment> {
        lock(&self.dormant).values().cloned().collect()
    }
}
