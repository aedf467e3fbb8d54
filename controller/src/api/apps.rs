//! `/v1/apps`: apply, read, delete, revisions, rollback, scale.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use skiff_sdk::api::{
    App, AppSpec, ErrorBody, Replica, Revision, RollbackRequest, ScaleRequest, normalize_host,
    validate_name,
};

use skiff_sdk::Digest;
use skiff_sdk::api::MAX_REPLICAS;
use skiff_sdk::capability::CapabilityDiff;

use super::artifacts::looks_like_component;
use super::inspected::Use;
use super::{AppState, Auth, JsonBody, QueryParams, etag, if_match};
use crate::error::ApiError;
use crate::store::StoreError;

/// Query of `PUT /v1/apps/{name}`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ApplyQuery {
    /// Approve a spec that grants more than the running revision (new
    /// outbound hosts or files). Without it such an apply is refused with
    /// 409 `capabilities_not_approved` and the difference.
    #[serde(default)]
    pub approve_capabilities: bool,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    validate_name(name).map_err(|e| ApiError::invalid("invalid_name", "name", e.to_string()))
}

/// Validates a spec beyond what its types guarantee ([`AppSpec::validate`],
/// the rules the manifest applies too), as a 422 naming the field. Pure
/// (the artifacts it names are checked by the caller), so the fuzz targets
/// exercise it.
pub fn check_spec(spec: &AppSpec) -> Result<(), ApiError> {
    spec.validate()
        .map_err(|e| ApiError::invalid("invalid_field", &e.field, e.message))
}

/// [`check_spec`], then that the component and every file were uploaded
/// (and a worker's component is a command).
async fn validate_spec(state: &AppState, spec: &AppSpec) -> Result<(), ApiError> {
    check_spec(spec)?;
    if spec.kind == skiff_sdk::api::AppKind::Worker {
        super::jobs::check_command(state, &spec.artifact).await?;
    } else if !state.inspected.passed(&spec.artifact, Use::Component) {
        check_component(state, &spec.artifact).await?;
    }
    for (path, digest) in &spec.files {
        let exists = state
            .store
            .artifact(digest)
            .await
            .map_err(ApiError::store("looking up an artifact"))?
            .is_some();
        if !exists {
            return Err(ApiError::invalid(
                "unknown_artifact",
                &format!("files.{path}"),
                format!("file {digest} has not been uploaded (POST /v1/artifacts?kind=file)"),
            ));
        }
    }
    Ok(())
}

/// That `artifact` was uploaded and is a Wasm component (read from its
/// first chunk), as a 422 naming `artifact`; remembered once it passes.
async fn check_component(state: &AppState, artifact: &Digest) -> Result<(), ApiError> {
    let head = state
        .store
        .artifact_chunk(artifact, 0)
        .await
        .map_err(ApiError::store("looking up an artifact"))?;
    match head {
        None => Err(ApiError::invalid(
            "unknown_artifact",
            "artifact",
            format!("artifact {artifact} has not been uploaded (POST /v1/artifacts)"),
        )),
        Some(head) if !looks_like_component(&head) => Err(ApiError::invalid(
            "invalid_field",
            "artifact",
            format!("artifact {artifact} is a file, not a Wasm component"),
        )),
        Some(_) => {
            state.inspected.pass(artifact, Use::Component);
            Ok(())
        }
    }
}

/// Puts an app's extra hosts in the one form they are compared in (no
/// trailing dot, lowercase; a port fails the DNS check later), without
/// duplicates.
fn normalize_hosts(spec: &mut AppSpec) {
    let mut seen = std::collections::BTreeSet::new();
    spec.hosts = std::mem::take(&mut spec.hosts)
        .into_iter()
        .map(|h| normalize_host(&h).into_owned())
        .filter(|h| seen.insert(h.clone()))
        .collect();
}

/// A host reaches one app: refuses hosts another app already claims, and
/// hosts of the form `<app>.<domain>`, which are that app's own.
async fn check_hosts_free(state: &AppState, name: &str, spec: &AppSpec) -> Result<(), ApiError> {
    if spec.hosts.is_empty() {
        return Ok(());
    }
    let domain = normalize_host(&state.config.domain);
    let domain = domain.as_ref();
    for (i, host) in spec.hosts.iter().enumerate() {
        if let Some(label) = host
            .strip_suffix(domain)
            .and_then(|h| h.strip_suffix('.'))
            .filter(|label| !label.contains('.'))
        {
            return Err(ApiError::invalid(
                "host_taken",
                &format!("hosts[{i}]"),
                format!("{host:?} is the own host of the app named {label:?} (<app>.{domain})"),
            ));
        }
    }
    let apps = state
        .store
        .apps()
        .await
        .map_err(ApiError::store("listing apps"))?;
    for (i, host) in spec.hosts.iter().enumerate() {
        if let Some(other) = apps
            .iter()
            .find(|a| a.name != name && a.spec.hosts.iter().any(|h| normalize_host(h) == *host))
        {
            return Err(ApiError::invalid(
                "host_taken",
                &format!("hosts[{i}]"),
                format!("{host:?} already reaches app {:?}", other.name),
            ));
        }
    }
    Ok(())
}

/// Create or update an app. A changed spec makes a new revision; the same
/// spec makes none.
#[utoipa::path(put, path = "/v1/apps/{name}", request_body = AppSpec,
    params(("name" = String, Path, description = "App name (DNS label)")),
    params(("name" = String, Path, description = "App name (DNS label)"), ApplyQuery),
    responses((status = 200, body = App, description = "Updated or unchanged"), (status = 201, body = App, description = "Created"),
        (status = 409, body = ErrorBody, description = "Version conflict, or capabilities that need approval"), (status = 422, body = ErrorBody)))]
pub async fn apply(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    QueryParams(query): QueryParams<ApplyQuery>,
    headers: HeaderMap,
    body: JsonBody<AppSpec>,
) -> Result<impl IntoResponse, ApiError> {
    who.require_admin()?;
    let (mut spec, image) = super::images::decode_spec(body)?;
    check_name(&name)?;
    let expected = if_match(&headers)?;
    if let Some(reference) = image {
        check_spec(&spec)?;
        let imported = super::images::import(&state, &reference).await?;
        spec.artifact = imported.artifact;
        spec.source = Some(imported.source);
        if spec.files.is_empty() {
            spec.files = imported.files;
        }
    }
    normalize_hosts(&mut spec);
    validate_spec(&state, &spec).await?;
    check_hosts_free(&state, &name, &spec).await?;
    // Decided against the app as stored, within the apply's transaction.
    let approved = query.approve_capabilities;
    let diff = std::sync::Mutex::new(CapabilityDiff::default());
    let check = |current: Option<&App>, spec: &mut AppSpec| {
        if let Some(scale) = &spec.scale {
            // The autoscaler owns the count: applying a new revision keeps
            // it (within the new bounds); `replicas` only starts a new app.
            spec.replicas = scale.clamp(current.map_or(spec.replicas, |a| a.spec.replicas));
        }
        let found = CapabilityDiff::between(current.map(|a| &a.spec), spec);
        let mut expected = expected;
        if found.widens() {
            if !approved {
                return Err(StoreError::CapabilitiesNotApproved(Box::new(found)));
            }
            // The approval is of this difference: the write must land on
            // the version it was computed against.
            if expected.is_none() {
                expected = current.map(|a| a.version);
            }
            tracing::info!(app = %name, added_outbound_hosts = ?found.added_outbound_hosts,
                added_files = ?found.added_files, "capabilities widened with approval");
        }
        *diff.lock().unwrap_or_else(|e| e.into_inner()) = found;
        Ok(expected)
    };
    let mut applied = state
        .store
        .apply_app_checked(&name, spec, &check)
        .await
        .map_err(|e| match e {
            // Collected between the check above and the write.
            StoreError::NotFound {
                kind: "artifact",
                name,
            } => ApiError::invalid(
                "unknown_artifact",
                "artifact",
                format!("artifact {name} is no longer stored (upload it again)"),
            ),
            e => ApiError::store("applying an app")(e),
        })?;
    let diff = diff.into_inner().unwrap_or_else(|e| e.into_inner());
    if !diff.is_empty() {
        applied.app.capability_changes = Some(diff);
    }
    let status = if applied.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, etag(applied.app.version), Json(applied.app)))
}

/// Apps by name, a page at a time (`limit`, `continue`; the next page's
/// token is in the `Skiff-Continue` header).
#[utoipa::path(get, path = "/v1/apps", params(super::paging::PageQuery),
    responses((status = 200, body = Vec<App>), (status = 400, body = ErrorBody, description = "A bad `continue` token (field `continue`)")))]
pub async fn list(
    State(state): State<AppState>,
    Auth(who): Auth,
    QueryParams(page): QueryParams<super::paging::PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.require_admin()?;
    let after = page.after("apps")?;
    let found = state
        .store
        .apps_page(after.as_deref(), page.limit())
        .await
        .map_err(ApiError::store("listing apps"))?;
    let last = found
        .more
        .then(|| found.items.last().map(|a| a.name.clone()))
        .flatten();
    let headers = super::paging::next_page("apps", "/v1/apps", page.limit(), last.as_deref());
    Ok((headers, Json(found.items)))
}

async fn load(state: &AppState, name: &str) -> Result<App, ApiError> {
    state
        .store
        .app(name)
        .await
        .map_err(ApiError::store("reading an app"))?
        .ok_or_else(|| ApiError::NotFound(format!("app {name:?} not found")))
}

/// One app: spec and status.
#[utoipa::path(get, path = "/v1/apps/{name}", params(("name" = String, Path)),
    responses((status = 200, body = App), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    who.require_admin()?;
    let mut app = load(&state, &name).await?;
    let reserved = app.spec.quota.reservation_bytes();
    app.observed = Some(state.informer.demand().observed(&name, reserved));
    Ok((etag(app.version), Json(app)))
}

/// Delete an app and its replicas.
#[utoipa::path(delete, path = "/v1/apps/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    who.require_admin()?;
    let expected = if_match(&headers)?;
    state
        .store
        .delete_app(&name, expected)
        .await
        .map_err(ApiError::store("deleting an app"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// An app's kept revisions, oldest first.
#[utoipa::path(get, path = "/v1/apps/{name}/revisions", params(("name" = String, Path)),
    responses((status = 200, body = Vec<Revision>), (status = 404, body = ErrorBody)))]
pub async fn revisions(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
) -> Result<Json<Vec<Revision>>, ApiError> {
    who.require_admin()?;
    Ok(Json(
        state
            .store
            .revisions(&name)
            .await
            .map_err(ApiError::store("listing revisions"))?,
    ))
}

/// An app's replicas, by id.
#[utoipa::path(get, path = "/v1/apps/{name}/replicas", params(("name" = String, Path)),
    responses((status = 200, body = Vec<Replica>), (status = 404, body = ErrorBody)))]
pub async fn replicas(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
) -> Result<Json<Vec<Replica>>, ApiError> {
    who.require_admin()?;
    let read = || ApiError::store("listing replicas");
    if state.store.app(&name).await.map_err(read())?.is_none() {
        return Err(ApiError::NotFound(format!("app {name:?} not found")));
    }
    let replicas = state.store.replicas(Some(&name)).await.map_err(read())?;
    Ok(Json(replicas))
}

/// Return to the previous revision, or to `revision`.
#[utoipa::path(post, path = "/v1/apps/{name}/rollback", params(("name" = String, Path)), request_body = RollbackRequest,
    responses((status = 200, body = App), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rollback(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: JsonBody<RollbackRequest>,
) -> Result<impl IntoResponse, ApiError> {
    who.require_admin()?;
    let req = body.decode()?;
    let expected = if_match(&headers)?;
    let app = state
        .store
        .rollback_app(&name, req.revision, expected, None)
        .await
        .map_err(|e| match (e, req.revision) {
            // Say which revision is missing in the caller's words.
            (
                StoreError::NotFound {
                    kind: "revision", ..
                },
                None,
            ) => ApiError::invalid(
                "no_previous_revision",
                "revision",
                format!("app {name:?} has no earlier revision to return to"),
            ),
            (
                StoreError::NotFound {
                    kind: "revision", ..
                },
                Some(n),
            ) => ApiError::invalid(
                "unknown_revision",
                "revision",
                format!(
                    "app {name:?} has no revision {n} (see its revisions: the last 10 are kept)"
                ),
            ),
            (e, _) => ApiError::store("rolling back an app")(e),
        })?;
    Ok((etag(app.version), Json(app)))
}

/// Set the desired replica count.
#[utoipa::path(post, path = "/v1/apps/{name}/scale", params(("name" = String, Path)), request_body = ScaleRequest,
    responses((status = 200, body = App), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn scale(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: JsonBody<ScaleRequest>,
) -> Result<impl IntoResponse, ApiError> {
    who.require_admin()?;
    let req = body.decode()?;
    if req.replicas > MAX_REPLICAS {
        return Err(ApiError::invalid(
            "invalid_field",
            "replicas",
            format!("at most {MAX_REPLICAS} replicas"),
        ));
    }
    let expected = if_match(&headers)?;
    let app = state
        .store
        .scale_app(&name, req.replicas, expected)
        .await
        .map_err(ApiError::store("scaling an app"))?;
    Ok((etag(app.version), Json(app)))
}
