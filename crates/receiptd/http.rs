//! Operations endpoints: `/healthz`, `/readyz`, `/metrics`. Every error,
//! unknown paths included, is JSON: `{"error":{"code":..,"message":..}}`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use receiptd_stream::Shared;
use serde_json::json;
use std::sync::Arc;

/// A JSON error response.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

/// The router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(shared)
}

/// Serves until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    if let Err(e) = axum::serve(listener, router(shared)).await {
        tracing::error!(error = %e, "http server stopped");
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.healthy() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "unhealthy", "the worker stopped or its store refuses writes")
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    if shared.ready() {
        return Json(json!({"status": "ready"})).into_response();
    }
    let waiting = if !shared.settings_loaded.load(Relaxed) {
        "loading the settings table"
    } else if !shared.assigned.load(Relaxed) {
        "waiting for a partition assignment and state restore"
    } else if shared.producer_blocked.load(Relaxed) {
        "the broker is not taking deltas"
    } else {
        "the worker stopped or its store refuses writes"
    };
    error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", waiting)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render()).into_response()
}
