//! `greet`: an HTTP app whose greeting comes from another component. It
//! imports `example:greeting/greeter`, which Skiff's host does not provide;
//! its skiff.toml maps that interface to the `greeter` example in
//! `[dependencies]`, and `skiff build` composes the two into one component
//! that imports only wasi:* (recording greeter's digest in skiff.lock).
//!
//! `GET /?name=NAME` answers the greeter's greeting for NAME.

use wstd::http::{Body, Error, Request, Response};

wit_bindgen::generate!({ path: "../greeter/wit", world: "consumer" });

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let name = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("name=")))
        .filter(|n| !n.is_empty())
        .unwrap_or("world");
    let greeting = example::greeting::greeter::greet(name);
    Ok(Response::new(format!("{greeting}\n").into()))
}
