//! Reading a node's own API (`Host: _skiff`, authorized by the key the node
//! registered): its apps' logs and its metrics. The controller never sits
//! on the request path; this is for operators.
//!
//! The store keeps only the sha256 of each node's key, like every other
//! secret; the key itself lives in this controller's memory ([`NodeKeys`]),
//! learned from the node's registration and repeated in its heartbeats, so
//! a controller that restarts knows it again within a heartbeat.

use std::collections::HashMap;
use std::sync::Mutex;
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

/// The nodes' API keys as the nodes presented them to this controller.
#[derive(Debug, Default)]
pub struct NodeKeys(Mutex<HashMap<String, String>>);

impl NodeKeys {
    /// Records the key `node` presented (at registration or in a heartbeat).
    pub fn learn(&self, node: &str, key: &str) {
        let mut keys = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if keys.get(node).map(String::as_str) != Some(key) {
            keys.insert(node.to_owned(), key.to_owned());
        }
    }

    /// The key to present to `source`: the one it last presented here, if
    /// it is the one the store records (a node that registered again
    /// through another controller has a new one).
    fn for_source(&self, source: &LogSource) -> Result<String, &'static str> {
        let keys = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = keys
            .get(&source.node)
            .ok_or("this controller has not heard the node's API key yet (it comes with the node's next heartbeat)")?;
        match &source.logs_key_hash {
            Some(hash) if *hash != crate::auth::hash_secret(key) => {
                Err("the node registered a new API key elsewhere; it comes with its next heartbeat")
            }
            _ => Ok(key.clone()),
        }
    }
}

/// A client for nodes' APIs.
pub type NodeClient = HttpClient<HttpConnector, Full<Bytes>>;

/// A client with a short connect timeout (a node may be gone).
pub fn client() -> NodeClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    HttpClient::builder(TokioExecutor::new())
        .pool_idle_timeout(skiff_sdk::serve::CLIENT_POOL_IDLE)
        .build(connector)
}

/// `GET path` (with its query) on `node`'s API; at most `limit` bytes of
/// answer. The error says why, for a person.
pub async fn get(
    client: &NodeClient,
    keys: &NodeKeys,
    node: &LogSource,
    path: &str,
    limit: usize,
) -> Result<Bytes, String> {
    if !node.offers_api {
        return Err("the node did not offer its API".to_owned());
    }
    let key = keys.for_source(node)?;
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
