//! Health, readiness, metrics, events and the OpenAPI document.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use skiff_sdk::api::{ErrorBody, Event};
use utoipa::OpenApi;

use super::{ApiDoc, AppState, Auth, QueryParams};
use crate::error::ApiError;
use crate::store::TokenKind;

/// Liveness: the process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the store answers.
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state
        .store
        .token_hash(TokenKind::Admin)
        .await
        .map_err(ApiError::store("checking the store"))?;
    Ok("ready\n")
}

/// Unknown routes, in the API's error format.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    // From the informer's picture: a scrape costs no database reads. It
    // shows this controller's own writes once the picture has them.
    state
        .informer
        .caught_up(std::time::Duration::from_secs(1))
        .await;
    let (apps, nodes, ready_nodes, desired, ready) = {
        let picture = state.informer.read();
        let leases = state.informer.leases();
        let ready_nodes = picture.nodes.keys().filter(|n| leases.is_ready(n)).count();
        let desired: u64 = picture
            .apps
            .values()
            .map(|a| u64::from(a.status.desired_replicas))
            .sum();
        let ready: u64 = picture
            .apps
            .values()
            .map(|a| u64::from(a.status.ready_replicas))
            .sum();
        (
            picture.apps.len(),
            picture.nodes.len(),
            ready_nodes,
            desired,
            ready,
        )
    };
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    };
    gauge("skiff_apps", "Apps stored.", apps as u64);
    gauge("skiff_nodes", "Nodes registered.", nodes as u64);
    gauge(
        "skiff_nodes_ready",
        "Nodes heartbeating within the grace period.",
        ready_nodes as u64,
    );
    gauge(
        "skiff_replicas_desired",
        "Desired replicas over all apps.",
        desired,
    );
    gauge(
        "skiff_replicas_ready",
        "Ready replicas over all apps.",
        ready,
    );
    gauge(
        "skiff_controller_leader",
        "1 if this controller holds the leader lease.",
        u64::from(*state.leader.borrow()),
    );
    out.push_str("# HELP skiff_http_responses_total API responses by status class.\n# TYPE skiff_http_responses_total counter\n");
    for (i, n) in state.http.by_class.iter().enumerate() {
        out.push_str(&format!(
            "skiff_http_responses_total{{class=\"{}xx\"}} {}\n",
            i + 1,
            n.load(Ordering::Relaxed)
        ));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Only events of this app.
    app: Option<String>,
    /// Only events with a greater id.
    since: Option<u64>,
    /// At most this many (default and maximum 1,000).
    limit: Option<u32>,
    /// The token from the previous page's `Skiff-Continue` header (instead
    /// of `since`).
    #[serde(rename = "continue")]
    continue_: Option<String>,
}

/// Recent events, oldest first.
#[utoipa::path(get, path = "/v1/events", params(EventQuery),
    responses((status = 200, body = Vec<Event>), (status = 400, body = ErrorBody, description = "A bad `continue` token (field `continue`)"),
        (status = 401, body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    Auth(who): Auth,
    QueryParams(q): QueryParams<EventQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.require_admin()?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 1000);
    let page = super::paging::PageQuery {
        limit: Some(limit),
        continue_: q.continue_,
    };
    let since = match page.after("events")? {
        Some(after) => after.parse::<u64>().map_err(|_| ApiError::BadRequest {
            code: "invalid_continue",
            message: "not a continue token of this events list".into(),
            field: Some("continue".into()),
        })?,
        None => q.since.unwrap_or(0),
    };
    // One more than asked says whether another page follows.
    let mut events = state
        .store
        .events(q.app.as_deref(), since, limit + 1)
        .await
        .map_err(ApiError::store("reading events"))?;
    let more = events.len() > limit as usize;
    events.truncate(limit as usize);
    let last = more
        .then(|| events.last().map(|e| e.id.to_string()))
        .flatten();
    let path = match &q.app {
        Some(app) => format!("/v1/events?app={app}"),
        None => "/v1/events".to_owned(),
    };
    let headers = super::paging::next_page("events", &path, limit, last.as_deref());
    Ok((headers, Json(events)))
}

/// The OpenAPI document (any valid token).
pub async fn openapi(Auth(_who): Auth) -> impl IntoResponse {
    (StatusCode::OK, Json(ApiDoc::openapi()))
}
