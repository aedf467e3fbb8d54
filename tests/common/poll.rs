//! Waiting for something in a test: poll with a deadline, never a bare
//! sleep. Shared by every test crate (the controller's includes this file).

use std::time::{Duration, Instant};

/// Polls the async `check` until it returns `Ok`, failing after
/// `deadline` with `what` and the last `Err` it returned (what was seen
/// instead). The one way tests wait for something: never a bare sleep.
pub async fn poll<T, E: std::fmt::Debug, F>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T
where
    F: std::future::Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}; last seen: {seen:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`poll`] with a synchronous check.
pub async fn eventually<T>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    poll(deadline, what, || std::future::ready(check().ok_or(()))).await
}
