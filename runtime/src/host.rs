//! The per-request host state: everything a guest instance can reach.
//!
//! Each request gets a fresh [`HostState`] in a fresh `Store`. It grants the
//! guest its app's environment variables, stdout/stderr into the app's log
//! buffer, clocks and randomness, and what the app's [`Capabilities`] grant
//! — and nothing else: no host environment, no file system but the app's
//! own static files (read-only), and no network but granted destinations
//! (see [`OutboundPolicy`] and [`skiff_sdk::capability`]). Every denial is
//! logged on the node and in the app's log, and counted.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::BodyExt;
use skiff_sdk::capability::{Denial, OutboundRules, Scheme};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{WasiFilesystemCtxView, WasiFilesystemView as _};
use wasmtime_wasi::p2::bindings::filesystem::{preopens, types as fs};
use wasmtime_wasi::p2::bindings::sockets::network::{self, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sockets::{tcp_create_socket, udp_create_socket};
use wasmtime_wasi::p2::{SocketError, SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView, WasiSocketsView as _};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use crate::logs::{LogBuffer, Stream};
use crate::quota::Limiter;

/// What an app may reach beyond computing, from its spec: outbound
/// destinations and a directory of static files. The default grants
/// nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Outbound HTTP and socket grants.
    pub outbound: Arc<OutboundRules>,
    /// A directory preopened read-only at `/`: the app's declared static
    /// files, and nothing else of the node's file system.
    pub files: Option<PathBuf>,
}

/// Where a denial is reported: the node's log (with the app's name), the
/// app's own log (so `skiff logs` shows it) and its counter.
#[derive(Clone)]
struct DenialSink {
    app: Arc<str>,
    logs: Arc<LogBuffer>,
    denied: Arc<AtomicU64>,
}

impl DenialSink {
    /// Records a refused network access to `what`.
    fn record(&self, what: &str, denial: &Denial) {
        self.note(Access::Outbound, what, denial);
    }

    fn note(&self, access: Access, what: &str, why: &dyn std::fmt::Display) {
        self.denied.fetch_add(1, Ordering::Relaxed);
        let kind = access.as_str();
        if self.logs.may_trace() {
            tracing::warn!(app = %self.app, kind, %what, reason = %why, "access denied");
        }
        self.logs
            .note(&format!("skiff: {kind} access to {what} denied: {why}"));
    }
}

/// What kind of access a guest was refused.
#[derive(Clone, Copy)]
enum Access {
    /// HTTP or a socket.
    Outbound,
    /// A file or directory.
    FileSystem,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::FileSystem => "file system",
        }
    }
}

/// Decides a guest's outbound HTTP requests against its grants. Without
/// it `wasmtime-wasi-http` would let a guest reach anything the node can,
/// the node's own loopback services included.
pub struct OutboundPolicy {
    rules: Arc<OutboundRules>,
    sink: DenialSink,
}

/// Where an allowed request goes: a vetted address for plain HTTP (so a
/// second DNS answer cannot point it elsewhere), or the name for HTTPS
/// (whose certificate check binds the connection to that name).
async fn vet(rules: &OutboundRules, uri: &http::Uri) -> Result<Option<SocketAddr>, Denied> {
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
        Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
        _ => return Err(Denied::Protocol),
    };
    let host = uri.host().ok_or(Denied::Protocol)?;
    let port = uri
        .port_u16()
        .or(scheme.default_port())
        .ok_or(Denied::Protocol)?;
    rules.check_host(scheme, host, port).map_err(Denied::Rule)?;
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>();
    let addrs: Vec<SocketAddr> = match literal {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Denied::Dns)?
            .collect(),
    };
    // Every address must pass: a name that resolves to a public and a
    // private address is refused rather than raced.
    for addr in &addrs {
        rules
            .check_address(scheme, host, addr.ip(), port)
            .map_err(Denied::Rule)?;
    }
    match (scheme, addrs.first()) {
        (_, None) => Err(Denied::Dns),
        (Scheme::Http, Some(addr)) => Ok(Some(*addr)),
        _ => Ok(None),
    }
}

enum Denied {
    Rule(Denial),
    Protocol,
    Dns,
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let rules = self.rules.clone();
        let sink = self.sink.clone();
        Box::new(async move {
            let uri = request.uri().clone();
            match vet(&rules, &uri).await {
                Ok(Some(addr)) => {
                    // Connect to the vetted address; the Host header keeps
                    // the name the guest used.
                    let mut parts = uri.into_parts();
                    parts.authority = addr.to_string().parse().ok();
                    *request.uri_mut() = http::Uri::from_parts(parts)
                        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
                }
                Ok(None) => {}
                Err(Denied::Rule(denial)) => {
                    sink.record(&uri.to_string(), &denial);
                    return Err(match denial {
                        Denial::NotAllowed { .. } => HttpError::HttpRequestDenied,
                        Denial::Restricted { .. } => HttpError::DestinationIpProhibited,
                    });
                }
                Err(Denied::Protocol) => return Err(HttpError::HttpRequestUriInvalid),
                Err(Denied::Dns) => {
                    return Err(HttpError::DnsError {
                        rcode: Some("address not available".into()),
                        info_code: None,
                    });
                }
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// The `wasi:sockets` check: connections and datagrams only to granted
/// addresses, binds only to an ephemeral port (implicit binds), and never
/// a listening socket.
fn socket_check(
    rules: Arc<OutboundRules>,
    sink: DenialSink,
) -> impl Fn(SocketAddr, SocketAddrUse) -> Pin<Box<dyn Future<Output = bool> + Send + Sync>>
+ Send
+ Sync
+ 'static {
    move |addr, usage| {
        let scheme = match usage {
            SocketAddrUse::TcpBind
            | SocketAddrUse::TcpConnect
            | SocketAddrUse::TcpListen
            | SocketAddrUse::TcpAccept => Scheme::Tcp,
            SocketAddrUse::UdpBind | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
                Scheme::Udp
            }
        };
        let verdict = match usage {
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                if addr.ip().is_unspecified() && addr.port() == 0 {
                    Ok(())
                } else {
                    Err(Denial::NotAllowed {
                        scheme,
                        host: format!("bind {}", addr.ip()),
                        port: addr.port(),
                    })
                }
            }
            SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => Err(Denial::NotAllowed {
                scheme: Scheme::Tcp,
                host: format!("listen {}", addr.ip()),
                port: addr.port(),
            }),
            SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
                rules.check_socket(scheme, addr.ip(), addr.port())
            }
        };
        let allowed = match verdict {
            Ok(()) => true,
            Err(denial) => {
                sink.record(&format!("socket {addr}"), &denial);
                false
            }
        };
        Box::pin(std::future::ready(allowed))
    }
}

/// The data of one request's `Store`.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundPolicy,
    /// Whether the app has files (a preopened directory).
    files: bool,
    /// The memory limiter; read after the call to classify failures.
    pub limiter: Limiter,
}

/// Maximum resources (streams, fields, bodies, ...) one instance may hold in
/// its resource table, so a guest cannot grow host memory without bound
/// through handles.
pub const MAX_RESOURCES: usize = 10_000;

impl HostState {
    /// Host state for one instance of `app` (a command's, with `args`:
    /// its whole argv, program name first). Fails only if the app's static
    /// files directory cannot be opened.
    pub fn new(
        app: &Arc<str>,
        args: &[String],
        env: &[(String, String)],
        capabilities: &Capabilities,
        logs: &Arc<LogBuffer>,
        denied: &Arc<AtomicU64>,
        limiter: Limiter,
    ) -> wasmtime::Result<Self> {
        let rules = &capabilities.outbound;
        let sink = DenialSink {
            app: app.clone(),
            logs: logs.clone(),
            denied: denied.clone(),
        };
        let (tcp, udp) = (rules.grants(Scheme::Tcp), rules.grants(Scheme::Udp));
        let mut builder = WasiCtx::builder();
        builder
            .args(args)
            .envs(env)
            .stdout(logs.writer(Stream::Stdout))
            .stderr(logs.writer(Stream::Stderr))
            .allow_blocking_current_thread(false)
            // Without a grant no socket is even created (each would hold a
            // host descriptor); `GuardedSockets` logs the refusal. With one,
            // every bind, connect and datagram goes through `socket_check`.
            .allow_tcp(tcp)
            .allow_udp(udp)
            .allow_ip_name_lookup(tcp || udp);
        if tcp || udp {
            // Only then: no closure to allocate per request for the rest.
            builder.socket_addr_check(socket_check(rules.clone(), sink.clone()));
        }
        if let Some(dir) = &capabilities.files {
            builder.preopened_dir(dir, "/", FsPerms::ReadOnly)?;
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Ok(Self {
            wasi: builder.build(),
            http: WasiHttpCtx::new(),
            table,
            hooks: OutboundPolicy {
                rules: rules.clone(),
                sink,
            },
            files: capabilities.files.is_some(),
            limiter,
        })
    }

    fn guarded_files(&mut self) -> GuardedFilesView<'_> {
        let sink = self.hooks.sink.clone();
        let granted = self.files;
        GuardedFilesView {
            files: self.filesystem(),
            granted,
            sink,
        }
    }

    fn guarded_sockets(&mut self) -> GuardedView<'_> {
        let rules = self.hooks.rules.clone();
        let sink = self.hooks.sink.clone();
        GuardedView {
            sockets: self.sockets(),
            rules,
            sink,
        }
    }
}

/// `wasi:sockets` socket creation that records a refusal: without a grant
/// wasmtime-wasi refuses to create the socket (`access-denied`) before any
/// address check could see it, so the denial is logged here.
pub struct GuardedSockets;

impl HasData for GuardedSockets {
    type Data<'a> = GuardedView<'a>;
}

/// The view [`GuardedSockets`] works on.
pub struct GuardedView<'a> {
    sockets: WasiSocketsCtxView<'a>,
    rules: Arc<OutboundRules>,
    sink: DenialSink,
}

impl network::Host for GuardedView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<network::ErrorCode> {
        network::Host::convert_error_code(&mut self.sockets, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime_wasi::p2::IoError>,
    ) -> wasmtime::Result<Option<network::ErrorCode>> {
        network::Host::network_error_code(&mut self.sockets, err)
    }
}

impl network::HostNetwork for GuardedView<'_> {
    fn drop(&mut self, this: Resource<network::Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, this)
    }
}

impl GuardedView<'_> {
    fn refused(&self, scheme: Scheme) {
        self.sink.record(
            &format!("a {scheme} socket"),
            &Denial::NotAllowed {
                scheme,
                host: "*".into(),
                port: 0,
            },
        );
    }
}

impl tcp_create_socket::Host for GuardedView<'_> {
    fn create_tcp_socket(&mut self, family: IpAddressFamily) -> SocketResult<Resource<TcpSocket>> {
        if !self.rules.grants(Scheme::Tcp) {
            self.refused(Scheme::Tcp);
        }
        tcp_create_socket::Host::create_tcp_socket(&mut self.sockets, family)
    }
}

impl udp_create_socket::Host for GuardedView<'_> {
    async fn create_udp_socket(
        &mut self,
        family: IpAddressFamily,
    ) -> SocketResult<Resource<UdpSocket>> {
        if !self.rules.grants(Scheme::Udp) {
            self.refused(Scheme::Udp);
        }
        udp_create_socket::Host::create_udp_socket(&mut self.sockets, family).await
    }
}

/// `wasi:filesystem` preopens that record a refusal: a guest looks for its
/// directories when it first touches a path, so an app that declares no
/// files has each attempt logged (it finds no directory and fails).
pub struct GuardedFiles;

impl HasData for GuardedFiles {
    type Data<'a> = GuardedFilesView<'a>;
}

/// The view [`GuardedFiles`] works on.
pub struct GuardedFilesView<'a> {
    files: WasiFilesystemCtxView<'a>,
    granted: bool,
    sink: DenialSink,
}

impl preopens::Host for GuardedFilesView<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<fs::Descriptor>, String)>> {
        if !self.granted {
            self.sink.note(
                Access::FileSystem,
                "any file",
                &"the app declares no files ([component] files in skiff.toml)",
            );
        }
        preopens::Host::get_directories(&mut self.files)
    }
}

/// The `wasi:filesystem/types` version wasmtime-wasi links (its WIT).
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// `descriptor.open-at` as wasmtime-wasi implements it, recording a path
/// the guest was refused: one outside its files (`no-entry`, since nothing
/// else exists in its tree), a way out of the tree, or a write to it.
async fn open_at(
    mut store: wasmtime::StoreContextMut<'_, HostState>,
    (dir, path_flags, path, open_flags, flags): (
        Resource<fs::Descriptor>,
        fs::PathFlags,
        String,
        fs::OpenFlags,
        fs::DescriptorFlags,
    ),
) -> wasmtime::Result<(Result<Resource<fs::Descriptor>, fs::ErrorCode>,)> {
    let state = store.data_mut();
    let mut files = state.filesystem();
    let opened =
        fs::HostDescriptor::open_at(&mut files, dir, path_flags, path.clone(), open_flags, flags)
            .await;
    let error = match opened {
        Ok(fd) => return Ok((Ok(fd),)),
        Err(error) => fs::Host::convert_error_code(&mut files, error)?,
    };
    let why = match error {
        fs::ErrorCode::NoEntry => Some("not among the app's files"),
        fs::ErrorCode::NotPermitted | fs::ErrorCode::Access | fs::ErrorCode::ReadOnly => {
            Some("the app's files are read-only and nothing outside them is reachable")
        }
        _ => None,
    };
    if let Some(why) = why {
        state.hooks.sink.note(Access::FileSystem, &path, &why);
    }
    Ok((Err(error),))
}

/// Replaces wasmtime-wasi's socket constructors with [`GuardedSockets`],
/// its preopens with [`GuardedFiles`] and its `open-at` with [`open_at`]
/// in `linker` (call after adding WASI), so every refusal is recorded.
pub fn guard_access(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    tcp_create_socket::add_to_linker::<HostState, GuardedSockets>(
        linker,
        HostState::guarded_sockets,
    )?;
    udp_create_socket::add_to_linker::<HostState, GuardedSockets>(
        linker,
        HostState::guarded_sockets,
    )?;
    preopens::add_to_linker::<HostState, GuardedFiles>(linker, HostState::guarded_files)?;
    linker
        .instance(FILESYSTEM_TYPES)?
        .func_wrap_async("[method]descriptor.open-at", |store, args| {
            Box::new(open_at(store, args))
        })?;
    linker.allow_shadowing(false);
    Ok(())
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
