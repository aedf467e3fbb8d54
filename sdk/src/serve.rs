//! The accept loop shared by the controller's API and a node's ingress:
//! HTTP/1.1 with keep-alive or HTTP/2 with prior knowledge, hardened against
//! clients that send too much or too slowly ([`Limits`]), and shut down
//! gracefully (stop accepting, let in-flight requests finish).
//!
//! What a connection may hold is bounded three ways: a connection with no
//! request in flight is closed once it has been idle for
//! [`Limits::header_read_timeout`] (counted from accept, so a socket that
//! never sends a byte is closed too); at most [`Limits::max_connections`]
//! are open at once; and one client address (an IPv6 client by its /64)
//! holds at most [`Limits::max_connections_per_client`] of them, so a single
//! source cannot lock the others out.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
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
    /// (from the connection's accept or the end of the previous response);
    /// a connection with no request in flight for this long is closed, so
    /// silent, slow or idle connections cannot hold a slot forever.
    pub header_read_timeout: Duration,
    /// Connections open at once; one more is answered `503` and closed.
    pub max_connections: usize,
    /// Connections one client address (an IPv6 client by its /64 prefix)
    /// may hold at once; one more is answered `503` and closed.
    pub max_connections_per_client: usize,
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
            // A tenth: a few busy sources (a proxy, a peer node forwarding)
            // fit, one flooding source leaves nine tenths to the rest.
            max_connections_per_client: 1_000,
            max_header_bytes: 64 << 10,
            max_headers: 100,
            max_streams: 256,
        }
    }
}

/// How long a client of these servers should keep an idle pooled
/// connection: well under the default [`Limits::header_read_timeout`], so
/// a client never sends on a connection the server is closing as idle.
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(5);

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
/// connection has ended (in-flight requests finish first). Every request
/// carries its connection's [`ClientAddr`] as an extension.
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
    let idle_timeout = limits.header_read_timeout;
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
    let per_client = Arc::new(ClientShares::new(limits.max_connections_per_client));
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
        let refusal = match (
            per_client.take(peer.ip()),
            slots.clone().try_acquire_owned(),
        ) {
            (Ok(share), Ok(slot)) => Ok((share, slot)),
            // One client at its share: said once per client and episode (so
            // a flood from one source cannot flood the log).
            (Err(Refused { first }), _) => {
                Err(first.then_some("at its share of the connection limit"))
            }
            (Ok(_), Err(_)) => {
                Err((!std::mem::replace(&mut at_limit, true)).then_some("at the connection limit"))
            }
        };
        let (share, slot) = match refusal {
            Ok(held) => held,
            Err(say) => {
                if let Some(why) = say {
                    tracing::warn!(%peer, limit = limits.max_connections,
                        per_client = limits.max_connections_per_client, "refusing connections: {why}");
                }
                connections.spawn(async move {
                    let _ = stream.write_all(TOO_MANY_CONNECTIONS).await;
                    let _ = stream.shutdown().await;
                });
                continue;
            }
        };
        at_limit = false;
        let activity = Arc::new(Activity::default());
        let service = Tracked {
            inner: make(),
            activity: activity.clone(),
            client: ClientAddr(peer.ip()),
        };
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            tokio::select! {
                ended = conn => if let Err(error) = ended {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                },
                () = activity.idle_for(idle_timeout) => {
                    tracing::debug!(%peer, "closing a connection idle since its last request");
                }
            }
            drop((slot, share));
        });
    }
    drop(listener);
    graceful.shutdown().await;
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Connections held per client address, and whether its refusal at the
/// share was already said.
#[derive(Debug)]
struct ClientShares {
    limit: usize,
    held: Mutex<HashMap<IpAddr, (usize, bool)>>,
}

/// A connection refused because its client holds its share; `first` when
/// this is the first refusal since the client was last under its share.
#[derive(Debug)]
struct Refused {
    first: bool,
}

impl ClientShares {
    fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// One more connection for `ip`, unless it holds its share already.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<ClientShare, Refused> {
        let key = client_key(ip);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let (count, said) = held.entry(key).or_insert((0, false));
        if *count >= self.limit {
            return Err(Refused {
                first: !std::mem::replace(said, true),
            });
        }
        *count += 1;
        Ok(ClientShare {
            shares: self.clone(),
            key,
        })
    }
}

/// A connection counted against its client's share until dropped.
#[derive(Debug)]
struct ClientShare {
    shares: Arc<ClientShares>,
    key: IpAddr,
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        let mut held = self.shares.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((count, said)) = held.get_mut(&self.key) {
            *count -= 1;
            *said = false;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// What counts as one client: an IPv4 address (also when written as an
/// IPv4-mapped IPv6 one), or an IPv6 /64 (one subscriber's usual prefix, so
/// hopping through its addresses gains nothing).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Whether a connection is serving a request, and since when it is not.
#[derive(Debug)]
struct Activity {
    busy: AtomicUsize,
    /// When the last request ended (or the connection was accepted), in
    /// milliseconds since `started`.
    idle_since_ms: AtomicU64,
    started: tokio::time::Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            started: tokio::time::Instant::now(),
        }
    }
}

impl Activity {
    /// Resolves once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let wait = if self.busy.load(Ordering::Acquire) > 0 {
                timeout
            } else {
                let since = self.started
                    + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
                let idle = tokio::time::Instant::now().saturating_duration_since(since);
                match timeout.checked_sub(idle) {
                    Some(left) if !left.is_zero() => left,
                    _ => return,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }
}

/// One request in flight on a connection, from the call of the service
/// until its response body is dropped (sent or abandoned).
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let now = u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The address of the client a request came from (the TCP peer), set as a
/// request extension by [`serve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

/// A connection's service: marks its requests busy and tags them with the
/// client's address.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    client: ClientAddr,
}

impl<S, B> hyper::service::Service<http::Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<
            http::Request<Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        >,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, mut req: http::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.client);
        TrackedFuture {
            busy: Some(self.activity.begin()),
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of a [`Tracked`] service.
    struct TrackedFuture<F> {
        busy: Option<Busy>,
        #[pin]
        inner: F,
    }
}

impl<F, B> Future for TrackedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, Infallible>>,
{
    type Output = Result<http::Response<TrackedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.inner.poll(cx));
        let busy = this.busy.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, _busy: busy })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted until it is dropped.
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        _busy: Option<Busy>,
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
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

    #[test]
    fn clients_are_counted_by_address_and_ipv6_prefix() {
        let shares = Arc::new(ClientShares::new(2));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let first = shares.take(a).unwrap();
        let _second = shares.take(mapped).unwrap();
        assert!(
            shares.take(a).unwrap_err().first,
            "a third from the same address"
        );
        assert!(!shares.take(a).unwrap_err().first, "said once per episode");
        assert!(shares.take("127.0.0.2".parse().unwrap()).is_ok());
        drop(first);
        let again = shares
            .take(a)
            .expect("a share comes back when its connection ends");
        assert!(
            shares.take(a).unwrap_err().first,
            "a new episode is said again"
        );
        drop(again);
        let _v6 = shares.take("2001:db8::1".parse().unwrap()).unwrap();
        let _v6b = shares.take("2001:db8::ffff:2".parse().unwrap()).unwrap();
        assert!(
            shares.take("2001:db8::3".parse().unwrap()).is_err(),
            "same /64"
        );
        assert!(shares.take("2001:db8:0:1::1".parse().unwrap()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idles_out_only_while_no_request_is_in_flight() {
        let timeout = Duration::from_secs(10);
        let activity = Arc::new(Activity::default());
        let busy = activity.begin();
        // Busy for far longer than the timeout: not idle.
        let idle = tokio::time::timeout(Duration::from_secs(60), activity.idle_for(timeout)).await;
        assert!(idle.is_err());
        drop(busy);
        let started = tokio::time::Instant::now();
        activity.idle_for(timeout).await;
        assert!(started.elapsed() >= timeout);
    }
}
