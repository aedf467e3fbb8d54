//! Paged lists, as Kubernetes lists page: `?limit=N` (default
//! [`DEFAULT_PAGE`], at most [`MAX_PAGE`]) and an opaque `continue` token
//! from the previous page. The body stays a JSON array; when more items
//! follow, the answer carries the token in `Skiff-Continue` and the next
//! page's URL in `Link: <...>; rel="next"` (RFC 8288).
//!
//! Pages are keyed by name (events by id): every item that exists for the
//! whole walk is returned exactly once, however many are added or deleted
//! meanwhile; items added or deleted during the walk may or may not appear.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Items per page when `limit` is not given: an answer of a few hundred
/// kilobytes at most.
pub const DEFAULT_PAGE: u32 = 500;
/// Most items per page.
pub const MAX_PAGE: u32 = 5_000;
/// The response header carrying the next page's token.
pub const CONTINUE_HEADER: &str = "skiff-continue";

/// `limit` and `continue` of a list request.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Most items in the answer (default 500, at most 5,000).
    pub limit: Option<u32>,
    /// The token from the previous page's `Skiff-Continue` header.
    #[serde(rename = "continue")]
    pub continue_: Option<String>,
}

/// What a token holds: which list, and the last key returned.
#[derive(Debug, Serialize, Deserialize)]
struct Token {
    /// The list ("apps", "nodes", "events").
    l: String,
    /// The last key returned.
    k: String,
}

impl PageQuery {
    /// The page size asked for, bounded.
    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
    }

    /// The key to continue after, from the token; a token that is not one
    /// of `list`'s is a 400 naming the field `continue`.
    pub fn after(&self, list: &str) -> Result<Option<String>, ApiError> {
        let Some(raw) = &self.continue_ else {
            return Ok(None);
        };
        let bad = || ApiError::BadRequest {
            code: "invalid_continue",
            message: format!("not a continue token of this {list} list; start again without one"),
            field: Some("continue".into()),
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|_| bad())?;
        let token: Token = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if token.l != list || token.k.is_empty() {
            return Err(bad());
        }
        Ok(Some(token.k))
    }
}

/// The headers of a page of `list` at `path` whose last key is `last`, when
/// more items follow.
pub fn next_page(list: &str, path: &str, limit: u32, last: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let Some(last) = last else {
        return headers;
    };
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&Token {
            l: list.to_owned(),
            k: last.to_owned(),
        })
        .unwrap_or_default(),
    );
    if let Ok(value) = HeaderValue::from_str(&token) {
        headers.insert(HeaderName::from_static(CONTINUE_HEADER), value);
    }
    let sep = if path.contains('?') { '&' } else { '?' };
    if let Ok(value) = HeaderValue::from_str(&format!(
        "<{path}{sep}limit={limit}&continue={token}>; rel=\"next\""
    )) {
        headers.insert(header::LINK, value);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_list() {
        let headers = next_page("apps", "/v1/apps", 10, Some("web-7"));
        let token = headers[CONTINUE_HEADER].to_str().unwrap().to_owned();
        let q = PageQuery {
            limit: None,
            continue_: Some(token),
        };
        assert_eq!(q.after("apps").unwrap().as_deref(), Some("web-7"));
        let Err(ApiError::BadRequest { field, .. }) = q.after("nodes") else {
            panic!("a token of another list must be refused");
        };
        assert_eq!(field.as_deref(), Some("continue"));
        for junk in ["", "%%%", "bm90IGpzb24", "e30"] {
            let q = PageQuery {
                limit: None,
                continue_: Some(junk.into()),
            };
            assert!(q.after("apps").is_err(), "{junk:?}");
        }
        assert!(next_page("apps", "/v1/apps", 10, None).is_empty());
        assert_eq!(PageQuery::default().limit(), DEFAULT_PAGE);
    }
}
