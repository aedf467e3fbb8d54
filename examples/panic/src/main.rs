//! `panic`: panics on every request except `GET /ok`. Used to show that a
//! guest trap ends only its own request, with a 500 and a reason.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    if request.uri().path() == "/ok" {
        return Ok(Response::new("fine\n".into()));
    }
    eprintln!("panic app: about to panic on {}", request.uri().path());
    panic!("the panic example always panics");
}
