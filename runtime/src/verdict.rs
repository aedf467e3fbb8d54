//! The first-requests verdict on a newly serving revision: does it work for
//! its clients, or is it broken?
//!
//! The rule (SECURITY.md, "A new revision's verdict"):
//!
//! - Only what shows the *revision* is broken counts against it: the guest
//!   trapped (a panic, an unreachable, a stack overflow) or returned an
//!   error instead of a response. What a client can provoke on purpose does
//!   not: quota breaches driven by the request (memory, fuel, timeout) and
//!   body limits count as requests served, not as failures.
//! - The window is the first [`WINDOW`] requests from clients (health
//!   checks and requests forwarded by a peer node are judged elsewhere and
//!   not counted), and one client address counts for at most
//!   [`PER_CLIENT`] of them.
//! - The revision fails when *more than half* of the window failed. Since
//!   one client fills at most half of it, no single client can fail a
//!   revision that serves the others, however it crafts its requests.
//!
//! A window that never fills (one client only) is given up as passed after
//! [`GIVE_UP_AFTER`] requests; the health check still guards such a
//! revision.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::Outcome;

/// Requests a verdict is made on.
pub const WINDOW: u32 = 10;
/// Requests of the window one client address may fill: half of it.
pub const PER_CLIENT: u32 = WINDOW / 2;
/// Requests after which a window that never filled (one client only) is
/// given up as passed: judging costs a lock per request, and so many
/// requests without a second client say nothing more.
pub const GIVE_UP_AFTER: u32 = 1_000;

/// What the first requests say about a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not judging, or the window is not full yet.
    Judging,
    /// At most half of the window failed.
    Passed,
    /// More than half of the window failed, from more than one client.
    Failed {
        /// Requests of the window that showed the revision broken.
        broken: u32,
        /// Requests in the window.
        counted: u32,
    },
}

/// Requests recorded by any probation in this process: while it stands
/// still, no verdict can have moved (a node with 10,000 apps on probation
/// looks at none of them).
static JUDGED_REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// See [`JUDGED_REQUESTS`].
pub fn judged_requests() -> u64 {
    JUDGED_REQUESTS.load(Ordering::Relaxed)
}

/// The verdict window of one app, fed by every request it serves.
#[derive(Debug, Default)]
pub struct Probation {
    /// Checked first on every request, so an app not being judged pays
    /// one atomic load.
    judging: AtomicBool,
    window: Mutex<Window>,
    /// Requests recorded while judging: a judge that sees it unchanged
    /// skips the verdict (an app without traffic costs nothing to watch).
    activity: std::sync::atomic::AtomicU32,
}

#[derive(Debug, Default)]
struct Window {
    /// Per client address: requests counted, of which broken.
    clients: Vec<(IpAddr, u32, u32)>,
    counted: u32,
    broken: u32,
    /// Requests seen, counted or not.
    seen: u32,
}

impl Probation {
    /// Starts a new window (the previous one is forgotten).
    pub fn start(&self) {
        *self.lock() = Window::default();
        self.judging.store(true, Ordering::Release);
    }

    /// Stops judging.
    pub fn stop(&self) {
        self.judging.store(false, Ordering::Release);
    }

    /// Counts one request from `client` that ended with `outcome`.
    pub fn record(&self, client: IpAddr, outcome: Outcome) {
        if !self.judging.load(Ordering::Acquire) {
            return;
        }
        self.activity.fetch_add(1, Ordering::Relaxed);
        JUDGED_REQUESTS.fetch_add(1, Ordering::Relaxed);
        let mut window = self.lock();
        window.seen = window.seen.saturating_add(1);
        if window.counted >= WINDOW {
            return;
        }
        let index = match window.clients.iter().position(|(ip, ..)| *ip == client) {
            Some(index) => index,
            None => {
                window.clients.push((client, 0, 0));
                window.clients.len() - 1
            }
        };
        let broken = shows_broken_revision(outcome);
        let entry = &mut window.clients[index];
        if entry.1 >= PER_CLIENT {
            return;
        }
        entry.1 += 1;
        entry.2 += u32::from(broken);
        window.counted += 1;
        window.broken += u32::from(broken);
    }

    /// A counter that moves with every request recorded.
    pub fn activity(&self) -> u32 {
        self.activity.load(Ordering::Relaxed)
    }

    /// The verdict so far.
    pub fn verdict(&self) -> Verdict {
        if !self.judging.load(Ordering::Acquire) {
            return Verdict::Judging;
        }
        let window = self.lock();
        if window.counted < WINDOW && window.seen >= GIVE_UP_AFTER {
            Verdict::Passed
        } else if window.counted < WINDOW {
            Verdict::Judging
        } else if window.broken * 2 > window.counted {
            Verdict::Failed {
                broken: window.broken,
                counted: window.counted,
            }
        } else {
            Verdict::Passed
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a request's outcome shows the revision itself is broken, as
/// opposed to a limit the request ran into.
fn shows_broken_revision(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Trap | Outcome::GuestError)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_client_cannot_fail_a_revision_whatever_it_sends() {
        let p = Probation::default();
        p.start();
        for _ in 0..100 {
            p.record(ip(1), Outcome::Trap);
        }
        assert_eq!(p.verdict(), Verdict::Judging, "one client fills half");
        for _ in 0..GIVE_UP_AFTER {
            p.record(ip(1), Outcome::Trap);
        }
        assert_eq!(
            p.verdict(),
            Verdict::Passed,
            "given up: one client says nothing more"
        );
        p.start();
        for _ in 0..100 {
            p.record(ip(1), Outcome::Trap);
        }
        for _ in 0..5 {
            p.record(ip(2), Outcome::Ok);
        }
        assert_eq!(p.verdict(), Verdict::Passed);
    }

    #[test]
    fn quota_breaches_are_not_failures() {
        let p = Probation::default();
        p.start();
        for (i, outcome) in [
            Outcome::Memory,
            Outcome::Fuel,
            Outcome::Timeout,
            Outcome::BodyTooLarge,
        ]
        .into_iter()
        .cycle()
        .take(10)
        .enumerate()
        {
            p.record(ip(u8::try_from(i).unwrap()), outcome);
        }
        assert_eq!(p.verdict(), Verdict::Passed);
    }

    #[test]
    fn a_revision_broken_for_several_clients_fails() {
        let p = Probation::default();
        p.start();
        for i in 0..10 {
            p.record(ip(i % 3), if i < 9 { Outcome::Trap } else { Outcome::Ok });
        }
        assert_eq!(
            p.verdict(),
            Verdict::Failed {
                broken: 9,
                counted: 10
            }
        );
        // Two clients, every request broken.
        p.start();
        for i in 0..10 {
            p.record(
                ip(i % 2),
                if i % 2 == 0 {
                    Outcome::Trap
                } else {
                    Outcome::GuestError
                },
            );
        }
        assert!(matches!(p.verdict(), Verdict::Failed { .. }));
        p.start();
        for i in 0..10 {
            p.record(ip(i), if i < 5 { Outcome::Trap } else { Outcome::Ok });
        }
        // Exactly half is not more than half.
        assert_eq!(p.verdict(), Verdict::Passed);
    }

    #[test]
    fn nothing_is_counted_while_not_judging() {
        let p = Probation::default();
        for i in 0..10 {
            p.record(ip(i), Outcome::Trap);
        }
        p.start();
        assert_eq!(p.verdict(), Verdict::Judging);
        p.stop();
        assert_eq!(p.verdict(), Verdict::Judging);
    }
}
