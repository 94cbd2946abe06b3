//! receiptd's HTTP server: operations (`/healthz`, `/readyz`, `/metrics`,
//! `/openapi.json`) and the query API of CONTRACT.md §5 (`api`). Every
//! error, unknown paths included, is JSON: `{"error":{"code":..,"message":..}}`.
//!
//! The server knows nothing of Kafka or RocksDB: it answers from a
//! [`Backend`], which the worker implements over its live state, and which
//! the fuzz target (`fuzz/fuzz_targets/http_api.rs`) implements over a
//! `PartitionState` of its own.

#![deny(missing_docs)]

mod api;

pub use api::ApiDoc;

use receiptd_core::{PartitionView, SettingsTable};

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A JSON error response.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

/// What the server answers from.
pub trait Backend: Send + Sync + 'static {
    /// `Ok` when ready to answer queries, else what it waits for.
    fn readiness(&self) -> Result<(), &'static str>;
    /// Whether the worker runs and its store takes writes.
    fn healthy(&self) -> bool;
    /// Prometheus text exposition.
    fn metrics_text(&self) -> String;
    /// Runs `f` once on the settings and the view of every owned partition;
    /// false when there is no state to show. The fold goes on meanwhile: an
    /// answer locks only the entities it reads, one message at a time.
    fn view(&self, f: &mut dyn FnMut(&SettingsTable, &[Arc<PartitionView>])) -> bool;
}

/// The shared backend.
type Shared = dyn Backend;

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The router: operations, then the query API.
pub fn router(shared: Arc<dyn Backend>, tokens: BTreeMap<String, String>) -> Router {
    let ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(api::openapi))
        .with_state(shared.clone());
    let api = Router::new()
        .route("/v1/apps/{app_id}/receipts/query", post(api::receipts))
        .route("/v1/apps/{app_id}/groups/{group_id}/messages/{msg_id}/members", get(api::members))
        .route("/v1/apps/{app_id}/c2c/{user}/peers/{peer}/read", get(api::read_mark))
        .with_state(api::Api { shared, tokens: Arc::new(tokens) });
    ops.merge(api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// Serves until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<dyn Backend>, tokens: BTreeMap<String, String>) {
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
    match shared.readiness() {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(waiting) => error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", waiting),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics_text()).into_response()
}
