use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use dispatcher_core::{template, TemplateFormat};
use dispatcher_db::templates::{self, Template};
use dispatcher_http::{cursor, ApiError, ApiJson, ApiQuery, AuthAccount};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const MAX_NAME: usize = 200;
const MAX_BODY: usize = 256 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplate {
    name: String,
    format: TemplateFormat,
    body: String,
}

#[derive(Serialize)]
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

/// Checks a template body and reports a syntax error with its line.
pub fn check_body(format: TemplateFormat, body: &str) -> Result<(), ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::unprocessable(
            "template_too_large",
            format!("template body exceeds {MAX_BODY} bytes"),
        ));
    }
    template::validate(format, body)
        .map_err(|e| ApiError::unprocessable("template_syntax_error", e.to_string()))
}

pub async fn create(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    ApiJson(req): ApiJson<CreateTemplate>,
) -> Result<(StatusCode, Json<TemplateBody>), ApiError> {
    let name = req.name.trim();
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("name: must be 1 to {MAX_NAME} characters"),
        ));
    }
    check_body(req.format, &req.body)?;
    let t = templates::insert(&s.pool, account, name, req.format, &req.body).await?;
    s.templates.put(account, t.id, t.format, t.body.clone());
    Ok((StatusCode::CREATED, Json(t.into())))
}

pub async fn get(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    Path(id): Path<String>,
) -> Result<Json<TemplateBody>, ApiError> {
    let id = super::parse_id(&id, "template")?;
    templates::get(&s.pool, account, id)
        .await?
        .map(|t| Json(t.into()))
        .ok_or(ApiError::NotFound("template"))
}

#[derive(Deserialize)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateList {
    data: Vec<TemplateBody>,
    next_cursor: Option<String>,
}

pub async fn list(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<TemplateList>, ApiError> {
    let limit = cursor::limit(q.limit)?;
    let before = q.cursor.as_deref().map(cursor::decode).transpose()?;
    let rows = templates::list(&s.pool, account, before, limit).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|t| cursor::encode(t.created_at, t.id)))
        .flatten();
    Ok(Json(TemplateList {
        data: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}
