//! `hello`: the smallest useful Skiff app. `GET /` answers a greeting that
//! names the app's version, taken from the `VERSION` environment variable that
//! the app spec (or `skiff serve --env`) sets; `GET /healthz` answers `ok`.

use wstd::http::{Body, Error, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    match request.uri().path() {
        "/" => {
            let version = std::env::var("VERSION").unwrap_or_else(|_| "unversioned".to_owned());
            Ok(Response::new(format!("Hello from Skiff! version={version}\n").into()))
        }
        "/healthz" => Ok(Response::new("ok\n".into())),
        _ => Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body("not found\n".into())?),
    }
}
