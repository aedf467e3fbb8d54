//! `sleep`: waits `?ms=<milliseconds>` (default 60,000) without using CPU, then
//! answers. Used to show that the wall-clock timeout also ends a guest that is
//! waiting rather than running.

use example_util::query_u64;
use wstd::http::{Body, Error, Request, Response};
use wstd::time::Duration;

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let ms = query_u64(request.uri().query(), "ms").unwrap_or(60_000);
    wstd::task::sleep(Duration::from_millis(ms)).await;
    Ok(Response::new(format!("slept {ms} ms\n").into()))
}
