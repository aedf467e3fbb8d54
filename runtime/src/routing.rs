//! Host-based routing: an app named `hello` is reached at `hello.<domain>`
//! (default domain `localhost`, so `curl http://hello.localhost:8080/` works
//! without any DNS set-up on most systems).

use std::borrow::Cow;

/// A request's host: its URI's authority (HTTP/2, absolute form) or its one
/// `Host` header. `Err(())` when it has more than one `Host` header, which
/// RFC 9112 §3.2 says to answer with 400.
#[allow(clippy::result_unit_err)]
pub fn request_host<B>(req: &http::Request<B>) -> Result<Option<&str>, ()> {
    let mut headers = req.headers().get_all(http::header::HOST).iter();
    let header = headers.next();
    if headers.next().is_some() {
        return Err(());
    }
    Ok(req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| header.and_then(|h| h.to_str().ok())))
}

/// The app name (lowercase) addressed by a `Host` value under `domain`.
pub fn app_name_for_host<'a>(host: &'a str, domain: &str) -> Option<Cow<'a, str>> {
    let label = app_for_host(host, domain)?;
    Some(if label.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(label.to_ascii_lowercase())
    } else {
        Cow::Borrowed(label)
    })
}

/// A request's host in the one form hosts are compared in: no port, no
/// trailing dot, lowercase ([`skiff_sdk::api::normalize_host`]).
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    skiff_sdk::api::normalize_host(strip_port(host))
}

/// The app name addressed by a `Host` value under `domain`, if any: the
/// single DNS label in front of `.<domain>`, with any port and a trailing dot
/// ignored, compared case-insensitively.
pub fn app_for_host<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let host = strip_port(host).trim_end_matches('.');
    let dot = host.len().checked_sub(domain.len() + 1)?;
    let (label, rest) = host.split_at(dot);
    let suffix_ok =
        rest.as_bytes().first() == Some(&b'.') && rest[1..].eq_ignore_ascii_case(domain);
    (suffix_ok && !label.is_empty() && !label.contains('.')).then_some(label)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal never names an app.
        return host;
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_single_labels_under_the_domain() {
        assert_eq!(app_for_host("hello.localhost", "localhost"), Some("hello"));
        assert_eq!(
            app_for_host("hello.localhost:8080", "localhost"),
            Some("hello")
        );
        assert_eq!(app_for_host("hello.LocalHost.", "localhost"), Some("hello"));
        assert_eq!(
            app_for_host("api.apps.example.com", "apps.example.com"),
            Some("api")
        );
        assert_eq!(app_for_host("localhost:8080", "localhost"), None);
        assert_eq!(app_for_host("a.b.localhost", "localhost"), None);
        assert_eq!(app_for_host(".localhost", "localhost"), None);
        assert_eq!(app_for_host("hellolocalhost", "localhost"), None);
        assert_eq!(app_for_host("127.0.0.1:80", "localhost"), None);
        assert_eq!(app_for_host("[::1]:80", "localhost"), None);
        assert_eq!(
            app_name_for_host("HeLLo.LOCALHOST.:80", "localhost").as_deref(),
            Some("hello")
        );
        assert_eq!(normalize_host("WWW.Example.COM.:8080"), "www.example.com");
        assert_eq!(normalize_host("www.example.com."), "www.example.com");
    }

    #[test]
    fn two_host_headers_are_refused() {
        let one = http::Request::get("/")
            .header("host", "a.localhost")
            .body(())
            .unwrap();
        assert_eq!(request_host(&one), Ok(Some("a.localhost")));
        let two = http::Request::get("/")
            .header("host", "a.localhost")
            .header("host", "b.localhost")
            .body(())
            .unwrap();
        assert_eq!(request_host(&two), Err(()));
    }
}
