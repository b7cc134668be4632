//! Operations: node budgets, health, metrics, the OpenAPI document, and the fallback.

use super::*;

/// Each node's own report of its privacy budget, asked concurrently.
pub(super) async fn node_budgets(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, ANY_ROLE)?;
    let nodes: Vec<serde_json::Value> = state
        .runner
        .refresh_budgets()
        .await
        .into_iter()
        .map(|(node, answer)| match answer {
            Ok(b) => serde_json::json!({ "node": node, "budget": b }),
            Err(e) => serde_json::json!({ "node": node, "error": e }),
        })
        .collect();
    Ok(Json(serde_json::json!({ "nodes": nodes })).into_response())
}

/// What a year of rounds over the approved catalog costs each node, against its reported budget.
pub(super) async fn budget_plan(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, ANY_ROLE)?;
    state.runner.refresh_budgets().await;
    let budgets = state.runner.known_budgets(std::time::Duration::ZERO).await;
    let catalog = state.runner.catalog();
    let nodes = crate::budget_plan::plan(&catalog, &state.runner.targets, &budgets);
    Ok(Json(serde_json::json!({
        "rounds_per_year": crate::budget_plan::ROUNDS_PER_YEAR,
        "nodes": nodes,
    }))
    .into_response())
}

/// Browsers ask every site for /favicon.ico; "no content" answers without a console error.
pub(super) async fn no_icon() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::CACHE_CONTROL, "public, max-age=86400")],
    )
        .into_response()
}

pub(super) async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let runner = state.runner.clone();
    let by_status = tokio::task::spawn_blocking(move || runner.store.count_by_status())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let c = &state.runner.counters;
    let mut text = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            text.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    metric(
        "stroom_coordinator_runs",
        "gauge",
        "Runs in the run store, by status.",
        by_status
            .into_iter()
            .map(|(s, n)| (format!("{{status=\"{s}\"}}"), n))
            .collect(),
    );
    metric(
        "stroom_coordinator_node_requests_total",
        "counter",
        "Evaluate requests sent to nodes.",
        vec![(String::new(), c.node_requests.load(Ordering::Relaxed))],
    );
    metric(
        "stroom_coordinator_node_failures_total",
        "counter",
        "Node requests that failed after retries.",
        vec![(String::new(), c.node_failures.load(Ordering::Relaxed))],
    );
    text.push_str(&state.http.render("stroom_coordinator", ""));
    text.push_str(&state.runner.render_node_status());
    let certs: Vec<(&str, Option<i64>)> = state
        .certs
        .iter()
        .map(|(name, path)| (*name, pem_not_after(path)))
        .collect();
    text.push_str(&policies::ops::render_cert_expiry(
        "stroom_coordinator",
        "",
        &certs,
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Expiry (Unix seconds) of the first certificate in a PEM file.
pub(super) fn pem_not_after(path: &std::path::Path) -> Option<i64> {
    let first = CertificateDer::pem_file_iter(path).ok()?.next()?.ok()?;
    policies::ops::certificate_not_after(first.as_ref())
}

pub(super) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}

pub(super) async fn not_found() -> ApiError {
    ApiError::NoRoute
}
