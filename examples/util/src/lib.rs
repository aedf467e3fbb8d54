//! Helpers shared by the example guests.

/// The value of `key` in a URL query string (`a=1&b=2`), parsed as a `u64`.
pub fn query_u64(query: Option<&str>, key: &str) -> Option<u64> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}
