//! The templates page: the account's templates, and an editor that creates one with a preview
//! rendered from sample data.
//!
//! Templates are immutable once created (the ingest caches them by id, and queued dispatches
//! refer to them), so editing one opens its text in the editor and saves a new template; the
//! original stays as it was. Creating goes through `dispatcher_http::commands::create_template`,
//! as `POST /v1/templates` does; the preview through the same checks and renderer as
//! `POST /v1/dispatches/validate`. Without a script, the Preview button posts the form into the
//! preview frame (`formtarget`), which shows the rendered document under the same policy as a
//! dispatch's document.

use crate::pages::{document_csp, preview_kind, when};
use crate::{page_result, UiError, UiSession, UiState};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use dispatcher_core::TemplateFormat;
use dispatcher_db::templates;
use dispatcher_http::{commands, cursor, ApiError};
use minijinja::context;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What the editor's sample data starts as.
const SAMPLE_DATA: &str = "{\n  \"name\": \"Ada\"\n}";

/// The policy of a preview that could not be rendered: its own small page in the frame.
const PREVIEW_ERROR_CSP: &str = "sandbox; default-src 'none'; style-src 'self'; \
     frame-ancestors 'self'; base-uri 'none'; form-action 'none'";

#[derive(Serialize)]
struct Row {
    id: Uuid,
    name: String,
    format: &'static str,
    created_at: String,
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    cursor: String,
}

/// The account's templates, newest first, a page at a time.
pub async fn list(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
    Query(q): Query<ListQuery>,
) -> Response {
    let r = async {
        let cursor_arg = (!q.cursor.is_empty()).then_some(q.cursor.as_str());
        let (before, limit) = cursor::page(cursor_arg, None)?;
        let rows = templates::list(&s.pool, session.account, before, limit).await?;
        let next = cursor::next(&rows, limit, |t| (t.created_at, t.id));
        let rows: Vec<Row> = rows
            .into_iter()
            .map(|t| Row {
                id: t.id,
                name: t.name,
                format: t.format.as_str(),
                created_at: when(t.created_at),
            })
            .collect();
        let html = s.render(
            "templates.html",
            context! {
                csrf => &session.csrf,
                section => "templates",
                rows => rows,
                older_href => next.map(|c| format!("/ui/templates?cursor={c}")),
                newest_href => cursor_arg.map(|_| "/ui/templates"),
            },
        )?;
        Ok(html.into_response())
    }
    .await;
    page_result(&s, r)
}

/// The editor's fields, as posted (the Create and the Preview buttons send the same form).
#[derive(Deserialize, Default)]
pub struct EditorForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    format: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    data: String,
}

/// The editor page: empty, the text of an existing template, or a refused form with its reason.
fn editor(
    s: &UiState,
    session: &UiSession,
    status: StatusCode,
    form: &EditorForm,
    original: Option<&templates::Template>,
    error: Option<String>,
    done: bool,
) -> Result<Response, UiError> {
    let formats: Vec<&str> = TemplateFormat::ALL.iter().map(|f| f.as_str()).collect();
    let html = s.render(
        "template.html",
        context! {
            csrf => &session.csrf,
            section => "templates",
            formats => formats,
            form_name => &form.name,
            form_format => if form.format.is_empty() { "html" } else { form.format.as_str() },
            form_body => &form.body,
            form_data => &form.data,
            original => original.map(|t| context! {
                id => t.id,
                name => &t.name,
                format => t.format.as_str(),
                created_at => when(t.created_at),
            }),
            error => error,
            done => done,
        },
    )?;
    Ok((status, html).into_response())
}

/// An empty editor.
pub async fn new(State(s): State<UiState>, Extension(session): Extension<UiSession>) -> Response {
    let form = EditorForm {
        data: SAMPLE_DATA.into(),
        ..EditorForm::default()
    };
    let r = editor(&s, &session, StatusCode::OK, &form, None, None, false);
    page_result(&s, r)
}

#[derive(Deserialize, Default)]
pub struct ShowQuery {
    #[serde(default)]
    done: String,
}

/// One template, its text in the editor (saving makes a new template).
pub async fn show(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Response {
    let r = async {
        let id: Uuid = id.parse().map_err(|_| ApiError::NotFound("template"))?;
        let t = templates::get(&s.pool, session.account, id)
            .await?
            .ok_or(ApiError::NotFound("template"))?;
        let form = EditorForm {
            name: t.name.clone(),
            format: t.format.as_str().into(),
            body: t.body.clone(),
            data: SAMPLE_DATA.into(),
        };
        editor(
            &s,
            &session,
            StatusCode::OK,
            &form,
            Some(&t),
            None,
            q.done == "created",
        )
    }
    .await;
    page_result(&s, r)
}

fn parse_format(format: &str) -> Result<TemplateFormat, ApiError> {
    TemplateFormat::parse(format).ok_or_else(|| {
        let all: Vec<&str> = TemplateFormat::ALL.iter().map(|f| f.as_str()).collect();
        ApiError::unprocessable(
            "invalid_field",
            format!("format: must be one of {}", all.join(", ")),
        )
    })
}

/// Creates a template through the same checks as `POST /v1/templates`; a refused one shows the
/// editor again with the reason and what was typed.
pub async fn create(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
    Form(f): Form<EditorForm>,
) -> Response {
    let r = async {
        let created = match parse_format(&f.format) {
            Ok(format) => {
                commands::create_template(&s.pool, session.account, &f.name, format, &f.body).await
            }
            Err(e) => Err(e),
        };
        match created {
            Ok(t) => {
                Ok(Redirect::to(&format!("/ui/templates/{}?done=created", t.id)).into_response())
            }
            Err(e @ ApiError::Unprocessable { .. }) => editor(
                &s,
                &session,
                StatusCode::UNPROCESSABLE_ENTITY,
                &f,
                None,
                Some(e.to_string()),
                false,
            ),
            Err(e) => Err(e.into()),
        }
    }
    .await;
    page_result(&s, r)
}

/// The sample data: a JSON object, as a dispatch's `data` must be.
fn parse_data(data: &str) -> Result<serde_json::Value, ApiError> {
    let data = if data.trim().is_empty() { "{}" } else { data };
    let v: serde_json::Value = serde_json::from_str(data)
        .map_err(|e| ApiError::unprocessable("invalid_field", format!("data: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "data: must be a JSON object",
        ));
    }
    Ok(v)
}

/// Renders the editor's template with its sample data, as `POST /v1/dispatches/validate` would
/// for `{"template": {format, body}, "data": ...}`: the document under the policy a dispatch's
/// document is shown with, or a small page with the error the dispatch would get.
pub async fn preview(
    State(s): State<UiState>,
    Extension(_session): Extension<UiSession>,
    Form(f): Form<EditorForm>,
) -> Response {
    let rendered = async {
        let format = parse_format(&f.format)?;
        let data = parse_data(&f.data)?;
        commands::reject_nul(&data)?;
        commands::check_template_body(format, &f.body)?;
        s.previewer()
            .await
            .map_err(|e| e.0)?
            .render(format, f.body, data)
            .await
    }
    .await;
    match rendered {
        Ok(doc) => {
            let kind = preview_kind(doc.content_type);
            // Text formats are shown as text: a browser would download text/csv or markdown.
            let content_type = match kind {
                "text" => "text/plain; charset=utf-8",
                _ => doc.content_type,
            };
            let mut resp = (StatusCode::OK, doc.bytes).into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(document_csp(kind)),
            );
            resp
        }
        Err(e) => {
            let (status, code) = e.status_and_code();
            if status.is_server_error() {
                tracing::error!(error = ?e, "template preview failed");
            }
            let message = e.to_string();
            match s.render(
                "preview_error.html",
                context! { status => status.as_u16(), code => code, message => message },
            ) {
                Ok(html) => {
                    let mut resp = (status, html).into_response();
                    resp.headers_mut().insert(
                        header::CONTENT_SECURITY_POLICY,
                        HeaderValue::from_static(PREVIEW_ERROR_CSP),
                    );
                    resp
                }
                Err(e) => e.into_response(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_data_is_a_json_object() {
        assert_eq!(parse_data("").unwrap(), serde_json::json!({}));
        assert_eq!(
            parse_data(r#"{"a": [1]}"#).unwrap(),
            serde_json::json!({"a": [1]})
        );
        assert!(parse_data("[1]").is_err());
        assert!(parse_data("{").is_err());
        assert!(parse_format("pdf").is_ok());
        assert!(parse_format("docx").is_err());
    }
}
