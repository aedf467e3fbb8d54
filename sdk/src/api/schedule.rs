//! Schedules: a job with a `schedule` is not run itself; at each time its
//! cron expression names, the controller starts a new job from it (named
//! `<schedule>-<unix seconds>`, owned by it), as a Kubernetes CronJob
//! starts Jobs.
//!
//! Missed times (no controller was leading, or the clock jumped) are not
//! made up one by one: the latest missed time fires, if it is still
//! within `starting_deadline_ms` (when set); the others are recorded as
//! missed. This is what a Kubernetes CronJob does, without its refusal to
//! start after 100 missed times.

use std::str::FromStr as _;

use chrono::{DateTime, TimeZone as _, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Default [`Schedule::keep_succeeded`].
pub const DEFAULT_KEEP_SUCCEEDED: u32 = 3;
/// Default [`Schedule::keep_failed`].
pub const DEFAULT_KEEP_FAILED: u32 = 1;

fn default_keep_succeeded() -> u32 {
    DEFAULT_KEEP_SUCCEEDED
}
fn default_keep_failed() -> u32 {
    DEFAULT_KEEP_FAILED
}

/// What a firing does while an earlier one's job is still active.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyPolicy {
    /// Start the new job alongside.
    #[default]
    Allow,
    /// Skip this firing.
    Forbid,
    /// Stop the active job and start the new one.
    Replace,
}

/// When a job runs (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Standard cron syntax: five fields (`minute hour day month weekday`),
    /// or six with seconds first; `@hourly`-style aliases too.
    pub cron: String,
    /// IANA time zone the expression is read in (default UTC), e.g.
    /// `Europe/Paris`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// While an earlier firing's job is active: `allow`, `forbid` or
    /// `replace`.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A firing more than this many milliseconds late (the controller was
    /// away) is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline_ms: Option<u64>,
    /// Finished jobs kept that completed.
    #[serde(default = "default_keep_succeeded")]
    pub keep_succeeded: u32,
    /// Finished jobs kept that failed.
    #[serde(default = "default_keep_failed")]
    pub keep_failed: u32,
}

/// A schedule that cannot be used, and which field is at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleError {
    /// `cron` or `timezone`.
    pub field: &'static str,
    /// Why.
    pub message: String,
}

impl Schedule {
    /// A schedule firing on `cron` in UTC, with the defaults.
    pub fn new(cron: impl Into<String>) -> Self {
        Self {
            cron: cron.into(),
            timezone: None,
            concurrency_policy: ConcurrencyPolicy::Allow,
            starting_deadline_ms: None,
            keep_succeeded: DEFAULT_KEEP_SUCCEEDED,
            keep_failed: DEFAULT_KEEP_FAILED,
        }
    }

    fn parsed(&self) -> Result<(croner::Cron, chrono_tz::Tz), ScheduleError> {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(&self.cron)
            .map_err(|e| ScheduleError {
                field: "cron",
                message: format!("{:?} is not a cron expression: {e}", self.cron),
            })?;
        let zone = match &self.timezone {
            None => chrono_tz::UTC,
            Some(name) => chrono_tz::Tz::from_str(name).map_err(|_| ScheduleError {
                field: "timezone",
                message: format!("{name:?} is not an IANA time zone (e.g. \"Europe/Paris\")"),
            })?,
        };
        Ok((cron, zone))
    }

    /// Checks the expression and the time zone.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        let (cron, zone) = self.parsed()?;
        // An expression that never fires (e.g. February 30th) is refused.
        let now = Utc::now().with_timezone(&zone);
        cron.find_next_occurrence(&now, false)
            .map(drop)
            .map_err(|e| ScheduleError {
                field: "cron",
                message: format!("{:?} never fires: {e}", self.cron),
            })
    }

    /// The first time it fires strictly after `after_ms` (Unix ms).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let (cron, zone) = self.parsed().ok()?;
        let after = zone.timestamp_millis_opt(after_ms).single()?;
        cron.find_next_occurrence(&after, false)
            .ok()
            .map(|t| t.with_timezone(&Utc).timestamp_millis())
    }

    /// The times it fired in `(after_ms, until_ms]`: the latest one and how
    /// many there were (counting stops at `cap`).
    pub fn fired_between(&self, after_ms: i64, until_ms: i64, cap: u32) -> (Option<i64>, u32) {
        let mut latest = None;
        let mut count = 0;
        let mut at = after_ms;
        while count < cap {
            match self.next_after(at) {
                Some(next) if next <= until_ms => {
                    latest = Some(next);
                    count += 1;
                    at = next;
                }
                _ => break,
            }
        }
        if count == cap {
            // Too many to walk one by one: the latest is found backwards.
            let (cron, zone) = match self.parsed() {
                Ok(p) => p,
                Err(_) => return (latest, count),
            };
            if let Some(until) = zone.timestamp_millis_opt(until_ms).single()
                && let Ok(prev) = cron.find_previous_occurrence(&until, true)
            {
                latest = Some(prev.with_timezone(&Utc).timestamp_millis());
            }
        }
        (latest, count)
    }
}

/// `DateTime<Utc>` of Unix ms, for messages.
pub fn utc(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_fields_and_time_zones() {
        // 2026-01-01T00:00:00Z
        let start = 1_767_225_600_000;
        let every_5m = Schedule::new("*/5 * * * *");
        assert_eq!(every_5m.next_after(start), Some(start + 300_000));
        let every_2s = Schedule::new("*/2 * * * * *");
        assert_eq!(every_2s.next_after(start), Some(start + 2_000));
        let paris = Schedule {
            timezone: Some("Europe/Paris".into()),
            ..Schedule::new("0 9 * * *")
        };
        // 09:00 in Paris in winter is 08:00 UTC.
        assert_eq!(paris.next_after(start), Some(start + 8 * 3_600_000));
        assert_eq!(
            every_2s.fired_between(start, start + 7_000, 100),
            (Some(start + 6_000), 3)
        );
        let (latest, count) = every_2s.fired_between(start, start + 1_000_000, 10);
        assert_eq!((latest, count), (Some(start + 1_000_000), 10));
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        assert_eq!(
            Schedule::new("*/5 * * *").validate().unwrap_err().field,
            "cron"
        );
        assert_eq!(
            Schedule::new("61 * * * *").validate().unwrap_err().field,
            "cron"
        );
        let zone = Schedule {
            timezone: Some("Mars/Olympus".into()),
            ..Schedule::new("* * * * *")
        };
        assert_eq!(zone.validate().unwrap_err().field, "timezone");
        assert_eq!(Schedule::new("@hourly").validate(), Ok(()));
    }
}
