//! `GET /v1/endpoints`: where each app has Ready replicas, watched by nodes
//! (with `If-None-Match` and a wait) so any node can forward to any app.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use skiff_sdk::api::{Endpoints, ErrorBody};

use super::{AppState, Auth, QueryParams};
use crate::error::ApiError;
use crate::informer::Published;

/// Which the body is: the whole document or a change.
const KIND: header::HeaderName =
    header::HeaderName::from_static(skiff_sdk::delta::ENDPOINTS_KIND_HEADER);

/// Query of the endpoints watch.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EndpointsQuery {
    /// With `If-None-Match`, wait up to this many milliseconds for the
    /// endpoints to differ from that tag (default 30,000, at most 60,000);
    /// answers 304 if they do not.
    timeout_ms: Option<u64>,
    /// With `If-None-Match` naming a recent version: answer only what
    /// changed since it (an `EndpointsDelta`, header `skiff-endpoints:
    /// delta`); otherwise the whole document (`skiff-endpoints: full`).
    #[serde(default)]
    delta: bool,
}

/// Ready endpoints of every app; long-polls with `If-None-Match`.
#[utoipa::path(get, path = "/v1/endpoints", params(EndpointsQuery),
    responses((status = 200, body = Endpoints), (status = 304, description = "Unchanged within the wait"),
        (status = 403, body = ErrorBody)))]
pub async fn watch(
    State(state): State<AppState>,
    Auth(who): Auth,
    headers: HeaderMap,
    QueryParams(query): QueryParams<EndpointsQuery>,
) -> Result<Response, ApiError> {
    who.require_member()?;
    let seen = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned());
    let (published, changed) = super::long_poll(
        state.informer.endpoints_changes(),
        query.timeout_ms,
        || async { Ok(state.informer.endpoints()) },
        |p: &Option<Arc<Published>>| {
            p.as_ref()
                .is_some_and(|p| seen.as_deref() != Some(p.tag.as_str()))
        },
    )
    .await?;
    let published = published.ok_or_else(|| {
        ApiError::Unavailable("the controller is still reading its state; retry".into())
    })?;
    let tag = published.tag.clone();
    let etag = [(header::ETAG, tag)];
    if !changed && seen.is_some() {
        return Ok((etag, StatusCode::NOT_MODIFIED).into_response());
    }
    let json = (header::CONTENT_TYPE, "application/json");
    if query.delta
        && let Some(delta) = seen
            .as_deref()
            .and_then(|seen| state.informer.endpoints_since(seen))
    {
        let body = serde_json::to_vec(&delta).unwrap_or_default();
        return Ok((etag, [json, (KIND, "delta")], body).into_response());
    }
    Ok((etag, [json, (KIND, "full")], published.body()).into_response())
}
