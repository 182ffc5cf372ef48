//! Response bodies shared by the ingest (sync answers) and the status API.

use chrono::{DateTime, Utc};
use dispatcher_core::{DispatchError, DispatchStatus};
use dispatcher_db::dispatches::DispatchView;
use serde::Serialize;
use uuid::Uuid;

/// `GET /v1/dispatches/{id}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchBody {
    pub dispatch_id: Uuid,
    pub status: DispatchStatus,
    pub queued_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<DispatchError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// The provider's latest report (inbound provider callbacks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<ProviderStatus>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStatus {
    pub status: String,
    pub at: DateTime<Utc>,
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
            provider_status: v
                .provider_status
                .zip(v.provider_status_at)
                .map(|(status, at)| ProviderStatus { status, at }),
        }
    }
}
