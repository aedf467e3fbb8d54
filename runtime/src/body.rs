//! Request and response bodies at the ingress: a streaming size limit on
//! what clients send, and the JSON error responses Skiff itself produces.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::quota::Outcome;

/// Response header carrying the machine-readable reason of a failed request.
pub const REASON_HEADER: &str = "x-skiff-reason";

/// A request body that fails once more than `limit` bytes have streamed
/// through it, and records that it did (so the failure can be answered with
/// 413 rather than blamed on the guest). Nothing is buffered.
pub struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    exceeded: Arc<AtomicBool>,
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`; `exceeded` is set if the limit is crossed.
    pub fn new(inner: B, limit: u64, exceeded: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            remaining: limit,
            exceeded,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(None),
                        )));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A guest's response body that ends with an error, not a clean end, when
/// the guest was stopped mid-body (a quota, a trap): wasmtime ends the body
/// of a dropped instance as if it were complete, and a client must be able
/// to tell a cut response from a whole one (the connection is then closed
/// without HTTP/1.1's last chunk, or the HTTP/2 stream is reset).
pub struct GuestBody<B> {
    inner: B,
    stopped: Arc<AtomicBool>,
}

impl<B> GuestBody<B> {
    /// Wraps `inner`; `stopped` is set (before the instance is dropped)
    /// when the guest did not return normally.
    pub fn new(inner: B, stopped: Arc<AtomicBool>) -> Self {
        Self { inner, stopped }
    }
}

impl<B> Body for GuestBody<B>
where
    B: Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Unpin,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) if self.stopped.load(Ordering::Acquire) => {
                Poll::Ready(Some(Err(wasmtime_wasi_http::Error::InternalError(Some(
                    "the app was stopped before its response was complete".into(),
                )))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        // Never a clean end for a stopped guest: the server must poll and
        // see the error.
        !self.stopped.load(Ordering::Acquire) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The JSON error response for a failed request: status and reason header
/// from `outcome`, body `{"error":{"code","message","app"}}`.
pub fn error_response(outcome: Outcome, app: Option<&str>) -> Response<HyperOutgoingBody> {
    let mut response = json_error(outcome.status(), outcome.reason(), outcome.message(), app);
    if matches!(
        outcome,
        Outcome::Overloaded
            | Outcome::NoReplica
            | Outcome::MemoryPressure
            | Outcome::ActivationTimeout
    ) {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// `400` with reason `duplicate-host`: a request with more than one `Host`
/// header names no single app (RFC 9112 §3.2).
pub fn duplicate_host() -> Response<HyperOutgoingBody> {
    json_error(
        http::StatusCode::BAD_REQUEST,
        "duplicate-host",
        "the request has more than one Host header",
        None,
    )
}

fn json_error(
    status: http::StatusCode,
    reason: &'static str,
    message: &str,
    app: Option<&str>,
) -> Response<HyperOutgoingBody> {
    let body = serde_json::json!({
        "error": { "code": reason, "message": message, "app": app }
    });
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(REASON_HEADER, HeaderValue::from_static(reason));
    response
}
