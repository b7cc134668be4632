//! The coordinator's HTTPS API (axum over rustls, TLS 1.3). Researchers start runs and read their
//! results with a bearer token; the public reads published indicators without one.

mod governance;
mod operations;
mod publication;
mod rounds;
mod runs;
mod tokens;

pub use publication::{CSV_HEADER, published_csv};

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

/// Every role: endpoints any token holder may read.
pub(crate) const ANY_ROLE: &[Role] = &[Role::Researcher, Role::Reviewer, Role::Admin];

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

/// Every route the coordinator serves: path, method, handler. The router is built from this
/// table alone, and a test checks it against the OpenAPI document both ways.
fn routes() -> Vec<(&'static str, Method, MethodRouter<Arc<AppState>>)> {
    use governance as gov;
    vec![
        ("/v1/runs", Method::POST, post(runs::create_run)),
        ("/v1/runs/{id}", Method::GET, get(runs::get_run)),
        ("/v1/rounds", Method::POST, post(rounds::start_round)),
        ("/v1/rounds/{quarter}", Method::GET, get(rounds::get_round)),
        (
            "/v1/rounds/{quarter}/release",
            Method::POST,
            post(rounds::release_round),
        ),
        (
            "/v1/indicators",
            Method::GET,
            get(publication::list_indicators),
        ),
        ("/v1/budget", Method::GET, get(operations::node_budgets)),
        ("/v1/budget/plan", Method::GET, get(operations::budget_plan)),
        (
            "/v1/indicators/{indicator}/{period}/interpretation",
            Method::PUT,
            axum::routing::put(publication::put_interpretation),
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
        ("/v1/tokens", Method::GET, get(tokens::list_tokens)),
        (
            "/v1/tokens/{id}/revoke",
            Method::POST,
            post(tokens::revoke_token),
        ),
        ("/", Method::GET, get(publication::dashboard)),
        ("/favicon.ico", Method::GET, get(operations::no_icon)),
        ("/openapi.json", Method::GET, get(operations::openapi)),
        ("/healthz", Method::GET, get(operations::healthz)),
        ("/metrics", Method::GET, get(operations::metrics)),
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
        .fallback(operations::not_found)
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
