//! Host-based routing: an app named `hello` is reached at `hello.<domain>`
//! (default domain `localhost`, so `curl http://hello.localhost:8080/` works
//! without any DNS set-up on most systems).

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
    }
}
