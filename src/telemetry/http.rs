//! `/metrics` over HTTP: a handler for the API's router and a standalone
//! server for processes without one (`prescale run`).

use std::net::SocketAddr;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::metrics::{Metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE};

/// Axum handler for `GET /metrics` over [`Metrics::global`]:
/// `router.route("/metrics", axum::routing::get(prescale::telemetry::http::metrics_handler))`.
pub async fn metrics_handler() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        Metrics::global().render(),
    )
}

/// A router serving `GET /metrics` and `GET /healthz` for `metrics`.
pub fn router(metrics: &'static Metrics) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || async move { ([(CONTENT_TYPE, METRICS_CONTENT_TYPE)], metrics.render()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// Binds `addr` (port 0 picks a free one) and serves [`router`] in the
/// background on the current tokio runtime; returns the bound address.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: &'static Metrics,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(metrics)).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, task))
}
