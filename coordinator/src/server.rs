//! The coordinator's HTTPS API (axum over rustls, TLS 1.3). Researchers start runs and read their
//! results with a bearer token; the public reads published indicators without one.

use crate::api_error::ApiError;
use crate::config::{CoordinatorConfig, token_hash};
use crate::publish::Published;
use crate::runs::{RunError, Runner};
use crate::store::TokenCheck;
use crate::store::{Role, RunStatus};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use policies::wire::ErrorBody;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: String, message: String },
}

pub struct AppState {
    pub runner: Arc<Runner>,
    /// (token sha256, researcher name)
    researchers: Vec<(String, String)>,
    http: policies::ops::HttpMetrics,
    /// The coordinator's own certificate and the federation CA, for expiry gauges.
    certs: Vec<(&'static str, std::path::PathBuf)>,
}

pub(crate) fn error_response(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
) -> Response {
    (
        status,
        Json(ErrorBody {
            error: code.to_string(),
            message: message.into(),
        }),
    )
        .into_response()
}

/// Who is calling, from the bearer token.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) role: Role,
}

/// The caller behind the request's bearer token when its role is one of `allowed`, or the
/// refusal to send: 401 without a usable token, 403 for an unknown, revoked or expired token or
/// the wrong role.
pub(crate) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    allowed: &[Role],
) -> Result<Caller, ApiError> {
    let roles = allowed
        .iter()
        .map(Role::as_str)
        .collect::<Vec<_>>()
        .join(" or ");
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized(format!(
            "this endpoint needs a {roles} token: send 'Authorization: Bearer <token>'"
        )));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(ApiError::Unauthorized(
            "the Authorization header must read 'Bearer <token>'".into(),
        ));
    };
    let hash = token_hash(token);
    let caller = if let Some((_, name)) = state.researchers.iter().find(|(h, _)| *h == hash) {
        Caller {
            name: name.clone(),
            role: Role::Researcher,
        }
    } else {
        let check = state.runner.store.check_token(&hash)?;
        let info = match check {
            TokenCheck::Unknown => {
                return Err(ApiError::Forbidden(
                    "the token is not a token of this coordinator".into(),
                ));
            }
            TokenCheck::Revoked(info) => {
                return Err(ApiError::Forbidden(format!(
                    "token {} was revoked",
                    info.id
                )));
            }
            TokenCheck::Expired(info) => {
                return Err(ApiError::Forbidden(format!(
                    "token {} expired at {}",
                    info.id,
                    info.expires_at.unwrap_or_default()
                )));
            }
            TokenCheck::Valid(info) => info,
        };
        Caller {
            name: info.name,
            role: info.role,
        }
    };
    if !allowed.contains(&caller.role) {
        return Err(ApiError::Forbidden(format!(
            "this endpoint needs a {roles} token; this token's role is {}",
            caller.role.as_str()
        )));
    }
    Ok(caller)
}

/// Each node's own report of its privacy budget, asked concurrently.
async fn node_budgets(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(
        &state,
        &headers,
        &[Role::Researcher, Role::Reviewer, Role::Admin],
    )?;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InterpretationBody {
    nl: Option<String>,
    en: Option<String>,
}

/// Longest interpretation text accepted, per language.
const MAX_INTERPRETATION_CHARS: usize = 4000;

/// A reviewer attaches (or replaces) the interpretation of a published indicator and quarter.
async fn put_interpretation(
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
        updated_at: crate::store::now_rfc3339(),
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

async fn list_tokens(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &[Role::Admin])?;
    let tokens = state.runner.store.list_tokens()?;
    Ok(Json(serde_json::json!({ "tokens": tokens })).into_response())
}

async fn revoke_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, &[Role::Admin])?;
    let revoked = state.runner.store.revoke_token(&id);
    let _ = state.runner.audit.append(policies::audit::AuditEvent {
        actor: caller.name,
        action: "token.revoke".into(),
        parameters: serde_json::json!({ "token": id }),
        outcome: match &revoked {
            Ok(true) => "revoked".into(),
            Ok(false) => "refused: no such active token".into(),
            Err(e) => format!("failed: {e}"),
        },
        ..Default::default()
    });
    if revoked? {
        Ok(Json(serde_json::json!({ "id": id, "revoked": true })).into_response())
    } else {
        Err(ApiError::UnknownToken(id))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    indicator: String,
    period: String,
}

async fn create_run(
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
fn run_error(e: RunError) -> ApiError {
    match e {
        RunError::UnknownIndicator(id) => ApiError::UnknownIndicator(id),
        e @ (RunError::BadPeriod { .. } | RunError::NoNodes(_)) => {
            ApiError::BadRequest(e.to_string())
        }
        RunError::Store(e) => ApiError::Store(e),
        e @ (RunError::Node(_)
        | RunError::Audit(_)
        | RunError::Catalog(_)
        | RunError::Secure(_)) => ApiError::Internal(e.to_string()),
    }
}

async fn get_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(
        &state,
        &headers,
        &[Role::Researcher, Role::Reviewer, Role::Admin],
    )?;
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

#[derive(Debug, Deserialize)]
struct ListQuery {
    format: Option<String>,
    indicator: Option<String>,
}

pub const CSV_HEADER: &str = "indicator,period,group,estimate,ci_low,ci_high,suppressed,providers_reporting,providers_total,complete,rho\n";

fn csv_field(x: Option<f64>) -> String {
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

async fn list_indicators(
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
struct DashboardQuery {
    lang: Option<String>,
}

/// The public dashboard (HTML, Dutch by default, `?lang=en` for English).
async fn dashboard(
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

/// Browsers ask every site for /favicon.ico; "no content" answers without a console error.
async fn no_icon() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::CACHE_CONTROL, "public, max-age=86400")],
    )
        .into_response()
}

async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
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
fn pem_not_after(path: &std::path::Path) -> Option<i64> {
    let first = CertificateDer::pem_file_iter(path).ok()?.next()?.ok()?;
    policies::ops::certificate_not_after(first.as_ref())
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NoRoute
}

/// Every route the coordinator serves: path, method, handler. The router is built from this
/// table alone, and a test checks it against the OpenAPI document both ways.
fn routes() -> Vec<(&'static str, Method, MethodRouter<Arc<AppState>>)> {
    use crate::governance_api as gov;
    vec![
        ("/v1/runs", Method::POST, post(create_run)),
        ("/v1/runs/{id}", Method::GET, get(get_run)),
        ("/v1/indicators", Method::GET, get(list_indicators)),
        ("/v1/budget", Method::GET, get(node_budgets)),
        (
            "/v1/indicators/{indicator}/{period}/interpretation",
            Method::PUT,
            axum::routing::put(put_interpretation),
        ),
        ("/v1/proposals", Method::POST, post(gov::create_proposal)),
        ("/v1/proposals", Method::GET, get(gov::list_proposals)),
        ("/v1/proposals/{id}", Method::GET, get(gov::get_proposal)),
        (
            "/v1/proposals/{id}/dry-run",
            Method::POST,
            post(gov::dry_run),
        ),
        (
            "/v1/proposals/{id}/approve",
            Method::POST,
            post(gov::approve),
        ),
        ("/v1/proposals/{id}/reject", Method::POST, post(gov::reject)),
        ("/v1/catalog", Method::GET, get(gov::latest_catalog)),
        (
            "/v1/catalog/{version}",
            Method::GET,
            get(gov::catalog_version),
        ),
        ("/v1/tokens", Method::GET, get(list_tokens)),
        ("/v1/tokens/{id}/revoke", Method::POST, post(revoke_token)),
        ("/", Method::GET, get(dashboard)),
        ("/favicon.ico", Method::GET, get(no_icon)),
        ("/openapi.json", Method::GET, get(openapi)),
        ("/healthz", Method::GET, get(healthz)),
        ("/metrics", Method::GET, get(metrics)),
    ]
}

/// (path, method) of every route, as the router serves them.
pub fn route_list() -> Vec<(&'static str, Method)> {
    routes().into_iter().map(|(p, m, _)| (p, m)).collect()
}

pub fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    let counted = state.clone();
    let mut by_path: Vec<(&'static str, MethodRouter<Arc<AppState>>)> = Vec::new();
    for (path, _, handler) in routes() {
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, existing)) => {
                let merged = std::mem::replace(existing, MethodRouter::new()).merge(handler);
                *existing = merged;
            }
            None => by_path.push((path, handler)),
        }
    }
    let api = by_path
        .into_iter()
        .fold(Router::new(), |r, (path, handler)| r.route(path, handler))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state);
    service::http::with_http_metrics(api, counted)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<Body>| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

fn server_tls(cfg: &CoordinatorConfig) -> Result<rustls::ServerConfig, ServerError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = CertificateDer::pem_file_iter(&cfg.tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cfg.tls.cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(&cfg.tls.key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cfg.tls.key.display())))?;
    let mut config =
        rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A running coordinator; `shutdown` stops it.
pub struct Running {
    pub addr: SocketAddr,
    pub handle: axum_server::Handle<SocketAddr>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    pub runner: Arc<Runner>,
}

impl Running {
    pub async fn shutdown(self) {
        self.handle
            .graceful_shutdown(Some(std::time::Duration::from_secs(5)));
        let _ = self.task.await;
    }
}

/// Bind (port 0 picks one), resume unfinished runs, and serve over TLS in the background.
pub async fn start(cfg: &CoordinatorConfig, runner: Arc<Runner>) -> Result<Running, ServerError> {
    let tls = server_tls(cfg)?;
    let listen_err = |message: String| ServerError::Listen {
        addr: cfg.listen.clone(),
        message,
    };
    let listener =
        std::net::TcpListener::bind(&cfg.listen).map_err(|e| listen_err(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| listen_err(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| listen_err(e.to_string()))?;
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
    )
    .map_err(|e| listen_err(e.to_string()))?
    .handle(handle.clone());
    let state = Arc::new(AppState {
        runner: runner.clone(),
        researchers: cfg
            .researchers
            .iter()
            .map(|r| (r.token_sha256.to_ascii_lowercase(), r.name.clone()))
            .collect(),
        http: policies::ops::HttpMetrics::default(),
        certs: vec![
            ("coordinator", cfg.tls.cert.clone()),
            ("federation_ca", cfg.tls.ca.clone()),
        ],
    });
    let app = router(state, cfg.limits.max_body_bytes);
    let task = tokio::spawn(async move { server.serve(app.into_make_service()).await });
    match runner.resume_unfinished().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(runs = n, "resumed unfinished runs"),
        Err(e) => tracing::error!(error = %e, "could not resume unfinished runs"),
    }
    Ok(Running {
        addr,
        handle,
        task,
        runner,
    })
}

impl AsRef<policies::ops::HttpMetrics> for AppState {
    fn as_ref(&self) -> &policies::ops::HttpMetrics {
        &self.http
    }
}
