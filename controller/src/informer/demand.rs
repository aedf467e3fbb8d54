//! Demand: what apps really use, as nodes report it with their heartbeats
//! (kept in memory, like leases), and the nodes that asked to wake a
//! sleeping app. The autoscaler reads the totals, the API shows them next
//! to the reservation, and the reconciler places a waking app's replica on
//! the node that holds its requests.

use std::collections::HashMap;
use std::sync::Mutex;

use skiff_sdk::scale::{AppUsage, Observed};

use crate::store::now_ms;

/// A node's report older than this no longer counts (a node reports an
/// app at every heartbeat while it is busy, and once more when it stops).
pub const REPORT_STALE_MS: i64 = 3_000;
/// How long a wake-up's node stays preferred for the app's placement.
const PREFER_FOR_MS: i64 = 30_000;

/// One node's last report of one app.
#[derive(Clone, Debug, Default)]
struct Report {
    at: i64,
    in_flight: u32,
    concurrency: f64,
    rps: f64,
    memory_peak: u64,
    memory_avg: u64,
}

/// One app's demand, summed over the nodes with a fresh report.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// Average requests in flight over the nodes' last intervals.
    pub concurrency: f64,
    /// Requests per second.
    pub rps: f64,
    /// Requests in flight at the last reports.
    pub in_flight: u32,
    /// Nodes counted.
    pub nodes: u32,
}

#[derive(Debug, Default)]
struct Inner {
    /// App → node → last report.
    apps: HashMap<String, HashMap<String, Report>>,
    /// App → the node that last asked to wake it, and when.
    wakes: HashMap<String, (String, i64)>,
}

/// Usage reports and wake-ups, shared by the API, the autoscaler and the
/// reconciler.
#[derive(Debug, Default)]
pub struct Demand {
    inner: Mutex<Inner>,
}

impl Demand {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a heartbeat's usage reports from `node`.
    pub fn report(&self, node: &str, usage: &[AppUsage]) {
        if usage.is_empty() {
            return;
        }
        let at = now_ms();
        let mut inner = self.lock();
        for u in usage {
            let rps = if u.interval_ms == 0 {
                0.0
            } else {
                u.requests as f64 * 1000.0 / u.interval_ms as f64
            };
            inner.apps.entry(u.app.clone()).or_default().insert(
                node.to_owned(),
                Report {
                    at,
                    in_flight: u.in_flight,
                    concurrency: u.concurrency_milli as f64 / 1000.0,
                    rps,
                    memory_peak: u.memory_peak,
                    memory_avg: u.memory_avg,
                },
            );
        }
    }

    /// `app`'s demand now, from the fresh reports.
    pub fn totals(&self, app: &str, now: i64) -> Totals {
        let inner = self.lock();
        let mut totals = Totals::default();
        for r in inner
            .apps
            .get(app)
            .into_iter()
            .flat_map(|nodes| nodes.values())
            .filter(|r| now - r.at <= REPORT_STALE_MS)
        {
            totals.concurrency += r.concurrency;
            totals.rps += r.rps;
            totals.in_flight += r.in_flight;
            totals.nodes += 1;
        }
        totals
    }

    /// What `app` uses, for the API: the fresh reports' totals and the
    /// memory every report (fresh or not) has seen.
    pub fn observed(&self, app: &str, reserved_bytes: u64) -> Observed {
        let totals = self.totals(app, now_ms());
        let inner = self.lock();
        let reports: Vec<&Report> = inner
            .apps
            .get(app)
            .into_iter()
            .flat_map(|nodes| nodes.values())
            .collect();
        let with_memory: Vec<u64> = reports
            .iter()
            .map(|r| r.memory_avg)
            .filter(|m| *m > 0)
            .collect();
        Observed {
            reserved_bytes,
            in_flight: totals.in_flight,
            requests_per_second: (totals.rps * 10.0).round() / 10.0,
            memory_peak: reports.iter().map(|r| r.memory_peak).max().unwrap_or(0),
            memory_avg: with_memory
                .iter()
                .sum::<u64>()
                .checked_div(with_memory.len() as u64)
                .unwrap_or(0),
            nodes: totals.nodes,
        }
    }

    /// `node` holds requests for `app` and asked to wake it.
    pub fn woke(&self, app: &str, node: &str) {
        self.lock()
            .wakes
            .insert(app.to_owned(), (node.to_owned(), now_ms()));
    }

    /// When `app` was last asked to wake (Unix ms).
    pub fn woken_at(&self, app: &str) -> Option<i64> {
        self.lock().wakes.get(app).map(|(_, at)| *at)
    }

    /// The node to place `app`'s next replica on, if one asked to wake it
    /// recently.
    pub fn preferred(&self, now: i64) -> HashMap<String, String> {
        let mut inner = self.lock();
        inner.wakes.retain(|_, (_, at)| now - *at <= PREFER_FOR_MS);
        inner
            .wakes
            .iter()
            .map(|(app, (node, _))| (app.clone(), node.clone()))
            .collect()
    }

    /// The apps with fresh reports or a wake-up on record: besides the
    /// awake ones, those the autoscaler decides on.
    pub fn active(&self, now: i64) -> Vec<String> {
        let inner = self.lock();
        let reported = inner.apps.iter().filter_map(|(app, nodes)| {
            nodes
                .values()
                .any(|r| now - r.at <= REPORT_STALE_MS)
                .then_some(app)
        });
        reported.chain(inner.wakes.keys()).cloned().collect()
    }

    /// Forgets a deleted app.
    pub fn forget_app(&self, app: &str) {
        let mut inner = self.lock();
        inner.apps.remove(app);
        inner.wakes.remove(app);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_fresh_reports_per_node() {
        let demand = Demand::default();
        let usage = |in_flight, milli, requests| AppUsage {
            app: "web".into(),
            in_flight,
            concurrency_milli: milli,
            requests,
            interval_ms: 1000,
            memory_peak: 2 << 20,
            memory_avg: 1 << 20,
        };
        demand.report("a", &[usage(3, 2500, 40)]);
        demand.report("b", &[usage(1, 500, 10)]);
        let t = demand.totals("web", now_ms());
        assert_eq!((t.in_flight, t.nodes), (4, 2));
        assert!((t.concurrency - 3.0).abs() < 1e-9 && (t.rps - 50.0).abs() < 1e-9);
        assert_eq!(demand.totals("web", now_ms() + 10_000).nodes, 0, "stale");
        let o = demand.observed("web", 16 << 20);
        assert_eq!(
            (o.memory_peak, o.memory_avg, o.nodes),
            (2 << 20, 1 << 20, 2)
        );
        demand.woke("web", "b");
        assert_eq!(demand.preferred(now_ms())["web"], "b");
        assert!(demand.preferred(now_ms() + 60_000).is_empty());
    }
}
