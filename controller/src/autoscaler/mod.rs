//! The autoscaler: on the leader, once a [`TICK`], turns the demand nodes
//! report ([`Demand`](crate::informer::Demand)) into replica counts for the
//! apps with a `[scale]` section, through the pure [`decide`]. Every change
//! is written with an `AppScaled` event saying why; the reconciler then
//! places or retires replicas under the rollout rules that exist.
//!
//! Only the apps with a `[scale]` section are looked at, and only the
//! leader does it. The history of demand is in memory: a new leader starts
//! a fresh one (and so scales nothing down for a window).

mod decide;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use skiff_sdk::api::App;
use skiff_sdk::scale::Metric;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use decide::{Decision, PANIC_THRESHOLD, ScaleState, decide};

use crate::informer::Informer;
use crate::store::{Store, StoreError, now_ms};

/// How often demand is sampled and decided on: nodes report once a
/// heartbeat (1 s by default).
pub const TICK: Duration = Duration::from_secs(1);

/// Runs the autoscaler while this controller leads, until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    informer: Arc<Informer>,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let mut states: HashMap<String, ScaleState> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            () = shutdown.cancelled() => return,
        }
        if !*leader.borrow() {
            states.clear();
            continue;
        }
        let now = now_ms();
        // The apps awake and those in demand or woken: 10,000 apps asleep
        // with nothing asking for them cost a tick nothing.
        let scaled: Vec<Arc<App>> = {
            let mut names = informer.demand().active(now);
            let picture = informer.read();
            names.extend(picture.awake_scaled().iter().cloned());
            names.sort_unstable();
            names.dedup();
            names
                .iter()
                .filter_map(|n| picture.apps.get(n))
                .filter(|a| a.spec.scale.is_some())
                .cloned()
                .collect()
        };
        let names: std::collections::HashSet<&str> =
            scaled.iter().map(|a| a.name.as_str()).collect();
        states.retain(|name, _| names.contains(name.as_str()));
        for app in scaled {
            let Some(spec) = app.spec.scale else { continue };
            let totals = informer.demand().totals(&app.name, now);
            let demand = match spec.metric() {
                Metric::Concurrency(_) => totals.concurrency.max(f64::from(totals.in_flight)),
                Metric::Rps(_) => totals.rps,
            };
            let state = states
                .entry(app.name.clone())
                .or_insert_with(|| ScaleState::new(now));
            state.observe(now, demand, spec.window_ms);
            if let Some(at) = informer.demand().woken_at(&app.name) {
                state.active(at);
            }
            let Some(decision) = decide(&spec, app.spec.replicas, state, now) else {
                continue;
            };
            tracing::info!(app = %app.name, replicas = decision.replicas, why = %decision.why, "autoscaling");
            match store
                .autoscale_app(
                    &app.name,
                    decision.replicas,
                    Some(app.version),
                    &decision.why,
                )
                .await
            {
                // Changed meanwhile (a deploy, a wake-up): decided again
                // at the next tick from the new version.
                Ok(_) | Err(StoreError::Conflict(_) | StoreError::NotFound { .. }) => {}
                Err(error) => {
                    tracing::warn!(app = %app.name, error = %skiff_sdk::error_chain(&error), "autoscaling failed")
                }
            }
        }
    }
}
