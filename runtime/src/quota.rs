//! Enforcing a [`Quota`] on one request, and classifying how a request ended.
//!
//! Classification never looks at message text: a memory denial is known from
//! the [`Limiter`]'s own record, fuel exhaustion and deadlines from the
//! [`wasmtime::Trap`] code, and the wall-clock limit from the host's timer.

use std::sync::Arc;

use http::StatusCode;
use wasmtime::{ResourceLimiter, Trap};

use crate::budget::MemoryBudget;

/// Tables larger than this many elements are refused. Real components use a
/// few thousand at most; the cap stops a guest from growing host memory
/// through tables, which the memory quota does not cover.
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Caps linear memory (and table) growth of one instance and remembers that
/// it refused, so that the failure it causes can be attributed to the quota.
/// With a node budget, it also counts the instance's memory there: what the
/// instance was admitted with, and any growth beyond it (never refused by
/// the budget, only by the quota), given back when the instance is dropped.
#[derive(Debug)]
pub struct Limiter {
    max_memory: usize,
    denied: bool,
    budget: Option<Arc<MemoryBudget>>,
    /// Bytes taken from the budget.
    charged: u64,
    /// Linear memory of all the instance's memories.
    used: u64,
}

impl Limiter {
    /// A limiter allowing `max_memory` bytes of linear memory per memory.
    pub fn new(max_memory: u64) -> Self {
        Self {
            max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX),
            denied: false,
            budget: None,
            charged: 0,
            used: 0,
        }
    }

    /// A limiter that also counts in `budget`, from which `admitted` bytes
    /// were already taken for this instance.
    pub fn with_budget(max_memory: u64, budget: Arc<MemoryBudget>, admitted: u64) -> Self {
        Self {
            budget: Some(budget),
            charged: admitted,
            ..Self::new(max_memory)
        }
    }

    /// Whether a growth was refused because of the memory quota.
    pub fn denied(&self) -> bool {
        self.denied
    }

    /// Linear memory the instance has, all its memories together.
    pub fn used(&self) -> u64 {
        self.used
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give(self.charged);
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            // `memory.grow` returns -1; a Rust guest then aborts, and the
            // resulting trap is reported as a memory-quota failure.
            self.denied = true;
            return Ok(false);
        }
        self.used = self
            .used
            .saturating_add(desired.saturating_sub(current) as u64);
        if self.used > self.charged {
            if let Some(budget) = &self.budget {
                budget.take(self.used - self.charged);
            }
            self.charged = self.used;
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// How a request ended, as counted per app and reported to clients.
///
/// Every variant but [`Outcome::Ok`] produces a response with the status of
/// [`Outcome::status`], the header `x-skiff-reason: <reason>` and a JSON body
/// `{"error":{"code":"<reason>","message":"...","app":"<app>"}}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The guest produced a response (whatever its status).
    Ok,
    /// The request ran out of fuel: 503 `fuel-exhausted`.
    Fuel,
    /// The instance tried to grow past its memory limit: 503 `memory-limit`.
    Memory,
    /// The request took longer than the timeout: 504 `timeout`.
    Timeout,
    /// The guest trapped or panicked: 500 `guest-trap`.
    Trap,
    /// The guest returned an error instead of a response: 500 `guest-error`.
    GuestError,
    /// All instances of the app were busy for the whole queue wait: 503
    /// `concurrency-limit` with `Retry-After`.
    Overloaded,
    /// The request body exceeded the node's limit: 413 `body-too-large`.
    BodyTooLarge,
    /// The node's memory budget had no room for another instance for the
    /// whole wait: 503 `node-memory-pressure` with `Retry-After`.
    MemoryPressure,
    /// The app was asleep and did not wake within its activation timeout
    /// (or too many requests already wait for it): 503
    /// `activation-timeout` with `Retry-After`.
    ActivationTimeout,
    /// No app answers to this host: 404 `app-not-found`.
    NotFound,
    /// The app's component could not be loaded: 503 `app-unavailable`.
    Unavailable,
    /// The app exists in the cluster but no node has a Ready replica of it
    /// (or a forwarded request reached a node without one): 503
    /// `no-ready-replica`.
    NoReplica,
    /// Forwarding to the node with a replica failed: 502 `upstream-failed`.
    UpstreamFailed,
}

impl Outcome {
    /// Every outcome, in the order used for counters and metrics.
    pub const ALL: [Outcome; 14] = [
        Outcome::Ok,
        Outcome::Fuel,
        Outcome::Memory,
        Outcome::Timeout,
        Outcome::Trap,
        Outcome::GuestError,
        Outcome::Overloaded,
        Outcome::BodyTooLarge,
        Outcome::MemoryPressure,
        Outcome::ActivationTimeout,
        Outcome::NotFound,
        Outcome::Unavailable,
        Outcome::NoReplica,
        Outcome::UpstreamFailed,
    ];

    /// The machine-readable reason, as sent in `x-skiff-reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fuel => "fuel-exhausted",
            Outcome::Memory => "memory-limit",
            Outcome::Timeout => "timeout",
            Outcome::Trap => "guest-trap",
            Outcome::GuestError => "guest-error",
            Outcome::Overloaded => "concurrency-limit",
            Outcome::BodyTooLarge => "body-too-large",
            Outcome::MemoryPressure => "node-memory-pressure",
            Outcome::ActivationTimeout => "activation-timeout",
            Outcome::NotFound => "app-not-found",
            Outcome::Unavailable => "app-unavailable",
            Outcome::NoReplica => "no-ready-replica",
            Outcome::UpstreamFailed => "upstream-failed",
        }
    }

    /// The HTTP status of a response for this outcome.
    pub fn status(self) -> StatusCode {
        match self {
            Outcome::Ok => StatusCode::OK,
            Outcome::Fuel
            | Outcome::Memory
            | Outcome::Overloaded
            | Outcome::MemoryPressure
            | Outcome::ActivationTimeout
            | Outcome::Unavailable
            | Outcome::NoReplica => StatusCode::SERVICE_UNAVAILABLE,
            Outcome::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Outcome::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Outcome::Trap | Outcome::GuestError => StatusCode::INTERNAL_SERVER_ERROR,
            Outcome::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// A sentence for humans, safe to show to any client.
    pub fn message(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fuel => "the request used up its CPU (fuel) quota",
            Outcome::Memory => "the request exceeded the app's memory quota",
            Outcome::Timeout => "the request exceeded the app's time quota",
            Outcome::Trap => "the app failed (trapped or panicked) while handling the request",
            Outcome::GuestError => "the app returned an error instead of a response",
            Outcome::Overloaded => "the app is at its concurrency limit; retry later",
            Outcome::BodyTooLarge => "the request body is larger than this node accepts",
            Outcome::MemoryPressure => {
                "this node has no memory for another instance right now; retry later"
            }
            Outcome::ActivationTimeout => "the app is waking up and was not ready in time; retry",
            Outcome::NotFound => "no app is deployed for this host",
            Outcome::Unavailable => "the app could not be started on this node",
            Outcome::NoReplica => "no node has a ready replica of this app right now",
            Outcome::UpstreamFailed => "the node running this app could not be reached",
        }
    }

    /// Index into [`Outcome::ALL`] (declaration order; a unit test keeps
    /// the two in step).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Classifies an error returned by a guest call. `memory_denied` is the
/// [`Limiter`]'s record for the same store.
pub fn classify(error: &wasmtime::Error, memory_denied: bool) -> Outcome {
    // The limiter's record wins: a denied growth makes a Rust guest abort
    // with an `unreachable` trap, which must count as the memory quota.
    if memory_denied {
        return Outcome::Memory;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::Fuel,
        Some(Trap::Interrupt) => Outcome::Timeout,
        _ => Outcome::Trap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_uses_trap_codes_and_the_limiter_record() {
        let fuel = wasmtime::Error::from(Trap::OutOfFuel);
        let epoch = wasmtime::Error::from(Trap::Interrupt);
        let other = wasmtime::Error::from(Trap::UnreachableCodeReached);
        assert_eq!(classify(&fuel, false), Outcome::Fuel);
        assert_eq!(classify(&epoch, false), Outcome::Timeout);
        assert_eq!(classify(&other, false), Outcome::Trap);
        assert_eq!(classify(&other, true), Outcome::Memory);
        // Text that merely mentions fuel is not a fuel trap.
        let text = wasmtime::Error::msg("all fuel consumed by WebAssembly");
        assert_eq!(classify(&text, false), Outcome::Trap);
    }

    #[test]
    fn limiter_records_denials() {
        let mut limiter = Limiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap_or(false));
        assert!(!limiter.denied());
        assert!(
            !limiter
                .memory_growing(1 << 20, 2 << 20, None)
                .unwrap_or(true)
        );
        assert!(limiter.denied());
    }

    #[test]
    fn every_outcome_has_a_distinct_reason_and_index() {
        let reasons: std::collections::HashSet<_> =
            Outcome::ALL.iter().map(|o| o.reason()).collect();
        assert_eq!(reasons.len(), Outcome::ALL.len());
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
    }
}
