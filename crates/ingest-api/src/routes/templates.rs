use crate::AppState;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use dispatcher_core::TemplateFormat;
use dispatcher_db::templates::{self, Template};
use dispatcher_http::error::doc::{
    BadRequest, InternalError, NotFound, PayloadTooLarge, ServiceUnavailable, TooManyRequests,
    Unauthorized, UnprocessableEntity, UnsupportedMediaType,
};
use dispatcher_http::{commands, cursor, ApiError, ApiJson, ApiQuery, AuthAccount};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplate {
    /// 1 to 200 characters, not only whitespace (stored trimmed).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
    )]
    name: String,
    format: TemplateFormat,
    /// Template text, at most 256 KiB of UTF-8; it must parse. Jinja-style (minijinja) for the
    /// text formats; Typst markup for `pdf`, with the dispatch's data bound as `data`.
    #[schema(pattern = r"^[^\u0000]*$")]
    body: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBody {
    template_id: Uuid,
    name: String,
    format: TemplateFormat,
    body: String,
    created_at: DateTime<Utc>,
}

impl From<Template> for TemplateBody {
    fn from(t: Template) -> Self {
        Self {
            template_id: t.id,
            name: t.name,
            format: t.format,
            body: t.body,
            created_at: t.created_at,
        }
    }
}

/// Checks a template body and reports a syntax error with its line (shared with the dashboard).
pub use dispatcher_http::commands::check_template_body as check_body;

/// Create a template.
#[utoipa::path(
    post,
    path = "/v1/templates",
    tag = "templates",
    operation_id = "createTemplate",
    security(("basicAuth" = [])),
    request_body(content = CreateTemplate, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = TemplateBody),
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
pub async fn create(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    ApiJson(req): ApiJson<CreateTemplate>,
) -> Result<(StatusCode, Json<TemplateBody>), ApiError> {
    let t = commands::create_template(&s.pool, account, &req.name, req.format, &req.body).await?;
    s.templates.put(account, t.id, t.format, t.body.clone());
    Ok((StatusCode::CREATED, Json(t.into())))
}

/// Get a template.
#[utoipa::path(
    get,
    path = "/v1/templates/{id}",
    tag = "templates",
    operation_id = "getTemplate",
    security(("basicAuth" = [])),
    params(("id" = Uuid, Path, description = "The template's id; anything else answers 404.")),
    responses(
        (status = 200, description = "The template.", body = TemplateBody),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
pub async fn get(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TemplateBody>, ApiError> {
    let Path(id) = id?;
    let id = super::parse_id(&id, "template")?;
    templates::get(&s.pool, account, id)
        .await?
        .map(|t| Json(t.into()))
        .ok_or(ApiError::NotFound("template"))
}

/// A page of templates, newest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateList {
    data: Vec<TemplateBody>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required)]
    next_cursor: Option<String>,
}

/// List templates, newest first.
#[utoipa::path(
    get,
    path = "/v1/templates",
    tag = "templates",
    operation_id = "listTemplates",
    security(("basicAuth" = [])),
    params(cursor::PageQuery),
    responses(
        (status = 200, description = "A page of templates.", body = TemplateList),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
pub async fn list(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    ApiQuery(q): ApiQuery<cursor::PageQuery>,
) -> Result<Json<TemplateList>, ApiError> {
    let (before, limit) = cursor::page(q.cursor.as_deref(), q.limit)?;
    let rows = templates::list(&s.pool, account, before, limit).await?;
    let next_cursor = cursor::next(&rows, limit, |r| (r.created_at, r.id));
    Ok(Json(TemplateList {
        data: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}
