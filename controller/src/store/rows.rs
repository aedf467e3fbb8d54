//! Conversions between stored rows and domain values, shared by the SQL
//! store's methods.

use skiff_sdk::api::{AppSpec, ReplicaState};

use super::{Result, StoreError};

pub(super) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

pub(super) fn json<T: serde::Serialize>(value: &T) -> String {
    // Serialising plain data structures to a string cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt { what, source })
}

pub(super) fn state_str(state: ReplicaState) -> &'static str {
    match state {
        ReplicaState::Pending => "Pending",
        ReplicaState::Starting => "Starting",
        ReplicaState::Ready => "Ready",
        ReplicaState::Failed => "Failed",
    }
}

pub(super) fn parse_state(s: &str) -> ReplicaState {
    match s {
        "Starting" => ReplicaState::Starting,
        "Ready" => ReplicaState::Ready,
        "Failed" => ReplicaState::Failed,
        _ => ReplicaState::Pending,
    }
}

pub(super) fn not_found(kind: &'static str, name: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        name: name.to_owned(),
    }
}

/// Checks an optimistic-concurrency precondition against the current version.
pub(super) fn check_version(
    kind: &str,
    name: &str,
    current: Option<u64>,
    expected: Option<u64>,
) -> Result<()> {
    match (expected, current) {
        (None, _) => Ok(()),
        (Some(0), None) => Ok(()),
        (Some(e), Some(c)) if e == c => Ok(()),
        (Some(e), None) => Err(StoreError::Conflict(format!(
            "{kind} {name:?} does not exist (expected version {e})"
        ))),
        (Some(e), Some(c)) => Err(StoreError::Conflict(format!(
            "{kind} {name:?} is at version {c}, not {e}"
        ))),
    }
}

/// The spec with `replicas` neutralised: revisions differ only in the rest.
pub(super) fn revision_identity(spec: &AppSpec) -> AppSpec {
    AppSpec {
        replicas: 0,
        ..spec.clone()
    }
}
