//! The autoscaling decision, pure: a window of demand samples, the current
//! replica count and the app's `[scale]` in; the count to set and why out.
//!
//! As in Knative's autoscaler: the stable average over `window` sets the
//! count; a panic average over a tenth of it takes over when it asks for at
//! least [`PANIC_THRESHOLD`] times the current count, and while panicking
//! (one stable window) the count never goes down. A lower count must be
//! recommended for the whole `scale_down_delay` before it is applied, and
//! an app goes to zero only after `idle` without any demand. Nothing scales
//! down before a full window was observed (a new leader knows no history).

use std::collections::VecDeque;

use skiff_sdk::scale::{Metric, ScaleSpec};

/// The panic average must ask for this many times the current replicas.
pub const PANIC_THRESHOLD: f64 = 2.0;

/// One app's demand history, as the autoscaler saw it.
#[derive(Clone, Debug)]
pub struct ScaleState {
    /// (Unix ms, demand: in flight or requests/s, as the metric says).
    samples: VecDeque<(i64, f64)>,
    /// (Unix ms, recommended count) within the scale-down delay.
    recommended: VecDeque<(i64, u32)>,
    /// Last time demand was seen (or the app was woken).
    last_active: i64,
    /// Panic mode lasts until then.
    panic_until: Option<i64>,
    /// When this history began.
    since: i64,
}

/// What to set, and the event message saying why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The new replica count.
    pub replicas: u32,
    /// E.g. `Scaled up 2 → 5: 48.0 in flight over target 10`.
    pub why: String,
}

impl ScaleState {
    /// A history beginning at `now` (the app counts as active then).
    pub fn new(now: i64) -> Self {
        Self {
            samples: VecDeque::new(),
            recommended: VecDeque::new(),
            last_active: now,
            panic_until: None,
            since: now,
        }
    }

    /// Records the demand at `now`.
    pub fn observe(&mut self, now: i64, demand: f64, window_ms: u64) {
        self.samples.push_back((now, demand));
        let horizon = now - i64::try_from(window_ms).unwrap_or(i64::MAX);
        while self.samples.front().is_some_and(|(at, _)| *at <= horizon) {
            self.samples.pop_front();
        }
        if demand > 0.0 {
            self.last_active = now;
        }
    }

    /// The app was active at `at` (e.g. a request woke it).
    pub fn active(&mut self, at: i64) {
        self.last_active = self.last_active.max(at);
    }

    fn average(&self, now: i64, span_ms: u64) -> f64 {
        let horizon = now - i64::try_from(span_ms).unwrap_or(i64::MAX);
        let (sum, n) = self
            .samples
            .iter()
            .filter(|(at, _)| *at > horizon)
            .fold((0.0, 0u32), |(s, n), (_, d)| (s + d, n + 1));
        if n == 0 { 0.0 } else { sum / f64::from(n) }
    }
}

/// The replica count `spec` wants at `now` for an app running `current`,
/// or `None` to leave it.
pub fn decide(
    spec: &ScaleSpec,
    current: u32,
    state: &mut ScaleState,
    now: i64,
) -> Option<Decision> {
    let (target, unit) = match spec.metric() {
        Metric::Concurrency(t) => (f64::from(t), "in flight"),
        Metric::Rps(t) => (f64::from(t), "requests/s"),
    };
    let stable = state.average(now, spec.window_ms);
    let panic = state.average(now, (spec.window_ms / 10).max(1));
    let wants = |demand: f64| (demand / target).ceil().min(f64::from(u32::MAX)) as u32;
    let (want_stable, want_panic) = (wants(stable), wants(panic));

    if f64::from(want_panic) >= PANIC_THRESHOLD * f64::from(current.max(1)) && want_panic > current
    {
        state.panic_until = Some(now + i64::try_from(spec.window_ms).unwrap_or(i64::MAX));
    }
    let panicking = state.panic_until.is_some_and(|until| now < until);
    let (mut want, demand) = if panicking {
        (want_panic.max(current), panic)
    } else {
        (want_stable, stable)
    };

    // A lower count must hold for the whole scale-down delay.
    let delay = i64::try_from(spec.scale_down_delay_ms).unwrap_or(i64::MAX);
    state.recommended.push_back((now, want));
    while state
        .recommended
        .front()
        .is_some_and(|(at, _)| now - *at > delay)
    {
        state.recommended.pop_front();
    }
    if want < current {
        want = state
            .recommended
            .iter()
            .map(|(_, w)| *w)
            .max()
            .unwrap_or(want)
            .min(current);
    }

    let idle_for = now - state.last_active;
    let asleep = want == 0 && idle_for >= i64::try_from(spec.idle_ms).unwrap_or(i64::MAX);
    if want == 0 && !asleep {
        // Quiet, but not for long enough to sleep: keep one if running.
        want = current.min(1);
    }
    let want = spec.clamp(want);
    let observed_long_enough =
        now - state.since >= i64::try_from(spec.window_ms).unwrap_or(i64::MAX);
    if want == current || (want < current && !observed_long_enough) {
        return None;
    }
    let why = if want > current {
        format!("Scaled up {current} → {want}: {demand:.1} {unit} over target {target}")
    } else if want == 0 {
        format!(
            "Scaled to zero ({current} → 0): no requests for {}s",
            idle_for / 1000
        )
    } else {
        format!(
            "Scaled down {current} → {want}: {demand:.1} {unit} over {}s against target {target}",
            spec.window_ms / 1000
        )
    };
    Some(Decision {
        replicas: want,
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ScaleSpec {
        ScaleSpec {
            min: 0,
            max: 20,
            target_concurrency: Some(10),
            window_ms: 10_000,
            scale_down_delay_ms: 3_000,
            idle_ms: 20_000,
            ..ScaleSpec::default()
        }
    }

    /// Feeds `demand` once a second from `from` for `secs` seconds, applying
    /// each decision; returns the replicas at the end and the messages.
    fn run(
        spec: &ScaleSpec,
        state: &mut ScaleState,
        replicas: &mut u32,
        from: i64,
        secs: i64,
        demand: f64,
    ) -> Vec<String> {
        let mut why = Vec::new();
        for s in 0..secs {
            let now = from + s * 1000;
            state.observe(now, demand, spec.window_ms);
            if let Some(d) = decide(spec, *replicas, state, now) {
                *replicas = d.replicas;
                why.push(d.why);
            }
        }
        why
    }

    #[test]
    fn steady_load_settles_on_demand_over_target() {
        let spec = spec();
        let mut state = ScaleState::new(0);
        let mut replicas = 1;
        run(&spec, &mut state, &mut replicas, 0, 30, 45.0);
        assert_eq!(replicas, 5);
    }

    #[test]
    fn a_burst_panics_up_at_once_and_never_down_while_panicking() {
        let spec = spec();
        let mut state = ScaleState::new(0);
        let mut replicas = 1;
        run(&spec, &mut state, &mut replicas, 0, 12, 5.0);
        assert_eq!(replicas, 1);
        let why = run(&spec, &mut state, &mut replicas, 12_000, 1, 80.0);
        assert_eq!(replicas, 8, "the panic window (1 s) sees the burst at once");
        assert_eq!(why, ["Scaled up 1 → 8: 80.0 in flight over target 10"]);
        // The burst ends: still panicking for a window, so it holds.
        run(&spec, &mut state, &mut replicas, 13_000, 5, 0.0);
        assert_eq!(replicas, 8);
        // Then the stable average (and the delay) bring it down.
        run(&spec, &mut state, &mut replicas, 18_000, 10, 0.0);
        assert_eq!(replicas, 1, "quiet, not idle long enough to sleep");
    }

    #[test]
    fn scale_down_waits_for_the_delay() {
        let spec = spec();
        let mut state = ScaleState::new(0);
        let mut replicas = 1;
        run(&spec, &mut state, &mut replicas, 0, 20, 40.0);
        assert_eq!(replicas, 4);
        // Demand halves: the stable average falls over the window, and a
        // lower count applies only once recommended for 3 s.
        let why = run(&spec, &mut state, &mut replicas, 20_000, 30, 20.0);
        assert_eq!(replicas, 2);
        assert!(why.iter().all(|w| w.starts_with("Scaled down")), "{why:?}");
    }

    #[test]
    fn idle_apps_sleep_and_the_floor_holds() {
        let spec = spec();
        let mut state = ScaleState::new(0);
        let mut replicas = 2;
        let why = run(&spec, &mut state, &mut replicas, 0, 25, 0.0);
        assert_eq!(replicas, 0);
        assert_eq!(
            why.last().unwrap(),
            "Scaled to zero (1 → 0): no requests for 20s"
        );
        // At zero and quiet: nothing to do.
        assert!(run(&spec, &mut state, &mut replicas, 25_000, 10, 0.0).is_empty());
        // Held requests at zero bring it back.
        run(&spec, &mut state, &mut replicas, 35_000, 1, 3.0);
        assert_eq!(replicas, 1);

        let floor = ScaleSpec { min: 2, ..spec };
        let mut state = ScaleState::new(0);
        let mut replicas = 5;
        run(&floor, &mut state, &mut replicas, 0, 60, 0.0);
        assert_eq!(replicas, 2, "never below min");
        let mut replicas = 25;
        run(&floor, &mut state, &mut replicas, 60_000, 1, 1000.0);
        assert_eq!(replicas, 20, "never above max");
    }

    #[test]
    fn a_new_history_does_not_scale_down_before_a_window() {
        let spec = spec();
        let mut state = ScaleState::new(0);
        let mut replicas = 6;
        run(&spec, &mut state, &mut replicas, 0, 9, 0.0);
        assert_eq!(replicas, 6);
    }

    #[test]
    fn rps_is_an_alternative_metric() {
        let spec = ScaleSpec {
            target_concurrency: None,
            target_rps: Some(100),
            ..spec()
        };
        let mut state = ScaleState::new(0);
        let mut replicas = 1;
        let why = run(&spec, &mut state, &mut replicas, 0, 15, 350.0);
        assert_eq!(replicas, 4);
        assert!(why[0].contains("requests/s over target 100"), "{why:?}");
    }
}
