//! `GET /v1/endpoints`: where each app has Ready replicas, watched by nodes
//! (with `If-None-Match` and a wait) so any node can forward to any app.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use skiff_sdk::api::{Endpoint, Endpoints, ErrorBody, ReplicaState};

use super::{AppState, Auth, QueryParams};
use crate::error::ApiError;

/// Query of the endpoints watch.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EndpointsQuery {
    /// With `If-None-Match`, wait up to this many milliseconds for the
    /// endpoints to differ from that tag (default 30,000, at most 60,000);
    /// answers 304 if they do not.
    timeout_ms: Option<u64>,
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
    let ((tag, body), changed) = super::long_poll(
        &state,
        query.timeout_ms,
        |version| cached(&state, version),
        |(tag, _): &(String, Bytes)| seen.as_deref() != Some(tag.as_str()),
    )
    .await?;
    let etag = [(header::ETAG, tag)];
    if !changed && seen.is_some() {
        return Ok((etag, StatusCode::NOT_MODIFIED).into_response());
    }
    Ok((etag, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The endpoints (tag and JSON body), computed at most once per version
/// of the informer's picture however many nodes are watching.
async fn cached(state: &AppState, version: u64) -> Result<(String, Bytes), ApiError> {
    if let Some(hit) = state
        .endpoints
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .filter(|c| c.version == version)
    {
        return Ok((hit.tag.clone(), hit.body.clone()));
    }
    let endpoints = current(state);
    let body = Bytes::from(serde_json::to_vec(&endpoints).unwrap_or_default());
    let tag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..12]));
    *state.endpoints.lock().unwrap_or_else(|e| e.into_inner()) = Some(CachedEndpoints {
        version,
        tag: tag.clone(),
        body: body.clone(),
    });
    Ok((tag, body))
}

/// The last endpoints answer, shared by every watcher.
#[derive(Debug)]
pub struct CachedEndpoints {
    version: u64,
    tag: String,
    body: Bytes,
}

/// Ready replicas on live nodes, grouped by app. Just after this controller
/// starts it has not heard from any node yet, so for one grace period it
/// trusts the last recorded replica states rather than publish nothing.
fn current(state: &AppState) -> Endpoints {
    let picture = state.informer.read();
    let leases = state.informer.leases();
    let warming_up = leases.warming_up();
    let live: BTreeMap<&str, &str> = picture
        .nodes
        .values()
        .filter(|n| warming_up || leases.is_ready(&n.name))
        .map(|n| (n.name.as_str(), n.ingress.as_str()))
        .collect();
    let mut counts: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    // A retiring replica leaves the endpoints first, so no node sends it
    // new requests by the time it is removed.
    for r in picture
        .replicas
        .values()
        .filter(|r| r.state == ReplicaState::Ready && r.retiring_since.is_none())
    {
        if live.contains_key(r.node.as_str()) {
            *counts.entry((r.app.as_str(), r.node.as_str())).or_default() += 1;
        }
    }
    let mut hosts = BTreeMap::new();
    // Every app is listed, those without a Ready replica with none, so a
    // node tells an app that is starting (503) from no app at all (404).
    let mut apps: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    for app in picture.apps.values() {
        for host in &app.spec.hosts {
            // First come, first served: the API refuses a host that another
            // app already claims, so clashes only come from older data.
            hosts
                .entry(skiff_sdk::api::normalize_host(host).into_owned())
                .or_insert_with(|| app.name.clone());
        }
        apps.insert(app.name.clone(), Vec::new());
    }
    for ((app, node), replicas) in counts {
        apps.entry(app.to_owned()).or_default().push(Endpoint {
            node: node.to_owned(),
            address: live[node].to_owned(),
            replicas,
        });
    }
    Endpoints { apps, hosts }
}
