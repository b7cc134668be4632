//! The node's HTTPS API (axum over rustls): `POST /v1/evaluate`, `GET /v1/budget`, `GET /healthz`,
//! `GET /metrics`. Every response carries an `x-request-id`; every error is a JSON body with a
//! stable `error` code and a readable `message`.

use crate::release::{self, ReleaseError};
use crate::{Node, NodeError};
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use policies::audit::{AuditEvent, digest};
use policies::wire::{ARROW_STREAM_MIME, Answer, ErrorBody, EvaluateRequest};
use std::net::SocketAddr;
use std::sync::Arc;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: code.to_string(),
            message: message.into(),
        }),
    )
        .into_response()
}

fn release_error(e: &ReleaseError) -> Response {
    let status = match e {
        ReleaseError::UnknownIndicator(_) => StatusCode::NOT_FOUND,
        ReleaseError::Derived(_)
        | ReleaseError::PeriodOutsideData { .. }
        | ReleaseError::AnnualOnly { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ReleaseError::HashMismatch { .. } => StatusCode::CONFLICT,
        ReleaseError::Budget(_) => StatusCode::FORBIDDEN,
        ReleaseError::Refused(crate::governance::Refusal::Fetch(_)) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ReleaseError::Refused(_) => StatusCode::FORBIDDEN,
        ReleaseError::Secure(s) if s.is_refusal() => StatusCode::UNPROCESSABLE_ENTITY,
        ReleaseError::Data(_) => StatusCode::SERVICE_UNAVAILABLE,
        ReleaseError::Secure(_)
        | ReleaseError::Ledger(_)
        | ReleaseError::Eval(_)
        | ReleaseError::Noise(_)
        | ReleaseError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(status, e.code(), e.public_message())
}

/// Writes one audit entry off the async threads (it syncs to disk).
async fn audit(node: &Arc<Node>, event: AuditEvent) -> Result<(), String> {
    let n = node.clone();
    match tokio::task::spawn_blocking(move || n.audit.append(event)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn evaluate(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<EvaluateRequest>, JsonRejection>,
) -> Response {
    let actor = format!("client {peer}");
    let Json(req) = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "body_too_large"
            } else {
                "invalid_request"
            };
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!(
                    "request body exceeds this node's limit of {} bytes",
                    node.config.limits.max_body_bytes
                )
            } else {
                rejection.body_text()
            };
            crate::metrics::Metrics::inc(&node.metrics.rejected);
            let event = AuditEvent {
                actor,
                action: "evaluate".into(),
                outcome: format!("refused: {code}"),
                ..Default::default()
            };
            if let Err(e) = audit(&node, event).await {
                tracing::error!("audit log: {e}");
            }
            return error_response(status, code, message);
        }
    };
    let result = release::evaluate(&node, &req).await;
    let content_hash = match node.catalog.get(&req.indicator) {
        Some(i) => Some(i.content_hash.clone()),
        None => node
            .fetched
            .lock()
            .await
            .accepted
            .get(&req.indicator)
            .map(|i| i.content_hash.clone()),
    };
    let event = AuditEvent {
        actor,
        action: "evaluate".into(),
        indicator: Some(req.indicator.clone()),
        content_hash,
        parameters: match req.catalog_version {
            Some(v) => {
                serde_json::json!({ "period": req.period.to_string(), "catalog_version": v })
            }
            None => serde_json::json!({ "period": req.period.to_string() }),
        },
        rho: match &result {
            Ok(r) if !r.replayed => Answer::decode(&r.bytes).ok().map(|a| a.meta.rho),
            _ => Some(0.0),
        },
        answer_digest: result.as_ref().ok().map(|r| digest(&r.bytes)),
        outcome: match &result {
            Ok(r) if r.replayed => "replayed".into(),
            Ok(_) => "released".into(),
            Err(e) => format!("refused: {}", e.code()),
        },
        reason: result.as_ref().err().map(|e| e.to_string()),
    };
    // Nothing leaves without its audit entry on disk.
    if let Err(e) = audit(&node, event).await {
        tracing::error!("audit log: {e}");
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit_failed",
            format!("cannot write the audit log: {e}"),
        );
    }
    match result {
        Ok(r) => {
            let mut resp = Response::new(Body::from(r.bytes));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(ARROW_STREAM_MIME),
            );
            h.insert(
                "x-stroom-replayed",
                HeaderValue::from_static(if r.replayed { "true" } else { "false" }),
            );
            resp
        }
        Err(e) => {
            if matches!(e, ReleaseError::Budget(_)) {
                tracing::warn!(indicator = %req.indicator, period = %req.period, "{e}");
            } else {
                tracing::info!(indicator = %req.indicator, period = %req.period, "refused: {e}");
            }
            release_error(&e)
        }
    }
}

async fn budget(State(node): State<Arc<Node>>) -> Response {
    let n = node.clone();
    match tokio::task::spawn_blocking(move || n.budget()).await {
        Ok(Ok(b)) => Json(b).into_response(),
        Ok(Err(e)) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ledger_error",
            e.to_string(),
        ),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn healthz(State(node): State<Arc<Node>>) -> Response {
    Json(serde_json::json!({ "status": "ok", "node_id": node.config.node_id })).into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let n = node.clone();
    let budget = tokio::task::spawn_blocking(move || n.budget()).await;
    let spent = match budget {
        Ok(Ok(b)) => b.rho_spent,
        _ => f64::NAN,
    };
    let id = &node.config.node_id;
    let mut text = node
        .metrics
        .render(id, spent, node.config.budget.rho_per_period);
    text.push_str(
        &node
            .metrics
            .http
            .render("stroom_node", &format!("node=\"{id}\",")),
    );
    let tls = &node.config.tls;
    let mut certs = vec![("node", crate::tls::not_after(&tls.cert))];
    if let Some(ca) = &tls.client_ca {
        certs.push(("federation_ca", crate::tls::not_after(ca)));
    }
    text.push_str(&policies::ops::render_cert_expiry(
        "stroom_node",
        &format!("node=\"{id}\","),
        &certs,
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub fn router(node: Arc<Node>) -> Router {
    let limit = node.config.limits.max_body_bytes;
    let counted = node.clone();
    let api = Router::new()
        .route("/v1/evaluate", post(evaluate))
        .route("/v1/budget", get(budget))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(node);
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

/// A non-blocking listener on `listen` (port 0 picks one) and the address it got.
fn bind(listen: &str) -> Result<(std::net::TcpListener, SocketAddr), NodeError> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| NodeError::Server(format!("cannot listen on {listen}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| NodeError::Server(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| NodeError::Server(e.to_string()))?;
    Ok((listener, addr))
}

/// The plain-HTTP operations listener (`[ops] listen`): `/healthz` and `/metrics`, nothing else.
pub async fn start_ops(node: Arc<Node>, listen: &str) -> Result<Running, NodeError> {
    let (listener, addr) = bind(listen)?;
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp(listener)
        .map_err(|e| NodeError::Server(e.to_string()))?
        .handle(handle.clone());
    let counted = node.clone();
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(node);
    let app = service::http::with_http_metrics(app, counted);
    let task = tokio::spawn(async move { server.serve(app.into_make_service()).await });
    Ok(Running { addr, handle, task })
}

/// A running HTTPS server; dropping the handle does not stop it, `shutdown` does.
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

/// Bind the configured address (port 0 picks one) and serve over TLS in the background.
pub async fn start(node: Arc<Node>) -> Result<Running, NodeError> {
    start_with(node, |app| app).await
}

/// [`start`] with the router wrapped by `wrap` (the federation benchmark holds each answer until a
/// fixed time after its request, to model a node on its own machine whose work takes that long).
pub async fn start_with(
    node: Arc<Node>,
    wrap: impl FnOnce(Router) -> Router,
) -> Result<Running, NodeError> {
    let tls = crate::tls::server_config(
        &node.config.tls.cert,
        &node.config.tls.key,
        node.config.tls.client_ca.as_deref(),
    )?;
    let (listener, addr) = bind(&node.config.listen)?;
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
    )
    .map_err(|e| NodeError::Server(e.to_string()))?
    .handle(handle.clone());
    let app = wrap(router(node));
    let task = tokio::spawn(async move {
        server
            .serve(app.into_make_service_with_connect_info::<SocketAddr>())
            .await
    });
    Ok(Running { addr, handle, task })
}
