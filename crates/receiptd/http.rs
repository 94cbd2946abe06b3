//! The HTTP server: operations (`/healthz`, `/readyz`, `/metrics`) and the
//! query API (`api`). Every error,
//! unknown paths included, is JSON: `{"error":{"code":..,"message":..}}`.

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use receiptd_stream::Shared;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A JSON error response.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The router: operations, then the query API.
pub fn router(shared: Arc<Shared>, tokens: BTreeMap<String, String>) -> Router {
    let ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(crate::api::openapi))
        .with_state(shared.clone());
    let api = Router::new()
        .route("/v1/apps/{app_id}/receipts/query", post(crate::api::receipts))
        .route("/v1/apps/{app_id}/groups/{group_id}/messages/{msg_id}/members", get(crate::api::members))
        .route("/v1/apps/{app_id}/c2c/{user}/peers/{peer}/read", get(crate::api::read_mark))
        .with_state(crate::api::Api { shared, tokens: Arc::new(tokens) });
    ops.merge(api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// Serves until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, tokens: BTreeMap<String, String>) {
    if let Err(e) = axum::serve(listener, router(shared, tokens)).await {
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
    } else if shared.brokers_down.load(Relaxed) {
        "no broker connection is up"
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
