//! `GET /v1/apps/{name}/logs`: guest output gathered from every node that
//! runs a replica of the app (each keeps a bounded buffer), merged by time,
//! as newline-delimited JSON; with `follow=true` the answer stays open and
//! new lines follow as the nodes report them.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use skiff_sdk::api::{ErrorBody, LogEntry};

use super::node_proxy::{self, NodeClient};
use super::{AppState, Auth, QueryParams};
use crate::error::ApiError;
use crate::store::LogSource;

/// How often a follow re-reads the nodes.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);
/// Largest answer read from one node (its buffer holds 1,000 lines of at
/// most 4 KiB).
const MAX_NODE_LOGS: usize = 8 << 20;

/// Query of the logs route.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Keep the answer open and send new lines as they come.
    follow: Option<bool>,
}

/// The app's guest output from every node that runs it.
#[utoipa::path(get, path = "/v1/apps/{name}/logs", params(("name" = String, Path), LogsQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = LogEntry), (status = 404, body = ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    QueryParams(query): QueryParams<LogsQuery>,
) -> Result<Response, ApiError> {
    who.require_admin()?;
    if state
        .store
        .app(&name)
        .await
        .map_err(ApiError::store("reading an app"))?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("app {name:?} not found")));
    }
    let follow = query.follow.unwrap_or(false);
    Ok(ndjson(|tx| gather(state, name, follow, tx)))
}

/// A newline-delimited JSON answer whose lines `produce` (spawned) sends;
/// it ends when `produce` returns, and `produce` sees the client leave as
/// a failed send.
pub(super) fn ndjson<F>(produce: impl FnOnce(Sender) -> F) -> Response
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(produce(tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Where a log stream's lines go.
pub(super) type Sender = tokio::sync::mpsc::Sender<Bytes>;

/// Sends one entry as a line; `false` once the client has gone.
pub(super) async fn send_entry(tx: &Sender, entry: &LogEntry) -> bool {
    let mut line = serde_json::to_vec(entry).unwrap_or_default();
    line.push(b'\n');
    tx.send(Bytes::from(line)).await.is_ok()
}

/// Reads the nodes (once, or until the client goes away) and sends lines.
async fn gather(state: AppState, app: String, follow: bool, tx: Sender) {
    let client = node_proxy::client();
    let mut cursors: HashMap<String, u64> = HashMap::new();
    let mut warned: HashSet<String> = HashSet::new();
    loop {
        let sources = match state.store.log_sources(&app).await {
            Ok(sources) => sources,
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "listing log sources");
                Vec::new()
            }
        };
        let mut batch = Vec::new();
        for source in sources {
            let since = cursors.get(&source.node).copied().unwrap_or(0);
            match read_node(&client, &state.node_keys, &source, &app, since).await {
                Ok(entries) => {
                    warned.remove(&source.node);
                    if let Some(last) = entries.last() {
                        cursors.insert(source.node.clone(), last.seq + 1);
                    }
                    batch.extend(entries);
                }
                Err(why) => {
                    // Said once per outage, not on every poll.
                    if warned.insert(source.node.clone()) {
                        batch.push(LogEntry {
                            node: source.node.clone(),
                            seq: 0,
                            time: crate::store::now_ms(),
                            stream: "skiff".into(),
                            line: format!("cannot read logs from node {}: {why}", source.node),
                        });
                    }
                }
            }
        }
        batch.sort_by(|a, b| (a.time, &a.node, a.seq).cmp(&(b.time, &b.node, b.seq)));
        for entry in batch {
            if !send_entry(&tx, &entry).await {
                return;
            }
        }
        if !follow {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            () = tx.closed() => return,
        }
    }
}

pub(super) async fn read_node(
    client: &NodeClient,
    keys: &node_proxy::NodeKeys,
    source: &LogSource,
    app: &str,
    since: u64,
) -> Result<Vec<LogEntry>, String> {
    let body = node_proxy::get(
        client,
        keys,
        source,
        &format!("/v1/logs?app={app}&since={since}"),
        MAX_NODE_LOGS,
    )
    .await?;
    Ok(body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}
