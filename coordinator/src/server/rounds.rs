//! Publication rounds: a researcher starts (or resumes) a quarter's round, anyone with a token
//! follows it, reviewers release it from embargo.

use super::*;
use crate::release::{ReleaseError, ReleaseOutcome};
use policies::period::Quarter;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoundRequest {
    quarter: String,
}

fn parse_quarter(text: &str) -> Result<Quarter, ApiError> {
    text.parse::<Quarter>().map_err(|e| {
        ApiError::BadRequest(format!(
            "a round is one quarter, e.g. 2024Q3 (annual figures come with the fourth quarter): '{text}': {e}"
        ))
    })
}

pub(super) async fn start_round(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let who = authorize(&state, &headers, &[Role::Researcher])?.name;
    let request: RoundRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!("body must be {{\"quarter\": \"2024Q3\"}}: {e}"))
    })?;
    let quarter = parse_quarter(&request.quarter)?;
    let runner = state.runner.clone();
    let (view, to_execute, skipped) =
        tokio::task::spawn_blocking(move || runner.start_round(quarter, &who))
            .await
            .map_err(ApiError::join)?
            .map_err(runs::run_error)?;
    let started = to_execute.len();
    let runner = state.runner.clone();
    tokio::spawn(runner.execute_round(to_execute));
    let mut body = serde_json::to_value(&view).unwrap_or_default();
    body["started"] = serde_json::json!(started);
    body["skipped"] = serde_json::to_value(&skipped).unwrap_or_default();
    body["url"] = serde_json::json!(format!("/v1/rounds/{}", view.quarter));
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

pub(super) async fn get_round(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(quarter): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, ANY_ROLE)?;
    let quarter = parse_quarter(&quarter)?;
    let runner = state.runner.clone();
    let view = tokio::task::spawn_blocking(move || runner.store.round(quarter))
        .await
        .map_err(ApiError::join)??
        .ok_or_else(|| ApiError::UnknownRound(quarter.to_string()))?;
    Ok(Json(view).into_response())
}

/// A reviewer releases a round's current records; the last of `publication.required_releases`
/// reviewers makes them public. Every release is audited, refused ones too.
pub(super) async fn release_round(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(quarter): Path<String>,
) -> Result<Response, ApiError> {
    let reviewer = authorize(&state, &headers, &[Role::Reviewer])?.name;
    let quarter = parse_quarter(&quarter)?;
    let runner = state.runner.clone();
    let who = reviewer.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        runner
            .store
            .release(quarter, &who, runner.required_releases)
    })
    .await
    .map_err(ApiError::join)?;
    let (digest, audit_outcome) = match &outcome {
        Ok(ReleaseOutcome::Released(r)) => (Some(r.digest.clone()), "released".to_string()),
        Ok(ReleaseOutcome::Unchanged(r)) => (Some(r.digest.clone()), "unchanged".to_string()),
        Ok(ReleaseOutcome::AwaitingReleases {
            digest,
            released_by,
            required,
            ..
        }) => (
            Some(digest.clone()),
            format!("awaiting releases ({} of {required})", released_by.len()),
        ),
        Err(e) => (None, format!("refused: {e}")),
    };
    state
        .runner
        .audit
        .append(policies::audit::AuditEvent {
            actor: reviewer,
            action: "round.release".into(),
            parameters: serde_json::json!({ "quarter": quarter.to_string() }),
            answer_digest: digest,
            outcome: audit_outcome,
            ..Default::default()
        })
        .map_err(|e| ApiError::Audit(e.to_string()))?;
    let outcome = outcome.map_err(|e| match e {
        ReleaseError::NothingToRelease(q) => ApiError::NothingToRelease(q),
        e @ ReleaseError::RoundUnfinished { .. } => ApiError::RoundUnfinished(e.to_string()),
        ReleaseError::Store(e) => ApiError::Store(e),
    })?;
    let status = match outcome {
        ReleaseOutcome::Released(_) | ReleaseOutcome::Unchanged(_) => StatusCode::OK,
        ReleaseOutcome::AwaitingReleases { .. } => StatusCode::ACCEPTED,
    };
    Ok((status, Json(outcome)).into_response())
}
