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
use dispatcher_http::{cursor, ApiError, ApiJson, ApiQuery, AuthAccount};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

const MAX_NAME: usize = 200;
const MAX_BODY: usize = 256 * 1024;
/// Digests of template bodies known to parse (about 200 bytes each with the cache's bookkeeping).
const VALID_BODIES: u64 = 10_000;

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

/// Clients often send the same inline template with every dispatch: the bodies that parsed are
/// remembered (by SHA-256) instead of compiled again on every request. The keys are small and of
/// one size, so the set is bounded by entries; the ones in use stay.
static VALID: std::sync::LazyLock<moka::sync::Cache<[u8; 32], ()>> =
    std::sync::LazyLock::new(|| moka::sync::Cache::new(VALID_BODIES));

fn body_key(format: TemplateFormat, body: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(format.as_str().as_bytes());
    h.update([0]);
    h.update(body.as_bytes());
    h.finalize().into()
}

/// Checks a template body and reports a syntax error with its line.
pub fn check_body(format: TemplateFormat, body: &str) -> Result<(), ApiError> {
    super::reject_nul_str(body, "body")?;
    if body.len() > MAX_BODY {
        return Err(ApiError::unprocessable(
            "template_too_large",
            format!("template body exceeds {MAX_BODY} bytes"),
        ));
    }
    let key = body_key(format, body);
    if VALID.get(&key).is_some() {
        return Ok(());
    }
    dispatcher_render::check_syntax(format, body)
        .map_err(|e| ApiError::unprocessable("template_syntax_error", e.to_string()))?;
    VALID.insert(key, ());
    Ok(())
}

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
    // Counted in characters before trimming, as the document's maxLength counts them.
    super::reject_nul_str(&req.name, "name")?;
    let name = req.name.trim();
    if name.is_empty() || req.name.chars().count() > MAX_NAME {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("name: must be 1 to {MAX_NAME} characters, not only whitespace"),
        ));
    }
    check_body(req.format, &req.body)?;
    let t = templates::insert(&s.pool, account, name, req.format, &req.body).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_bodies_stay_bounded_and_the_ones_in_use_stay() {
        let hot = "Hello {{ name }}, the template everyone sends";
        check_body(TemplateFormat::Text, hot).unwrap();
        for i in 0..3 * VALID_BODIES {
            check_body(TemplateFormat::Text, &format!("one-off {i} {{{{ x }}}}")).unwrap();
            check_body(TemplateFormat::Text, hot).unwrap();
            if i % 1000 == 0 {
                VALID.run_pending_tasks();
            }
        }
        VALID.run_pending_tasks();
        assert!(
            VALID.entry_count() <= VALID_BODIES,
            "{}",
            VALID.entry_count()
        );
        assert!(VALID.contains_key(&body_key(TemplateFormat::Text, hot)));
        // A body that does not parse is never remembered.
        assert!(check_body(TemplateFormat::Text, "{% if %}").is_err());
        assert!(!VALID.contains_key(&body_key(TemplateFormat::Text, "{% if %}")));
    }
}
