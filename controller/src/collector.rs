//! The artifact collector: while this controller leads, removes artifacts
//! that no kept revision of any app has named for the retention period
//! (see the store's `collect_artifacts`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Default retention of an unreferenced artifact: an hour leaves time to
/// apply what was just uploaded, and to roll back to an app just deleted
/// and created again.
pub const DEFAULT_ARTIFACT_RETENTION: Duration = Duration::from_secs(60 * 60);

/// How often a pass runs for `retention`: a twelfth of it (so an artifact
/// goes within ~8% of its retention), between 100 ms and 5 min.
fn pass_interval(retention: Duration) -> Duration {
    (retention / 12).clamp(Duration::from_millis(100), Duration::from_secs(300))
}

/// Runs collection passes while `leader` says this controller leads, until
/// `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    retention: Duration,
    leader: tokio::sync::watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            () = tokio::time::sleep(pass_interval(retention)) => {}
            () = shutdown.cancelled() => return,
        }
        if !*leader.borrow() {
            continue;
        }
        match store.collect_artifacts(retention_ms).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(count = removed.len(), digests = ?removed, "removed artifacts no app has used for the retention period");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "collecting unreferenced artifacts failed; retrying on the next pass");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_follow_the_retention_within_bounds() {
        assert_eq!(
            pass_interval(DEFAULT_ARTIFACT_RETENTION),
            Duration::from_secs(300)
        );
        assert_eq!(
            pass_interval(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
        assert_eq!(pass_interval(Duration::ZERO), Duration::from_millis(100));
    }
}
