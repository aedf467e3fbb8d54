//! `abuse`: a guest that misbehaves on request, for the abuse battery.
//!
//! - `/recurse`: unbounded recursion (a stack overflow).
//! - `/big?mb=1024`: a response body of that many MiB, streamed.
//! - `/ignore-body`: answers at once without reading the request body.
//! - `/stall`: reads nothing, answers nothing, and waits a day.
//! - anything else: `ok`.

use example_util::query_u64;
use futures_lite::StreamExt as _;
use wstd::http::{Body, Error, Request, Response};

#[inline(never)]
fn recurse(depth: u64, pad: &mut [u8; 256]) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    pad[(depth % 256) as usize] = depth as u8;
    // Not a tail call: the frame stays.
    recurse(depth + 1, &mut std::hint::black_box(*pad)) + u64::from(pad[0])
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    match request.uri().path() {
        "/recurse" => {
            let n = recurse(0, &mut [0; 256]);
            Ok(Response::new(format!("{n}\n").into()))
        }
        "/big" => {
            let mb = query_u64(request.uri().query(), "mb").unwrap_or(1024);
            let chunk = vec![b'x'; 64 << 10];
            let chunks = mb * 16;
            let stream = futures_lite::stream::repeat(chunk).take(chunks as usize);
            Ok(Response::new(Body::from_stream(stream)))
        }
        "/ignore-body" => Ok(Response::new("ignored\n".into())),
        "/stall" => {
            wstd::task::sleep(wstd::time::Duration::from_secs(24 * 3600)).await;
            Ok(Response::new(().into()))
        }
        _ => Ok(Response::new("ok\n".into())),
    }
}
