//! The coordinator API's errors: one enum, each variant with its HTTP status and a stable code,
//! rendered once as the JSON error body (`{"error": CODE, "message": TEXT}`). Handlers return
//! `Result<_, ApiError>` and use `?`.

use crate::store::StoreError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use policies::wire::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No usable bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// A token that is unknown, revoked, expired or of the wrong role.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("'{0}' is not in the approved catalog")]
    UnknownIndicator(String),
    #[error("no run with this id")]
    UnknownRun,
    #[error("{indicator} has no published figures for {period}")]
    NotPublished { indicator: String, period: String },
    #[error("no active token with id {0}")]
    UnknownToken(String),
    #[error("no such endpoint")]
    NoRoute,
    #[error("the audit log could not be written: {0}")]
    Audit(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The stable code clients and tests match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::UnknownIndicator(_) => "unknown_indicator",
            ApiError::UnknownRun => "unknown_run",
            ApiError::NotPublished { .. } => "not_published",
            ApiError::UnknownToken(_) => "unknown_token",
            ApiError::NoRoute => "not_found",
            ApiError::Audit(_) => "audit_failed",
            ApiError::Store(_) => "store",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownIndicator(_)
            | ApiError::UnknownRun
            | ApiError::NotPublished { .. }
            | ApiError::UnknownToken(_)
            | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::Audit(_) | ApiError::Store(_) | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// A blocking task that did not finish (it panicked or was cancelled).
    pub fn join(e: tokio::task::JoinError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "request failed");
        }
        (
            status,
            Json(ErrorBody {
                error: self.code().to_string(),
                message: self.to_string(),
            }),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_renders_its_status_and_code() {
        let cases = [
            (ApiError::Unauthorized("x".into()), 401, "unauthorized"),
            (ApiError::Forbidden("x".into()), 403, "forbidden"),
            (ApiError::BadRequest("x".into()), 400, "bad_request"),
            (
                ApiError::UnknownIndicator("a.b".into()),
                404,
                "unknown_indicator",
            ),
            (ApiError::UnknownRun, 404, "unknown_run"),
            (
                ApiError::NotPublished {
                    indicator: "a".into(),
                    period: "2024Q1".into(),
                },
                404,
                "not_published",
            ),
            (ApiError::UnknownToken("t".into()), 404, "unknown_token"),
            (ApiError::NoRoute, 404, "not_found"),
            (ApiError::Audit("disk".into()), 500, "audit_failed"),
            (ApiError::Store(StoreError::Poisoned), 500, "store"),
            (ApiError::Internal("x".into()), 500, "internal"),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status().as_u16(), e.code()), (status, code), "{e}");
            assert_eq!(e.into_response().status().as_u16(), status);
        }
    }
}
