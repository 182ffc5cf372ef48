//! The dashboard's handlers: sign-in and sign-out, the dispatch list, one dispatch and its
//! document, redelivery.

use crate::session::{self, LOGIN_COOKIE, LOGIN_FORM_TTL, SESSION_COOKIE};
use crate::{load_session, page_result, UiError, UiSession, UiState};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, Extensions, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use chrono::{DateTime, Utc};
use dispatcher_core::DispatchStatus;
use dispatcher_db::{deliveries, dispatches, ui_sessions};
use dispatcher_http::commands::{self, RedeliverTarget};
use dispatcher_http::views::DispatchBody;
use dispatcher_http::{cursor, ApiError};
use minijinja::context;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;
use uuid::Uuid;

/// Seconds between refreshes of a page showing work in flight.
const REFRESH_SECS: u32 = 3;
/// Most of a text document shown inline.
const TEXT_PREVIEW_BYTES: usize = 256 * 1024;

pub(crate) fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn with_cookie(mut resp: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    #[serde(default)]
    signed_out: Option<String>,
}

/// The sign-in form, with a fresh double-submit token (or the dispatches, when signed in).
pub async fn login_form(
    State(s): State<UiState>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    if let Ok(Some(_)) = load_session(&s, &headers).await {
        return Redirect::to("/ui/dispatches").into_response();
    }
    login_page(
        &s,
        &headers,
        StatusCode::OK,
        "",
        None,
        q.signed_out.is_some(),
    )
}

/// The sign-in page with a new form token in its cookie and hidden field.
fn login_page(
    s: &UiState,
    headers: &HeaderMap,
    status: StatusCode,
    email: &str,
    error: Option<&str>,
    signed_out: bool,
) -> Response {
    let token = session::new_token();
    let page = s.render(
        "login.html",
        context! { token => &token, email => email, error => error, signed_out => signed_out },
    );
    match page {
        Ok(html) => with_cookie(
            (status, html).into_response(),
            &session::set_cookie(
                LOGIN_COOKIE,
                &token,
                LOGIN_FORM_TTL,
                session::is_secure(&s.settings.status.public_url, headers),
            ),
        ),
        Err(e) => e.render(s),
    }
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
}

/// Checks the credentials exactly as the API does (argon2, failed sign-in limits per email and
/// per client address), then starts a session.
pub async fn login(
    State(s): State<UiState>,
    headers: HeaderMap,
    ext: Extensions,
    Form(f): Form<LoginForm>,
) -> Response {
    let expected = session::read_cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !session::tokens_match(&f.token, expected) {
        return login_page(
            &s,
            &headers,
            StatusCode::FORBIDDEN,
            &f.email,
            Some("The sign-in form expired. Please try again."),
            false,
        );
    }
    let client = ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let account = match s.auth.authenticate(&f.email, &f.password, client).await {
        Ok(a) => a,
        Err(ApiError::Unauthorized) => {
            return login_page(
                &s,
                &headers,
                StatusCode::UNAUTHORIZED,
                &f.email,
                Some("Wrong email or password."),
                false,
            );
        }
        Err(ApiError::RateLimited(secs)) => {
            let msg = format!("Too many attempts. Try again in {secs} s.");
            return login_page(
                &s,
                &headers,
                StatusCode::TOO_MANY_REQUESTS,
                &f.email,
                Some(&msg),
                false,
            );
        }
        Err(e) => return UiError(e).render(&s),
    };
    page_result(&s, start_session(&s, &headers, account).await)
}

async fn start_session(
    s: &UiState,
    headers: &HeaderMap,
    account: Uuid,
) -> Result<Response, UiError> {
    let now = Utc::now();
    let ui = &s.settings.ui;
    let ago = |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    ui_sessions::delete_expired(&s.pool, account, ago(ui.session_idle), ago(ui.session_max))
        .await?;
    let id = session::new_token();
    let hash = session::id_hash(&id).expect("a new token is 256 bits");
    ui_sessions::insert(&s.pool, &hash, account, now).await?;
    let secure = session::is_secure(&s.settings.status.public_url, headers);
    let resp = Redirect::to("/ui/dispatches").into_response();
    let resp = with_cookie(
        resp,
        &session::set_cookie(SESSION_COOKIE, &id, ui.session_max, secure),
    );
    Ok(with_cookie(
        resp,
        &session::set_cookie(LOGIN_COOKIE, "", Duration::ZERO, secure),
    ))
}

/// Ends the session on the server and drops the cookie.
pub async fn logout(
    State(s): State<UiState>,
    headers: HeaderMap,
    Extension(session): Extension<UiSession>,
) -> Response {
    let r = async {
        ui_sessions::delete(&s.pool, &session.id_hash).await?;
        let secure = session::is_secure(&s.settings.status.public_url, &headers);
        Ok(with_cookie(
            Redirect::to("/ui/login?signed_out=1").into_response(),
            &session::set_cookie(SESSION_COOKIE, "", Duration::ZERO, secure),
        ))
    }
    .await;
    page_result(&s, r)
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    key: String,
}

#[derive(Serialize)]
struct Row {
    id: Uuid,
    status: &'static str,
    queued_at: String,
    queued_iso: String,
    completed_at: Option<String>,
    metadata: String,
}

/// The list's filters, carried by its links.
#[derive(Default)]
struct Filters<'a> {
    status: &'a str,
    key: &'a str,
    q: &'a str,
}

fn list_href(f: &Filters<'_>, cursor: Option<&str>) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in [("status", f.status), ("key", f.key), ("q", f.q)] {
        if !value.is_empty() {
            q.append_pair(name, value);
        }
    }
    if let Some(c) = cursor {
        q.append_pair("cursor", c);
    }
    let q = q.finish();
    if q.is_empty() {
        "/ui/dispatches".into()
    } else {
        format!("/ui/dispatches?{q}")
    }
}

/// Newest first, by status, a page at a time (the API's keyset cursor). `q` is a dispatch id
/// (which opens that dispatch when the account has it) or a metadata value, looked for under
/// `key` when one is given.
pub async fn dispatches(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
    Query(q): Query<ListQuery>,
) -> Response {
    let r = list_page(&s, &session, q).await;
    page_result(&s, r)
}

async fn list_page(s: &UiState, session: &UiSession, q: ListQuery) -> Result<Response, UiError> {
    let search = q.q.trim();
    let key = q.key.trim();
    if key.is_empty() {
        if let Ok(id) = search.parse::<Uuid>() {
            if dispatches::get(&s.pool, session.account, id)
                .await?
                .is_some()
            {
                return Ok(Redirect::to(&format!("/ui/dispatches/{id}")).into_response());
            }
        }
    }
    let status = match q.status.as_str() {
        "" => None,
        st => Some(
            st.parse::<DispatchStatus>()
                .map_err(|e| ApiError::bad_request("invalid_status", e))?,
        ),
    };
    let cursor_arg = (!q.cursor.is_empty()).then_some(q.cursor.as_str());
    let (before, limit) = cursor::page(cursor_arg, None)?;
    let rows = if search.is_empty() {
        dispatches::list(&s.pool, session.account, status, before, limit).await?
    } else {
        let matching = dispatches::MetadataMatch {
            key: (!key.is_empty()).then_some(key),
            value: search,
        };
        dispatches::search_metadata(&s.pool, session.account, status, matching, before, limit)
            .await?
    };
    let next = cursor::next(&rows, limit, |d| (d.queued_at, d.id));
    let in_flight = rows.iter().any(|d| !d.status.is_terminal());
    let rows: Vec<Row> = rows
        .into_iter()
        .map(|d| Row {
            id: d.id,
            status: d.status.as_str(),
            queued_at: when(d.queued_at),
            queued_iso: d.queued_at.to_rfc3339(),
            completed_at: d.completed_at.map(when),
            metadata: d
                .metadata
                .map(|m| {
                    let text = m.to_string();
                    if text.chars().count() > 160 {
                        format!("{}…", text.chars().take(160).collect::<String>())
                    } else {
                        text
                    }
                })
                .unwrap_or_default(),
        })
        .collect();
    let statuses: Vec<&str> = DispatchStatus::ALL.iter().map(|s| s.as_str()).collect();
    let status_str = status.map(|s| s.as_str()).unwrap_or("");
    let filters = Filters {
        status: status_str,
        key,
        q: search,
    };
    let html = s.render(
        "dispatches.html",
        context! {
            csrf => &session.csrf,
            section => "dispatches",
            rows => rows,
            statuses => statuses,
            status => status_str,
            q => search,
            key => key,
            searching => !search.is_empty(),
            newest_href => cursor_arg.map(|_| list_href(&filters, None)),
            older_href => next.as_deref().map(|c| list_href(&filters, Some(c))),
            refresh => in_flight.then_some(REFRESH_SECS),
        },
    )?;
    Ok(html.into_response())
}

/// A malformed id is a dispatch that does not exist, as in the API.
fn parse_id(id: &str) -> Result<Uuid, UiError> {
    id.parse()
        .map_err(|_| UiError(ApiError::NotFound("dispatch")))
}

#[derive(Serialize)]
struct Step {
    label: &'static str,
    at: Option<String>,
    iso: Option<String>,
    state: &'static str,
}

#[derive(Serialize)]
struct DeliveryRow {
    id: Uuid,
    url: String,
    status: String,
    attempts: i32,
    next_attempt_at: Option<String>,
}

#[derive(Serialize)]
struct AttemptRow {
    attempt: i32,
    url: String,
    status: String,
    response_status: Option<i32>,
    error: Option<String>,
    duration_ms: i32,
    attempted_at: String,
    next_attempt_at: Option<String>,
}

/// queued → processing → completed or failed, with the time of each step reached.
fn timeline(d: &dispatches::DispatchView) -> Vec<Step> {
    let step = |label, at: Option<DateTime<Utc>>, state| Step {
        label,
        at: at.map(when),
        iso: at.map(|t| t.to_rfc3339()),
        state,
    };
    let reached = |at: Option<DateTime<Utc>>| if at.is_some() { "done" } else { "todo" };
    let last = match d.status {
        DispatchStatus::Failed => step("failed", d.completed_at, "failed"),
        _ => step("completed", d.completed_at, reached(d.completed_at)),
    };
    vec![
        step("queued", Some(d.queued_at), "done"),
        step("processing", d.started_at, reached(d.started_at)),
        last,
    ]
}

#[derive(Deserialize, Default)]
pub struct DispatchQuery {
    redelivered: Option<usize>,
}

/// One dispatch: its timeline, deliveries, attempts and document.
pub async fn dispatch(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
    Path(id): Path<String>,
    Query(q): Query<DispatchQuery>,
) -> Response {
    let r = dispatch_page(&s, &session, &id, q).await;
    page_result(&s, r)
}

async fn dispatch_page(
    s: &UiState,
    session: &UiSession,
    id: &str,
    q: DispatchQuery,
) -> Result<Response, UiError> {
    let id = parse_id(id)?;
    let account = session.account;
    let view = dispatches::get(&s.pool, account, id)
        .await?
        .ok_or(ApiError::NotFound("dispatch"))?;
    let deliveries = deliveries::states_for_dispatch(&s.pool, account, id).await?;
    let attempts = deliveries::list_attempts(&s.pool, account, id).await?;
    let content_type = if view.has_result {
        dispatches::result_content_type(&s.pool, account, id).await?
    } else {
        None
    };
    let preview = content_type.as_deref().map(preview_kind).unwrap_or("none");
    let (mut text, mut truncated) = (String::new(), false);
    if preview == "text" {
        let doc = dispatcher_http::documents::open(&s.pool, s.store.as_ref(), account, id).await?;
        // Documents are bounded by render.max_output_bytes.
        let doc = axum::body::to_bytes(doc.body, usize::MAX)
            .await
            .map_err(|e| ApiError::Unavailable(format!("reading the document: {e}")))?;
        truncated = doc.len() > TEXT_PREVIEW_BYTES;
        text = String::from_utf8_lossy(&doc[..doc.len().min(TEXT_PREVIEW_BYTES)]).into_owned();
    }
    let terminal = view.status.is_terminal();
    let pending = deliveries.iter().any(|d| d.status == "pending");
    let metadata = view
        .metadata
        .as_ref()
        .map(|m| serde_json::to_string_pretty(m).unwrap_or_default());
    let timeline = timeline(&view);
    let body = DispatchBody::new(view, s.settings.public_base());
    let html = s.render(
        "dispatch.html",
        context! {
            csrf => &session.csrf,
            section => "dispatches",
            d => body,
            timeline => timeline,
            metadata => metadata,
            terminal => terminal,
            redelivered => q.redelivered,
            refresh => (!terminal || pending).then_some(REFRESH_SECS),
            deliveries => deliveries.into_iter().map(|d| DeliveryRow {
                id: d.id,
                url: d.url,
                status: d.status,
                attempts: d.attempts,
                next_attempt_at: d.next_attempt_at.map(when),
            }).collect::<Vec<_>>(),
            attempts => attempts.into_iter().map(|a| AttemptRow {
                attempt: a.attempt,
                url: a.url,
                status: a.status,
                response_status: a.response_status,
                error: a.error,
                duration_ms: a.duration_ms,
                attempted_at: when(a.attempted_at),
                next_attempt_at: a.next_attempt_at.map(when),
            }).collect::<Vec<_>>(),
            content_type => content_type,
            preview => preview,
            text => text,
            truncated => truncated,
        },
    )?;
    Ok(html.into_response())
}

/// How a document of this content type is previewed: `pdf` and `html` in a frame (HTML
/// sandboxed), `text` inline, `none` not at all.
pub(crate) fn preview_kind(content_type: &str) -> &'static str {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/pdf" => "pdf",
        "text/html" => "html",
        e if e.starts_with("text/") || e == "application/json" => "text",
        _ => "none",
    }
}

/// The policy a document is served under. HTML is sandboxed (no scripts, its own origin) with
/// inline styles allowed and nothing fetched; every document may be framed by the dashboard only.
pub(crate) fn document_csp(kind: &str) -> &'static str {
    match kind {
        "html" => {
            "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
             frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
        }
        "pdf" => "default-src 'none'; frame-ancestors 'self'",
        _ => "sandbox; default-src 'none'; frame-ancestors 'self'",
    }
}

#[derive(Deserialize, Default)]
pub struct ResultQuery {
    download: Option<String>,
}

/// The dispatch's document, under its own policy; `?download=1` as an attachment.
pub async fn result(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
    Path(id): Path<String>,
    Query(q): Query<ResultQuery>,
) -> Response {
    let r = async {
        let id = parse_id(&id)?;
        let doc = dispatcher_http::documents::open(&s.pool, s.store.as_ref(), session.account, id)
            .await?;
        let ct = doc.content_type;
        let kind = preview_kind(&ct);
        let mut resp = (StatusCode::OK, doc.body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&ct)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(document_csp(kind)),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
        if q.download.is_some() {
            let disposition = format!("attachment; filename=\"dispatch-{id}.{}\"", extension(&ct));
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
        }
        Ok(resp)
    }
    .await;
    page_result(&s, r)
}

fn extension(content_type: &str) -> &'static str {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    match essence {
        "application/pdf" => "pdf",
        "text/html" => "html",
        "text/markdown" => "md",
        "text/csv" => "csv",
        "application/json" => "json",
        "text/plain" => "txt",
        _ => "bin",
    }
}

#[derive(Deserialize)]
pub struct RedeliverForm {
    #[serde(default)]
    webhook_id: String,
    /// One delivery of the dispatch (its row's button); empty for every delivery.
    #[serde(default)]
    delivery_id: String,
}

/// Sends the outcome again through the same function as `POST /v1/dispatches/{id}/redeliver`:
/// to every endpoint, or to one delivery's.
pub async fn redeliver(
    State(s): State<UiState>,
    Extension(session): Extension<UiSession>,
    Path(id): Path<String>,
    Form(f): Form<RedeliverForm>,
) -> Response {
    let r = async {
        let id = parse_id(&id)?;
        let parse = |v: &str, what| {
            v.parse::<Uuid>()
                .map_err(|_| UiError(ApiError::NotFound(what)))
        };
        let target = match (f.webhook_id.trim(), f.delivery_id.trim()) {
            ("", "") => RedeliverTarget::All,
            (w, "") => RedeliverTarget::Webhook(parse(w, "delivery for that webhook")?),
            (_, d) => RedeliverTarget::Delivery(parse(d, "delivery")?),
        };
        let ids = commands::redeliver_to(&s.pool, session.account, id, target).await?;
        Ok(Redirect::to(&format!("/ui/dispatches/{id}?redelivered={}", ids.len())).into_response())
    }
    .await;
    page_result(&s, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_preview_by_type() {
        assert_eq!(preview_kind("application/pdf"), "pdf");
        assert_eq!(preview_kind("text/html; charset=utf-8"), "html");
        assert_eq!(preview_kind("TEXT/Plain"), "text");
        assert_eq!(preview_kind("application/json"), "text");
        assert_eq!(preview_kind("image/png"), "none");
        assert!(document_csp("html").starts_with("sandbox;"));
        assert!(!document_csp("html").contains("script"));
        assert_eq!(extension("text/csv; charset=utf-8"), "csv");
    }

    #[test]
    fn list_links_carry_the_filter_and_cursor() {
        assert_eq!(list_href(&Filters::default(), None), "/ui/dispatches");
        let f = Filters {
            status: "failed",
            key: "",
            q: "A&B 17",
        };
        assert_eq!(
            list_href(&f, Some("abc_-")),
            "/ui/dispatches?status=failed&q=A%26B+17&cursor=abc_-"
        );
    }
}
