//! The node's memory budget and what each app really uses.
//!
//! Every instance draws its linear memory from one node-wide
//! [`MemoryBudget`] (the node's declared `--memory`). A new request is
//! admitted only when what its app's instances usually use still fits;
//! otherwise it waits briefly for running instances to finish and then gets
//! `503 node-memory-pressure` with `Retry-After`. An instance that is
//! already running is never refused by the budget: it may grow up to its
//! own quota (`resources.memory`), and that growth is counted so the next
//! admissions see it. So the node never over-commits by more than the
//! growth of instances already admitted, and no request is harmed midway.
//!
//! [`Usage`] keeps, per app, what the nodes report to the controller with
//! their heartbeats: requests in flight (and their time average), requests
//! finished, and the peak and average memory of its instances.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What an instance of an app that has not run here yet is expected to
/// use, at most its memory quota: a hello-sized component uses ~1 MiB.
pub const FIRST_INSTANCE_BYTES: u64 = 1 << 20;

/// Linear memory available to all instances of a node.
#[derive(Debug)]
pub struct MemoryBudget {
    /// Bytes instances may use in all; 0 means no budget (`skiff serve`).
    capacity: u64,
    used: AtomicU64,
    waiting: AtomicUsize,
    freed: Notify,
}

impl MemoryBudget {
    /// A budget of `capacity` bytes (0: unlimited, only counted).
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            used: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// Bytes in use by running instances now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget (0: unlimited).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Takes `bytes` if they fit.
    fn try_take(&self, bytes: u64) -> bool {
        if self.capacity == 0 {
            self.used.fetch_add(bytes, Ordering::Relaxed);
            return true;
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used.saturating_add(bytes) <= self.capacity).then_some(used + bytes)
            })
            .is_ok()
    }

    /// Takes `bytes` whether or not they fit (a running instance grows).
    pub(crate) fn take(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Gives `bytes` back, waking requests waiting for room.
    pub(crate) fn give(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Admits an instance expected to use `bytes`, waiting up to `wait` for
    /// room; `false` when there is none by then.
    pub async fn admit(&self, bytes: u64, wait: Duration) -> bool {
        if self.try_take(bytes) {
            return true;
        }
        let deadline = tokio::time::Instant::now() + wait;
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let admitted = loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before checking, so a release in between wakes us.
            freed.as_mut().enable();
            if self.try_take(bytes) {
                break true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break self.try_take(bytes);
            }
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        admitted
    }
}

/// One app's use on this node.
#[derive(Debug, Default)]
pub struct Usage {
    in_flight: AtomicU32,
    /// Client requests finished here.
    finished: AtomicU64,
    memory_peak: AtomicU64,
    memory_avg: AtomicU64,
    busy: Mutex<Busy>,
}

/// The time integral of in-flight requests since the last report.
#[derive(Debug, Default)]
struct Busy {
    /// When the integral was last brought up to date.
    at: Option<Instant>,
    /// When the last report was taken.
    reported_at: Option<Instant>,
    /// In flight × nanoseconds since `reported_at`.
    area: u128,
    /// Whether the previous report showed activity (so one report of
    /// quiet follows the last busy one).
    was_active: bool,
    /// Finished requests at the last report.
    reported_requests: u64,
}

impl Busy {
    fn advance(&mut self, now: Instant, in_flight: u32) {
        if let Some(at) = self.at {
            self.area += u128::from(in_flight) * now.saturating_duration_since(at).as_nanos();
        }
        self.at = Some(now);
    }
}

/// One request counted in flight for its app until dropped.
pub(crate) struct InFlight(std::sync::Arc<crate::AppStats>);

impl InFlight {
    pub(crate) fn begin(stats: std::sync::Arc<crate::AppStats>) -> Self {
        stats.usage.begin();
        Self(stats)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.usage.end();
    }
}

/// What [`Usage::report`] found, if anything happened (client requests
/// only: health checks are not demand).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// In flight now.
    pub in_flight: u32,
    /// Average in flight since the last report, in thousandths.
    pub concurrency_milli: u64,
    /// Requests finished since the last report.
    pub requests: u64,
    /// Since the last report (0 for the first).
    pub interval: Duration,
    /// Largest instance memory seen.
    pub memory_peak: u64,
    /// Average instance memory (recent instances weigh most).
    pub memory_avg: u64,
}

impl Usage {
    /// A request began (it counts as demand from the moment it arrives,
    /// queued or held included).
    pub(crate) fn begin(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel);
        busy.advance(Instant::now(), now);
    }

    /// A request ended.
    pub(crate) fn end(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.finished.fetch_add(1, Ordering::Relaxed);
        busy.advance(Instant::now(), now);
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Records the memory an instance used.
    pub(crate) fn instance_used(&self, bytes: u64) {
        self.memory_peak.fetch_max(bytes, Ordering::Relaxed);
        let avg = self.memory_avg.load(Ordering::Relaxed);
        // An exponential average over roughly the last eight instances.
        let next = if avg == 0 {
            bytes
        } else {
            (avg * 7 + bytes) / 8
        };
        self.memory_avg.store(next, Ordering::Relaxed);
    }

    /// What an instance of this app is expected to use: its largest so far,
    /// or [`FIRST_INSTANCE_BYTES`] before it ran here (at most `cap`).
    pub fn expected_bytes(&self, cap: u64) -> u64 {
        match self.memory_peak.load(Ordering::Relaxed) {
            0 => FIRST_INSTANCE_BYTES.min(cap),
            peak => peak,
        }
    }

    /// The use since the last report; `None` when nothing happened since
    /// the last report and it showed nothing either (an idle app costs a
    /// heartbeat nothing).
    pub fn report(&self) -> Option<UsageReport> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let requests = self.finished.load(Ordering::Relaxed);
        let in_flight = self.in_flight();
        let now = Instant::now();
        busy.advance(now, in_flight);
        let active = in_flight > 0 || busy.area > 0 || requests != busy.reported_requests;
        if !active && !busy.was_active {
            busy.reported_at = Some(now);
            return None;
        }
        let span = busy
            .reported_at
            .map_or(0, |at| now.saturating_duration_since(at).as_nanos());
        let concurrency_milli = match (busy.area * 1000).checked_div(span) {
            Some(milli) => u64::try_from(milli).unwrap_or(u64::MAX),
            None => u64::from(in_flight) * 1000,
        };
        let finished = requests.saturating_sub(busy.reported_requests);
        busy.area = 0;
        busy.reported_at = Some(now);
        busy.reported_requests = requests;
        busy.was_active = active;
        Some(UsageReport {
            in_flight,
            concurrency_milli,
            requests: finished,
            interval: Duration::from_nanos(u64::try_from(span).unwrap_or(u64::MAX)),
            memory_peak: self.memory_peak.load(Ordering::Relaxed),
            memory_avg: self.memory_avg.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admission_waits_for_room_then_gives_up() {
        let budget = std::sync::Arc::new(MemoryBudget::new(10));
        assert!(budget.admit(6, Duration::ZERO).await);
        assert!(!budget.admit(6, Duration::from_millis(10)).await);
        // A running instance grows past the budget: counted, not refused.
        budget.take(6);
        assert_eq!(budget.used(), 12);
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.admit(4, Duration::from_secs(30)).await })
        };
        budget.give(12);
        assert!(waiter.await.unwrap());
        assert_eq!(budget.used(), 4);
        let unlimited = MemoryBudget::new(0);
        assert!(unlimited.admit(u64::MAX / 2, Duration::ZERO).await);
    }

    #[test]
    fn usage_reports_activity_then_one_quiet_report() {
        let usage = Usage::default();
        assert_eq!(usage.report(), None, "idle: nothing to report");
        usage.begin();
        let busy = usage.report().unwrap();
        assert_eq!((busy.in_flight, busy.requests), (1, 0));
        usage.end();
        usage.instance_used(3 << 20);
        let done = usage.report().unwrap();
        assert_eq!(
            (done.in_flight, done.memory_peak, done.requests),
            (0, 3 << 20, 1)
        );
        assert!(done.concurrency_milli <= 1000);
        let quiet = usage.report().unwrap();
        assert_eq!(quiet.concurrency_milli, 0, "one report says it stopped");
        assert_eq!(usage.report(), None);
        assert_eq!(usage.expected_bytes(64 << 20), 3 << 20);
        assert_eq!(Usage::default().expected_bytes(64 << 10), 64 << 10);
    }
}
