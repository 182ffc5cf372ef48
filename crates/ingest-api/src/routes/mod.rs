pub(crate) mod batch;
pub(crate) mod dispatches;
pub(crate) mod providers;
pub(crate) mod templates;
pub(crate) mod validate;
pub(crate) mod webhooks;

use crate::AppState;
use axum::Router;
use dispatcher_http::ApiError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The API routes, each registered together with its OpenAPI description (`#[utoipa::path]`), so
/// the document cannot list a route the service does not serve or miss one it does.
pub fn api() -> OpenApiRouter<AppState> {
    api_with_batch_limit(DEFAULT_MAX_BATCH_BODY_BYTES)
}

/// Largest body of `POST /v1/dispatches/batch` unless configured (`ingest.max_batch_body_bytes`).
pub const DEFAULT_MAX_BATCH_BODY_BYTES: usize = 16 * 1024 * 1024;

/// [`api`] with the batch endpoint's own body limit: a batch carries up to 1 000 bodies, so it
/// may be larger than `ingest.max_body_bytes` allows a single request.
pub fn api_with_batch_limit(max_batch_body_bytes: usize) -> OpenApiRouter<AppState> {
    let batch = OpenApiRouter::new()
        .routes(routes!(batch::submit_batch))
        .layer(axum::extract::DefaultBodyLimit::max(max_batch_body_bytes));
    OpenApiRouter::new()
        .merge(batch)
        .routes(routes!(validate::validate))
        .routes(routes!(templates::create, templates::list))
        .routes(routes!(templates::get))
        .routes(routes!(dispatches::submit))
        .routes(routes!(providers::receive))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::get, webhooks::delete))
}

pub fn router(state: AppState) -> Router {
    let (router, _) =
        api_with_batch_limit(state.settings.ingest.max_batch_body_bytes).split_for_parts();
    router.with_state(state)
}

/// Parses a path id; a malformed id is simply an object that does not exist.
pub fn parse_id(s: &str, what: &'static str) -> Result<uuid::Uuid, ApiError> {
    s.parse().map_err(|_| ApiError::NotFound(what))
}

/// [`reject_nul`] for one string field (shared with the dashboard's writes).
pub use dispatcher_http::commands::{reject_nul, reject_nul_str};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_is_found_in_values_and_keys() {
        assert!(reject_nul(&json!({"data": {"a": ["x", 1, null]}})).is_ok());
        for bad in [
            json!({"data": {"a": ["x", "y\u{0}"]}}),
            json!({"metadata": {"k\u{0}": 1}}),
            json!({"callbackUrl": "https://a.example/\u{0}"}),
        ] {
            let err = reject_nul(&bad).unwrap_err();
            assert!(matches!(err, ApiError::Unprocessable { .. }), "{bad}");
        }
        let msg = reject_nul(&json!({"data": {"a": ["x", "\u{0}"]}}))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("data.a[1]:"), "{msg}");
        assert!(reject_nul_str("a\u{0}b", "name").is_err());
        assert!(reject_nul_str("ab", "name").is_ok());
    }
}
