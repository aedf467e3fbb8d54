//! The per-app resource quota, enforced by every node for every request.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default memory limit per instance: 128 MiB holds any ordinary HTTP handler
/// (hello uses ~1 MiB) while letting a small edge node host dozens of
/// concurrent instances.
pub const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;
/// Default fuel per request: 1e9 units is roughly a second of pure guest CPU,
/// ~70,000 times what a hello request burns (~15k), so only runaway
/// computation hits it.
pub const DEFAULT_FUEL: u64 = 1_000_000_000;
/// Default wall-clock limit per request, as in common reverse-proxy defaults.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default number of instances of one app serving at once on one replica.
pub const DEFAULT_CONCURRENCY: u32 = 100;
/// Default memory a replica reserves for scheduling, when the quota's
/// `memory_bytes` is larger: 16 MiB holds a hello-sized handler (~1 MiB
/// per instance) serving a dozen requests at once. It is what a replica is
/// expected to use, not its worst case (`memory_bytes × concurrency`,
/// 12.5 GiB with the defaults): each node guards the worst case itself at
/// run time with its memory budget.
pub const DEFAULT_RESERVE_BYTES: u64 = 16 << 20;

/// Most linear memory one instance can address: a 32-bit Wasm memory holds
/// at most 4 GiB, so a larger limit would promise what no guest can use.
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
/// Most fuel one request may be given: 1e13 units is hours of guest CPU,
/// beyond any timeout; larger values only hide a typo.
pub const MAX_FUEL: u64 = 10_000_000_000_000;
/// Longest wall-clock limit of one request: a day.
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
/// Most instances of one app at once on one replica: more than a node's
/// instance pool holds.
pub const MAX_CONCURRENCY: u32 = 10_000;

/// Resource limits for one app. Every request runs in a fresh instance that
/// gets at most `memory_bytes` of linear memory, `fuel` units of CPU and
/// `timeout_ms` of wall-clock time; at most `concurrency` instances run at
/// once per replica. The scheduler reserves [`Quota::reservation_bytes`]
/// for a replica: `reserve_bytes` when given, else the smaller of
/// `memory_bytes` and [`DEFAULT_RESERVE_BYTES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Quota {
    /// Maximum linear memory of one instance, in bytes.
    #[schema(minimum = 65536, maximum = 4294967296.0)]
    pub memory_bytes: u64,
    /// Fuel (roughly, Wasm instructions) one request may burn.
    #[schema(minimum = 1, maximum = 10000000000000.0)]
    pub fuel: u64,
    /// Wall-clock limit of one request, in milliseconds, whether the guest is
    /// computing or waiting.
    #[schema(minimum = 1, maximum = 86400000)]
    pub timeout_ms: u64,
    /// Maximum instances of this app running at once on one replica.
    #[schema(minimum = 1, maximum = 10000)]
    pub concurrency: u32,
    /// Memory one replica reserves on its node for scheduling (what it is
    /// expected to use). Absent: the smaller of `memory_bytes` and
    /// [`DEFAULT_RESERVE_BYTES`].
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 42949672960000.0)]
    pub reserve_bytes: Option<u64>,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            fuel: DEFAULT_FUEL,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            concurrency: DEFAULT_CONCURRENCY,
            reserve_bytes: None,
        }
    }
}

impl Quota {
    /// The wall-clock limit as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Memory a node reserves for one replica of an app with this quota:
    /// `reserve_bytes`, or the smaller of `memory_bytes` and
    /// [`DEFAULT_RESERVE_BYTES`].
    pub fn reservation_bytes(&self) -> u64 {
        self.reserve_bytes
            .unwrap_or(self.memory_bytes.min(DEFAULT_RESERVE_BYTES))
    }

    /// The most all instances of one replica can use at once:
    /// `memory_bytes × concurrency`.
    pub fn worst_case_bytes(&self) -> u64 {
        self.memory_bytes
            .saturating_mul(u64::from(self.concurrency))
    }

    /// Checks that every limit is usable, naming the first field that is not.
    pub fn validate(&self) -> Result<(), QuotaError> {
        let bad = |field: &'static str, reason: &'static str| Err(QuotaError { field, reason });
        if self.memory_bytes < 64 << 10 {
            return bad("memory_bytes", "must be at least 64Ki (one Wasm page)");
        }
        if self.memory_bytes > MAX_MEMORY_BYTES {
            return bad(
                "memory_bytes",
                "must be at most 4Gi (4294967296), all a 32-bit Wasm memory can address",
            );
        }
        if self.fuel == 0 {
            return bad("fuel", "must be greater than zero");
        }
        if self.fuel > MAX_FUEL {
            return bad("fuel", "must be at most 10T (10000000000000)");
        }
        if self.timeout_ms == 0 {
            return bad("timeout_ms", "must be greater than zero");
        }
        if self.timeout_ms > MAX_TIMEOUT_MS {
            return bad("timeout_ms", "must be at most 86400000 (a day)");
        }
        if self.concurrency == 0 {
            return bad("concurrency", "must be greater than zero");
        }
        if self.concurrency > MAX_CONCURRENCY {
            return bad("concurrency", "must be at most 10000");
        }
        if self
            .reserve_bytes
            .is_some_and(|r| r > self.worst_case_bytes())
        {
            return bad(
                "reserve_bytes",
                "must be at most memory × concurrency, all one replica can ever use",
            );
        }
        Ok(())
    }
}

/// A quota field that is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quota.{field} {reason}")]
pub struct QuotaError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_is_modest_unless_declared() {
        assert_eq!(Quota::default().reservation_bytes(), DEFAULT_RESERVE_BYTES);
        let small = Quota {
            memory_bytes: 1 << 20,
            ..Quota::default()
        };
        assert_eq!(small.reservation_bytes(), 1 << 20);
        let declared = Quota {
            reserve_bytes: Some(64 << 10),
            ..Quota::default()
        };
        assert_eq!(declared.reservation_bytes(), 64 << 10);
        assert_eq!(Quota::default().worst_case_bytes(), 100 * (128 << 20));
    }

    #[test]
    fn defaults_validate_and_zero_fields_are_named() {
        assert_eq!(Quota::default().validate(), Ok(()));
        let q = Quota {
            fuel: 0,
            ..Quota::default()
        };
        assert_eq!(
            q.validate().unwrap_err().to_string(),
            "quota.fuel must be greater than zero"
        );
        for (q, field) in [
            (
                Quota {
                    memory_bytes: (4 << 30) + 1,
                    ..Quota::default()
                },
                "memory_bytes",
            ),
            (
                Quota {
                    fuel: u64::MAX,
                    ..Quota::default()
                },
                "fuel",
            ),
            (
                Quota {
                    timeout_ms: u64::MAX,
                    ..Quota::default()
                },
                "timeout_ms",
            ),
            (
                Quota {
                    concurrency: 1 << 31,
                    ..Quota::default()
                },
                "concurrency",
            ),
        ] {
            let error = q.validate().unwrap_err();
            assert_eq!(error.field, field);
            assert!(error.reason.contains("at most"), "{error}");
        }
        let edge = Quota {
            memory_bytes: MAX_MEMORY_BYTES,
            fuel: MAX_FUEL,
            timeout_ms: MAX_TIMEOUT_MS,
            concurrency: MAX_CONCURRENCY,
            reserve_bytes: Some(MAX_MEMORY_BYTES * u64::from(MAX_CONCURRENCY)),
        };
        assert_eq!(edge.validate(), Ok(()));
        let over = Quota {
            memory_bytes: 1 << 20,
            concurrency: 2,
            reserve_bytes: Some((2 << 20) + 1),
            ..Quota::default()
        };
        assert_eq!(over.validate().unwrap_err().field, "reserve_bytes");
        let json = serde_json::json!({"memory_bytes": 1048576, "bogus": 1});
        assert!(serde_json::from_value::<Quota>(json).is_err());
    }
}
