//! A node's request router: serves an app locally when this node runs it,
//! otherwise forwards to a node that has a Ready replica (the one with the
//! fewest requests in flight from here), retrying once on another node
//! after a connection failure when that is safe. The controller is never on
//! the request path: the endpoints come from a long-poll and survive its loss.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use skiff_sdk::api::Endpoints;
use skiff_sdk::delta::EndpointsDelta;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::body::{duplicate_host, error_response};
use crate::ingress::Handler;
use crate::routing::{app_name_for_host, normalize_host, request_host};
use crate::{Outcome, Runtime, Target};

/// Set on forwarded requests (to the forwarding node's name): a node never
/// forwards such a request again, so a stale view cannot make a loop.
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("x-skiff-forwarded-by");
/// Set on every response a node's replica produced, to that node's name.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-skiff-node");
/// The `Host` of the node's own API (see `node::api`): not a valid app
/// name, so it never shadows an app.
pub const NODE_API_HOST: &str = "_skiff";
/// Time allowed to connect to a peer node: peers are near, and a dead one
/// must fail fast so the retry can go elsewhere.
const PEER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// Most requests held for one sleeping app on one node; more are answered
/// `activation-timeout` at once rather than pile up.
pub const MAX_HELD_PER_APP: usize = 10_000;
/// While requests are held, the node asks again for the app's activation
/// this often (the first ask may have been lost with the controller).
const WAKE_AGAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Where [`NodeRouter::route`] sends a request.
enum Route {
    NodeApi,
    Local(crate::AppRef),
    Elsewhere(String),
    NoApp,
}

/// A peer node's ingress, with the requests this node has in flight to it.
#[derive(Debug)]
struct Peer {
    node: String,
    address: String,
    in_flight: AtomicUsize,
}

/// Counters of the forwarding path.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Requests forwarded to a peer.
    pub forwarded: AtomicU64,
    /// Forwards retried on another peer after a connection failure.
    pub retried: AtomicU64,
    /// Requests answered `no-ready-replica`.
    pub no_replica: AtomicU64,
    /// Forwards that failed (`upstream-failed`).
    pub failed: AtomicU64,
}

/// Serves local replicas and forwards the rest.
pub struct NodeRouter {
    pub(super) runtime: Arc<Runtime>,
    pub(super) name: String,
    name_header: HeaderValue,
    domain: String,
    table: RwLock<HashMap<String, Vec<Arc<Peer>>>>,
    /// Extra hosts (normalised) to app names, from the endpoints.
    hosts: RwLock<HashMap<String, String>>,
    /// Whether endpoints were ever set: until then an app not in the table
    /// may well exist, and is answered `no-ready-replica`, not 404.
    endpoints_known: AtomicBool,
    client: HttpClient<HttpConnector, BoxBody<Bytes, hyper::Error>>,
    turn: AtomicUsize,
    pub(super) stats: ForwardStats,
    /// Where layers came from (see `pull`).
    pub(super) pulls: super::pull::PullStats,
    pub(super) logs_key: String,
    /// Apps that may sleep, to their activation timeout (ms).
    activatable: RwLock<HashMap<String, u64>>,
    /// Bumped whenever where an app is served may have changed (new
    /// endpoints, or the runtime's apps): held requests look again.
    routes: tokio::sync::watch::Sender<u64>,
    /// Apps with held requests to wake, for the agent.
    wake: std::sync::Mutex<std::collections::BTreeSet<String>>,
    pub(super) wake_requested: tokio::sync::Notify,
    /// Requests held per app.
    held: std::sync::Mutex<HashMap<String, usize>>,
}

impl NodeRouter {
    /// A router for node `name` over `runtime`, for apps under `domain`.
    pub fn new(runtime: Arc<Runtime>, name: &str, domain: &str) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(PEER_CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Arc::new(Self {
            runtime,
            name: name.to_owned(),
            name_header: HeaderValue::from_str(name)
                .unwrap_or_else(|_| HeaderValue::from_static("node")),
            domain: domain.to_owned(),
            table: RwLock::new(HashMap::new()),
            hosts: RwLock::new(HashMap::new()),
            endpoints_known: AtomicBool::new(false),
            // Peers close connections idle for their header timeout; drop
            // ours first rather than race them.
            client: HttpClient::builder(TokioExecutor::new())
                .pool_idle_timeout(skiff_sdk::serve::CLIENT_POOL_IDLE)
                .build(connector),
            turn: AtomicUsize::new(0),
            stats: ForwardStats::default(),
            pulls: super::pull::PullStats::default(),
            logs_key: {
                use rand::RngCore as _;
                let mut bytes = [0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                hex::encode(bytes)
            },
            activatable: RwLock::new(HashMap::new()),
            routes: tokio::sync::watch::channel(0).0,
            wake: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            wake_requested: tokio::sync::Notify::new(),
            held: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The secret that lets the controller read this node's logs (new on
    /// every start; sent with the registration).
    pub fn logs_key(&self) -> &str {
        &self.logs_key
    }

    /// The runtime serving local replicas.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Replaces the endpoints (this node's own entries are left out; the
    /// in-flight counts of peers that remain are kept).
    pub fn set_endpoints(&self, endpoints: &Endpoints) {
        *self.hosts.write().unwrap_or_else(|e| e.into_inner()) = endpoints
            .hosts
            .iter()
            .map(|(h, a)| (normalize_host(h).into_owned(), a.clone()))
            .collect();
        self.endpoints_known.store(true, Ordering::Release);
        *self.activatable.write().unwrap_or_else(|e| e.into_inner()) = endpoints
            .activatable
            .iter()
            .map(|(a, t)| (a.clone(), *t))
            .collect();
        let _bump = RoutesChanged(self);
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let known: HashMap<(String, String), Arc<Peer>> = table
            .values()
            .flatten()
            .map(|p| ((p.node.clone(), p.address.clone()), p.clone()))
            .collect();
        *table = endpoints
            .apps
            .iter()
            .map(|(app, list)| (app.clone(), self.peers(list, |k| known.get(k).cloned())))
            .collect();
    }

    /// Applies a change of the endpoints: only the apps, hosts and sleeping
    /// apps it names are touched (a node of a 10,000-app cluster does not
    /// rebuild its table for one app's change).
    pub fn update_endpoints(&self, delta: &EndpointsDelta) {
        {
            let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
            for host in &delta.removed_hosts {
                hosts.remove(normalize_host(host).as_ref());
            }
            for (host, app) in &delta.hosts {
                hosts.insert(normalize_host(host).into_owned(), app.clone());
            }
        }
        {
            let mut activatable = self.activatable.write().unwrap_or_else(|e| e.into_inner());
            for app in &delta.removed_activatable {
                activatable.remove(app);
            }
            activatable.extend(delta.activatable.iter().map(|(a, t)| (a.clone(), *t)));
        }
        let _bump = RoutesChanged(self);
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        for app in &delta.removed_apps {
            table.remove(app);
        }
        for (app, list) in &delta.apps {
            // A peer keeps its in-flight count: found among the app's own
            // entries first, else anywhere in the table (rarely needed).
            let own: Vec<Arc<Peer>> = table.get(app).cloned().unwrap_or_default();
            let peers = self.peers(list, |(node, address)| {
                own.iter()
                    .chain(table.values().flatten())
                    .find(|p| &p.node == node && &p.address == address)
                    .cloned()
            });
            table.insert(app.clone(), peers);
        }
    }

    /// The peers of one app's endpoints (not this node), reusing the known
    /// ones.
    fn peers(
        &self,
        list: &[skiff_sdk::api::Endpoint],
        known: impl Fn(&(String, String)) -> Option<Arc<Peer>>,
    ) -> Vec<Arc<Peer>> {
        list.iter()
            .filter(|e| e.node != self.name)
            .map(|e| {
                known(&(e.node.clone(), e.address.clone())).unwrap_or_else(|| {
                    Arc::new(Peer {
                        node: e.node.clone(),
                        address: e.address.clone(),
                        in_flight: AtomicUsize::new(0),
                    })
                })
            })
            .collect()
    }

    /// Where a request goes: an app deployed here (found without copying
    /// anything, this is every request's path), an app elsewhere, or no app.
    fn route(&self, host: Option<&str>) -> Route {
        let Some(host) = host else {
            return Route::NoApp;
        };
        if host.split(':').next() == Some(NODE_API_HOST) {
            return Route::NodeApi;
        }
        let name: Cow<'_, str> = match app_name_for_host(host, &self.domain) {
            Some(app) => app,
            // An app's extra host (the map's keys are normalised).
            None => match self
                .hosts
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(normalize_host(host).as_ref())
            {
                Some(app) => Cow::Owned(app.clone()),
                None => return Route::NoApp,
            },
        };
        match self.runtime.find(&name) {
            Some(app) => Route::Local(app),
            None => Route::Elsewhere(name.into_owned()),
        }
    }

    /// Peers for `app`, fewest in flight first (ties taken in turn);
    /// `None` when the cluster has no such app (as far as the endpoints,
    /// which list every app, say).
    fn candidates(&self, app: &str) -> Option<Vec<Arc<Peer>>> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let Some(peers) = table.get(app) else {
            return (!self.endpoints_known.load(Ordering::Acquire)).then(Vec::new);
        };
        if peers.is_empty() {
            return Some(Vec::new());
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % peers.len();
        let mut ordered: Vec<Arc<Peer>> = peers[start..]
            .iter()
            .chain(&peers[..start])
            .cloned()
            .collect();
        ordered.sort_by_key(|p| p.in_flight.load(Ordering::Relaxed));
        Some(ordered)
    }

    /// Notes that where apps are served may have changed (the agent calls
    /// it after changing the runtime's apps): held requests look again.
    pub fn routes_changed(&self) {
        self.routes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Apps whose held requests ask for a wake-up, taken.
    pub(super) fn take_wakes(&self) -> Vec<String> {
        std::mem::take(&mut *self.wake.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .collect()
    }

    fn request_wake(&self, app: &str) {
        self.wake
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(app.to_owned());
        self.wake_requested.notify_one();
    }

    /// Whether `app` has a Ready replica anywhere but here.
    pub(super) fn has_peers(&self, app: &str) -> bool {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(app)
            .is_some_and(|p| !p.is_empty())
    }

    /// Holds a request for a sleeping app until a replica serves it here
    /// or on a peer, asking the agent to wake the app; `activation-timeout`
    /// after the app's activation timeout, or at once when too many wait.
    async fn hold(
        &self,
        app: &str,
        timeout_ms: u64,
        req: Request<Incoming>,
    ) -> Response<HyperOutgoingBody> {
        let Some(_held) = Held::new(self, app) else {
            return error_response(Outcome::ActivationTimeout, Some(app));
        };
        let mut routes = self.routes.subscribe();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
        let mut ask_at = tokio::time::Instant::now();
        loop {
            routes.borrow_and_update();
            if let Some(local) = self.runtime.find(app) {
                let mut response = self.runtime.handle(Target::App(local), req).await;
                response
                    .headers_mut()
                    .insert(SERVED_BY, self.name_header.clone());
                return response;
            }
            if self.has_peers(app) {
                return Box::pin(self.forward(app, req)).await;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return error_response(Outcome::ActivationTimeout, Some(app));
            }
            if now >= ask_at {
                self.request_wake(app);
                ask_at = now + WAKE_AGAIN;
            }
            let _ = tokio::time::timeout_at(deadline.min(ask_at), routes.changed()).await;
        }
    }

    async fn forward(&self, app: &str, req: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let Some(peers) = self.candidates(app) else {
            // No app of that name anywhere: the runtime answers 404 and
            // counts it, as for a host that names no app.
            return self.runtime.handle(Target::ByHost, req).await;
        };
        if peers.is_empty() {
            let asleep = self
                .activatable
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(app)
                .copied();
            if let Some(timeout_ms) = asleep {
                return self.hold(app, timeout_ms, req).await;
            }
            self.stats.no_replica.fetch_add(1, Ordering::Relaxed);
            return error_response(Outcome::NoReplica, Some(app));
        }
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if !parts.headers.contains_key(header::HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        parts.headers.insert(FORWARDED_BY, self.name_header.clone());
        // Only a request without a body that is safe to repeat is retried:
        // its body cannot have been half-sent, and running it twice is
        // harmless.
        let retryable = idempotent(&parts.method) && http_body::Body::is_end_stream(&body);
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);

        let mut body = Some(body.boxed());
        for (attempt, peer) in peers.iter().take(2).enumerate() {
            let uri: Uri = match format!("http://{}{path}", peer.address).parse() {
                Ok(uri) => uri,
                Err(_) => continue,
            };
            let mut out = Request::from_parts(parts.clone(), ());
            *out.uri_mut() = uri;
            let out = out.map(|()| match body.take() {
                Some(b) if !retryable => b,
                _ => Empty::new().map_err(|never| match never {}).boxed(),
            });
            peer.in_flight.fetch_add(1, Ordering::Relaxed);
            let result = self.client.request(out).await;
            peer.in_flight.fetch_sub(1, Ordering::Relaxed);
            match result {
                // The peer no longer runs the app (our endpoints were
                // stale): as safe to retry elsewhere as a refused connection.
                Ok(response)
                    if retryable
                        && attempt == 0
                        && peers.len() > 1
                        && response.headers().get(crate::body::REASON_HEADER)
                            == Some(&HeaderValue::from_static("no-ready-replica")) =>
                {
                    tracing::debug!(%app, peer = %peer.node, "peer has no replica any more; retrying on another");
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                }
                Ok(response) => {
                    return response
                        .map(|b| b.map_err(wasmtime_wasi_http::Error::Hyper).boxed_unsync());
                }
                // Unreachable, or gone mid-answer (killed, or a pooled
                // connection it had closed): a request without a body
                // that is safe to repeat goes to another peer.
                Err(error) if retryable && attempt == 0 && peers.len() > 1 => {
                    tracing::debug!(%app, peer = %peer.node, %error, "peer failed; retrying on another");
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(%app, peer = %peer.node, error = %skiff_sdk::error_chain(&error), "forwarding failed");
                    break;
                }
            }
        }
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        error_response(Outcome::UpstreamFailed, Some(app))
    }
}

impl Handler for NodeRouter {
    async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let Ok(host) = request_host(&req) else {
            return duplicate_host();
        };
        let mut response = match self.route(host) {
            Route::NodeApi => return self.answer_api(&req),
            Route::Local(app) => self.runtime.handle(Target::App(app), req).await,
            Route::Elsewhere(app) => {
                if req.headers().contains_key(FORWARDED_BY) {
                    // Already forwarded once: the sender's view is stale.
                    self.stats.no_replica.fetch_add(1, Ordering::Relaxed);
                    return error_response(Outcome::NoReplica, Some(&app));
                }
                return self.forward(&app, req).await;
            }
            // Not an app host at all: the runtime answers 404 and counts it.
            Route::NoApp => self.runtime.handle(Target::ByHost, req).await,
        };
        response
            .headers_mut()
            .insert(SERVED_BY, self.name_header.clone());
        response
    }

    async fn drain(&self) {
        self.runtime.drain().await;
    }
}

/// Bumps the routes version when dropped (after the table is replaced).
struct RoutesChanged<'a>(&'a NodeRouter);

impl Drop for RoutesChanged<'_> {
    fn drop(&mut self) {
        self.0.routes_changed();
    }
}

/// One held request, counted for its app while it waits.
struct Held<'a> {
    router: &'a NodeRouter,
    app: String,
}

impl<'a> Held<'a> {
    fn new(router: &'a NodeRouter, app: &str) -> Option<Self> {
        let mut held = router.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(app.to_owned()).or_default();
        if *count >= MAX_HELD_PER_APP {
            return None;
        }
        *count += 1;
        Some(Self {
            router,
            app: app.to_owned(),
        })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut held = self.router.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.app) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.app);
            }
        }
    }
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Headers that describe one connection, not the request (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::HOST, HeaderValue::from_static("web.localhost"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::HOST));
    }

    #[test]
    fn only_safe_methods_are_retried() {
        assert!(idempotent(&Method::GET) && idempotent(&Method::PUT));
        assert!(!idempotent(&Method::POST) && !idempotent(&Method::PATCH));
    }
}
