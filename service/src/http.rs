//! HTTP plumbing every service's router shares.

use axum::Router;
use axum::body::Body;
use axum::extract::MatchedPath;
use axum::http::Request;
use policies::ops::HttpMetrics;
use std::sync::Arc;

/// Counts every request by method, matched route and status, with its latency, in the metrics
/// `owner` holds (the node, the coordinator's state).
pub fn with_http_metrics<T>(router: Router, owner: Arc<T>) -> Router
where
    T: AsRef<HttpMetrics> + Send + Sync + 'static,
{
    router.layer(axum::middleware::from_fn(
        move |req: Request<Body>, next: axum::middleware::Next| {
            let owner = owner.clone();
            async move {
                let method = req.method().to_string();
                let route = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "unmatched".into());
                let started = std::time::Instant::now();
                let resp = next.run(req).await;
                (*owner).as_ref().observe(
                    &method,
                    &route,
                    resp.status().as_u16(),
                    started.elapsed(),
                );
                resp
            }
        },
    ))
}
