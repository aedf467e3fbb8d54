//! The dashboard at `/ui`: a page shell and its script and style sheet,
//! embedded in the binary at compile time (no CDN, no JavaScript toolchain;
//! it works on an offline edge network).
//!
//! The pages are drawn in the browser from the same JSON API the CLI uses,
//! with the admin token the operator signs in with. The token lives in the
//! tab's `sessionStorage` and travels only in the `Authorization` header of
//! the script's own requests: never in a URL, never in a cookie. A page
//! another site opens cannot make the browser send it, so every action is
//! safe from cross-site request forgery without a CSRF token, and the API
//! enforces the same auth as for the CLI.
//!
//! The shell itself holds no data. The routes of an app or a node answer
//! 404 when the controller's picture has no such name, so a mistyped URL is
//! a "not found" page (a name's existence is all that leaks without the
//! token; its content needs the token).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::AppState;

const SHELL: &str = include_str!("assets/shell.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// What the browser may load and send from a dashboard page: only this
/// controller's own script, style and API; no framing (clickjacking).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes, under `/ui`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/", get(overview))
        .route("/ui/events", get(events))
        .route("/ui/apps/{name}", get(app))
        .route("/ui/nodes/{name}", get(node))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/{*rest}", get(unknown))
}

/// The shell for `page` about `name`, with `status`.
fn shell(status: StatusCode, page: &str, name: &str) -> Response {
    let body = SHELL
        .replace("{{page}}", page)
        .replace("{{name}}", &escape(name));
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `text` safe inside HTML text and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn overview() -> Response {
    shell(StatusCode::OK, "overview", "")
}

async fn events() -> Response {
    shell(StatusCode::OK, "events", "")
}

async fn app(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    known_or_404(&state, "app", &name, |p| p.apps.contains_key(&name)).await
}

async fn node(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    known_or_404(&state, "node", &name, |p| p.nodes.contains_key(&name)).await
}

/// The `page` shell when `known` finds `name` in the controller's picture
/// (once it holds this controller's own writes), else its 404 page.
async fn known_or_404(
    state: &AppState,
    page: &str,
    name: &str,
    known: impl Fn(&crate::informer::Picture) -> bool,
) -> Response {
    state
        .informer
        .caught_up(std::time::Duration::from_secs(1))
        .await;
    if known(&state.informer.read()) {
        shell(StatusCode::OK, page, name)
    } else {
        shell(StatusCode::NOT_FOUND, &format!("missing-{page}"), name)
    }
}

async fn unknown(Path(rest): Path<String>) -> Response {
    shell(
        StatusCode::NOT_FOUND,
        "missing-page",
        &format!("/ui/{rest}"),
    )
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Assets change with the binary: revalidate rather than keep
            // an old script against a new API.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_into_the_shell() {
        assert_eq!(
            escape(r#"<script>"x"&'y'"#),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;"
        );
        let page = shell(StatusCode::NOT_FOUND, "missing-app", "<b>");
        assert_eq!(page.status(), StatusCode::NOT_FOUND);
        assert!(
            page.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
    }
}
