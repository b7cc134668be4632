//! Publication: the published indicators (JSON and CSV), reviewers' interpretations and the
//! public dashboard.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InterpretationBody {
    nl: Option<String>,
    en: Option<String>,
}

/// Longest interpretation text accepted, per language.
pub(super) const MAX_INTERPRETATION_CHARS: usize = 4000;

/// A reviewer attaches (or replaces) the interpretation of a published indicator and quarter.
pub(super) async fn put_interpretation(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((indicator, period)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, &[Role::Reviewer])?;
    let text: InterpretationBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "body must be {{\"nl\": \"…\", \"en\": \"…\"}} (at least one): {e}"
        ))
    })?;
    let clean = |t: Option<String>| t.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let (nl, en) = (clean(text.nl), clean(text.en));
    if nl.is_none() && en.is_none() {
        return Err(ApiError::BadRequest(
            "give the interpretation in Dutch (nl), English (en) or both".into(),
        ));
    }
    if [&nl, &en].iter().any(|t| {
        t.as_ref()
            .is_some_and(|s| s.chars().count() > MAX_INTERPRETATION_CHARS)
    }) {
        return Err(ApiError::BadRequest(format!(
            "an interpretation may be at most {MAX_INTERPRETATION_CHARS} characters"
        )));
    }
    if state.runner.catalog().get(&indicator).is_none() {
        return Err(ApiError::UnknownIndicator(indicator));
    }
    if !state.runner.store.is_published(&indicator, &period)? {
        return Err(ApiError::NotPublished { indicator, period });
    }
    let interpretation = crate::store::Interpretation {
        indicator,
        period,
        nl,
        en,
        reviewer: caller.name.clone(),
        updated_at: state.runner.store.now(),
    };
    state
        .runner
        .audit
        .append(policies::audit::AuditEvent {
            actor: caller.name,
            action: "interpretation.set".into(),
            indicator: Some(interpretation.indicator.clone()),
            parameters: serde_json::json!({ "period": interpretation.period }),
            answer_digest: Some(policies::audit::digest(
                serde_json::to_string(&interpretation)
                    .unwrap_or_default()
                    .as_bytes(),
            )),
            outcome: "stored".into(),
            ..Default::default()
        })
        .map_err(|e| ApiError::Audit(e.to_string()))?;
    state.runner.store.set_interpretation(&interpretation)?;
    Ok(Json(interpretation).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    format: Option<String>,
    indicator: Option<String>,
}

pub const CSV_HEADER: &str = "indicator,period,group,estimate,ci_low,ci_high,suppressed,providers_reporting,providers_total,complete,rho\n";

pub(super) fn csv_field(x: Option<f64>) -> String {
    x.map(|v| v.to_string()).unwrap_or_default()
}

pub fn published_csv(records: &[Published]) -> String {
    let mut csv = String::from(CSV_HEADER);
    for r in records {
        let group = serde_json::to_string(&r.group)
            .unwrap_or_default()
            .replace('"', "\"\"");
        csv.push_str(&format!(
            "{},{},\"{}\",{},{},{},{},{},{},{},{}\n",
            r.indicator,
            r.period,
            group,
            csv_field(r.estimate),
            csv_field(r.ci_low),
            csv_field(r.ci_high),
            r.suppressed,
            r.providers_reporting,
            r.providers_total,
            r.complete,
            r.rho
        ));
    }
    csv
}

pub(super) async fn list_indicators(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let runner = state.runner.clone();
    let records = tokio::task::spawn_blocking(move || runner.store.published())
        .await
        .map_err(ApiError::join)??;
    let records: Vec<Published> = records
        .into_iter()
        .filter(|r| q.indicator.as_ref().is_none_or(|i| *i == r.indicator))
        .collect();
    let wants_csv = match q.format.as_deref() {
        Some("csv") => true,
        Some("json") | None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.starts_with("text/csv")),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "format must be json or csv, found '{other}'"
            )));
        }
    };
    Ok(if wants_csv {
        (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            published_csv(&records),
        )
            .into_response()
    } else {
        let catalog = state.runner.catalog();
        let interpretations = state.runner.store.interpretations().unwrap_or_default();
        let indicators: Vec<serde_json::Value> = catalog
            .indicators
            .values()
            .filter(|i| records.iter().any(|r| r.indicator == i.id))
            .map(|i| {
                serde_json::json!({
                    "id": i.id,
                    "theme": i.theme,
                    "title": i.title,
                    "definition": i.definition,
                    "content_hash": i.content_hash,
                    "records": records.iter().filter(|r| r.indicator == i.id).collect::<Vec<_>>(),
                    "interpretations": interpretations.iter().filter(|x| x.indicator == i.id).collect::<Vec<_>>(),
                })
            })
            .collect();
        Json(serde_json::json!({
            "note": "Intervals are 95% and cover the differential-privacy noise only.",
            "indicators": indicators,
        }))
        .into_response()
    })
}

#[derive(Debug, Deserialize)]
pub(super) struct DashboardQuery {
    lang: Option<String>,
}

/// The public dashboard (HTML, Dutch by default, `?lang=en` for English).
pub(super) async fn dashboard(
    State(state): State<Arc<AppState>>,
    Query(q): Query<DashboardQuery>,
) -> Result<Response, ApiError> {
    let runner = state.runner.clone();
    let (records, interpretations) = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((
            runner.store.published()?,
            runner.store.interpretations()?,
        ))
    })
    .await
    .map_err(ApiError::join)??;
    let lang = crate::dashboard::Lang::parse(q.lang.as_deref());
    // Budgets as nodes last reported them; after a run, asked again (briefly waited for).
    let budgets = state
        .runner
        .known_budgets(std::time::Duration::from_secs(3))
        .await;
    let html = crate::dashboard::render(
        &state.runner.catalog(),
        &records,
        &interpretations,
        &budgets,
        lang,
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        html,
    )
        .into_response())
}
