//! The accept loop shared by the controller's API and a node's ingress:
//! HTTP/1.1 with keep-alive or HTTP/2 with prior knowledge, hardened against
//! clients that send too much or too slowly ([`Limits`]), and shut down
//! gracefully (stop accepting, let in-flight requests finish).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What one client may make a server hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A client must send a request's whole header block within this time
    /// (from the connection's start or the previous response), so slow or
    /// idle connections cannot hold a slot forever.
    pub header_read_timeout: Duration,
    /// Connections open at once; one more is answered `503` and closed.
    pub max_connections: usize,
    /// Largest request header block (HTTP/1.1 read buffer; HTTP/2 header
    /// list). A larger one is answered `431`.
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP/1.1 request (`431` beyond).
    pub max_headers: usize,
    /// Most concurrent HTTP/2 streams on one connection.
    pub max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_header_bytes: 64 << 10,
            max_headers: 100,
            max_streams: 256,
        }
    }
}

/// Back-off after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// The answer to a connection over [`Limits::max_connections`].
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nx-skiff-reason: too-many-connections\r\n\
connection: close\r\ncontent-length: 92\r\n\r\n\
{\"error\":{\"code\":\"too-many-connections\",\"message\":\"the server is at its connection limit\"}}\n";

/// Serves `listener` with a service made per connection by `make` until
/// `shutdown` is cancelled; then stops accepting and returns once every
/// connection has ended (in-flight requests finish first).
pub async fn serve<M, S, B>(
    listener: TcpListener,
    limits: Limits,
    make: M,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    M: Fn() -> S,
    S: hyper::service::Service<
            http::Request<Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Whether the limit is being hit: warned once per episode, not once per
    // refused connection (a flood would otherwise flood the log too).
    let mut at_limit = false;
    loop {
        let (mut stream, peer) = tokio::select! {
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !std::mem::replace(&mut at_limit, true) {
                tracing::warn!(%peer, limit = limits.max_connections, "refusing connections: at the connection limit");
            }
            connections.spawn(async move {
                let _ = stream.write_all(TOO_MANY_CONNECTIONS).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        at_limit = false;
        let conn = builder
            .serve_connection(TokioIo::new(stream), make())
            .into_owned();
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    connections.close();
    connections.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_well_formed() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        serde_json::from_str::<crate::api::ErrorBody>(body).unwrap();
    }
}
