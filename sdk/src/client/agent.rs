//! The calls a node agent makes: registering, heartbeats, wake-ups, and
//! the assignments and endpoints watches.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};

use super::{Call, Client, ClientError, WATCH_SLACK, decode};
use crate::api::{
    Assignments, Endpoints, Heartbeat, HeartbeatReply, NodeRegistration, RegisterNode,
};

impl Client {
    /// Registers (or re-registers) a node; needs the join token.
    pub async fn register_node(&self, req: &RegisterNode) -> Result<NodeRegistration, ClientError> {
        self.json("registering the node", Method::POST, "/v1/nodes", Some(req))
            .await
    }

    /// Renews a node's lease and reports its replicas.
    pub async fn heartbeat(
        &self,
        node: &str,
        hb: &Heartbeat,
    ) -> Result<HeartbeatReply, ClientError> {
        let body = Bytes::from(serde_json::to_vec(hb).unwrap_or_default());
        let path = format!("/v1/nodes/{node}/heartbeat");
        let call = "sending a heartbeat";
        let reply = self
            .send(Call::new(call, Method::PUT, &path).body("application/json", body))
            .await?;
        if reply.status == StatusCode::NO_CONTENT || reply.body.is_empty() {
            return Ok(HeartbeatReply::default());
        }
        decode(call, &reply)
    }

    /// Asks for a replica of a sleeping app that `node` holds requests for.
    pub async fn activate(
        &self,
        node: &str,
        activate: &crate::scale::Activate,
    ) -> Result<(), ClientError> {
        let body = Bytes::from(serde_json::to_vec(activate).unwrap_or_default());
        let path = format!("/v1/nodes/{node}/activate");
        let call = Call::new("activating an app", Method::POST, &path);
        self.send(call.body("application/json", body))
            .await
            .map(drop)
    }

    /// A node's assignments; with `after`, waits up to `wait` for a version
    /// greater than it.
    pub async fn assignments(
        &self,
        node: &str,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<Assignments, ClientError> {
        let mut path = format!(
            "/v1/nodes/{node}/assignments?timeout_ms={}",
            wait.as_millis()
        );
        if let Some(after) = after {
            // Knowing a version, the node takes only what changed since.
            path.push_str(&format!("&after={after}&delta=true"));
        }
        let call = "watching assignments";
        let reply = self
            .send(Call::new(call, Method::GET, &path).timeout(wait + WATCH_SLACK))
            .await?;
        decode(call, &reply)
    }

    /// The endpoints of every app with their tag; with `seen` (a tag from
    /// an earlier answer), waits up to `wait` for a change and answers
    /// `None` if there was none.
    pub async fn endpoints(
        &self,
        seen: Option<&str>,
        wait: Duration,
    ) -> Result<Option<(String, Endpoints)>, ClientError> {
        match self.watch_endpoints(seen, wait, false).await? {
            Some((tag, EndpointsUpdate::Full(full))) => Ok(Some((tag, full))),
            Some((_, EndpointsUpdate::Delta(_))) | None => Ok(None),
        }
    }

    /// Like [`Client::endpoints`], but answered with only what changed
    /// since `seen` when the controller still knows that version.
    pub async fn endpoints_since(
        &self,
        seen: Option<&str>,
        wait: Duration,
    ) -> Result<Option<(String, EndpointsUpdate)>, ClientError> {
        self.watch_endpoints(seen, wait, true).await
    }

    async fn watch_endpoints(
        &self,
        seen: Option<&str>,
        wait: Duration,
        delta: bool,
    ) -> Result<Option<(String, EndpointsUpdate)>, ClientError> {
        let call = "watching endpoints";
        let mut path = format!("/v1/endpoints?timeout_ms={}", wait.as_millis());
        if delta && seen.is_some() {
            path.push_str("&delta=true");
        }
        let mut request = Call::new(call, Method::GET, &path).timeout(wait + WATCH_SLACK);
        request.headers = seen
            .and_then(|t| HeaderValue::from_str(t).ok())
            .map(|t| (header::IF_NONE_MATCH, t))
            .into_iter()
            .collect();
        let reply = self.send(request).await?;
        if reply.status == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let tag = reply
            .headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let is_delta = reply
            .headers
            .get(crate::delta::ENDPOINTS_KIND_HEADER)
            .is_some_and(|v| v.as_bytes() == b"delta");
        let update = if is_delta {
            EndpointsUpdate::Delta(decode(call, &reply)?)
        } else {
            EndpointsUpdate::Full(decode(call, &reply)?)
        };
        Ok(Some((tag, update)))
    }
}

/// An answer of the endpoints watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointsUpdate {
    /// The whole document.
    Full(Endpoints),
    /// What changed since the version the watcher held.
    Delta(crate::delta::EndpointsDelta),
}
