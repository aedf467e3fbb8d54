//! What a node and the controller exchange about replicas: their states
//! (reported with heartbeats, checked against a digest both sides keep up
//! to date) and the assignments a node watches.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppSpec;

/// Lifecycle state of a replica on its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ReplicaState {
    /// Assigned, not yet started.
    Pending,
    /// Loading and pre-instantiating.
    Starting,
    /// Serving.
    Ready,
    /// Could not start or stopped working.
    Failed,
}

/// A replica's state as a node observes it (sent with heartbeats).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaStatus {
    /// Replica id from the assignment.
    pub id: String,
    /// State.
    pub state: ReplicaState,
    /// Why, when `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Body of `PUT /v1/nodes/{name}/heartbeat`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Observed replicas: all of them (a full report, `digest` absent), or
    /// with `digest`, only those whose state changed since the last
    /// heartbeat the controller answered.
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
    /// With a delta report: [`replica_digest`] of the node's full state
    /// after the change, so the controller can tell when its record drifted
    /// and ask for a full report ([`HeartbeatReply::resend_full`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The node's API key again ([`RegisterNode::logs_key`]): the
    /// controller stores only its hash, so one that restarted learns the
    /// key from the next heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_key: Option<String>,
    /// Use of the apps that had requests since the last report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<crate::scale::AppUsage>,
}

/// The answer to a heartbeat (`200`; a `204` means the same as the
/// default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatReply {
    /// The controller's record of this node's replicas does not match the
    /// digest: send a full report next.
    #[serde(default)]
    pub resend_full: bool,
}

/// The digest of a node's replica states, as both sides compute it: the
/// sum (mod 2^128) of each replica's [`ReplicaDigest::line`], leaving out
/// `Pending` replicas (the controller creates them Pending before the node
/// has heard of them). Hex, 32 characters.
///
/// A sum rather than a hash of the sorted lines, so that both sides keep
/// it up to date as states change instead of hashing 10,000 lines at every
/// heartbeat. It detects drift (a lost or misapplied report), which is all
/// it is for: it is not a defence against a node forging its states (a
/// node's credential already allows it to report any state).
pub fn replica_digest<'a>(
    states: impl IntoIterator<Item = (&'a str, ReplicaState, Option<&'a str>)>,
) -> String {
    let mut digest = ReplicaDigest::default();
    for (id, state, reason) in states {
        digest.add(id, state, reason);
    }
    digest.hex()
}

/// A [`replica_digest`] kept up to date: add a replica's state, remove the
/// state it had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaDigest(u128);

impl ReplicaDigest {
    /// One replica state's share: the first 16 bytes of the sha256 of
    /// `id state reason`; nothing for `Pending`.
    pub fn line(id: &str, state: ReplicaState, reason: Option<&str>) -> u128 {
        use sha2::Digest as _;
        if state == ReplicaState::Pending {
            return 0;
        }
        let mut hash = sha2::Sha256::new();
        hash.update(id.as_bytes());
        hash.update(format!(" {state:?} ").as_bytes());
        hash.update(reason.unwrap_or("").as_bytes());
        let bytes: [u8; 32] = hash.finalize().into();
        let mut first = [0u8; 16];
        first.copy_from_slice(&bytes[..16]);
        u128::from_be_bytes(first)
    }

    /// Counts a replica's state.
    pub fn add(&mut self, id: &str, state: ReplicaState, reason: Option<&str>) {
        self.0 = self.0.wrapping_add(Self::line(id, state, reason));
    }

    /// Takes back a state [`ReplicaDigest::add`] counted.
    pub fn remove(&mut self, id: &str, state: ReplicaState, reason: Option<&str>) {
        self.0 = self.0.wrapping_sub(Self::line(id, state, reason));
    }

    /// As [`replica_digest`] writes it.
    pub fn hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

/// One replica a node should run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// Replica id.
    pub id: String,
    /// App name.
    pub app: String,
    /// Revision number.
    pub revision: u64,
    /// The revision's spec (shared: a node's set of 10,000 assignments is
    /// copied without copying their specs).
    #[schema(value_type = AppSpec)]
    pub spec: std::sync::Arc<AppSpec>,
}

/// A node's desired replicas at a version (`GET .../assignments`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Assignments {
    /// Changes whenever the set changes; pass as `after` to wait for the next.
    pub version: u64,
    /// The replicas (with `delta`, only those added or changed since the
    /// version asked for).
    pub replicas: Vec<Assignment>,
    /// With `delta`: the ids no longer assigned since that version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// This answer is a change to the version asked for (`?delta=true`),
    /// not the whole set; a controller that cannot tell the difference
    /// answers the whole set (`delta` false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
}

impl Assignments {
    /// This set with `next` applied: `next` itself when it is a whole set,
    /// else this one with its removals and additions.
    pub fn apply(&mut self, next: Assignments) {
        if !next.delta {
            *self = next;
            return;
        }
        let gone: std::collections::HashSet<&str> =
            next.removed.iter().map(String::as_str).collect();
        let changed: std::collections::HashSet<&str> =
            next.replicas.iter().map(|a| a.id.as_str()).collect();
        self.replicas
            .retain(|a| !gone.contains(a.id.as_str()) && !changed.contains(a.id.as_str()));
        self.replicas.extend(next.replicas);
        self.replicas.sort_by(|a, b| a.id.cmp(&b.id));
        self.version = next.version;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_kept_up_to_date_equals_one_computed_whole() {
        use ReplicaState::{Failed, Pending, Ready, Starting};
        let mut kept = ReplicaDigest::default();
        kept.add("a", Starting, None);
        kept.add("b", Pending, None);
        kept.remove("a", Starting, None);
        kept.add("a", Ready, None);
        kept.add("c", Failed, Some("trap"));
        // Order does not matter, Pending does not count.
        let whole = replica_digest([("c", Failed, Some("trap")), ("a", Ready, None)]);
        assert_eq!(kept.hex(), whole);
        assert_eq!(whole.len(), 32);
        // A different reason or state is a different digest.
        assert_ne!(
            whole,
            replica_digest([("c", Failed, Some("oom")), ("a", Ready, None)])
        );
        assert_ne!(whole, replica_digest([("a", Ready, None)]));
        assert_eq!(replica_digest([]), ReplicaDigest::default().hex());
    }
}
