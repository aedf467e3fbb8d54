//! Reading a node's own API (`Host: _skiff`, authorized by the key the node
//! registered): its apps' logs and its metrics. The controller never sits
//! on the request path; this is for operators.

use std::time::Duration;

use axum::http::header;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::store::LogSource;

/// Deadline of one read from a node.
const NODE_TIMEOUT: Duration = Duration::from_secs(3);
/// The `Host` of a node's own API.
const NODE_API_HOST: &str = "_skiff";

/// A client for nodes' APIs.
pub type NodeClient = HttpClient<HttpConnector, Full<Bytes>>;

/// A client with a short connect timeout (a node may be gone).
pub fn client() -> NodeClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    HttpClient::builder(TokioExecutor::new()).build(connector)
}

/// `GET path` (with its query) on `node`'s API; at most `limit` bytes of
/// answer. The error says why, for a person.
pub async fn get(
    client: &NodeClient,
    node: &LogSource,
    path: &str,
    limit: usize,
) -> Result<Bytes, String> {
    let key = node
        .logs_key
        .as_deref()
        .ok_or("the node did not offer its API")?;
    let req = http::Request::get(format!("http://{}{path}", node.ingress))
        .header(header::HOST, NODE_API_HOST)
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(req).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("the node answered {status}"));
        }
        Ok(body)
    };
    tokio::time::timeout(NODE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {NODE_TIMEOUT:?}"))?
}
