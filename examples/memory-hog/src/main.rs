//! `memory-hog`: allocates and touches `?mb=<MiB>` of memory (default 1024),
//! holds it for `?ms=<milliseconds>` (default 0) and answers how much it
//! held. Used to show that the memory quota denies a guest that grows past
//! its limit, and leaves a guest below it alone; and that a node's memory
//! budget turns new requests away while instances hold it.

use example_util::query_u64;
use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let mb = query_u64(request.uri().query(), "mb").unwrap_or(1024) as usize;
    let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(mb);
    for i in 0..mb {
        // Touch every page so the memory is really committed.
        chunks.push(vec![(i % 251) as u8; 1 << 20]);
    }
    let ms = query_u64(request.uri().query(), "ms").unwrap_or(0);
    if ms > 0 {
        wstd::task::sleep(wstd::time::Duration::from_millis(ms)).await;
    }
    let total: usize = chunks.iter().map(Vec::len).sum();
    Ok(Response::new(format!("held {} MiB\n", total >> 20).into()))
}
