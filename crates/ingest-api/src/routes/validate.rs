//! `POST /v1/dispatches/validate`: renders a dispatch body without storing, queueing or sending
//! anything. Template authors preview with it; clients check a request before they send it.

use super::dispatches::{prepare, SubmitBody};
use crate::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use dispatcher_http::error::doc::{
    BadRequest, InternalError, PayloadTooLarge, ServiceUnavailable, TooManyRequests, Unauthorized,
    UnprocessableEntity, UnsupportedMediaType,
};
use dispatcher_http::{ApiError, ApiJson, AuthAccount};

/// A document's raw bytes (a PDF).
pub(crate) struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Binary,
            )))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

/// Render a dispatch without sending it.
///
/// Takes the same body as `POST /v1/dispatches` and makes the same checks, then renders the
/// document and answers it in its content type (`application/pdf` for `pdf`). Nothing is stored,
/// queued or sent. A request the dispatch endpoint would refuse gets the same error here; a
/// template that fails to render answers 422 `template_render_error` with the message the
/// dispatch would have failed with. Previews share a bounded number of render slots: when all
/// are busy for 2 s the answer is 503 with `Retry-After`.
#[utoipa::path(
    post,
    path = "/v1/dispatches/validate",
    tag = "dispatches",
    operation_id = "validateDispatch",
    security(("basicAuth" = [])),
    request_body(content = SubmitBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The rendered document, in its format's content type.",
         content(
             (String = "text/html; charset=utf-8"),
             (String = "text/plain; charset=utf-8"),
             (String = "text/markdown; charset=utf-8"),
             (Object = "application/json"),
             (String = "text/csv; charset=utf-8"),
             (Binary = "application/pdf"),
         )),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
pub async fn validate(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    ApiJson(raw): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let p = prepare(&s, account, raw).await?;
    let (format, body, data) = p.into_template_and_data();
    let doc = s.previews.render(format, body, data).await?;
    Ok(([(header::CONTENT_TYPE, doc.content_type)], doc.bytes).into_response())
}
