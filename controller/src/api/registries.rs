//! `/v1/registries`: per-registry credentials (`skiff registry login`).
//! The controller pulls with them when an app names an `oci://` artifact,
//! and hands them to a node only while that node runs an app from that
//! registry. No route returns a password to the admin, and none is logged.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use skiff_sdk::api::ErrorBody;
use skiff_sdk::oci::{Credentials, OciRef, RegistryLogin};

use super::{AppState, Auth, JsonBody};
use crate::error::ApiError;

/// Longest user name or password taken.
const MAX_SECRET_CHARS: usize = 4096;

/// A registry name, `host[:port]`, as a 422 naming `registry` if it is not.
fn check_registry(registry: &str) -> Result<(), ApiError> {
    match OciRef::parse(&format!("{registry}/r:t")) {
        Ok(r) if r.registry == registry => Ok(()),
        _ => Err(ApiError::invalid(
            "invalid_registry",
            "registry",
            format!("{registry:?} is not a registry host[:port]"),
        )),
    }
}

fn check_credentials(c: &Credentials) -> Result<(), ApiError> {
    for (field, value) in [("username", &c.username), ("password", &c.password)] {
        if value.is_empty() || value.chars().count() > MAX_SECRET_CHARS {
            return Err(ApiError::invalid(
                "invalid_field",
                field,
                format!("between 1 and {MAX_SECRET_CHARS} characters"),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "invalid_field",
                field,
                "no control characters",
            ));
        }
    }
    if c.username.contains(':') {
        return Err(ApiError::invalid(
            "invalid_field",
            "username",
            "basic auth user names may not contain ':'",
        ));
    }
    Ok(())
}

/// Store (or replace) the credentials for a registry.
#[utoipa::path(put, path = "/v1/registries/{registry}", request_body = Credentials,
    params(("registry" = String, Path, description = "host[:port]")),
    responses((status = 201, body = RegistryLogin, description = "Stored"), (status = 200, body = RegistryLogin, description = "Replaced"),
        (status = 422, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(registry): Path<String>,
    body: JsonBody<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    who.require_admin()?;
    check_registry(&registry)?;
    let credentials = body.decode()?;
    check_credentials(&credentials)?;
    let created = state
        .store
        .put_registry_credentials(&registry, &credentials)
        .await
        .map_err(ApiError::store("storing registry credentials"))?;
    tracing::info!(%registry, username = %credentials.username, "registry credentials stored");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(RegistryLogin {
            registry,
            username: credentials.username,
            updated_at: crate::store::now_ms(),
        }),
    ))
}

/// The registries with stored credentials (user names only).
#[utoipa::path(get, path = "/v1/registries", responses((status = 200, body = Vec<RegistryLogin>)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(who): Auth,
) -> Result<Json<Vec<RegistryLogin>>, ApiError> {
    who.require_admin()?;
    let logins = state
        .store
        .registry_logins()
        .await
        .map_err(ApiError::store("listing registry credentials"))?;
    Ok(Json(logins))
}

/// Forget the credentials for a registry.
#[utoipa::path(delete, path = "/v1/registries/{registry}",
    params(("registry" = String, Path, description = "host[:port]")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(registry): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.require_admin()?;
    check_registry(&registry)?;
    let removed = state
        .store
        .delete_registry_credentials(&registry)
        .await
        .map_err(ApiError::store("removing registry credentials"))?;
    if !removed {
        return Err(ApiError::NotFound(format!(
            "no credentials stored for {registry}"
        )));
    }
    tracing::info!(%registry, "registry credentials removed");
    Ok(StatusCode::NO_CONTENT)
}

/// The credentials a node pulls with from a registry: only for the node
/// itself, and only while it is assigned an app whose source is in that
/// registry (403 otherwise); 404 when none are stored (pull anonymously).
#[utoipa::path(get, path = "/v1/nodes/{name}/registries/{registry}/credentials",
    params(("name" = String, Path, description = "Node name"), ("registry" = String, Path, description = "host[:port]")),
    responses((status = 200, body = Credentials), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn for_node(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path((name, registry)): Path<(String, String)>,
) -> Result<Json<Credentials>, ApiError> {
    who.require_the_node(&name)?;
    check_registry(&registry)?;
    let assignments = state
        .store
        .assignments(&name)
        .await
        .map_err(ApiError::store("reading assignments"))?;
    let needs = assignments.replicas.iter().any(|a| {
        a.spec
            .source
            .as_deref()
            .and_then(|s| OciRef::parse(s).ok())
            .is_some_and(|r| r.registry == registry)
    });
    if !needs {
        return Err(ApiError::Forbidden(format!(
            "node {name:?} runs no app from {registry}"
        )));
    }
    let credentials = state
        .store
        .registry_credentials(&registry)
        .await
        .map_err(ApiError::store("reading registry credentials"))?
        .ok_or_else(|| ApiError::NotFound(format!("no credentials stored for {registry}")))?;
    tracing::debug!(node = %name, %registry, "registry credentials handed to a node");
    Ok(Json(credentials))
}
