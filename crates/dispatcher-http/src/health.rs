//! `/healthz` (process up), `/readyz` (Postgres and RabbitMQ reachable) and `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use dispatcher_db::Pool;
use dispatcher_mq::Readiness;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

#[derive(Clone)]
pub struct HealthState {
    pub pool: Pool,
    pub readiness: Readiness,
    pub metrics: PrometheusHandle,
}

pub fn health_router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The health router as a complete app, for the services whose only HTTP surface it is.
pub fn health_app(state: HealthState) -> Router {
    crate::with_common_layers(
        health_router(state),
        1024,
        std::time::Duration::from_secs(10),
    )
}

async fn readyz(State(s): State<HealthState>) -> impl IntoResponse {
    let db = dispatcher_db::pool::ping(&s.pool).await;
    let not_ready = s.readiness.not_ready();
    let ok = db && not_ready.is_empty();
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "postgres": db,
        "rabbitmq": not_ready.is_empty(),
        "waiting_for": not_ready,
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

async fn metrics(State(s): State<HealthState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
