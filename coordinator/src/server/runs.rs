//! Runs: a researcher starts one (`POST /v1/runs`) and follows it (`GET /v1/runs/{id}`).

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunRequest {
    indicator: String,
    period: String,
}

pub(super) async fn create_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let who = authorize(&state, &headers, &[Role::Researcher])?.name;
    let request: RunRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "body must be {{\"indicator\": \"…\", \"period\": \"2024Q1[:2024Q4]\"}}: {e}"
        ))
    })?;
    let runner = state.runner.clone();
    let submitted = {
        let r = runner.clone();
        tokio::task::spawn_blocking(move || r.submit(&request.indicator, &request.period, &who))
            .await
    };
    let id = submitted.map_err(ApiError::join)?.map_err(run_error)?;
    let run_id = id.clone();
    tokio::spawn(async move { runner.execute(&run_id).await });
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "id": id,
            "status": RunStatus::Pending,
            "url": format!("/v1/runs/{id}"),
        })),
    )
        .into_response())
}

/// A run that cannot be submitted, as the API reports it.
pub(super) fn run_error(e: RunError) -> ApiError {
    match e {
        RunError::UnknownIndicator(id) => ApiError::UnknownIndicator(id),
        e @ (RunError::BadPeriod { .. } | RunError::NoNodes(_) | RunError::NoReference(_)) => {
            ApiError::BadRequest(e.to_string())
        }
        RunError::Store(e) => ApiError::Store(e),
        e @ (RunError::Node(_)
        | RunError::Audit(_)
        | RunError::Catalog(_)
        | RunError::Secure(_)) => ApiError::Internal(e.to_string()),
    }
}

pub(super) async fn get_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, ANY_ROLE)?;
    let runner = state.runner.clone();
    let (run, records) = tokio::task::spawn_blocking(move || runner.store.run(&id))
        .await
        .map_err(ApiError::join)??
        .ok_or(ApiError::UnknownRun)?;
    let mut body = serde_json::to_value(&run).unwrap_or_default();
    if run.status.is_finished() {
        body["results"] = serde_json::to_value(&records).unwrap_or_default();
    }
    Ok(Json(body).into_response())
}
