//! The HTTP ingress: accepts connections (HTTP/1.1 with keep-alive, or
//! HTTP/2 with prior knowledge) and hands each request to the [`Runtime`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Runtime;

/// A client must send a request's headers within this time, so slow or idle
/// connections cannot hold a slot forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `listener` until `shutdown` is cancelled, then stops accepting,
/// lets in-flight requests finish, and returns once every connection and
/// guest call has ended.
pub async fn run(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let runtime = runtime.clone();
        let service = service_fn(move |req| {
            let runtime = runtime.clone();
            async move { Ok::<_, Infallible>(runtime.handle(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("ingress draining in-flight requests");
    graceful.shutdown().await;
    connections.close();
    connections.wait().await;
    runtime.drain().await;
    Ok(())
}
