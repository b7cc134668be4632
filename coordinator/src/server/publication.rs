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

/// The records as CSV; with `released` (the token holders' view) a last column says whether each
/// record is public.
pub fn published_csv(records: &[Published], released: Option<&[bool]>) -> String {
    let mut csv = match released {
        None => String::from(CSV_HEADER),
        Some(_) => format!("{},released\n", CSV_HEADER.trim_end()),
    };
    for (i, r) in records.iter().enumerate() {
        let group = serde_json::to_string(&r.group)
            .unwrap_or_default()
            .replace('"', "\"\"");
        csv.push_str(&format!(
            "{},{},\"{}\",{},{},{},{},{},{},{},{}",
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
        if let Some(flags) = released {
            csv.push_str(&format!(",{}", flags.get(i).copied().unwrap_or(false)));
        }
        csv.push('\n');
    }
    csv
}

/// What one reader may see: the public sees released rounds only; a token holder (researcher,
/// reviewer, admin) also sees embargoed results, each marked.
struct View {
    records: Vec<Published>,
    /// Per record, for token holders: whether it is public.
    released: Option<Vec<bool>>,
    interpretations: Vec<crate::store::Interpretation>,
    releases: Vec<crate::release::Release>,
}

/// The view, of one indicator's records when `indicator` is given.
fn view(
    store: &crate::store::RunStore,
    embargoed_too: bool,
    indicator: Option<&str>,
) -> Result<View, ApiError> {
    let wanted = |r: &Published| indicator.is_none_or(|i| i == r.indicator);
    let mut public = store.released()?;
    public.retain(wanted);
    let releases = store.releases()?;
    let released_periods: std::collections::BTreeSet<&str> = releases
        .iter()
        .flat_map(|r| r.periods.iter().map(String::as_str))
        .collect();
    let mut interpretations = store.interpretations()?;
    Ok(if embargoed_too {
        let mut records = store.published()?;
        records.retain(wanted);
        let key = |r: &Published| (r.indicator.clone(), r.period.clone(), r.group.clone());
        let public: std::collections::BTreeMap<_, &Published> =
            public.iter().map(|r| (key(r), r)).collect();
        let released = records
            .iter()
            .map(|r| public.get(&key(r)).is_some_and(|p| *p == r))
            .collect();
        View {
            records,
            released: Some(released),
            interpretations,
            releases,
        }
    } else {
        // An interpretation is public with its round, not before.
        interpretations.retain(|i| released_periods.contains(i.period.as_str()));
        View {
            records: public,
            released: None,
            interpretations,
            releases,
        }
    })
}

pub(super) async fn list_indicators(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    // No token: the public view. A token that is sent must be valid.
    let embargoed_too = headers.contains_key(header::AUTHORIZATION);
    if embargoed_too {
        authorize(&state, &headers, ANY_ROLE)?;
    }
    let runner = state.runner.clone();
    let indicator = q.indicator.clone();
    let v = tokio::task::spawn_blocking(move || {
        view(&runner.store, embargoed_too, indicator.as_deref())
    })
    .await
    .map_err(ApiError::join)??;
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
            published_csv(&v.records, v.released.as_deref()),
        )
            .into_response()
    } else {
        let catalog = state.runner.catalog();
        let record_json = |i: usize, r: &Published| {
            let mut value = serde_json::to_value(r).unwrap_or_default();
            if let Some(flags) = &v.released {
                value["released"] = serde_json::json!(flags.get(i).copied().unwrap_or(false));
            }
            value
        };
        let indicators: Vec<serde_json::Value> = catalog
            .indicators
            .values()
            .filter(|i| v.records.iter().any(|r| r.indicator == i.id))
            .map(|i| {
                serde_json::json!({
                    "id": i.id,
                    "theme": i.theme,
                    "title": i.title,
                    "definition": i.definition,
                    "content_hash": i.content_hash,
                    "records": v.records.iter().enumerate().filter(|(_, r)| r.indicator == i.id).map(|(n, r)| record_json(n, r)).collect::<Vec<_>>(),
                    "interpretations": v.interpretations.iter().filter(|x| x.indicator == i.id).collect::<Vec<_>>(),
                })
            })
            .collect();
        Json(serde_json::json!({
            "note": "Intervals are 95% and cover the differential-privacy noise only.",
            "view": if v.released.is_some() { "embargoed results included (token holder)" } else { "public: released rounds only" },
            "releases": v.releases,
            "reference": { "population": state.runner.population.source },
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
    // The public page: released rounds only, whoever asks.
    let v = tokio::task::spawn_blocking(move || view(&runner.store, false, None))
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
        &v.records,
        &v.interpretations,
        &v.releases,
        state.runner.population.source.as_ref(),
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
