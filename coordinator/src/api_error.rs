//! The coordinator API's errors: one enum, each variant with its HTTP status and a stable code,
//! rendered once as the JSON error body (`{"error": CODE, "message": TEXT}`). Handlers return
//! `Result<_, ApiError>` and use `?`.

use crate::proposals::GovernanceError;
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
    #[error("round {0} was never started: start it with `stroom round {0}`")]
    UnknownRound(String),
    #[error("nothing to release for {0}: no finished run has published figures for it")]
    NothingToRelease(String),
    #[error("{0}")]
    RoundUnfinished(String),
    #[error("no active token with id {0}")]
    UnknownToken(String),
    #[error("no such endpoint")]
    NoRoute,
    #[error("the audit log could not be written: {0}")]
    Audit(String),
    /// A proposed indicator that fails the checks of `stroom policy check`; the problems go in
    /// the body's `problems` list.
    #[error("{} problem(s) in the proposed indicator", .0.len())]
    InvalidIndicator(Vec<String>),
    /// An indicator that was valid when proposed and no longer fits the approved catalog.
    #[error("the proposal no longer fits the catalog: {0}")]
    NoLongerFits(String),
    #[error("proposal {proposal} for '{indicator}' is still pending; wait for its decision")]
    AlreadyProposed { proposal: String, indicator: String },
    /// Approving would make a year of publication rounds cost more than some node's budget.
    #[error("approving it would exceed the budget plan: {0}; nothing was approved")]
    OverBudgetPlan(String),
    #[error("dry runs are off on this coordinator (governance.dry_run_providers = 0)")]
    DryRunUnavailable,
    #[error("the dry run failed: {0}")]
    DryRunFailed(String),
    #[error(
        "reviewer {0} has no registered public key: an admin registers it with `stroom token create --role reviewer --name {0} --public-key HEX`"
    )]
    NoSigningKey(String),
    #[error("{0}")]
    BadSignature(String),
    #[error("no catalog version {0}")]
    UnknownCatalogVersion(u64),
    #[error("{0}")]
    Governance(#[from] GovernanceError),
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
            ApiError::UnknownRound(_) => "unknown_round",
            ApiError::NothingToRelease(_) => "nothing_to_release",
            ApiError::RoundUnfinished(_) => "round_unfinished",
            ApiError::UnknownToken(_) => "unknown_token",
            ApiError::NoRoute => "not_found",
            ApiError::Audit(_) => "audit_failed",
            ApiError::InvalidIndicator(_) | ApiError::NoLongerFits(_) => "invalid_indicator",
            ApiError::AlreadyProposed { .. } => "already_proposed",
            ApiError::OverBudgetPlan(_) => "over_budget_plan",
            ApiError::DryRunUnavailable => "dry_run_unavailable",
            ApiError::DryRunFailed(_) => "dry_run_failed",
            ApiError::NoSigningKey(_) => "no_signing_key",
            ApiError::BadSignature(_) => "bad_signature",
            ApiError::UnknownCatalogVersion(_) => "unknown_catalog_version",
            ApiError::Governance(e) => match e {
                GovernanceError::UnknownProposal(_) => "unknown_proposal",
                GovernanceError::NotPending { .. } => "not_pending",
                GovernanceError::OwnProposal(_) => "own_proposal",
                GovernanceError::AlreadyApproved { .. } => "already_approved",
                GovernanceError::AlreadyInCatalog(_) => "already_in_catalog",
                GovernanceError::Store(_) => "store",
            },
            ApiError::Store(_) => "store",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) | ApiError::BadSignature(_) => StatusCode::BAD_REQUEST,
            ApiError::NoSigningKey(_) => StatusCode::FORBIDDEN,
            ApiError::UnknownIndicator(_)
            | ApiError::UnknownRun
            | ApiError::NotPublished { .. }
            | ApiError::UnknownToken(_)
            | ApiError::UnknownRound(_)
            | ApiError::UnknownCatalogVersion(_)
            | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::InvalidIndicator(_) | ApiError::DryRunFailed(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::NoLongerFits(_)
            | ApiError::AlreadyProposed { .. }
            | ApiError::OverBudgetPlan(_)
            | ApiError::NothingToRelease(_)
            | ApiError::RoundUnfinished(_) => StatusCode::CONFLICT,
            ApiError::DryRunUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Governance(e) => match e {
                GovernanceError::UnknownProposal(_) => StatusCode::NOT_FOUND,
                GovernanceError::NotPending { .. }
                | GovernanceError::AlreadyApproved { .. }
                | GovernanceError::AlreadyInCatalog(_) => StatusCode::CONFLICT,
                GovernanceError::OwnProposal(_) => StatusCode::FORBIDDEN,
                GovernanceError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
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
        let body = ErrorBody {
            error: self.code().to_string(),
            message: self.to_string(),
        };
        // The one error with a list in its body: the problems a proposal must fix.
        if let ApiError::InvalidIndicator(problems) = &self {
            let body = serde_json::json!({
                "error": body.error,
                "message": body.message,
                "problems": problems,
            });
            return (status, Json(body)).into_response();
        }
        (status, Json(body)).into_response()
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
            (
                ApiError::UnknownRound("2024Q3".into()),
                404,
                "unknown_round",
            ),
            (
                ApiError::NothingToRelease("2024Q3".into()),
                409,
                "nothing_to_release",
            ),
            (
                ApiError::RoundUnfinished("x".into()),
                409,
                "round_unfinished",
            ),
            (ApiError::NoRoute, 404, "not_found"),
            (ApiError::Audit("disk".into()), 500, "audit_failed"),
            (ApiError::Store(StoreError::Poisoned), 500, "store"),
            (
                ApiError::InvalidIndicator(vec!["p".into()]),
                422,
                "invalid_indicator",
            ),
            (ApiError::NoLongerFits("x".into()), 409, "invalid_indicator"),
            (
                ApiError::AlreadyProposed {
                    proposal: "p".into(),
                    indicator: "a".into(),
                },
                409,
                "already_proposed",
            ),
            (
                ApiError::OverBudgetPlan("P01".into()),
                409,
                "over_budget_plan",
            ),
            (ApiError::DryRunUnavailable, 503, "dry_run_unavailable"),
            (ApiError::DryRunFailed("x".into()), 422, "dry_run_failed"),
            (ApiError::NoSigningKey("r".into()), 403, "no_signing_key"),
            (ApiError::BadSignature("x".into()), 400, "bad_signature"),
            (
                ApiError::UnknownCatalogVersion(3),
                404,
                "unknown_catalog_version",
            ),
            (
                ApiError::Governance(GovernanceError::UnknownProposal("p".into())),
                404,
                "unknown_proposal",
            ),
            (
                ApiError::Governance(GovernanceError::NotPending {
                    id: "p".into(),
                    status: "approved",
                }),
                409,
                "not_pending",
            ),
            (
                ApiError::Governance(GovernanceError::OwnProposal("r".into())),
                403,
                "own_proposal",
            ),
            (
                ApiError::Governance(GovernanceError::AlreadyApproved {
                    id: "p".into(),
                    reviewer: "r".into(),
                }),
                409,
                "already_approved",
            ),
            (
                ApiError::Governance(GovernanceError::AlreadyInCatalog("a".into())),
                409,
                "already_in_catalog",
            ),
            (ApiError::Internal("x".into()), 500, "internal"),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status().as_u16(), e.code()), (status, code), "{e}");
            assert_eq!(e.into_response().status().as_u16(), status);
        }
    }
}
