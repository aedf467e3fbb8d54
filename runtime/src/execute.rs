//! Serving one request: find the app, take an instance slot, build a
//! [`Store`] under the app's quotas, instantiate, run the guest's handler,
//! stream its response, and count how it ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::Runtime;
use crate::body::{GuestBody, LimitedBody, error_response};
use crate::host::HostState;
use crate::quota::{Limiter, Outcome, classify};
use crate::registry::{App, AppRef, FUEL_YIELD_INTERVAL};
use crate::routing::app_name_for_host;

/// Which app serves a request.
pub enum Target {
    /// The app its `Host` names (`<app>.<domain>`; in `skiff serve`, the
    /// only app whatever the host).
    ByHost,
    /// An app found by [`Runtime::find`] (e.g. routed by an extra host, or
    /// a health-check candidate).
    App(AppRef),
}

/// What the guest did with its response-outparam.
const SET_NONE: u8 = 0;
const SET_OK: u8 = 1;
const SET_ERR: u8 = 2;

impl Runtime {
    /// Serves one HTTP request with the app `target` names: apply the
    /// app's quotas, run a fresh instance, stream its response. Never
    /// fails: every problem is an HTTP response with a reason (see
    /// [`Outcome`]).
    pub async fn handle<B>(
        self: &Arc<Self>,
        target: Target,
        req: Request<B>,
    ) -> Response<HyperOutgoingBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let app = match target {
            Target::App(app) => Some(app.0),
            Target::ByHost => {
                let Ok(host) = crate::routing::request_host(&req) else {
                    return crate::body::duplicate_host();
                };
                let apps = self.apps.read().unwrap_or_else(|e| e.into_inner());
                let by_host = host
                    .and_then(|h| app_name_for_host(h, &self.config.domain))
                    .and_then(|n| apps.get(n.as_ref()));
                match by_host {
                    Some(app) => Some(app.clone()),
                    None if self.config.single_app_any_host && apps.len() == 1 => {
                        apps.values().next().cloned()
                    }
                    None => None,
                }
            }
        };
        self.serve(app, req).await
    }

    async fn serve<B>(
        self: &Arc<Self>,
        app: Option<Arc<App>>,
        req: Request<B>,
    ) -> Response<HyperOutgoingBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let Some(app) = app else {
            self.unrouted.fetch_add(1, Ordering::Relaxed);
            return error_response(Outcome::NotFound, None);
        };
        let arrived = std::time::Instant::now();
        let outcome_response = |outcome: Outcome| {
            app.stats.record(outcome);
            error_response(outcome, Some(&app.name))
        };
        // Demand from the moment the request arrives, queued included:
        // what the autoscaler follows. Only requests from a client (or
        // forwarded for one): health checks are not demand, or an app with
        // a health check would never sleep.
        let demand = req
            .extensions()
            .get::<skiff_sdk::serve::ClientAddr>()
            .map(|_| crate::budget::InFlight::begin(app.stats.clone()));

        let declared_len = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_len.is_some_and(|n| n > self.config.max_request_body) {
            return outcome_response(Outcome::BodyTooLarge);
        }

        let permit = match app.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => match tokio::time::timeout(
                self.config.queue_timeout,
                app.permits.clone().acquire_owned(),
            )
            .await
            {
                Ok(Ok(permit)) => permit,
                _ => return outcome_response(Outcome::Overloaded),
            },
        };

        let pre = match self.ready(&app).await {
            Ok(pre) => pre,
            Err(_) => return outcome_response(Outcome::Unavailable),
        };

        let quota = app.spec.quota;
        let expected = app.stats.usage.expected_bytes(quota.memory_bytes);
        if !self.budget.admit(expected, self.config.queue_timeout).await {
            return outcome_response(Outcome::MemoryPressure);
        }
        let Ok(mut store) = self.new_store(&app, expected) else {
            // Only possible if the engine was built without fuel: a bug.
            return outcome_response(Outcome::Unavailable);
        };

        // Requests straight from a client take part in the app's verdict;
        // health checks (no client) and forwarded ones (whose address is
        // the forwarding node's, not the client's) do not.
        let client = req
            .extensions()
            .get::<skiff_sdk::serve::ClientAddr>()
            .filter(|_| {
                !req.headers()
                    .contains_key(crate::node::router::FORWARDED_BY)
            })
            .map(|c| c.0);
        let exceeded = Arc::new(AtomicBool::new(false));
        let mut req =
            req.map(|b| LimitedBody::new(b, self.config.max_request_body, exceeded.clone()));
        if !req.headers().contains_key(http::header::HOST)
            && req.uri().authority().is_none()
            && let Ok(value) =
                http::HeaderValue::from_str(&format!("{}.{}", app.name, self.config.domain))
        {
            req.headers_mut().insert(http::header::HOST, value);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let set = Arc::new(AtomicU8::new(SET_NONE));
        let set_by_guest = set.clone();
        let resources = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .and_then(|req| {
                let out = store
                    .data_mut()
                    .http()
                    .new_response_outparam_from_callback(move |result| {
                        set_by_guest.store(
                            if result.is_ok() { SET_OK } else { SET_ERR },
                            Ordering::Relaxed,
                        );
                        let _ = tx.send(result);
                    })?;
                Ok((req, out))
            });
        let Ok((wasi_req, out)) = resources else {
            return outcome_response(Outcome::Unavailable);
        };

        let task_app = app.clone();
        let stopped = Arc::new(AtomicBool::new(false));
        let stopped_by_task = stopped.clone();
        let task = self.tasks.spawn(async move {
            let _permit = permit;
            let _demand = demand;
            let timeout = quota.timeout();
            let result = tokio::time::timeout(timeout, async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy.wasi_http_incoming_handler().call_handle(&mut store, wasi_req, out).await
            })
            .await;
            let memory_denied = store.data().limiter.denied();
            task_app.stats.usage.instance_used(store.data().limiter.used());
            // Set before the instance (and the sender of its response body)
            // is dropped, so the body sees it when it ends.
            stopped_by_task.store(!matches!(result, Ok(Ok(()))), Ordering::Release);
            drop(store);
            let outcome = match result {
                Ok(Ok(())) => match set.load(Ordering::Relaxed) {
                    SET_OK => Outcome::Ok,
                    _ => Outcome::GuestError,
                },
                Ok(Err(error)) => {
                    let outcome = if exceeded.load(Ordering::Relaxed) {
                        Outcome::BodyTooLarge
                    } else {
                        classify(&error, memory_denied)
                    };
                    tracing::warn!(app = %task_app.name, reason = outcome.reason(), error = %format!("{error:?}"), "request failed");
                    outcome
                }
                Err(_elapsed) => {
                    tracing::warn!(app = %task_app.name, reason = "timeout", timeout_ms = quota.timeout_ms, "request failed");
                    Outcome::Timeout
                }
            };
            task_app.stats.record(outcome);
            task_app.stats.latency().observe(arrived.elapsed());
            if let Some(client) = client {
                task_app.stats.probation.record(client, outcome);
            }
            outcome
        });

        match rx.await {
            Ok(Ok(response)) => response
                .map(|body| http_body_util::BodyExt::boxed_unsync(GuestBody::new(body, stopped))),
            Ok(Err(_code)) => error_response(Outcome::GuestError, Some(&app.name)),
            Err(_) => {
                let outcome = task.await.unwrap_or(Outcome::Trap);
                error_response(
                    if outcome == Outcome::Ok {
                        Outcome::GuestError
                    } else {
                        outcome
                    },
                    Some(&app.name),
                )
            }
        }
    }

    /// A store for one request of `app`, with every quota applied; its
    /// memory counts in the node's budget, from which `admitted` bytes were
    /// taken for it already.
    pub(crate) fn new_store(&self, app: &App, admitted: u64) -> wasmtime::Result<Store<HostState>> {
        let quota = app.spec.quota;
        let limiter = Limiter::with_budget(quota.memory_bytes, self.budget.clone(), admitted);
        let mut store = Store::new(
            &self.engine,
            HostState::new(
                &app.name,
                &[],
                &app.spec.env,
                &app.spec.capabilities,
                &app.logs,
                &app.stats.denied,
                limiter,
            )?,
        );
        store.limiter(|state| &mut state.limiter);
        let tick = self.config.engine.epoch_tick.as_millis().max(1) as u64;
        store.set_epoch_deadline(quota.timeout_ms.div_ceil(tick) + 1);
        store.epoch_deadline_trap();
        store.set_fuel(quota.fuel)?;
        store.fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL))?;
        Ok(store)
    }
}
