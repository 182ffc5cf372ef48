//! The browser dashboard status-api serves at `/ui/`.
//!
//! Pages are rendered on the server from minijinja templates compiled into the binary (HTML
//! auto-escaping on: every value a user or a receiver supplied is escaped); the stylesheet is
//! embedded too and served with a year-long cache under a URL that names its content hash. No
//! page runs a script, so the Content-Security-Policy allows none from anywhere but the
//! dashboard itself.
//!
//! Reads and writes go through the same functions as the REST API (`dispatcher_db` with the
//! account id in every statement, `dispatcher_http::commands`), and sign-in through the API's
//! [`Authenticator`] with its argon2 check and failed sign-in limits.

mod dead_letters;
mod pages;
pub mod session;
mod templates;
mod webhooks;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use dispatcher_config::Settings;
use dispatcher_db::{ui_sessions, Pool};
use dispatcher_http::preview::Previewer;
use dispatcher_http::{ApiError, Authenticator};
use minijinja::Environment;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use uuid::Uuid;

/// What every dashboard page answers with, unless the route set its own (document previews).
pub const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; \
     img-src 'self' data:; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// Largest form body the dashboard reads.
const MAX_FORM_BYTES: usize = 64 * 1024;

const CSS: &str = include_str!("../static/app.css");

#[derive(Clone)]
pub struct UiState {
    pub settings: Arc<Settings>,
    pub pool: Pool,
    pub auth: Arc<Authenticator>,
    /// Where documents are kept when not in Postgres (`storage.url`).
    pub store: Option<dispatcher_storage::Store>,
    templates: Arc<Environment<'static>>,
    /// `?v=` of the stylesheet's URL: changes whenever its content does.
    css_version: Arc<str>,
    /// The queue whose dead-lettered messages are dispatches (`dispatch.requested`).
    dispatch_queue: Arc<str>,
    /// Renders template previews as `POST /v1/dispatches/validate` does; started on the first
    /// preview, so a status API whose dashboard previews nothing runs no render helpers.
    previews: Arc<tokio::sync::OnceCell<Previewer>>,
}

impl UiState {
    pub fn new(
        settings: Arc<Settings>,
        pool: Pool,
        auth: Arc<Authenticator>,
        store: Option<dispatcher_storage::Store>,
    ) -> Self {
        let digest = Sha256::digest(CSS.as_bytes());
        let css_version: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            pool,
            auth,
            store,
            dispatch_queue: dispatcher_mq::Topology::from_settings(&settings)
                .dispatch_queue()
                .into(),
            settings,
            templates: Arc::new(templates()),
            css_version: css_version.into(),
            previews: Arc::default(),
        }
    }

    /// The previewer, started on first use.
    async fn previewer(&self) -> Result<&Previewer, UiError> {
        self.previews
            .get_or_try_init(|| async {
                let limits = dispatcher_render::Limits::from_settings(&self.settings.render);
                dispatcher_render::Renderer::start(limits)
                    .map(Previewer::new)
                    .map_err(|e| UiError(ApiError::Internal(format!("preview renderer: {e}"))))
            })
            .await
    }

    /// Renders `name` with `ctx` plus what every page needs.
    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<Html<String>, UiError> {
        let base = minijinja::context! { css_version => &*self.css_version };
        let ctx = minijinja::context! { ..ctx, ..base };
        self.templates
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map(Html)
            .map_err(|e| UiError(ApiError::Internal(format!("template {name}: {e:#}"))))
    }
}

fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("../templates/base.html")),
        ("login.html", include_str!("../templates/login.html")),
        ("error.html", include_str!("../templates/error.html")),
        (
            "dispatches.html",
            include_str!("../templates/dispatches.html"),
        ),
        ("dispatch.html", include_str!("../templates/dispatch.html")),
        ("webhooks.html", include_str!("../templates/webhooks.html")),
        (
            "templates.html",
            include_str!("../templates/templates.html"),
        ),
        ("template.html", include_str!("../templates/template.html")),
        (
            "preview_error.html",
            include_str!("../templates/preview_error.html"),
        ),
        (
            "dead_letters.html",
            include_str!("../templates/dead_letters.html"),
        ),
    ] {
        env.add_template(name, source)
            .unwrap_or_else(|e| panic!("dashboard template {name}: {e:#}"));
    }
    env
}

/// The signed-in account of a dashboard request (put there by [`require_session`]).
#[derive(Debug, Clone)]
pub struct UiSession {
    pub account: Uuid,
    id_hash: [u8; 32],
    pub csrf: String,
}

/// The dashboard's routes, all under `/ui/`.
pub fn router(state: UiState) -> Router {
    let signed_in = Router::new()
        .route("/ui/", get(|| async { Redirect::to("/ui/dispatches") }))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/dispatches", get(pages::dispatches))
        .route("/ui/dispatches/{id}", get(pages::dispatch))
        .route("/ui/dispatches/{id}/result", get(pages::result))
        .route("/ui/dispatches/{id}/redeliver", post(pages::redeliver))
        .route("/ui/webhooks", get(webhooks::list).post(webhooks::create))
        .route("/ui/webhooks/{id}/delete", post(webhooks::delete))
        .route("/ui/webhooks/{id}/disable", post(webhooks::disable))
        .route("/ui/webhooks/{id}/enable", post(webhooks::enable))
        .route(
            "/ui/templates",
            get(templates::list).post(templates::create),
        )
        .route("/ui/templates/new", get(templates::new))
        .route("/ui/templates/preview", post(templates::preview))
        .route("/ui/templates/{id}", get(templates::show))
        .route("/ui/dead-letters", get(dead_letters::list))
        .route("/ui/dead-letters/replay", post(dead_letters::replay))
        .route("/ui/webhooks/secret/rotate", post(webhooks::rotate_secret))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/static/{file}", get(asset))
        .merge(signed_in)
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// The embedded stylesheet, cached for a year (its URL changes with its content).
async fn asset(Path(file): Path<String>) -> Response {
    if file != "app.css" {
        return StatusCode::NOT_FOUND.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        CSS,
    )
        .into_response()
}

/// CSP (unless the route set its own), nosniff, no referrer, and no caching of pages.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// Lets a request through only with a live session, and a POST only with that session's CSRF
/// token in its form (`csrf`); applies the account's request rate limit as the API does.
async fn require_session(State(state): State<UiState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let session = match load_session(&state, &parts.headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return Redirect::to("/ui/login").into_response(),
        Err(e) => return e.render(&state),
    };
    let body = if parts.method == Method::POST {
        let bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
            Ok(b) => b,
            Err(_) => return UiError(ApiError::PayloadTooLarge).render(&state),
        };
        let sent = form_field(&bytes, "csrf").unwrap_or_default();
        if !session::tokens_match(&sent, &session.csrf) {
            tracing::info!("dashboard POST without a valid CSRF token refused");
            return forbidden(&state);
        }
        Body::from(bytes)
    } else {
        body
    };
    if let Err(e) = state.auth.check_rate(session.account) {
        return UiError(e).render(&state);
    }
    parts.extensions.insert(session);
    next.run(Request::from_parts(parts, body)).await
}

/// The session a request's cookie names, if it is live (recording its use now and then).
async fn load_session(
    state: &UiState,
    headers: &axum::http::HeaderMap,
) -> Result<Option<UiSession>, UiError> {
    let Some(id) = session::read_cookie(headers, session::SESSION_COOKIE) else {
        return Ok(None);
    };
    let Some(hash) = session::id_hash(id) else {
        return Ok(None);
    };
    let Some(row) = ui_sessions::get(&state.pool, &hash).await? else {
        return Ok(None);
    };
    let now = Utc::now();
    let ui = &state.settings.ui;
    if !session::is_live(
        row.created_at,
        row.last_seen_at,
        now,
        ui.session_idle,
        ui.session_max,
    ) {
        ui_sessions::delete(&state.pool, &hash).await?;
        return Ok(None);
    }
    if session::needs_touch(row.last_seen_at, now, ui.session_idle) {
        ui_sessions::touch(&state.pool, &hash, now).await?;
    }
    Ok(Some(UiSession {
        account: row.account_id,
        id_hash: hash,
        csrf: session::csrf_token(id),
    }))
}

/// The first value of `name` in an `application/x-www-form-urlencoded` body.
fn form_field(body: &Bytes, name: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn forbidden(state: &UiState) -> Response {
    let page = state.render(
        "error.html",
        minijinja::context! {
            title => "Forbidden",
            message => "This form has expired or did not come from this dashboard. Reload the page and try again.",
        },
    );
    match page {
        Ok(html) => (StatusCode::FORBIDDEN, html).into_response(),
        Err(e) => e.into_response(),
    }
}

/// An error shown as a page, with the status the API would answer.
#[derive(Debug)]
pub struct UiError(pub ApiError);

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError(e)
    }
}

impl From<dispatcher_db::DbError> for UiError {
    fn from(e: dispatcher_db::DbError) -> Self {
        UiError(e.into())
    }
}

impl UiError {
    /// The error page; 5xx pages say no more than the API's 5xx bodies do (the cause is logged).
    fn render(self, state: &UiState) -> Response {
        let message = self.0.to_string();
        let status = self.0.into_response().status();
        let title = match status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::TOO_MANY_REQUESTS => "Too many requests",
            s if s.is_server_error() => "Something went wrong",
            _ => "Cannot do that",
        };
        match state.render(
            "error.html",
            minijinja::context! { title => title, message => message },
        ) {
            Ok(html) => (status, html).into_response(),
            Err(_) => (status, message).into_response(),
        }
    }
}

impl IntoResponse for UiError {
    /// Without the templates at hand: plain text (handlers use [`UiError::render`] through
    /// [`Page`]).
    fn into_response(self) -> Response {
        let message = self.0.to_string();
        let status = self.0.into_response().status();
        (status, message).into_response()
    }
}

pub(crate) fn page_result(state: &UiState, r: Result<Response, UiError>) -> Response {
    match r {
        Ok(resp) => resp,
        Err(e) => e.render(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_escape_what_they_are_given() {
        let env = templates();
        let html = env
            .get_template("login.html")
            .unwrap()
            .render(minijinja::context! {
                token => "t", email => "<script>alert(1)</script>", error => "a & b",
                css_version => "x",
            })
            .unwrap();
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<script>"));
        assert!(html.contains("a &amp; b"));
    }

    #[test]
    fn the_page_policy_allows_no_inline_script() {
        assert!(PAGE_CSP.contains("script-src 'self';"));
        assert!(!PAGE_CSP.contains("unsafe"));
        assert!(PAGE_CSP.contains("frame-ancestors 'none'"));
    }
}
