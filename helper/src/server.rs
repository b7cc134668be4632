//! The helper's HTTPS API (axum over rustls, mutual TLS against the federation CA):
//! `POST /v1/aggregate`, `POST /v1/collect`, `GET /v1/hpke_keys`, `GET /healthz`. Errors are JSON with a stable code.

use crate::{Helper, HelperError};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use policies::wire::ErrorBody;
use secagg::api::{AGGREGATE_PATH, AggregateRequest, COLLECT_PATH, CollectRequest, HPKE_KEYS_PATH};
use std::net::SocketAddr;
use std::sync::Arc;

fn error_body(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(ErrorBody {
            error: code.to_string(),
            message,
        }),
    )
        .into_response()
}

impl IntoResponse for HelperError {
    fn into_response(self) -> Response {
        let status = match &self {
            HelperError::BadCollect { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            HelperError::AlreadyCollected { .. }
            | HelperError::TooFew { .. }
            | HelperError::Floor { .. }
            | HelperError::Expired { .. }
            | HelperError::Restored { .. } => StatusCode::CONFLICT,
            HelperError::Config(_)
            | HelperError::Key { .. }
            | HelperError::Store(_)
            | HelperError::Tls(_)
            | HelperError::Internal(_)
            | HelperError::Server(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error_body(status, self.code(), self.to_string())
    }
}

/// A body that is not the expected JSON: 413 past the limit, 422 otherwise.
fn rejected(r: JsonRejection) -> Response {
    let status = r.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "body_too_large"
    } else {
        "invalid_request"
    };
    error_body(status, code, r.body_text())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HelperError> + Send + 'static,
) -> Result<T, HelperError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HelperError::Internal(e.to_string()))?
}

async fn aggregate(
    State(helper): State<Arc<Helper>>,
    body: Result<Json<AggregateRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(r) => return rejected(r),
    };
    match blocking(move || helper.aggregate(&req)).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn collect(
    State(helper): State<Arc<Helper>>,
    body: Result<Json<CollectRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(r) => return rejected(r),
    };
    match blocking(move || helper.collect(&req)).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn hpke_keys(State(helper): State<Arc<Helper>>) -> Json<secagg::api::HpkeKeys> {
    Json(helper.hpke_keys())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn not_found() -> Response {
    error_body(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint".into(),
    )
}

pub fn router(helper: Arc<Helper>) -> Router {
    let limit = helper.config.limits.max_body_bytes;
    Router::new()
        .route(AGGREGATE_PATH, post(aggregate))
        .route(COLLECT_PATH, post(collect))
        .route(HPKE_KEYS_PATH, get(hpke_keys))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(helper)
}

/// A running helper; `shutdown` stops it.
pub struct Running {
    pub addr: SocketAddr,
    pub handle: axum_server::Handle<SocketAddr>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub async fn shutdown(self) {
        self.handle
            .graceful_shutdown(Some(std::time::Duration::from_secs(5)));
        let _ = self.task.await;
    }
}

/// Binds the configured address (port 0 picks one) and serves over mutual TLS in the background.
pub async fn start(helper: Arc<Helper>) -> Result<Running, HelperError> {
    let tls = service::tls::server_config_for_client(
        &helper.config.tls.cert,
        &helper.config.tls.key,
        &helper.config.tls.client_ca,
        &helper.config.tls.client_name,
    )?;
    let addr: SocketAddr = helper
        .config
        .listen
        .parse()
        .map_err(|e| HelperError::Server(format!("listen '{}': {e}", helper.config.listen)))?;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| HelperError::Server(format!("binding {addr}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| HelperError::Server(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| HelperError::Server(e.to_string()))?;
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
    )
    .map_err(|e| HelperError::Server(e.to_string()))?
    .handle(handle.clone());
    let app = router(helper);
    let task = tokio::spawn(async move { server.serve(app.into_make_service()).await });
    Ok(Running { addr, handle, task })
}
