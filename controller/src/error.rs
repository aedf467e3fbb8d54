//! The API error type: the only place that picks HTTP statuses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use skiff_sdk::api::{ErrorBody, ErrorDetail};
use skiff_sdk::capability::CapabilityDiff;

use crate::store::StoreError;

/// An API failure. Client errors carry a code, a message and the field at
/// fault; server errors are logged with their cause and answered with a
/// generic message, so internals never reach clients.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not well-formed.
    #[error("{message}")]
    BadRequest {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: String,
        /// Field at fault.
        field: Option<String>,
    },
    /// 401: no credential, or one the controller does not know.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a known credential that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: a version precondition or uniqueness conflict.
    #[error("{0}")]
    Conflict(String),
    /// 409: a uniqueness conflict on one field (e.g. a live node's name).
    #[error("{message}")]
    Taken {
        /// The field whose value is taken.
        field: &'static str,
        /// Explanation.
        message: String,
    },
    /// 409: the spec grants more than the running revision and the request
    /// did not approve it.
    #[error(
        "the new spec widens the app's capabilities; review the difference and apply again with approve_capabilities=true (skiff deploy --approve-capabilities)"
    )]
    CapabilitiesNotApproved(CapabilityDiff),
    /// 503: the controller cannot answer yet (it is still reading its
    /// state).
    #[error("{0}")]
    Unavailable(String),
    /// 502: a node the request needed did not answer.
    #[error("{0}")]
    NodeUnreachable(String),
    /// 413: the body is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// 507: the artifact store has no room for the upload.
    #[error("{0}")]
    StoreFull(String),
    /// 415: the body has the wrong content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid.
    #[error("{message}")]
    Invalid {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: String,
        /// Field at fault.
        field: Option<String>,
    },
    /// 500: logged, never detailed to the client.
    #[error("internal error while {doing}")]
    Internal {
        /// What the controller was doing.
        doing: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ApiError {
    /// 422 with a field.
    pub fn invalid(code: &'static str, field: &str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            code,
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    /// Maps a store error met while `doing` something.
    pub fn store(doing: &'static str) -> impl FnOnce(StoreError) -> ApiError {
        move |e| match e {
            StoreError::NotFound { kind, name } => {
                ApiError::NotFound(format!("{kind} {name:?} not found"))
            }
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::CapabilitiesNotApproved(diff) => ApiError::CapabilitiesNotApproved(*diff),
            full @ StoreError::Full { .. } => ApiError::StoreFull(format!(
                "{full}; remove artifacts no app uses (DELETE /v1/artifacts/{{digest}}) or raise --max-artifact-store"
            )),
            taken @ StoreError::NameTaken(_) => ApiError::Taken {
                field: "name",
                message: taken.to_string(),
            },
            other => ApiError::Internal {
                doing,
                source: Box::new(other),
            },
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<String>) {
        match self {
            ApiError::BadRequest { code, field, .. } => {
                (StatusCode::BAD_REQUEST, code, field.clone())
            }
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", None),
            ApiError::Taken { field, .. } => {
                (StatusCode::CONFLICT, "taken", Some((*field).to_owned()))
            }
            ApiError::CapabilitiesNotApproved(_) => (
                StatusCode::CONFLICT,
                "capabilities_not_approved",
                Some("approve_capabilities".to_owned()),
            ),
            ApiError::NodeUnreachable(_) => (StatusCode::BAD_GATEWAY, "node_unreachable", None),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None),
            ApiError::StoreFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "store_full", None),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                None,
            ),
            ApiError::Invalid { code, field, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, code, field.clone())
            }
            ApiError::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, field) = self.parts();
        let message = if let ApiError::Internal { doing, source } = &self {
            tracing::error!(doing, error = %crate::error_chain(source.as_ref()), "API request failed");
            "internal error; see the controller log".to_owned()
        } else {
            self.to_string()
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: code.to_owned(),
                    message,
                    field,
                    capabilities: match self {
                        ApiError::CapabilitiesNotApproved(diff) => Some(Box::new(diff)),
                        _ => None,
                    },
                },
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
