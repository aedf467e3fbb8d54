//! The per-request host state: everything a guest instance can reach.
//!
//! Each request gets a fresh [`HostState`] in a fresh `Store`. It grants the
//! guest its app's environment variables, stdout/stderr into the app's log
//! buffer, clocks and randomness — and nothing else: no preopened
//! directories, no sockets, no host environment, and outbound HTTP refused
//! (see [`OutboundPolicy`]).

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::logs::{LogBuffer, Stream};
use crate::quota::Limiter;

/// Decides a guest's outbound HTTP requests. Skiff denies by default:
/// `wasmtime-wasi-http` would otherwise let a guest reach anything the node
/// can, the node's own loopback services included.
#[derive(Debug)]
pub struct OutboundPolicy {
    app: Arc<str>,
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        tracing::warn!(
            app = %self.app,
            uri = %request.uri(),
            "outbound HTTP request denied: the app has no outbound grant"
        );
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// The data of one request's `Store`.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundPolicy,
    /// The memory limiter; read after the call to classify failures.
    pub limiter: Limiter,
}

/// Maximum resources (streams, fields, bodies, ...) one instance may hold in
/// its resource table, so a guest cannot grow host memory without bound
/// through handles.
pub const MAX_RESOURCES: usize = 10_000;

impl HostState {
    /// Host state for one instance of `app`.
    pub fn new(
        app: &Arc<str>,
        env: &[(String, String)],
        logs: &Arc<LogBuffer>,
        limiter: Limiter,
    ) -> Self {
        let mut builder = WasiCtx::builder();
        builder
            .envs(env)
            .stdout(logs.writer(Stream::Stdout))
            .stderr(logs.writer(Stream::Stderr))
            .allow_blocking_current_thread(false)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi: builder.build(),
            http: WasiHttpCtx::new(),
            table,
            hooks: OutboundPolicy { app: app.clone() },
            limiter,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}
