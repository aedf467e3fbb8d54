//! The HTTP ingress: accepts connections (HTTP/1.1 with keep-alive, or
//! HTTP/2 with prior knowledge) and hands each request to a [`Handler`]: the
//! [`Runtime`] itself (`skiff serve`) or a node's router, which serves local
//! replicas and forwards the rest.

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

use hyper::body::Incoming;
pub use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::Runtime;

/// What answers the ingress's requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request; never fails (errors are responses).
    fn handle(
        self: &Arc<Self>,
        req: http::Request<Incoming>,
    ) -> impl Future<Output = http::Response<HyperOutgoingBody>> + Send;
    /// Waits for in-flight work to end once the ingress stopped accepting.
    fn drain(&self) -> impl Future<Output = ()> + Send;
}

impl Handler for Runtime {
    fn handle(
        self: &Arc<Self>,
        req: http::Request<Incoming>,
    ) -> impl Future<Output = http::Response<HyperOutgoingBody>> + Send {
        Runtime::handle(self, req)
    }

    fn drain(&self) -> impl Future<Output = ()> + Send {
        Runtime::drain(self)
    }
}

/// A client must send a request's headers within this time, so slow or idle
/// connections cannot hold a slot forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `listener` until `shutdown` is cancelled, then stops accepting,
/// lets in-flight requests finish, and returns once every connection and
/// guest call has ended.
pub async fn run<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
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
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(req).await) }
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
    handler.drain().await;
    Ok(())
}
