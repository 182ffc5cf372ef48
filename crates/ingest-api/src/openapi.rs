//! The ingest API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! attributes and the request/response types, served at `GET /openapi.json` and committed as
//! `proto-schemas/openapi-ingest.json` (a test fails when the two drift apart).

use axum::http::header;
use axum::response::IntoResponse;
use dispatcher_http::error::doc::ErrorComponents;
use dispatcher_http::views::doc as health_doc;
use std::sync::LazyLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document's fixed parts; the API operations come from the router ([`crate::routes::api`]),
/// where each handler is registered with its description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dispatcher ingest API",
        description = "Accepts dispatches (asynchronous document rendering and delivery with signed \
            webhooks), manages templates and webhook subscriptions, and receives signed provider \
            callbacks. Errors are always `{\"error\":{\"code\",\"message\"}}`; any path answers 404 \
            `not_found` when unknown and 405 `method_not_allowed` for a method it does not list.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        health_doc::healthz,
        health_doc::readyz,
        health_doc::metrics,
        health_doc::openapi_json,
    ),
    modifiers(&ErrorComponents, &ProviderSignature),
    tags(
        (name = "dispatches", description = "Submitting dispatches."),
        (name = "templates", description = "Stored templates."),
        (name = "webhooks", description = "Outcome webhook subscriptions and the signing secret."),
        (name = "providers", description = "Callbacks from document providers."),
        (name = "operations", description = "Health, readiness, metrics and this document."),
    ),
)]
struct BaseDoc;

/// The service's complete OpenAPI document: `ApiDoc::openapi()`.
pub struct ApiDoc;

impl OpenApi for ApiDoc {
    fn openapi() -> utoipa::openapi::OpenApi {
        let mut doc = BaseDoc::openapi();
        doc.merge(crate::routes::api().into_openapi());
        doc
    }
}

/// The security scheme of `POST /v1/providers/{provider}/events`.
struct ProviderSignature;

impl Modify for ProviderSignature {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .security_schemes
            .insert(
                crate::routes::providers::PROVIDER_SIGNATURE.to_owned(),
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    "X-Provider-Signature",
                    "`sha256=<hex>`: HMAC-SHA256 of the raw request body, keyed with the \
                     provider's configured secret.",
                ))),
            );
    }
}

static JSON: LazyLock<String> = LazyLock::new(|| health_doc::render(&ApiDoc::openapi()));

/// The document as served and committed: pretty-printed JSON with a trailing newline.
pub fn json() -> &'static str {
    &JSON
}

/// `GET /openapi.json`.
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The committed document must be exactly what the code generates. `UPDATE_OPENAPI=1 cargo
    /// test -p ingest-api -p status-api` rewrites it.
    #[test]
    fn committed_document_matches_the_code() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto-schemas/openapi-ingest.json");
        health_doc::check_committed(&path, json());
    }

    #[tokio::test]
    async fn served_document_is_the_committed_one() {
        let resp = serve().await.into_response();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(body, json().as_bytes());
    }

    #[test]
    fn every_v1_operation_states_its_security_and_errors() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        for p in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
            assert!(paths.contains_key(p), "{p} is documented");
            assert!(
                paths[p]["get"].get("security").is_none(),
                "{p} needs no auth"
            );
        }
        let mut seen = 0;
        for (path, item) in paths.iter().filter(|(p, _)| p.starts_with("/v1/")) {
            for (method, op) in item.as_object().unwrap() {
                seen += 1;
                let scheme = if path == "/v1/providers/{provider}/events" {
                    "providerSignature"
                } else {
                    "basicAuth"
                };
                assert_eq!(
                    op["security"],
                    serde_json::json!([{ scheme: [] }]),
                    "{method} {path}"
                );
                let responses = op["responses"].as_object().unwrap();
                for status in ["401", "500", "503"] {
                    assert!(responses.contains_key(status), "{method} {path} {status}");
                }
            }
        }
        assert_eq!(
            seen, 12,
            "every /v1 operation of the ingest API is documented"
        );
    }
}
