//! The ops HTTP server: `/metrics` (Prometheus), `/healthz` (alive), `/readyz`
//! (consuming and Redis reachable).

use crate::metrics::Metrics;
use crate::store::Store;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub(crate) struct OpsState {
    metrics: Arc<Metrics>,
    consuming: Arc<AtomicBool>,
    blocked: Arc<AtomicBool>,
    store: Store,
}

impl OpsState {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        consuming: Arc<AtomicBool>,
        blocked: Arc<AtomicBool>,
        store: Store,
    ) -> Self {
        Self { metrics, consuming, blocked, store }
    }
}

pub(crate) fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}

async fn readyz(State(state): State<OpsState>) -> (StatusCode, String) {
    if !state.consuming.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not consuming from RabbitMQ".into());
    }
    if state.blocked.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "RabbitMQ blocks publishing (memory or disk alarm)".into());
    }
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "Redis did not answer within 2 s".into()),
    }
}

/// Serves on `listener` until `shutdown` is cancelled.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: OpsState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}
