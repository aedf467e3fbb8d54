//! Artifacts already found fit for a use, per digest.
//!
//! An apply checks that its component was uploaded and is a component (a
//! job's or worker's: a command); that means reading the artifact back
//! from the store, which costs more than the rest of the apply. Artifacts
//! are content-addressed, so a verdict never goes stale: only whether the
//! artifact still exists can change, and the apply's transaction checks
//! that again (a collected artifact fails it with `unknown_artifact`).

use std::collections::HashSet;
use std::sync::Mutex;

use skiff_sdk::Digest;

/// Entries kept before the set starts over (each is one digest).
const CAPACITY: usize = 16_384;

/// What an artifact was checked to be fit for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Use {
    /// A component (an HTTP app's).
    Component,
    /// A command component (a job's or a worker's).
    Command,
}

/// The verdicts that passed. Failures are not kept: they are rare and
/// their message is built afresh.
#[derive(Default)]
pub(crate) struct Inspected {
    passed: Mutex<HashSet<(Digest, Use)>>,
}

impl Inspected {
    /// Whether `digest` already passed the check for `use_`.
    pub(crate) fn passed(&self, digest: &Digest, use_: Use) -> bool {
        self.lock().contains(&(*digest, use_))
    }

    /// Records that `digest` passed the check for `use_`.
    pub(crate) fn pass(&self, digest: &Digest, use_: Use) {
        let mut passed = self.lock();
        if passed.len() >= CAPACITY {
            passed.clear();
        }
        passed.insert((*digest, use_));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(Digest, Use)>> {
        self.passed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_is_per_use_and_the_set_is_bounded() {
        let inspected = Inspected::default();
        let d = Digest::of(b"x");
        assert!(!inspected.passed(&d, Use::Component));
        inspected.pass(&d, Use::Component);
        assert!(inspected.passed(&d, Use::Component));
        assert!(!inspected.passed(&d, Use::Command));
        for i in 0..CAPACITY {
            inspected.pass(&Digest::of(&i.to_le_bytes()), Use::Command);
        }
        assert!(inspected.lock().len() <= CAPACITY);
    }
}
