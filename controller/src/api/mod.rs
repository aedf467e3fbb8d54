//! The HTTP API: routes under `/v1`, the extractors that enforce auth and
//! turn malformed input into clear 4xx errors, and the OpenAPI document.

mod apps;
mod artifacts;
mod node_proxy;
pub use apps::check_spec;
mod endpoints;
mod images;
mod inspected;
mod jobs;
mod logs;
mod nodes;
pub mod paging;
mod registries;
mod system;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use crate::auth::{Principal, TokenHashes, authenticate};
use crate::error::ApiError;
use crate::informer::Informer;
use crate::store::Store;

/// Default largest artifact accepted: 64 MiB, far above any real component
/// (hello is ~240 KiB) yet bounded, since uploads are held in memory while
/// they are validated.
pub const DEFAULT_MAX_ARTIFACT_BYTES: usize = 64 << 20;
/// Largest JSON body: specs are small; this bounds what a client can make
/// the controller parse.
pub const MAX_JSON_BYTES: usize = 1 << 20;
/// Longest an assignments long-poll may wait.
pub const MAX_WATCH: Duration = Duration::from_secs(60);
/// Default assignments long-poll wait.
pub const DEFAULT_WATCH: Duration = Duration::from_secs(30);

/// API settings.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Largest artifact accepted, in bytes.
    pub max_artifact_bytes: usize,
    /// A node without a heartbeat for this long is NotReady (as in the
    /// store); also how long after start-up recorded states are trusted.
    pub node_grace: Duration,
    /// The domain apps are reached under on the nodes (`<app>.<domain>`).
    pub domain: String,
    /// Registries (`host[:port]`) reached over plain HTTP although not on a
    /// loopback address.
    pub insecure_registries: Vec<String>,
}

/// Default [`ApiConfig::domain`]: `*.localhost` resolves to loopback without
/// any DNS set-up, as the nodes' default.
pub const DEFAULT_DOMAIN: &str = "localhost";

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            node_grace: crate::DEFAULT_NODE_GRACE,
            domain: DEFAULT_DOMAIN.to_owned(),
            insecure_registries: Vec::new(),
        }
    }
}

/// Responses by status class, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    by_class: [AtomicU64; 5],
}

/// Per node: the assignments version last answered and what it held.
/// (The picture version it was read at is kept too: the base of a delta
/// from the picture's change log.)
pub(crate) type SentAssignments =
    std::collections::HashMap<String, (u64, u64, Arc<crate::informer::Sent>)>;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Settings.
    pub config: Arc<ApiConfig>,
    /// The in-memory picture watches are answered from, and node leases.
    pub informer: Arc<Informer>,
    /// Response counters.
    pub http: Arc<HttpStats>,
    /// Whether this controller holds the leader lease.
    pub leader: tokio::sync::watch::Receiver<bool>,
    /// When this controller started serving.
    pub started: std::time::Instant,
    /// The admin and join token hashes, read on first use.
    tokens: Arc<tokio::sync::OnceCell<TokenHashes>>,
    /// The nodes' API keys, as they presented them (never stored).
    pub node_keys: Arc<node_proxy::NodeKeys>,
    /// Per node, the assignments version last answered and what it held
    /// (the base of the next delta).
    pub(crate) sent: Arc<std::sync::Mutex<SentAssignments>>,
    /// Node credentials already looked up.
    pub(crate) credentials: Arc<crate::auth::CredentialCache>,
    /// Wakes the job controller and the nodes' runs watches.
    pub runs: Arc<crate::jobs::RunBell>,
    /// Artifacts already found fit for an app or a job.
    pub(crate) inspected: Arc<inspected::Inspected>,
    /// The layers of OCI images already read, by pinned reference.
    pub(crate) images: Arc<images::Imports>,
}

impl AppState {
    /// State over `store`.
    pub fn new(
        store: Arc<dyn Store>,
        informer: Arc<Informer>,
        config: ApiConfig,
        leader: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            informer,
            credentials: Arc::default(),
            inspected: Arc::default(),
            images: Arc::default(),
            runs: Arc::default(),
            sent: Arc::default(),
            store,
            config: Arc::new(config),
            http: Arc::default(),
            node_keys: Arc::default(),
            leader,
            started: std::time::Instant::now(),
            tokens: Arc::default(),
        }
    }
}

/// A long-poll: reads with `read` now, then again after every bump of
/// `changes` (the informer's per-node or endpoints channel, which follow
/// every controller's writes and the nodes' leases), until `done` says the value is worth answering or
/// `timeout_ms` (default [`DEFAULT_WATCH`], at most [`MAX_WATCH`]) has
/// passed. Returns the last value read and whether `done` accepted it.
pub(crate) async fn long_poll<T, Fut>(
    mut changes: tokio::sync::watch::Receiver<u64>,
    timeout_ms: Option<u64>,
    mut read: impl FnMut() -> Fut,
    done: impl Fn(&T) -> bool,
) -> Result<(T, bool), ApiError>
where
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let wait = timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_WATCH)
        .min(MAX_WATCH);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        changes.borrow_and_update();
        let current = read().await?;
        if done(&current) {
            return Ok((current, true));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok((current, false));
        }
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// The authenticated caller of a `/v1` route.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let tokens = state
            .tokens
            .get_or_try_init(|| TokenHashes::load(state.store.as_ref()))
            .await?;
        authenticate(state, tokens, &parts.headers).await.map(Auth)
    }
}

/// A JSON body: `application/json`, at most [`MAX_JSON_BYTES`], no unknown
/// fields. Errors name the field at fault (`quota.fuel`).
///
/// Extraction only reads the bytes (refusing more than the limit); the
/// handler [`decode`](JsonBody::decode)s them once it has authorised the
/// caller, so a caller who may not make the request learns nothing from
/// how its body is judged (403 comes before any 415 or 422).
pub struct JsonBody<T> {
    bytes: axum::body::Bytes,
    is_json: bool,
    into: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonBody<T> {
    /// The body as `T`: 415 if it is not JSON, 400 if malformed, 422
    /// naming the field if it does not fit.
    pub fn decode(self) -> Result<T, ApiError> {
        if !self.is_json {
            return Err(ApiError::UnsupportedMediaType(
                "the body must be JSON (Content-Type: application/json)".into(),
            ));
        }
        decode_json(&self.bytes)
    }
}

impl<T> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &AppState) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = || {
            ApiError::TooLarge(format!(
                "the JSON body is larger than {MAX_JSON_BYTES} bytes"
            ))
        };
        if declared.is_some_and(|n| n > MAX_JSON_BYTES as u64) {
            // Refused before reading a byte of it.
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_JSON_BYTES)
            .await
            .map_err(|_| too_large())?;
        Ok(Self {
            bytes,
            is_json,
            into: std::marker::PhantomData,
        })
    }
}

/// Decodes a request's JSON body into `T`: no unknown fields, nothing after
/// the value, and errors that name the field at fault. Pure, so the fuzz
/// targets in `tests/fuzz` exercise exactly what the API runs.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body of this API is an object; serde would also read a struct
    // from an array, and blame its first element.
    if let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace())
        && *first != b'{'
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    {
        return Err(ApiError::invalid(
            "invalid_field",
            ".",
            "the body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        match inner.classify() {
            serde_json::error::Category::Data => ApiError::Invalid {
                code: "invalid_field",
                field: Some(field_at_fault(&path, &message)),
                message,
            },
            _ => ApiError::BadRequest {
                code: "malformed_json",
                field: (path != ".").then_some(path),
                message,
            },
        }
    })?;
    de.end().map_err(|e| ApiError::BadRequest {
        code: "malformed_json",
        message: e.to_string(),
        field: None,
    })?;
    Ok(value)
}

/// The field a decoding error is about: where it happened, and for a field
/// that is missing or given twice (which serde reports at the enclosing
/// object, with the name in its message) that field within it. An error
/// about the body as a whole (e.g. an array where an object belongs) is
/// about `.`, the body itself.
fn field_at_fault(path: &str, message: &str) -> String {
    let named = ["missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    match (path, named) {
        (".", Some(name)) => name.to_owned(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        (path, None) => path.to_owned(),
    }
}

/// Query parameters; unknown or malformed ones are a 400 naming them.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<AppState> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(QueryParams)
            .map_err(|e| ApiError::BadRequest {
                code: "invalid_query",
                message: format!("invalid query string: {e}"),
                field: None,
            })
    }
}

/// The `If-Match` precondition: a version number, quoted or not.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::BadRequest {
            code: "invalid_if_match",
            message: "If-Match must be an object version such as \"3\"".into(),
            field: Some("If-Match".into()),
        })
}

/// An `ETag` header value for a version.
pub fn etag(version: u64) -> [(axum::http::HeaderName, String); 1] {
    [(axum::http::header::ETAG, format!("\"{version}\""))]
}

async fn count_responses(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let response = next.run(req).await;
    let class = (response.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    state.http.by_class[class].fetch_add(1, Ordering::Relaxed);
    response
}

/// The OpenAPI document of the API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Skiff controller API", description = "Manage apps, artifacts and nodes of a Skiff cluster."),
    paths(
        artifacts::upload, artifacts::download, artifacts::delete,
        apps::apply, apps::list, apps::show, apps::delete, apps::revisions, apps::replicas, logs::logs, apps::rollback, apps::scale,
        nodes::register, nodes::heartbeat, nodes::activate, nodes::list, nodes::show, nodes::cordon, nodes::uncordon,
        nodes::drain, nodes::delete, nodes::assignments, nodes::metrics, nodes::replicas, endpoints::watch,
        system::events,
        jobs::apply, jobs::list, jobs::show, jobs::delete, jobs::runs, jobs::run_logs, jobs::node_runs, jobs::report,
        registries::login, registries::list, registries::logout, registries::for_node,
    ),
    components(schemas(artifacts::ArtifactKind)),
    modifiers(&BearerAuth, &CommonErrors),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// Documents what every operation may answer besides its own responses
/// (so a client, or a schema-driven test, sees every status the API
/// sends), and the syntax of the `name` and `digest` path parameters.
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, ResponseBuilder, Type};
        let error = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        let pattern = |p: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(p))
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let mut add = |status: &str, what: &str| {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(what).into());
                };
                add("400", "Malformed request (query, JSON)");
                add("401", "Missing or unknown token");
                add("403", "The token may not do this");
                let has_path_params = op
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| p.parameter_in == ParameterIn::Path);
                if has_path_params {
                    add("404", "No such resource");
                    add("422", "Invalid path parameter");
                }
                if op.request_body.is_some() {
                    add("413", "Body too large");
                    add("415", "Wrong content type");
                    add("422", "Invalid field");
                }
                for param in op.parameters.iter_mut().flatten() {
                    if param.parameter_in != ParameterIn::Path {
                        continue;
                    }
                    match param.name.as_str() {
                        "name" => param.schema = Some(pattern(skiff_sdk::api::NAME_PATTERN).into()),
                        "digest" => param.schema = Some(pattern(r"^sha256:[0-9a-f]{64}$").into()),
                        _ => {}
                    }
                }
            }
        }
    }
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API router.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/artifacts", post(artifacts::upload))
        .route(
            "/artifacts/{digest}",
            get(artifacts::download).delete(artifacts::delete),
        )
        .route("/apps", get(apps::list))
        .route(
            "/apps/{name}",
            put(apps::apply).get(apps::show).delete(apps::delete),
        )
        .route("/apps/{name}/revisions", get(apps::revisions))
        .route("/apps/{name}/replicas", get(apps::replicas))
        .route("/apps/{name}/logs", get(logs::logs))
        .route("/apps/{name}/rollback", post(apps::rollback))
        .route("/apps/{name}/scale", post(apps::scale))
        .route("/jobs", get(jobs::list))
        .route(
            "/jobs/{name}",
            put(jobs::apply).get(jobs::show).delete(jobs::delete),
        )
        .route("/jobs/{name}/runs", get(jobs::runs))
        .route("/jobs/{name}/runs/{run}/logs", get(jobs::run_logs))
        .route(
            "/nodes/{name}/runs",
            get(jobs::node_runs).post(jobs::report),
        )
        .route("/nodes", post(nodes::register).get(nodes::list))
        .route("/nodes/{name}", get(nodes::show).delete(nodes::delete))
        .route("/nodes/{name}/heartbeat", put(nodes::heartbeat))
        .route("/nodes/{name}/activate", post(nodes::activate))
        .route("/nodes/{name}/cordon", post(nodes::cordon))
        .route("/nodes/{name}/uncordon", post(nodes::uncordon))
        .route("/nodes/{name}/drain", post(nodes::drain))
        .route("/nodes/{name}/assignments", get(nodes::assignments))
        .route("/nodes/{name}/metrics", get(nodes::metrics))
        .route("/nodes/{name}/replicas", get(nodes::replicas))
        .route(
            "/nodes/{name}/registries/{registry}/credentials",
            get(registries::for_node),
        )
        .route("/registries", get(registries::list))
        .route(
            "/registries/{registry}",
            put(registries::login).delete(registries::logout),
        )
        .route("/endpoints", get(endpoints::watch))
        .route("/events", get(system::events))
        .route("/openapi.json", get(system::openapi))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.max_artifact_bytes,
        ));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .merge(crate::ui::router())
        .fallback(system::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    #[test]
    fn decoding_errors_name_their_field() {
        use skiff_sdk::api::AppSpec;
        let field = |body: &str| match super::decode_json::<AppSpec>(body.as_bytes()) {
            Err(super::ApiError::Invalid { field, .. }) => field,
            other => panic!("{body}: {:?}", other.map(|_| ())),
        };
        assert_eq!(field("{}").as_deref(), Some("artifact"));
        assert_eq!(field("[]").as_deref(), Some("."));
        assert_eq!(field("7").as_deref(), Some("."));
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            field(&format!(
                r#"{{"artifact":"{digest}","replicas":1,"replicas":2}}"#
            ))
            .as_deref(),
            Some("replicas")
        );
        assert_eq!(
            field(&format!(r#"{{"artifact":"{digest}","health":{{}}}}"#)).as_deref(),
            Some("health.path")
        );
        assert_eq!(
            field(&format!(
                r#"{{"artifact":"{digest}","quota":{{"fuel":"x"}}}}"#
            ))
            .as_deref(),
            Some("quota.fuel")
        );
    }
}
