//! The one error type of the HTTP APIs and its mapping to status codes. Bodies are always
//! `{"error":{"code","message"}}`; 5xx bodies never carry internals (the cause is logged).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dispatcher_db::DbError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication required")]
    Unauthorized,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("signature missing or invalid")]
    InvalidSignature,
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("request body is too large")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("rate limit exceeded; retry after {0} s")]
    RateLimited(u64),
    #[error("the system is working through a backlog of accepted dispatches; retry after {0} s")]
    Overloaded(u64),
    #[error("service temporarily unavailable")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Unprocessable {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// `{"error":{"code","message"}}` for this error, as one item of a batch answer. `None` for
    /// errors that are not the item's own (the service or the caller's credentials): the whole
    /// request fails with those instead.
    pub fn item_error(&self) -> Option<ErrorBody> {
        let (status, code) = self.status_and_code();
        (status.is_client_error()
            && !matches!(
                self,
                ApiError::Unauthorized | ApiError::RateLimited(_) | ApiError::Overloaded(_)
            ))
        .then(|| ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
            },
        })
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::InvalidSignature => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

/// The body of every error answer: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code, e.g. `not_found`, `invalid_field`, `rate_limited`.
    #[schema(examples("invalid_field"))]
    pub code: String,
    /// A human-readable explanation; it names the offending field where there is one.
    #[schema(examples("data: invalid type: string \"x\", expected a map"))]
    pub message: String,
}

/// The error body every endpoint uses, also for rejections outside handlers (404, 405, 413).
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
        },
    };
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        serde_json::to_string(&body).expect("error body serializes"),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            ApiError::Unavailable(cause) => {
                tracing::warn!(%cause, "answering 503");
            }
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "answering 500");
            }
            _ => {}
        }
        let mut resp = error_response(status, code, &self.to_string());
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"dispatcher\", charset=\"UTF-8\""),
            );
        }
        if let ApiError::RateLimited(secs) | ApiError::Overloaded(secs) = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ApiError::Unavailable(_)) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// A path segment that cannot be decoded (not UTF-8 after percent-decoding) names nothing that
/// exists.
impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(_: axum::extract::rejection::PathRejection) -> Self {
        ApiError::NotFound("resource")
    }
}

/// A raw body that could not be read: over the body limit (413) or broken off (400).
impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(e: axum::extract::rejection::BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::bad_request("invalid_body", e.body_text())
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

/// OpenAPI pieces shared by the services' documents: one reusable response per error status
/// (`#/components/responses/...`, each with the [`ErrorBody`] schema and the headers
/// [`ApiError::into_response`] sets), the schemas they use and the `basicAuth` scheme.
pub mod doc {
    use super::{ErrorBody, ErrorDetail};
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};
    use utoipa::{Modify, PartialSchema, ToResponse, ToSchema};

    /// The name of the HTTP Basic security scheme (account email and password).
    pub const BASIC_AUTH: &str = "basicAuth";

    fn error_response(description: &str, headers: &[(&str, &str, Option<&str>)]) -> Response {
        let mut r = ResponseBuilder::new().description(description).content(
            "application/json",
            Content::new(Some(Ref::from_schema_name(ErrorBody::name()))),
        );
        for (name, desc, pattern) in headers {
            let mut schema = ObjectBuilder::new().schema_type(Type::String);
            if let Some(p) = pattern {
                schema = schema.pattern(Some(*p));
            }
            r = r.header(
                *name,
                HeaderBuilder::new()
                    .schema(schema)
                    .description(Some(*desc))
                    .build(),
            );
        }
        r.build()
    }

    macro_rules! error_responses {
        ($($(#[$attr:meta])* $name:ident => $desc:literal $(, ($h:literal, $hdesc:literal, $hpat:expr))*;)*) => {
            $(
                $(#[$attr])*
                pub struct $name;

                impl<'r> ToResponse<'r> for $name {
                    fn response() -> (&'r str, RefOr<Response>) {
                        (stringify!($name), error_response($desc, &[$(($h, $hdesc, $hpat)),*]).into())
                    }
                }
            )*

            fn all_responses() -> Vec<(&'static str, RefOr<Response>)> {
                vec![$(<$name as ToResponse>::response()),*]
            }
        };
    }

    error_responses! {
        /// 400.
        BadRequest => "The query string, a header or the body's JSON syntax is invalid (`invalid_query`, `invalid_limit`, `invalid_cursor`, `invalid_status`, `invalid_idempotency_key`, `malformed_json`, `invalid_body`).";
        /// 401 for the Basic-authenticated routes.
        Unauthorized => "Missing or wrong HTTP Basic credentials (`unauthorized`).",
            ("WWW-Authenticate", "Always `Basic realm=\"dispatcher\", charset=\"UTF-8\"`.", Some("^Basic "));
        /// 401 for signed provider callbacks.
        InvalidSignature => "The `X-Provider-Signature` header is missing or does not match the body (`invalid_signature`).";
        /// 404.
        NotFound => "No such object for this account, or a malformed id (`not_found`). Another account's objects are never shown.";
        /// 405, answered for any method a path does not list.
        MethodNotAllowed => "The path exists but not with this method (`method_not_allowed`).",
            ("Allow", "The methods the path accepts.", None);
        /// 409.
        Conflict => "The request conflicts with the object's state (`idempotency_key_reused`, `dispatch_not_finished`).";
        /// 413.
        PayloadTooLarge => "The body exceeds the service's body limit (`payload_too_large`).";
        /// 415.
        UnsupportedMediaType => "The body is not sent as `Content-Type: application/json` (`unsupported_media_type`).";
        /// 422.
        UnprocessableEntity => "The body is well-formed JSON but a field is missing, of the wrong type, unknown or refused (`invalid_field` and more specific codes); the message names the field.";
        /// 429.
        TooManyRequests => "The account's rate limit is exceeded (`rate_limited`), or the system is working through a backlog of accepted dispatches beyond `ingest.max_backlog` (`overloaded`).",
            ("Retry-After", "Seconds to wait before retrying.", Some("^[0-9]+$"));
        /// 500.
        InternalError => "An unexpected server error (`internal_error`); the body carries no internals.";
        /// 503.
        ServiceUnavailable => "The database is unreachable or overloaded; retry (`service_unavailable`).",
            ("Retry-After", "Seconds to wait before retrying.", Some("^[0-9]+$"));
    }

    /// Adds the error responses, the error schemas and the `basicAuth` security scheme to a
    /// document (use in `#[openapi(modifiers(&ErrorComponents))]`).
    pub struct ErrorComponents;

    impl Modify for ErrorComponents {
        fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
            let components = openapi.components.get_or_insert_with(Default::default);
            for (name, response) in all_responses() {
                components.responses.insert(name.to_owned(), response);
            }
            components
                .schemas
                .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
            components
                .schemas
                .insert(ErrorDetail::name().into_owned(), ErrorDetail::schema());
            components.security_schemes.insert(
                BASIC_AUTH.to_owned(),
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Basic)
                        .description(Some(
                            "The account's email as user name and its password (`dispatchctl accounts create`).",
                        ))
                        .build(),
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_have_the_documented_shape() {
        let resp =
            ApiError::unprocessable("invalid_field", "data: expected an object").into_response();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_field");
        assert_eq!(v["error"]["message"], "data: expected an object");
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let resp = ApiError::Internal("relation \"x\" does not exist".into()).into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("relation"));
    }

    #[test]
    fn unauthorized_asks_for_basic() {
        let resp = ApiError::Unauthorized.into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
    }
}
