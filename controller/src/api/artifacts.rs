//! `/v1/artifacts`: content-addressed component uploads and downloads.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use skiff_sdk::Digest;
use skiff_sdk::api::{Artifact, ErrorBody};

use super::{AppState, Auth, QueryParams};
use crate::error::ApiError;

pub use skiff_sdk::component::{looks_like_component, validate_component};

/// What an upload is.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// `component` (the default; validated as a Wasm component) or `file`
    /// (a static file an app's spec mounts read-only; any bytes).
    #[serde(default)]
    pub kind: Option<ArtifactKind>,
}

/// The kinds of artifact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// A Wasm component to run.
    #[default]
    Component,
    /// A static file.
    File,
}

/// Upload a component (or, with `?kind=file`, a static file). Idempotent:
/// the same bytes give the same digest.
#[utoipa::path(post, path = "/v1/artifacts", params(UploadQuery), request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 201, body = Artifact, description = "Stored"), (status = 200, body = Artifact, description = "Already stored"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 507, body = ErrorBody, description = "The artifact store is full (`store_full`)")))]
pub async fn upload(
    State(state): State<AppState>,
    Auth(who): Auth,
    QueryParams(query): QueryParams<UploadQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    who.require_admin()?;
    let kind = query.kind.unwrap_or_default();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/wasm")
        && !mime.eq_ignore_ascii_case("application/octet-stream")
    {
        return Err(ApiError::UnsupportedMediaType(
            "upload the component as Content-Type: application/wasm (or application/octet-stream)"
                .into(),
        ));
    }
    let limit = state.config.max_artifact_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || ApiError::TooLarge(format!("artifacts are limited to {limit} bytes"));
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| too_large())?;
    if kind == ArtifactKind::Component {
        validate_component(&bytes).map_err(|message| ApiError::Invalid {
            code: "invalid_component",
            message: format!("the upload is not a valid Wasm component: {message}"),
            field: None,
        })?;
    }
    let digest = Digest::of(&bytes);
    let created = state
        .store
        .put_artifact(&digest, &bytes)
        .await
        .map_err(ApiError::store("storing an artifact"))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(Artifact {
            digest,
            size: bytes.len() as u64,
        }),
    )
        .into_response())
}

/// Remove an artifact that no kept revision of any app names (unreferenced
/// artifacts are also collected on their own after the retention).
#[utoipa::path(delete, path = "/v1/artifacts/{digest}", params(("digest" = String, Path, description = "sha256:<hex>")),
    responses((status = 204), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "A kept revision still names it")))]
pub async fn delete(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(digest): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.require_admin()?;
    let digest = parse_digest(&digest)?;
    let removed = state
        .store
        .delete_artifact(&digest)
        .await
        .map_err(ApiError::store("removing an artifact"))?;
    if !removed {
        return Err(ApiError::NotFound(format!("artifact {digest} not found")));
    }
    tracing::info!(%digest, "artifact removed");
    Ok(StatusCode::NO_CONTENT)
}

fn parse_digest(digest: &str) -> Result<Digest, ApiError> {
    digest
        .parse()
        .map_err(|e: skiff_sdk::digest::DigestParseError| {
            ApiError::invalid("invalid_digest", "digest", e.to_string())
        })
}

/// Download a component, streamed chunk by chunk (`HEAD` for its size).
#[utoipa::path(get, path = "/v1/artifacts/{digest}", params(("digest" = String, Path, description = "sha256:<hex>")),
    responses((status = 200, content_type = "application/wasm", body = Vec<u8>), (status = 404, body = ErrorBody)))]
pub async fn download(
    State(state): State<AppState>,
    Auth(_who): Auth,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    // Any authenticated caller: nodes pull the artifacts they run.
    let digest = parse_digest(&digest)?;
    let info = state
        .store
        .artifact(&digest)
        .await
        .map_err(ApiError::store("reading an artifact"))?
        .ok_or_else(|| ApiError::NotFound(format!("artifact {digest} not found")))?;
    let store = state.store.clone();
    let chunks = futures::stream::unfold(0u64, move |seq| {
        let store = store.clone();
        async move {
            if seq >= info.chunks {
                return None;
            }
            let item = match store.artifact_chunk(&digest, seq).await {
                Ok(Some(data)) => Ok(bytes::Bytes::from(data)),
                Ok(None) => Err(std::io::Error::other("artifact chunk missing")),
                Err(e) => Err(std::io::Error::other(e)),
            };
            Some((item, seq + 1))
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/wasm"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        headers.insert(header::ETAG, v);
    }
    Ok(response)
}
