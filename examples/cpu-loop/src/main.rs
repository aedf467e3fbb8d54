//! `cpu-loop`: burns CPU for `?n=<iterations>` rounds (default 1,000,000,000)
//! and answers the checksum. Used to show that the fuel quota stops a guest
//! that computes too long, and that a guest within budget is left alone.

use example_util::query_u64;
use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let n = query_u64(request.uri().query(), "n").unwrap_or(1_000_000_000);
    let mut acc: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..n {
        // A dependency chain the optimiser cannot fold away.
        acc = std::hint::black_box(acc.rotate_left(5) ^ i).wrapping_mul(31);
    }
    Ok(Response::new(format!("done n={n} acc={acc}\n").into()))
}
