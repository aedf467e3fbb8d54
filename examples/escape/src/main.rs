//! `escape`: a guest built to break out of its sandbox. Each route tries
//! one way out and answers `allowed: …` or `denied: …` (status 200 either
//! way, so tests read what the host decided):
//!
//! - `/fetch?url=http://127.0.0.1:7070/v1/apps`: an outbound HTTP request
//!   (the controller's API, the node's own ingress, anything).
//! - `/connect?addr=127.0.0.1:7070`: a raw TCP connection (`wasi:sockets`).
//! - `/read?path=/etc/passwd`: a file of the node.
//! - `/ls?path=/`: a directory listing.
//! - `/write?path=/static/index.html`: overwriting a file.
//! - `/env`: every environment variable it can see.

use wstd::http::{Body, Client, Error, Request, Response};

fn query<'a>(request: &'a Request<Body>, key: &str) -> Option<&'a str> {
    request
        .uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn fetch(url: &str) -> String {
    let request = match Request::get(url).body(Body::empty()) {
        Ok(r) => r,
        Err(e) => return format!("denied: bad url: {e}"),
    };
    match Client::new().send(request).await {
        Ok(response) => format!("allowed: status {}", response.status().as_u16()),
        Err(e) => format!("denied: {e:?}"),
    }
}

async fn connect(addr: &str) -> String {
    match wstd::net::TcpStream::connect(addr).await {
        Ok(_) => format!("allowed: connected to {addr}"),
        Err(e) => format!("denied: {e}"),
    }
}

fn read(path: &str) -> String {
    match std::fs::read(path) {
        Ok(bytes) => format!("allowed: {}", String::from_utf8_lossy(&bytes)),
        Err(e) => format!("denied: {e}"),
    }
}

fn write(path: &str) -> String {
    match std::fs::write(path, b"pwned") {
        Ok(()) => format!("allowed: wrote {path}"),
        Err(e) => format!("denied: {e}"),
    }
}

fn list(path: &str) -> String {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            format!("allowed: {}", names.join(","))
        }
        Err(e) => format!("denied: {e}"),
    }
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let answer = match request.uri().path() {
        "/fetch" => fetch(query(&request, "url").unwrap_or("")).await,
        "/connect" => connect(query(&request, "addr").unwrap_or("")).await,
        "/read" => read(query(&request, "path").unwrap_or("/etc/passwd")),
        "/ls" => list(query(&request, "path").unwrap_or("/")),
        "/write" => write(query(&request, "path").unwrap_or("/pwned")),
        "/env" => {
            let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            format!("allowed: {}", vars.join(","))
        }
        _ => "routes: /fetch?url= /connect?addr= /read?path= /ls?path= /env".to_owned(),
    };
    println!("escape {} -> {answer}", request.uri());
    Ok(Response::new(format!("{answer}\n").into()))
}
