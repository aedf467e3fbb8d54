//! `/v1/nodes`: registration, heartbeats, flags, and assignment watches.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use skiff_sdk::api::{
    Assignments, ErrorBody, Heartbeat, HeartbeatReply, Node, NodeRegistration, RegisterNode,
    Replica, ReplicaStatus, validate_name,
};
use skiff_sdk::scale::Activate;

use super::{AppState, Auth, JsonBody, QueryParams, etag, if_match};
use crate::auth::{hash_secret, new_secret};
use crate::error::ApiError;
use crate::store::StoreError;

/// Join (or rejoin) the cluster; answers the node's credential.
#[utoipa::path(post, path = "/v1/nodes", request_body = RegisterNode,
    responses((status = 201, body = NodeRegistration), (status = 200, body = NodeRegistration, description = "Re-registered"),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody, description = "A live node holds the name (field `name`)"),
        (status = 422, body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    Auth(who): Auth,
    body: JsonBody<RegisterNode>,
) -> Result<impl IntoResponse, ApiError> {
    who.require_join()?;
    let req = body.decode()?;
    validate_name(&req.name)
        .map_err(|e| ApiError::invalid("invalid_name", "name", e.to_string()))?;
    if req.capacity.memory_bytes == 0 {
        return Err(ApiError::invalid(
            "invalid_field",
            "capacity.memory_bytes",
            "must be greater than zero",
        ));
    }
    let ingress_ok = req
        .ingress
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if !ingress_ok {
        return Err(ApiError::invalid(
            "invalid_field",
            "ingress",
            format!("{:?} is not host:port", req.ingress),
        ));
    }
    for key in req.labels.keys() {
        if key.is_empty() || key.len() > 63 {
            return Err(ApiError::invalid(
                "invalid_field",
                &format!("labels.{key}"),
                "label keys are 1 to 63 characters",
            ));
        }
    }
    let credential = new_secret("skiff_node");
    // A name is taken over only by the node holding it (its current
    // credential) or once that node has been silent beyond the grace.
    let claim = req.credential.as_deref().map(hash_secret);
    // A node heard from here within the grace is alive whatever the
    // (batched) stored lease says.
    let silent_for_ms = if state.informer.leases().is_ready(&req.name) {
        i64::MAX
    } else {
        i64::try_from(state.config.node_grace.as_millis()).unwrap_or(i64::MAX)
    };
    let (node, created) = state
        .store
        .register_node(
            &req,
            &hash_secret(&credential),
            claim.as_deref(),
            silent_for_ms,
        )
        .await
        .map_err(ApiError::store("registering a node"))?;
    if let Some(key) = &req.logs_key {
        state.node_keys.learn(&req.name, key);
    }
    state.informer.leases().renew(&req.name);
    state.informer.detector().alive(&req.name);
    // The old credential stops working now, not when the picture catches up.
    state.credentials.forget_node(&req.name);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(NodeRegistration { node, credential })))
}

/// A node holds requests for a sleeping app and asks for a replica: the
/// app is scaled to `max(1, scale.min)` at once, and the reconciler places
/// the replica on the asking node when it fits. Idempotent: an app that is
/// awake already is left as it is.
#[utoipa::path(post, path = "/v1/nodes/{name}/activate", params(("name" = String, Path)),
    request_body = Activate,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn activate(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    body: JsonBody<Activate>,
) -> Result<StatusCode, ApiError> {
    who.require_the_node(&name)?;
    let ask: Activate = body.decode()?;
    let demand = state.informer.demand();
    // A conflict means the app changed under us: look again.
    for _ in 0..3 {
        let known = state.informer.read().apps.get(&ask.app).cloned();
        let app = match known {
            Some(app) => (*app).clone(),
            None => state
                .store
                .app(&ask.app)
                .await
                .map_err(ApiError::store("reading an app"))?
                .ok_or_else(|| ApiError::NotFound(format!("app {:?} not found", ask.app)))?,
        };
        let Some(scale) = app.spec.scale.filter(|s| s.min == 0) else {
            return Err(ApiError::invalid(
                "not_activatable",
                "app",
                format!(
                    "app {:?} does not sleep (it has no [scale] with min = 0)",
                    app.name
                ),
            ));
        };
        demand.woke(&app.name, &name);
        if app.spec.replicas > 0 {
            return Ok(StatusCode::NO_CONTENT);
        }
        let to = scale.clamp(1);
        let how = if ask.local {
            "serves it from its own copy"
        } else {
            "holds requests for it"
        };
        let why = format!("Scaled up 0 → {to}: woken by node {name}, which {how}");
        match state
            .store
            .autoscale_app(&app.name, to, Some(app.version), &why)
            .await
        {
            Ok(_) => {
                // Requests wait on the replica unless the node serves the
                // app already.
                if !ask.local {
                    state.informer.hurry(&app.name);
                }
                return Ok(StatusCode::NO_CONTENT);
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(ApiError::store("waking an app")(e)),
        }
    }
    Err(ApiError::Unavailable(
        "the app kept changing while waking it; retry".to_owned(),
    ))
}

/// Renew the node's lease and report its replicas (all, or with `digest`
/// only those that changed).
#[utoipa::path(put, path = "/v1/nodes/{name}/heartbeat", params(("name" = String, Path)), request_body = Heartbeat,
    responses((status = 204), (status = 200, body = HeartbeatReply, description = "The record drifted from the digest: send a full report"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    body: JsonBody<Heartbeat>,
) -> Result<axum::response::Response, ApiError> {
    who.require_the_node(&name)?;
    let hb: Heartbeat = body.decode()?;
    if let Some(key) = &hb.logs_key {
        state.node_keys.learn(&name, key);
    }
    if !state.informer.read().nodes.contains_key(&name)
        && state
            .store
            .node(&name)
            .await
            .map_err(ApiError::store("reading a node"))?
            .is_none()
    {
        return Err(ApiError::NotFound(format!("node {name:?} not found")));
    }
    // The lease is renewed in memory (persisted in batches); only replica
    // states that differ from the picture are written.
    state.informer.leases().renew(&name);
    state.informer.detector().alive(&name);
    state.informer.demand().report(&name, &hb.usage);
    if !hb.replicas.is_empty() {
        // States are compared with the picture: it must hold the states
        // this controller wrote a moment ago (the previous heartbeat's), or
        // a state changed back would look unchanged and not be written.
        state.informer.caught_up(CATCH_UP).await;
    }
    let (changed, drifted) = {
        let picture = state.informer.read();
        let changed: Vec<ReplicaStatus> = hb
            .replicas
            .iter()
            .filter(|r| {
                picture.replicas.get(&r.id).is_none_or(|known| {
                    known.node != name || known.state != r.state || known.reason != r.reason
                })
            })
            .cloned()
            .collect();
        // The record after this report, as the node's digest covers it.
        let drifted = hb.digest.as_deref().is_some_and(|digest| {
            let mut record = picture.replica_digest(&name);
            let reported: HashMap<&str, &ReplicaStatus> =
                hb.replicas.iter().map(|r| (r.id.as_str(), r)).collect();
            for now in reported.values() {
                if let Some(known) = picture.replicas.get(&now.id).filter(|k| k.node == name) {
                    record.remove(&known.id, known.state, known.reason.as_deref());
                    record.add(&now.id, now.state, now.reason.as_deref());
                }
            }
            record.hex() != digest
        });
        (changed, drifted)
    };
    if !changed.is_empty() {
        state
            .store
            .report_replicas(&name, &changed)
            .await
            .map_err(ApiError::store("recording a heartbeat"))?;
        restarts_as_events(&state, &name, &changed).await;
    }
    if drifted {
        return Ok(Json(HeartbeatReply { resend_full: true }).into_response());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Nodes by name, a page at a time (`limit`, `continue`; the next page's
/// token is in the `Skiff-Continue` header), with their live leases.
#[utoipa::path(get, path = "/v1/nodes", params(super::paging::PageQuery),
    responses((status = 200, body = Vec<Node>), (status = 400, body = ErrorBody, description = "A bad `continue` token (field `continue`)")))]
pub async fn list(
    State(state): State<AppState>,
    Auth(who): Auth,
    QueryParams(page): QueryParams<super::paging::PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.require_admin()?;
    let after = page.after("nodes")?;
    let mut found = state
        .store
        .nodes_page(after.as_deref(), page.limit())
        .await
        .map_err(ApiError::store("listing nodes"))?;
    for node in &mut found.items {
        state.informer.present(node);
    }
    let last = found
        .more
        .then(|| found.items.last().map(|n| n.name.clone()))
        .flatten();
    let headers = super::paging::next_page("nodes", "/v1/nodes", page.limit(), last.as_deref());
    Ok((headers, Json(found.items)))
}

/// One node (the admin, or the node itself).
#[utoipa::path(get, path = "/v1/nodes/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Node), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    who.require_node(&name)?;
    let mut node = state
        .store
        .node(&name)
        .await
        .map_err(ApiError::store("reading a node"))?
        .ok_or_else(|| ApiError::NotFound(format!("node {name:?} not found")))?;
    state.informer.present(&mut node);
    Ok((etag(node.version), Json(node)))
}

/// The replicas assigned to a node, by app, from the controller's picture
/// (for the dashboard's node page; no database read).
#[utoipa::path(get, path = "/v1/nodes/{name}/replicas", params(("name" = String, Path)),
    responses((status = 200, body = Vec<Replica>), (status = 404, body = ErrorBody)))]
pub async fn replicas(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
) -> Result<Json<Vec<Replica>>, ApiError> {
    who.require_admin()?;
    state
        .informer
        .caught_up(std::time::Duration::from_secs(1))
        .await;
    let picture = state.informer.read();
    if !picture.nodes.contains_key(&name) {
        return Err(ApiError::NotFound(format!("node {name:?} not found")));
    }
    let mut found: Vec<Replica> = picture
        .by_node
        .get(&name)
        .into_iter()
        .flatten()
        .filter_map(|id| picture.replicas.get(id))
        .map(|r| Replica::clone(r))
        .collect();
    found.sort_by(|a, b| (&a.app, &a.id).cmp(&(&b.app, &b.id)));
    Ok(Json(found))
}

async fn set_flags(
    state: AppState,
    who: crate::auth::Principal,
    name: String,
    headers: HeaderMap,
    cordoned: Option<bool>,
    draining: Option<bool>,
) -> Result<([(axum::http::HeaderName, String); 1], Json<Node>), ApiError> {
    who.require_admin()?;
    let expected = if_match(&headers)?;
    let node = state
        .store
        .set_node_flags(&name, cordoned, draining, expected)
        .await
        .map_err(ApiError::store("updating a node"))?;
    Ok((etag(node.version), Json(node)))
}

/// Stop placing new replicas on the node.
#[utoipa::path(post, path = "/v1/nodes/{name}/cordon", params(("name" = String, Path)), responses((status = 200, body = Node)))]
pub async fn cordon(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    set_flags(state, who, name, headers, Some(true), None).await
}

/// Allow placing replicas on the node again (ends a drain too).
#[utoipa::path(post, path = "/v1/nodes/{name}/uncordon", params(("name" = String, Path)), responses((status = 200, body = Node)))]
pub async fn uncordon(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    set_flags(state, who, name, headers, Some(false), Some(false)).await
}

/// Move the node's replicas elsewhere, then keep it cordoned.
#[utoipa::path(post, path = "/v1/nodes/{name}/drain", params(("name" = String, Path)), responses((status = 200, body = Node)))]
pub async fn drain(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    set_flags(state, who, name, headers, Some(true), Some(true)).await
}

/// Remove a node and its replicas.
#[utoipa::path(delete, path = "/v1/nodes/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
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
        .delete_node(&name, expected)
        .await
        .map_err(ApiError::store("deleting a node"))?;
    state.credentials.forget_node(&name);
    Ok(StatusCode::NO_CONTENT)
}

/// Query of the assignments watch.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    /// Answer once the version is greater than this (absent: at once).
    after: Option<u64>,
    /// Longest wait in milliseconds (default 30,000, at most 60,000).
    timeout_ms: Option<u64>,
    /// With `after`: answer only what changed since that version
    /// (`removed` ids and added or changed replicas, `delta: true`), when
    /// this controller answered that version; else the whole set.
    delta: Option<bool>,
}

/// The node's desired replicas; long-polls with `after`.
#[utoipa::path(get, path = "/v1/nodes/{name}/assignments", params(("name" = String, Path), WatchQuery),
    responses((status = 200, body = Assignments), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn assignments(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    QueryParams(query): QueryParams<WatchQuery>,
) -> Result<Json<Assignments>, ApiError> {
    who.require_the_node(&name)?;
    // A watch that ends without an answer (the node's connection closed)
    // raises a suspicion that the node died.
    let ingress = state
        .informer
        .read()
        .nodes
        .get(&name)
        .map(|n| n.ingress.clone());
    let guard = ingress.map(|ingress| state.informer.detector().watching(&name, &ingress));
    if state.informer.assign_version(&name).is_none() {
        // A node the picture does not hold yet (it registered a moment
        // ago): let the picture catch up rather than answer at once from
        // the store, which would end the watch before any change.
        state.informer.caught_up(CATCH_UP).await;
    }
    let (known, _) = super::long_poll(
        state.informer.node_changes(&name),
        query.timeout_ms,
        || async { Ok(state.informer.assign_version(&name)) },
        |version: &Option<u64>| version.is_none_or(|v| query.after.is_none_or(|after| v > after)),
    )
    .await?;
    // Only what changed since the version the node holds, when it asks for
    // a delta and this controller answered that version (whose contents it
    // remembers); from the picture, or from the store when the picture
    // cannot say.
    // Taken out while answering, so that it is updated in place (a
    // second watch of the same node meanwhile gets the whole set).
    let base = {
        let mut sent = state.sent.lock().unwrap_or_else(|e| e.into_inner());
        match (query.delta, query.after, sent.get(&name)) {
            (Some(true), Some(after), Some((version, _, _))) if *version == after => {
                sent.remove(&name).map(|(_, at, held)| (at, held))
            }
            _ => None,
        }
    };
    // From the store when the picture cannot say: then the whole set (the
    // base was given to the picture, which may have started on it).
    let (base, from_picture) = match known {
        Some(_) => (None, state.informer.assignments(&name, base)),
        None => (base, None),
    };
    let (answer, now, at) = match from_picture {
        Some(found) => found,
        None => {
            // Read from the store: no picture version covers it, so the
            // next delta walks the node's replicas.
            let whole = state
                .store
                .assignments(&name)
                .await
                .map_err(ApiError::store("reading assignments"))?;
            let (answer, now) =
                crate::informer::delta(whole, base.as_ref().map(|(_, held)| &**held));
            (answer, Arc::new(now), 0)
        }
    };
    state
        .sent
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.clone(), (answer.version, at, now));
    if let Some(guard) = guard {
        guard.finish();
    }
    Ok(Json(answer))
}

/// Longest an assignments watch waits for the picture to hold a node that
/// just registered.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest metrics answer read from a node.
const MAX_NODE_METRICS: usize = 4 << 20;

/// A node's own metrics (Prometheus text), read from the node: requests by
/// app and outcome, outbound accesses denied by app, instances in flight,
/// and the forwarding counters.
#[utoipa::path(get, path = "/v1/nodes/{name}/metrics", params(("name" = String, Path)),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "The node did not answer")))]
pub async fn metrics(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    who.require_admin()?;
    let source = state
        .store
        .node_source(&name)
        .await
        .map_err(ApiError::store("reading a node"))?
        .ok_or_else(|| ApiError::NotFound(format!("node {name:?} not found")))?;
    let body = super::node_proxy::get(
        &super::node_proxy::client(),
        &state.node_keys,
        &source,
        "/metrics",
        MAX_NODE_METRICS,
    )
    .await
    .map_err(|why| ApiError::NodeUnreachable(format!("reading node {name}'s metrics: {why}")))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    ))
}

/// A worker replica that exited and waits to restart says so in its
/// reason (`CrashLoopBackOff: ...`); each such report is also an event.
async fn restarts_as_events(state: &AppState, node: &str, changed: &[ReplicaStatus]) {
    for status in changed {
        let Some(reason) = status
            .reason
            .as_deref()
            .filter(|r| r.starts_with("CrashLoopBackOff"))
        else {
            continue;
        };
        let app = state
            .informer
            .read()
            .replicas
            .get(&status.id)
            .map(|r| r.app.clone());
        let event = crate::store::NewEvent {
            app,
            node: Some(node.to_owned()),
            kind: skiff_sdk::api::EventKind::ReplicaRestarting,
            message: format!("replica {} on {node}: {reason}", status.id),
        };
        if let Err(error) = state.store.record_event(event).await {
            tracing::warn!(error = %crate::error_chain(&error), "recording a restart");
        }
    }
}
