//! Why a dispatch failed, as stored on the dispatch and shown to clients in `error`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The template could not be rendered with the dispatch's data (undefined variable, bad filter...).
    TemplateRenderError,
    /// The template the dispatch referenced no longer exists.
    TemplateNotFound,
    /// The provider refused the document or could not be reached.
    ProviderError,
    /// The provider's destination is not allowed by the outbound network policy.
    ProviderUrlRefused,
    /// The provider refused the document for good (an SMTP relay's 5xx reply).
    ProviderRejected,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::TemplateRenderError => "template_render_error",
            ErrorCode::TemplateNotFound => "template_not_found",
            ErrorCode::ProviderError => "provider_error",
            ErrorCode::ProviderUrlRefused => "provider_url_refused",
            ErrorCode::ProviderRejected => "provider_rejected",
        }
    }
}

/// The `error` object of a failed dispatch: a stable code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DispatchError {
    pub code: ErrorCode,
    pub message: String,
}

impl DispatchError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_snake_case_names() {
        for code in [
            ErrorCode::TemplateRenderError,
            ErrorCode::TemplateNotFound,
            ErrorCode::ProviderError,
            ErrorCode::ProviderUrlRefused,
            ErrorCode::ProviderRejected,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::String(code.as_str().into())
            );
        }
    }
}
