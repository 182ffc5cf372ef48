//! Response bodies shared by the ingest (sync answers) and the status API.

use chrono::{DateTime, Utc};
use dispatcher_core::{DispatchError, DispatchStatus};
use dispatcher_db::dispatches::DispatchView;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// A dispatch's state (`GET /v1/dispatches/{id}`, list items, and the sync answer of
/// `POST /v1/dispatches`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DispatchBody {
    pub dispatch_id: Uuid,
    pub status: DispatchStatus,
    pub queued_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub completed_at: Option<DateTime<Utc>>,
    /// Where the rendered document is served (`GET /v1/dispatches/{id}/result`), once there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = "uri")]
    pub result_url: Option<String>,
    /// Why the dispatch failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<DispatchError>,
    /// The client's `metadata`, as submitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, nullable = false)]
    pub metadata: Option<serde_json::Value>,
    /// The provider's latest report (by when it happened, not when it arrived): `accepted`,
    /// `delivered`, `bounced` or `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub provider_status: Option<String>,
    /// When that report happened, as the provider stamped it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub provider_status_at: Option<DateTime<Utc>>,
    /// What the provider answered when it took the document, e.g. an SMTP relay's
    /// `250 2.0.0 Ok: queued as 4F2A`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub provider_reply: Option<String>,
    /// Provider tries that failed for the time being (an SMTP `4xx` or a connection error) and
    /// were retried; absent when none. While a retry waits, `status` is `queued` and `error`
    /// tells why.
    #[serde(skip_serializing_if = "is_zero")]
    pub provider_retries: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

pub fn result_url(public_base: &str, id: Uuid) -> String {
    format!("{public_base}/v1/dispatches/{id}/result")
}

pub fn status_url(public_base: &str, id: Uuid) -> String {
    format!("{public_base}/v1/dispatches/{id}")
}

impl DispatchBody {
    pub fn new(v: DispatchView, public_base: &str) -> Self {
        Self {
            dispatch_id: v.id,
            status: v.status,
            queued_at: v.queued_at,
            started_at: v.started_at,
            completed_at: v.completed_at,
            result_url: v.has_result.then(|| result_url(public_base, v.id)),
            error: v.error,
            metadata: v.metadata,
            provider_status: v.provider_status,
            provider_status_at: v.provider_status_at,
            provider_reply: v.provider_reply,
            provider_retries: v.provider_attempts,
        }
    }
}

/// OpenAPI descriptions of the routes every HTTP service serves from [`crate::health_router`],
/// and of `GET /openapi.json`, for the services' documents (`paths(...)`).
pub mod doc {
    use serde::Serialize;
    use utoipa::ToSchema;

    /// `GET /healthz`.
    #[derive(Serialize, ToSchema)]
    pub struct HealthBody {
        #[schema(value_type = String, pattern = "^ok$")]
        pub status: &'static str,
    }

    /// `GET /readyz`.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub struct ReadyBody {
        #[schema(inline)]
        pub status: Readiness,
        /// Postgres answered a ping.
        pub postgres: bool,
        /// Every broker-dependent task is connected (always true where there is none).
        pub rabbitmq: bool,
        /// The tasks that are not ready yet.
        pub waiting_for: Vec<String>,
    }

    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Readiness {
        Ready,
        NotReady,
    }

    /// The process is up.
    #[utoipa::path(
        get,
        path = "/healthz",
        tag = "operations",
        responses((status = 200, description = "The process is up.", body = HealthBody)),
    )]
    pub async fn healthz() {}

    /// Postgres (and, where used, RabbitMQ) are reachable.
    #[utoipa::path(
        get,
        path = "/readyz",
        tag = "operations",
        responses(
            (status = 200, description = "Ready to serve.", body = ReadyBody),
            (status = 503, description = "Not ready; the body says what is missing.", body = ReadyBody),
        ),
    )]
    pub async fn readyz() {}

    /// Prometheus metrics.
    #[utoipa::path(
        get,
        path = "/metrics",
        tag = "operations",
        responses((
            status = 200,
            description = "Prometheus text exposition format 0.0.4.",
            content_type = "text/plain",
            body = String,
        )),
    )]
    pub async fn metrics() {}

    /// A service's document as served and committed: pretty-printed JSON with a trailing newline.
    pub fn render(doc: &utoipa::openapi::OpenApi) -> String {
        let mut s = doc
            .to_pretty_json()
            .expect("the OpenAPI document serializes");
        s.push('\n');
        s
    }

    /// For the services' drift tests: fails, with the first differing line and how to regenerate,
    /// when the committed document at `path` is not `generated`; with `UPDATE_OPENAPI=1` in the
    /// environment it rewrites the file instead.
    #[track_caller]
    pub fn check_committed(path: &std::path::Path, generated: &str) {
        if std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
            std::fs::write(path, generated)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            return;
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        if committed == generated {
            return;
        }
        let (line, was, now) = committed
            .lines()
            .map(Some)
            .chain(std::iter::repeat(None))
            .zip(generated.lines().map(Some).chain(std::iter::repeat(None)))
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| {
                (
                    i + 1,
                    a.unwrap_or("<end of file>"),
                    b.unwrap_or("<end of file>"),
                )
            })
            .unwrap_or((0, "", ""));
        panic!(
            "{} does not match the OpenAPI document the code generates.\n\
             first difference at line {line}:\n  committed: {was}\n  generated: {now}\n\
             Regenerate it with `UPDATE_OPENAPI=1 cargo test -p ingest-api -p status-api` and commit it.",
            path.display()
        );
    }

    /// This document.
    #[utoipa::path(
        get,
        path = "/openapi.json",
        tag = "operations",
        operation_id = "openapiDocument",
        responses((
            status = 200,
            description = "The OpenAPI 3.1 description of this service.",
            content_type = "application/json",
            body = Object,
        )),
    )]
    pub async fn openapi_json() {}
}
