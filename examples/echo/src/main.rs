//! `echo`: streams the request body back as the response body, chunk by chunk
//! as it arrives (nothing is buffered whole), and prints one line per request
//! to stdout. Used to show streaming bodies and guest output capture.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    println!("echo: {} {}", request.method(), request.uri().path());
    let (_parts, body) = request.into_parts();
    Ok(Response::new(body))
}
