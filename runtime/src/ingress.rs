//! The HTTP ingress: accepts connections (HTTP/1.1 with keep-alive, or
//! HTTP/2 with prior knowledge) and hands each request to a [`Handler`]: the
//! [`Runtime`] itself (`skiff serve`) or a node's router, which serves local
//! replicas and forwards the rest.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::service::service_fn;
pub use skiff_sdk::serve::Limits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
        Runtime::handle(self, crate::Target::ByHost, req)
    }

    fn drain(&self) -> impl Future<Output = ()> + Send {
        Runtime::drain(self)
    }
}

/// Serves `listener` until `shutdown` is cancelled, then stops accepting,
/// lets in-flight requests finish, and returns once every connection and
/// guest call has ended. `limits` bound what one client may hold.
pub async fn run<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let serving = handler.clone();
    skiff_sdk::serve::serve(
        listener,
        limits,
        move || {
            let handler = serving.clone();
            service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler.handle(req).await) }
            })
        },
        shutdown,
    )
    .await?;
    tracing::info!("ingress drained its connections");
    handler.drain().await;
    Ok(())
}
