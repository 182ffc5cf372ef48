mod dispatches;
mod providers;
mod templates;
mod webhooks;

use crate::AppState;
use axum::routing::{get, post};
use axum::Router;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/templates",
            post(templates::create).get(templates::list),
        )
        .route("/v1/templates/{id}", get(templates::get))
        .route("/v1/dispatches", post(dispatches::submit))
        .route("/v1/providers/{provider}/events", post(providers::receive))
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/v1/webhooks/secret/rotate", post(webhooks::rotate_secret))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get).delete(webhooks::delete),
        )
        .with_state(state)
}

/// Parses a path id; a malformed id is simply an object that does not exist.
pub fn parse_id(s: &str, what: &'static str) -> Result<uuid::Uuid, dispatcher_http::ApiError> {
    s.parse()
        .map_err(|_| dispatcher_http::ApiError::NotFound(what))
}
