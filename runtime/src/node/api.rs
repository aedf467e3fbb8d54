//! The node's own API, at `Host: _skiff` on its ingress (not a valid app
//! name, so it never shadows an app): `GET /v1/logs?app=NAME&since=SEQ`
//! (an app's buffered guest output as newline-delimited JSON) and
//! `GET /metrics` (the node's counters, Prometheus text), both only for a
//! caller presenting the node's API key (which only the controller learns).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::router::NodeRouter;

impl NodeRouter {
    /// The node's own API (`Host: _skiff`).
    pub(super) fn answer_api(&self, req: &Request<Incoming>) -> Response<HyperOutgoingBody> {
        use sha2::{Digest as _, Sha256};
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Compared as digests: the comparison time says nothing about the key.
        if Sha256::digest(presented.as_bytes()) != Sha256::digest(self.logs_key.as_bytes()) {
            return plain(http::StatusCode::UNAUTHORIZED, "unknown logs key\n");
        }
        match req.uri().path() {
            "/v1/logs" => {}
            "/metrics" => {
                let mut response = plain(http::StatusCode::OK, &self.metrics());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                return response;
            }
            _ => return plain(http::StatusCode::NOT_FOUND, "no such node route\n"),
        }
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let app = query.get("app").map(String::as_str).unwrap_or("");
        let since = query.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut body = String::new();
        for line in self.runtime.logs(app, since).unwrap_or_default() {
            let entry = skiff_sdk::api::LogEntry {
                node: self.name.clone(),
                seq: line.seq,
                time: line
                    .time
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    .unwrap_or(0),
                stream: match line.stream {
                    crate::logs::Stream::Stdout => "stdout",
                    crate::logs::Stream::Stderr => "stderr",
                }
                .to_owned(),
                line: line.line,
            };
            if let Ok(json) = serde_json::to_string(&entry) {
                body.push_str(&json);
                body.push('\n');
            }
        }
        let mut response = plain(http::StatusCode::OK, &body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        response
    }

    /// The node's counters in Prometheus text format.
    pub fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        // Candidates under health checks (`app@revision`) are not apps.
        let apps: Vec<(String, Arc<crate::AppStats>)> = self
            .runtime
            .apps()
            .into_iter()
            .filter(|a| !a.contains('@'))
            .filter_map(|a| self.runtime.app_stats(&a).map(|s| (a, s)))
            .collect();
        let mut requests = Vec::new();
        for (app, stats) in &apps {
            for outcome in crate::Outcome::ALL {
                let labels = format!("{{app=\"{app}\",outcome=\"{}\"}}", outcome.reason());
                requests.push((labels, stats.count(outcome)));
            }
        }
        family(
            "skiff_node_requests_total",
            "counter",
            "Requests served here, by app and outcome.",
            &requests,
        );
        let mut latency = String::new();
        for (app, stats) in &apps {
            let (buckets, count, sum_us) = stats.latency().snapshot();
            for (le, n) in crate::LATENCY_BUCKETS_MS.iter().zip(buckets) {
                let _ = writeln!(
                    latency,
                    "skiff_node_request_duration_seconds_bucket{{app=\"{app}\",le=\"{}\"}} {n}",
                    le / 1000.0
                );
            }
            let _ = writeln!(
                latency,
                "skiff_node_request_duration_seconds_bucket{{app=\"{app}\",le=\"+Inf\"}} {count}\n\
                 skiff_node_request_duration_seconds_sum{{app=\"{app}\"}} {}\n\
                 skiff_node_request_duration_seconds_count{{app=\"{app}\"}} {count}",
                sum_us as f64 / 1e6
            );
        }
        let per_app = |value: &dyn Fn(&str, &crate::AppStats) -> u64| -> Vec<(String, u64)> {
            apps.iter()
                .map(|(app, s)| (format!("{{app=\"{app}\"}}"), value(app, s)))
                .collect()
        };
        family(
            "skiff_node_access_denied_total",
            "counter",
            "Outbound HTTP requests, sockets and file system accesses refused because the app was not granted them.",
            &per_app(&|_, s| s.denied()),
        );
        family(
            "skiff_node_in_flight",
            "gauge",
            "Instances running now, by app.",
            &per_app(&|app, _| self.runtime.in_flight(app).unwrap_or(0) as u64),
        );
        let budget = self.runtime.budget();
        family(
            "skiff_node_memory_budget_bytes",
            "gauge",
            "Linear memory all instances may use together (the node's declared memory).",
            &[(String::new(), budget.capacity())],
        );
        family(
            "skiff_node_memory_used_bytes",
            "gauge",
            "Linear memory of the instances running now.",
            &[(String::new(), budget.used())],
        );
        let load = |c: &AtomicU64| vec![(String::new(), c.load(Ordering::Relaxed))];
        family(
            "skiff_node_forwarded_total",
            "counter",
            "Requests forwarded to a peer.",
            &load(&self.stats.forwarded),
        );
        family(
            "skiff_node_forward_retries_total",
            "counter",
            "Forwards retried on another peer.",
            &load(&self.stats.retried),
        );
        family(
            "skiff_node_no_replica_total",
            "counter",
            "Requests answered no-ready-replica.",
            &load(&self.stats.no_replica),
        );
        family(
            "skiff_node_forward_failures_total",
            "counter",
            "Forwards that failed (upstream-failed).",
            &load(&self.stats.failed),
        );
        let pulls = &self.pulls;
        family(
            "skiff_node_layer_pulls_total",
            "counter",
            "Layers (components and files) fetched, by where from: the OCI registry an app came from, or the controller.",
            &[
                (
                    "{from=\"registry\"}".to_owned(),
                    pulls.from_registry.load(Ordering::Relaxed),
                ),
                (
                    "{from=\"controller\"}".to_owned(),
                    pulls.from_controller.load(Ordering::Relaxed),
                ),
            ],
        );
        family(
            "skiff_node_registry_failures_total",
            "counter",
            "Registry pulls that failed (the controller's copy was used).",
            &load(&pulls.registry_failures),
        );
        let _ = write!(
            out,
            "# HELP skiff_node_request_duration_seconds Time from a request's arrival to the end of the guest's handler, for requests that ran an instance.\n\
             # TYPE skiff_node_request_duration_seconds histogram\n{latency}"
        );
        out
    }
}

fn plain(status: http::StatusCode, text: &str) -> Response<HyperOutgoingBody> {
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from(text.to_owned()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}
