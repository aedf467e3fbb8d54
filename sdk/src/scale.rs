//! Apps that follow demand: the `[scale]` rules of an app ([`ScaleSpec`]),
//! what nodes report of real use ([`AppUsage`], sent with heartbeats), and
//! what the API shows of it ([`Observed`]).
//!
//! An app with a [`ScaleSpec`] has its replica count set by the
//! controller's autoscaler between `min` and `max`, from the in-flight
//! requests (or requests per second) its nodes report: averaged over a
//! stable `window` and, for bursts, a panic window of a tenth of it (as
//! Knative's autoscaler does). With `min = 0` it goes to zero replicas
//! after `idle` without requests; a request for it is then held at the node
//! that received it while the app wakes (up to `activation_timeout`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Default target of in-flight requests per replica.
pub const DEFAULT_TARGET_CONCURRENCY: u32 = 10;
/// Default most replicas: enough for a busy app on a small fleet; a typo
/// cannot flood the scheduler.
pub const DEFAULT_MAX: u32 = 10;
/// Default stable window: the average the autoscaler follows (Knative's
/// default); the panic window is a tenth of it.
pub const DEFAULT_WINDOW_MS: u64 = 60_000;
/// Default scale-down delay: a recommendation to shrink must hold this long,
/// so a short lull does not drop replicas that the next burst needs.
pub const DEFAULT_SCALE_DOWN_DELAY_MS: u64 = 30_000;
/// Default time without a request before an app with `min = 0` sleeps.
pub const DEFAULT_IDLE_MS: u64 = 5 * 60_000;
/// Default longest time a request is held while its app wakes.
pub const DEFAULT_ACTIVATION_TIMEOUT_MS: u64 = 10_000;
/// Longest activation timeout: a client waiting longer has given up.
pub const MAX_ACTIVATION_TIMEOUT_MS: u64 = 5 * 60_000;
/// Longest window, delay or idle time: a day.
pub const MAX_SCALE_DURATION_MS: u64 = 24 * 60 * 60_000;

/// `[scale]`: how many replicas, following demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScaleSpec {
    /// Fewest replicas; 0 lets the app sleep when idle.
    pub min: u32,
    /// Most replicas.
    #[schema(minimum = 1, maximum = 1000)]
    pub max: u32,
    /// In-flight requests per replica to aim for (the default metric).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_concurrency: Option<u32>,
    /// Requests per second per replica to aim for, instead of concurrency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rps: Option<u32>,
    /// Stable window, in milliseconds; the panic window is a tenth of it.
    pub window_ms: u64,
    /// How long a lower recommendation must hold before replicas go.
    pub scale_down_delay_ms: u64,
    /// Time without requests before an app with `min = 0` goes to zero.
    pub idle_ms: u64,
    /// Longest time a request is held while the app wakes; then `503`
    /// `activation-timeout`.
    pub activation_timeout_ms: u64,
}

impl Default for ScaleSpec {
    fn default() -> Self {
        Self {
            min: 0,
            max: DEFAULT_MAX,
            target_concurrency: None,
            target_rps: None,
            window_ms: DEFAULT_WINDOW_MS,
            scale_down_delay_ms: DEFAULT_SCALE_DOWN_DELAY_MS,
            idle_ms: DEFAULT_IDLE_MS,
            activation_timeout_ms: DEFAULT_ACTIVATION_TIMEOUT_MS,
        }
    }
}

/// What the autoscaler follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// In-flight requests per replica.
    Concurrency(u32),
    /// Requests per second per replica.
    Rps(u32),
}

impl ScaleSpec {
    /// The metric and its per-replica target.
    pub fn metric(&self) -> Metric {
        match (self.target_rps, self.target_concurrency) {
            (Some(rps), None) => Metric::Rps(rps),
            (_, c) => Metric::Concurrency(c.unwrap_or(DEFAULT_TARGET_CONCURRENCY)),
        }
    }

    /// The replica count a new app starts with: `replicas` kept within
    /// `min..=max`.
    pub fn clamp(&self, replicas: u32) -> u32 {
        replicas.clamp(self.min, self.max.max(self.min))
    }

    /// Checks every rule, naming the first broken field (as the API names
    /// it, under `scale.`; `skiff.toml` drops the `_ms`).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max == 0 || self.max > crate::spec::MAX_REPLICAS {
            return Err((
                "max",
                format!("must be 1 to {} replicas", crate::spec::MAX_REPLICAS),
            ));
        }
        if self.min > self.max {
            return Err(("min", format!("{} is more than max {}", self.min, self.max)));
        }
        if self.target_concurrency.is_some() && self.target_rps.is_some() {
            return Err((
                "target_rps",
                "give target_concurrency or target_rps, not both".to_owned(),
            ));
        }
        if self.target_concurrency == Some(0) {
            return Err(("target_concurrency", "must be greater than zero".to_owned()));
        }
        if self.target_rps == Some(0) {
            return Err(("target_rps", "must be greater than zero".to_owned()));
        }
        for (field, ms) in [
            ("window_ms", self.window_ms),
            ("scale_down_delay_ms", self.scale_down_delay_ms),
            ("idle_ms", self.idle_ms),
        ] {
            if ms > MAX_SCALE_DURATION_MS {
                return Err((field, "must be at most a day".to_owned()));
            }
        }
        if self.window_ms < 1000 {
            return Err(("window_ms", "must be at least 1s".to_owned()));
        }
        if self.activation_timeout_ms == 0 || self.activation_timeout_ms > MAX_ACTIVATION_TIMEOUT_MS
        {
            return Err((
                "activation_timeout_ms",
                "must be more than 0 and at most 5m".to_owned(),
            ));
        }
        Ok(())
    }
}

/// One app's use on one node since the node's previous report, sent with
/// heartbeats for the apps that had requests since then (and once more
/// when they stop).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppUsage {
    /// The app.
    pub app: String,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Average requests in flight over the report's interval, in
    /// thousandths.
    pub concurrency_milli: u64,
    /// Requests finished over the report's interval.
    pub requests: u64,
    /// The report's interval, in milliseconds (0 for the first).
    pub interval_ms: u64,
    /// Largest memory one instance of the app used on this node, in bytes.
    pub memory_peak: u64,
    /// Average memory of the app's recent instances, in bytes.
    pub memory_avg: u64,
}

/// What an app really uses, summed over the nodes that report it (in
/// `GET /v1/apps/{name}`, next to what its replicas reserve).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Observed {
    /// Memory each replica reserves for scheduling.
    pub reserved_bytes: u64,
    /// Requests in flight, all nodes.
    pub in_flight: u32,
    /// Requests per second, all nodes, over the last reports.
    pub requests_per_second: f64,
    /// Largest instance memory seen on any node.
    pub memory_peak: u64,
    /// Average instance memory, over the reporting nodes.
    pub memory_avg: u64,
    /// Nodes whose reports these figures sum.
    pub nodes: u32,
}

/// Body of `POST /v1/nodes/{name}/activate`: a node holds requests for an
/// app with no ready replica and asks for one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Activate {
    /// The app to wake.
    pub app: String,
    /// Whether the node already serves it from its own copy (the
    /// controller was unreachable, or the node had the app's component):
    /// the controller then prefers to place the replica there.
    #[serde(default)]
    pub local: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_broken_fields_are_named() {
        assert_eq!(ScaleSpec::default().validate(), Ok(()));
        assert_eq!(
            ScaleSpec::default().metric(),
            Metric::Concurrency(DEFAULT_TARGET_CONCURRENCY)
        );
        let rps = ScaleSpec {
            target_rps: Some(50),
            ..ScaleSpec::default()
        };
        assert_eq!(rps.metric(), Metric::Rps(50));
        for (spec, field) in [
            (
                ScaleSpec {
                    min: 5,
                    max: 2,
                    ..ScaleSpec::default()
                },
                "min",
            ),
            (
                ScaleSpec {
                    max: 0,
                    ..ScaleSpec::default()
                },
                "max",
            ),
            (
                ScaleSpec {
                    target_concurrency: Some(1),
                    target_rps: Some(1),
                    ..ScaleSpec::default()
                },
                "target_rps",
            ),
            (
                ScaleSpec {
                    activation_timeout_ms: 0,
                    ..ScaleSpec::default()
                },
                "activation_timeout_ms",
            ),
            (
                ScaleSpec {
                    window_ms: 10,
                    ..ScaleSpec::default()
                },
                "window_ms",
            ),
        ] {
            assert_eq!(spec.validate().unwrap_err().0, field);
        }
        let spec = ScaleSpec {
            min: 1,
            max: 3,
            ..ScaleSpec::default()
        };
        assert_eq!((spec.clamp(0), spec.clamp(2), spec.clamp(9)), (1, 2, 3));
    }
}
