//! A typed async client of the controller's HTTP API, used by nodes, the
//! CLI and tests. Plain HTTP over hyper (put TLS in front of the controller
//! with a proxy); every call has a deadline, every error says which call
//! failed and how, and API errors keep the server's `{"error": ...}` body.
//!
//! ```no_run
//! # async fn example() -> Result<(), skiff_sdk::ClientError> {
//! use skiff_sdk::Client;
//! use skiff_sdk::manifest::Manifest;
//!
//! let token = std::fs::read_to_string("skiff-data/admin.token").unwrap_or_default();
//! let client = Client::new("http://127.0.0.1:7070")?.with_token(&token);
//!
//! // Upload a component and run it as described by its manifest.
//! let (_, manifest) = Manifest::load("examples/hello".as_ref()).expect("a valid skiff.toml");
//! let bytes = std::fs::read("examples/target/wasm32-wasip2/release/hello.wasm").unwrap_or_default();
//! let artifact = client.upload_artifact(bytes.into()).await?;
//! let app = client.apply_app(&manifest.name, &manifest.to_spec(artifact.digest, Default::default())).await?;
//! println!("{} at revision {}", app.name, app.revision);
//!
//! // Scale it, and read what its replicas printed.
//! client.scale("hello", 3).await?;
//! client
//!     .logs("hello", false, |entry| {
//!         println!("{} | {}", entry.node, entry.line);
//!         true
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```

mod agent;
mod jobs;
mod registries;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use agent::EndpointsUpdate;

use crate::Digest;
use crate::api::{
    App, AppSpec, Artifact, ErrorBody, Event, LogEntry, Node, Replica, Revision, RollbackRequest,
    ScaleRequest,
};

/// Deadline of an ordinary call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to open a connection: the controller is near; a dead one
/// should be noticed quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack added to a watch's server-side wait before the client gives up.
pub(super) const WATCH_SLACK: Duration = Duration::from_secs(5);
/// Largest JSON response read (lists of thousands of apps fit).
const MAX_JSON_RESPONSE: usize = 64 << 20;
/// Deadline of an artifact upload or download.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest artifact downloaded.
pub const MAX_ARTIFACT: usize = 256 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is not `http://host:port`.
    #[error("invalid controller URL {0:?} (expected http://HOST:PORT)")]
    InvalidUrl(String),
    /// No answer: connection refused, reset, or similar.
    #[error("{call}: cannot reach the controller at {url}")]
    Unreachable {
        /// Which call.
        call: &'static str,
        /// The controller's URL.
        url: String,
        /// The transport error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// No complete answer within the deadline.
    #[error("{call}: no answer within {timeout:?}")]
    Timeout {
        /// Which call.
        call: &'static str,
        /// The deadline.
        timeout: Duration,
    },
    /// The controller answered with an error.
    #[error("{call}: {status}: {}", body.error.message)]
    Api {
        /// Which call.
        call: &'static str,
        /// HTTP status.
        status: StatusCode,
        /// The error body.
        body: ErrorBody,
    },
    /// The answer could not be read or understood.
    #[error("{call}: unexpected answer ({status}): {detail}")]
    Unexpected {
        /// Which call.
        call: &'static str,
        /// HTTP status.
        status: StatusCode,
        /// What was wrong with it.
        detail: String,
    },
    /// A downloaded artifact does not hash to the digest it was asked by.
    #[error("artifact {expected} downloaded as {actual}: refusing it")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
}

impl ClientError {
    /// The HTTP status, when the controller answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The controller could not be reached or did not answer in time.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Timeout { .. }
        )
    }
}

/// Request bodies: whole (`Full`) or chunked with progress.
type ReqBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// Called with (bytes sent, total) as an upload proceeds.
pub type Progress = Box<dyn Fn(u64, u64) + Send + Sync>;

/// Upload chunk: small enough for a smooth progress bar, large enough to
/// cost nothing.
const UPLOAD_CHUNK: usize = 64 << 10;

/// A body that hands out `bytes` in chunks and reports each as it goes.
struct ProgressBody {
    bytes: Bytes,
    sent: usize,
    progress: Progress,
}

impl http_body::Body for ProgressBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.sent >= self.bytes.len() {
            return std::task::Poll::Ready(None);
        }
        let end = (self.sent + UPLOAD_CHUNK).min(self.bytes.len());
        let chunk = self.bytes.slice(self.sent..end);
        self.sent = end;
        (self.progress)(end as u64, self.bytes.len() as u64);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.bytes.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact((self.bytes.len() - self.sent) as u64)
    }
}

/// A controller API client. Cheap to clone; connections are pooled.
#[derive(Clone, Debug)]
pub struct Client {
    base: Uri,
    token: Option<HeaderValue>,
    http: HttpClient<HttpConnector, ReqBody>,
}

/// One call: what to send and how long to wait for how much.
struct Call<'a> {
    name: &'static str,
    method: Method,
    path: &'a str,
    body: Option<(&'static str, ReqBody)>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    timeout: Duration,
    limit: usize,
}

impl<'a> Call<'a> {
    fn new(name: &'static str, method: Method, path: &'a str) -> Self {
        Self {
            name,
            method,
            path,
            body: None,
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            limit: MAX_JSON_RESPONSE,
        }
    }

    fn body(mut self, content_type: &'static str, bytes: Bytes) -> Self {
        self.body = Some((content_type, Full::new(bytes).boxed()));
        self
    }

    fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The response header that carries a paged list's next-page token.
pub const CONTINUE_HEADER: &str = "skiff-continue";
/// Items asked per page when reading a whole list.
const LIST_PAGE: u32 = 1_000;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Client {
    /// A client of the controller at `url` (`http://host:port`), without a
    /// token.
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let invalid = || ClientError::InvalidUrl(url.to_owned());
        let base: Uri = url.trim_end_matches('/').parse().map_err(|_| invalid())?;
        if base.scheme_str() != Some("http") || base.authority().is_none() || base.path().len() > 1
        {
            return Err(invalid());
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(crate::serve::CLIENT_POOL_IDLE)
            .build(connector);
        Ok(Self {
            base,
            token: None,
            http,
        })
    }

    /// The same client, calling with `token` as its bearer token.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = HeaderValue::from_str(&format!("Bearer {}", token.trim())).ok();
        self
    }

    /// The controller's base URL.
    pub fn base(&self) -> &Uri {
        &self.base
    }

    async fn send(&self, call: Call<'_>) -> Result<Reply, ClientError> {
        let Call {
            name: call,
            method,
            path,
            body,
            headers,
            timeout,
            limit,
        } = call;
        let uri = format!("{}{path}", self.base.to_string().trim_end_matches('/'));
        let mut req = http::Request::builder().method(method).uri(uri);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, token.clone());
        }
        for (name, value) in &headers {
            req = req.header(name, value);
        }
        let req = match body {
            Some((content_type, body)) => req.header(header::CONTENT_TYPE, content_type).body(body),
            None => req.body(Full::new(Bytes::new()).boxed()),
        }
        .map_err(|e| ClientError::InvalidUrl(e.to_string()))?;
        let exchange = async {
            let response =
                self.http
                    .request(req)
                    .await
                    .map_err(|source| ClientError::Unreachable {
                        call,
                        url: self.base.to_string(),
                        source,
                    })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| ClientError::Unexpected {
                    call,
                    status: parts.status,
                    detail: format!("reading the body: {e}"),
                })?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let reply = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout { call, timeout })??;
        if reply.status.is_client_error() || reply.status.is_server_error() {
            return Err(error_from(call, reply.status, &reply.body));
        }
        Ok(reply)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        call: &'static str,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let mut request = Call::new(call, method, path);
        if let Some(b) = body {
            let bytes = serde_json::to_vec(b).map_err(|e| ClientError::Unexpected {
                call,
                status: StatusCode::OK,
                detail: format!("encoding the request: {e}"),
            })?;
            request = request.body("application/json", Bytes::from(bytes));
        }
        let reply = self.send(request).await?;
        decode(call, &reply)
    }

    /// A node's own metrics (Prometheus text), read through the controller.
    pub async fn node_metrics(&self, name: &str) -> Result<String, ClientError> {
        let path = format!("/v1/nodes/{name}/metrics");
        let reply = self
            .send(Call::new("reading a node's metrics", Method::GET, &path))
            .await?;
        Ok(String::from_utf8_lossy(&reply.body).into_owned())
    }

    /// Downloads an artifact and checks that it hashes to `digest`.
    pub async fn download_artifact(&self, digest: &Digest) -> Result<Bytes, ClientError> {
        let path = format!("/v1/artifacts/{digest}");
        let mut request =
            Call::new("downloading an artifact", Method::GET, &path).timeout(TRANSFER_TIMEOUT);
        request.limit = MAX_ARTIFACT;
        let reply = self.send(request).await?;
        let actual = Digest::of(&reply.body);
        if actual != *digest {
            return Err(ClientError::DigestMismatch {
                expected: *digest,
                actual,
            });
        }
        Ok(reply.body)
    }

    /// Uploads a component; answers its digest and size.
    pub async fn upload_artifact(&self, bytes: Bytes) -> Result<Artifact, ClientError> {
        self.upload_artifact_with_progress(bytes, Box::new(|_, _| {}))
            .await
    }

    /// Uploads a component in chunks, calling `progress` with the bytes
    /// sent so far and the total.
    pub async fn upload_artifact_with_progress(
        &self,
        bytes: Bytes,
        progress: Progress,
    ) -> Result<Artifact, ClientError> {
        self.upload(
            "uploading an artifact",
            "/v1/artifacts",
            "application/wasm",
            bytes,
            progress,
        )
        .await
    }

    /// Uploads a static file an app's spec can mount (`AppSpec::files`).
    pub async fn upload_file(&self, bytes: Bytes) -> Result<Artifact, ClientError> {
        self.upload(
            "uploading a file",
            "/v1/artifacts?kind=file",
            "application/octet-stream",
            bytes,
            Box::new(|_, _| {}),
        )
        .await
    }

    async fn upload(
        &self,
        call: &'static str,
        path: &str,
        content_type: &'static str,
        bytes: Bytes,
        progress: Progress,
    ) -> Result<Artifact, ClientError> {
        let mut request = Call::new(call, Method::POST, path).timeout(TRANSFER_TIMEOUT);
        request.body = Some((
            content_type,
            ProgressBody {
                bytes,
                sent: 0,
                progress,
            }
            .boxed(),
        ));
        let reply = self.send(request).await?;
        decode(call, &reply)
    }

    /// Creates or updates an app. A spec that grants more than the running
    /// revision is refused (`capabilities_not_approved`, with the
    /// difference in the error body) unless [`Self::apply_app_approved`].
    pub async fn apply_app(&self, name: &str, spec: &AppSpec) -> Result<App, ClientError> {
        self.json(
            "applying an app",
            Method::PUT,
            &format!("/v1/apps/{name}"),
            Some(spec),
        )
        .await
    }

    /// Creates or updates an app, approving any capabilities it widens.
    pub async fn apply_app_approved(&self, name: &str, spec: &AppSpec) -> Result<App, ClientError> {
        self.json(
            "applying an app",
            Method::PUT,
            &format!("/v1/apps/{name}?approve_capabilities=true"),
            Some(spec),
        )
        .await
    }

    /// Creates or updates an app whose component is the OCI image
    /// `reference` (`oci://…`): the controller resolves its tag, keeps a
    /// copy of the image's component and files (the files used when `spec`
    /// names none), and pins the revision to the manifest digest. The
    /// spec's own `artifact` and `source` are not sent.
    pub async fn apply_app_image(
        &self,
        name: &str,
        spec: &AppSpec,
        reference: &str,
        approve_capabilities: bool,
    ) -> Result<App, ClientError> {
        let call = "applying an app";
        let mut body = serde_json::to_value(spec).map_err(|e| ClientError::Unexpected {
            call,
            status: StatusCode::OK,
            detail: format!("encoding the request: {e}"),
        })?;
        if let Some(fields) = body.as_object_mut() {
            fields.insert("artifact".into(), reference.into());
            fields.remove("source");
        }
        let query = if approve_capabilities {
            "?approve_capabilities=true"
        } else {
            ""
        };
        self.json(
            call,
            Method::PUT,
            &format!("/v1/apps/{name}{query}"),
            Some(&body),
        )
        .await
    }

    /// One app.
    pub async fn app(&self, name: &str) -> Result<App, ClientError> {
        self.json(
            "reading an app",
            Method::GET,
            &format!("/v1/apps/{name}"),
            None::<&()>,
        )
        .await
    }

    /// All apps, read a page at a time.
    pub async fn apps(&self) -> Result<Vec<App>, ClientError> {
        self.all_pages("listing apps", "/v1/apps").await
    }

    /// One page of apps: up to `limit` after the page `token` ends (the
    /// first page without one), and the next page's token if more follow.
    pub async fn apps_page(
        &self,
        limit: u32,
        token: Option<&str>,
    ) -> Result<(Vec<App>, Option<String>), ClientError> {
        self.page("listing apps", "/v1/apps", limit, token).await
    }

    /// One page of a paged list.
    async fn page<T: DeserializeOwned>(
        &self,
        call: &'static str,
        path: &str,
        limit: u32,
        token: Option<&str>,
    ) -> Result<(Vec<T>, Option<String>), ClientError> {
        let mut path = format!("{path}?limit={limit}");
        if let Some(token) = token {
            path.push_str(&format!("&continue={token}"));
        }
        let reply = self.send(Call::new(call, Method::GET, &path)).await?;
        let next = reply
            .headers
            .get(CONTINUE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((decode(call, &reply)?, next))
    }

    /// Every page of a paged list.
    async fn all_pages<T: DeserializeOwned>(
        &self,
        call: &'static str,
        path: &str,
    ) -> Result<Vec<T>, ClientError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (items, next) = self.page(call, path, LIST_PAGE, token.as_deref()).await?;
            all.extend(items);
            match next {
                Some(next) => token = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// An app's replicas.
    pub async fn replicas(&self, name: &str) -> Result<Vec<Replica>, ClientError> {
        self.json(
            "listing replicas",
            Method::GET,
            &format!("/v1/apps/{name}/replicas"),
            None::<&()>,
        )
        .await
    }

    /// Sets an app's replica count.
    pub async fn scale(&self, name: &str, replicas: u32) -> Result<App, ClientError> {
        self.json(
            "scaling an app",
            Method::POST,
            &format!("/v1/apps/{name}/scale"),
            Some(&ScaleRequest { replicas }),
        )
        .await
    }

    /// An app's kept revisions, oldest first.
    pub async fn revisions(&self, name: &str) -> Result<Vec<Revision>, ClientError> {
        self.json(
            "listing revisions",
            Method::GET,
            &format!("/v1/apps/{name}/revisions"),
            None::<&()>,
        )
        .await
    }

    /// Makes an earlier revision's spec current again (default: the one
    /// before the current).
    pub async fn rollback(&self, name: &str, to: Option<u64>) -> Result<App, ClientError> {
        self.json(
            "rolling back",
            Method::POST,
            &format!("/v1/apps/{name}/rollback"),
            Some(&RollbackRequest { revision: to }),
        )
        .await
    }

    /// Cordons (`"cordon"`), uncordons (`"uncordon"`) or drains (`"drain"`)
    /// a node.
    pub async fn node_action(&self, node: &str, action: &str) -> Result<Node, ClientError> {
        self.json(
            "changing a node",
            Method::POST,
            &format!("/v1/nodes/{node}/{action}"),
            None::<&()>,
        )
        .await
    }

    /// An app's guest output from every node running it, oldest first,
    /// passed to `each` line by line; with `follow`, keeps reading new
    /// lines until the controller closes the stream or `each` returns
    /// `false`.
    pub async fn logs(
        &self,
        name: &str,
        follow: bool,
        each: impl FnMut(LogEntry) -> bool,
    ) -> Result<(), ClientError> {
        self.stream_logs(&format!("/v1/apps/{name}/logs?follow={follow}"), each)
            .await
    }

    /// Reads a newline-delimited stream of log entries from `path`.
    async fn stream_logs(
        &self,
        path: &str,
        mut each: impl FnMut(LogEntry) -> bool,
    ) -> Result<(), ClientError> {
        let call = "reading logs";
        let uri = format!("{}{path}", self.base.to_string().trim_end_matches('/'));
        let mut req = http::Request::get(uri);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, token.clone());
        }
        let req = req
            .body(Full::new(Bytes::new()).boxed())
            .map_err(|e| ClientError::InvalidUrl(e.to_string()))?;
        let response = tokio::time::timeout(DEFAULT_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| ClientError::Timeout {
                call,
                timeout: DEFAULT_TIMEOUT,
            })?
            .map_err(|source| ClientError::Unreachable {
                call,
                url: self.base.to_string(),
                source,
            })?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = Limited::new(body, MAX_JSON_RESPONSE)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(error_from(call, status, &bytes));
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Unexpected {
                call,
                status,
                detail: format!("reading the stream: {e}"),
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(entry) = serde_json::from_slice::<LogEntry>(&line)
                    && !each(entry)
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Deletes an app.
    pub async fn delete_app(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/apps/{name}");
        self.send(Call::new("deleting an app", Method::DELETE, &path))
            .await
            .map(drop)
    }

    /// All nodes, read a page at a time.
    pub async fn nodes(&self) -> Result<Vec<Node>, ClientError> {
        self.all_pages("listing nodes", "/v1/nodes").await
    }

    /// One page of nodes (see [`Client::apps_page`]).
    pub async fn nodes_page(
        &self,
        limit: u32,
        token: Option<&str>,
    ) -> Result<(Vec<Node>, Option<String>), ClientError> {
        self.page("listing nodes", "/v1/nodes", limit, token).await
    }

    /// Events after `since` (of one app, or all), oldest first.
    pub async fn events(
        &self,
        app: Option<&str>,
        since: u64,
        limit: u32,
    ) -> Result<Vec<Event>, ClientError> {
        let mut path = format!("/v1/events?since={since}&limit={limit}");
        if let Some(app) = app {
            path.push_str(&format!("&app={app}"));
        }
        self.json("reading events", Method::GET, &path, None::<&()>)
            .await
    }
}

/// The error for a 4xx/5xx answer, keeping the server's error body.
fn error_from(call: &'static str, status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => ClientError::Api { call, status, body },
        Err(_) => ClientError::Unexpected {
            call,
            status,
            detail: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        },
    }
}

fn decode<T: DeserializeOwned>(call: &'static str, reply: &Reply) -> Result<T, ClientError> {
    serde_json::from_slice(&reply.body).map_err(|e| ClientError::Unexpected {
        call,
        status: reply.status,
        detail: format!("decoding the body: {e}"),
    })
}
