//! `POST /v1/dispatches`: validate, write (batched), then answer 202 at once (async) or wait for
//! the outcome (sync).

use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use dispatcher_core::email::EmailRequest;
use dispatcher_core::netpolicy::check_url;
use dispatcher_core::{DispatchRequested, DispatchStatus, TemplateFormat};
use dispatcher_db::dispatches::{self, NewDispatch};
use dispatcher_http::error::doc::{
    BadRequest, Conflict, InternalError, PayloadTooLarge, ServiceUnavailable, TooManyRequests,
    Unauthorized, UnprocessableEntity, UnsupportedMediaType,
};
use dispatcher_http::views::{status_url, DispatchBody};
use dispatcher_http::{ApiError, ApiJson, ApiQuery, AuthAccount};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

const MAX_IDEMPOTENCY_KEY: usize = 255;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DispatchRequest {
    /// A stored template of this account (`POST /v1/templates`).
    template_id: Option<Uuid>,
    /// An inline template, instead of `templateId`.
    template: Option<InlineTemplate>,
    /// The template's variables.
    data: serde_json::Map<String, serde_json::Value>,
    /// Where the rendered document goes; `{"type": "store"}` when absent.
    #[serde(default)]
    provider: Option<Provider>,
    /// Also receives this dispatch's outcome webhooks. `https://` (unless the deployment allows
    /// `http://`) and not a loopback, private, link-local or metadata address.
    #[schema(format = "uri")]
    callback_url: Option<String>,
    /// Returned as is in the status and in webhooks.
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The request body as documented: [`DispatchRequest`]'s fields, plus the rule serde cannot
/// state, that exactly one of `templateId` and `template` is given (a `null` counts as absent).
pub struct SubmitBody;

impl utoipa::PartialSchema for SubmitBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AllOfBuilder, OneOfBuilder};
        let only = |given: &str, given_type: Type, absent: &str| {
            ObjectBuilder::new()
                .required(given)
                .property(given, ObjectBuilder::new().schema_type(given_type))
                .property(absent, ObjectBuilder::new().schema_type(Type::Null))
        };
        AllOfBuilder::new()
            .description(Some(
                "A document to render and hand to a provider. Give exactly one of `templateId` and \
                 `template`. No string anywhere in the body (keys included) may contain U+0000.",
            ))
            .item(DispatchRequest::schema())
            .item(
                OneOfBuilder::new()
                    .item(only("templateId", Type::String, "template"))
                    .item(only("template", Type::Object, "templateId")),
            )
            .into()
    }
}

impl ToSchema for SubmitBody {
    fn name() -> std::borrow::Cow<'static, str> {
        "DispatchRequest".into()
    }

    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        DispatchRequest::schemas(schemas);
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InlineTemplate {
    format: TemplateFormat,
    /// Template text, at most 256 KiB of UTF-8: Jinja-style (minijinja) for the text formats,
    /// Typst markup for `pdf`.
    body: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum Provider {
    Store,
    Http { url: String },
    Email(EmailRequest),
}

/// Written by hand because serde treats the variants differently: `store` ignores other fields,
/// `http` refuses them (the derive cannot say so per variant).
impl utoipa::PartialSchema for Provider {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, OneOfBuilder};
        let tag = |name: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([name]))
        };
        let store = ObjectBuilder::new()
            .description(Some(
                "Keep the rendered document; it is served at the dispatch's `resultUrl`.",
            ))
            .property("type", tag("store"))
            .required("type");
        let http = ObjectBuilder::new()
            .description(Some(
                "POST the rendered document to `url` (same address rules as `callbackUrl`).",
            ))
            .property("type", tag("http"))
            .required("type")
            .property(
                "url",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(utoipa::openapi::SchemaFormat::Custom("uri".into()))),
            )
            .required("url")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        // The request's own schema (which refuses unknown fields) with the `type` tag added.
        let utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(mut email)) =
            EmailRequest::schema()
        else {
            unreachable!("EmailRequest is a plain object");
        };
        email.properties.insert("type".into(), tag("email").into());
        email.required.insert(0, "type".into());
        email.description = Some(
            "Send the document by email through the deployment's SMTP relay (`smtp.url`; \
             without one the request is refused with 422 `email_not_configured`). An html, \
             text or markdown document is the message body (html and markdown with a \
             plain-text alternative); a pdf, csv or json document is attached as \
             `attachmentName` (default `document.<ext>`) beside a short text body. A 5xx reply \
             fails the dispatch with `provider_rejected`; a 4xx reply or a connection error is \
             retried on `smtp.retry_schedule`. The relay's reply is shown as `providerReply`, \
             and the outcome is sent on as a `provider.accepted` or `provider.failed` event."
                .into(),
        );
        OneOfBuilder::new()
            .item(store)
            .item(http)
            .item(email)
            .into()
    }
}

impl ToSchema for Provider {}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubmitQuery {
    /// `true`, `1` or empty: answer 202 at once. `false`, `0` or absent: wait for the outcome
    /// (up to the service's `sync_timeout`).
    #[serde(rename = "async", default)]
    #[param(schema_with = async_flag_schema)]
    is_async: Option<String>,
}

fn async_flag_schema() -> utoipa::openapi::schema::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["true", "false", "1", "0", ""]))
        .build()
}

/// The 202 body: the dispatch is accepted and queued.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Accepted {
    dispatch_id: Uuid,
    /// Always `queued`.
    status: DispatchStatus,
    queued_at: DateTime<Utc>,
    estimated_completion_time: DateTime<Utc>,
    /// `GET` it on the status API.
    #[schema(format = "uri")]
    status_url: String,
}

fn parse_async(q: &SubmitQuery) -> Result<bool, ApiError> {
    match q.is_async.as_deref() {
        None => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "async must be true or false, not `{}`",
                other.chars().take(50).collect::<String>()
            ),
        )),
    }
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty()
        || s.len() > MAX_IDEMPOTENCY_KEY
        || !s.bytes().all(|b| (0x21..=0x7e).contains(&b))
    {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

/// Submit a dispatch.
///
/// Validates and durably accepts the dispatch, then either answers at once (`async=true`) or waits
/// for its outcome up to the service's `sync_timeout`. With an `Idempotency-Key`, a repeated
/// request with the same body gets the original answer; with another body, 409.
#[utoipa::path(
    post,
    path = "/v1/dispatches",
    tag = "dispatches",
    operation_id = "submitDispatch",
    security(("basicAuth" = [])),
    params(
        SubmitQuery,
        (
            "Idempotency-Key" = Option<String>,
            Header,
            description = "Makes retries safe: 1 to 255 visible ASCII characters, unique per request body.",
            nullable = false,
            min_length = 1,
            max_length = 255,
            pattern = "^[!-~]+$",
        ),
    ),
    request_body(content = SubmitBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Sync mode: the dispatch finished in time; its status.", body = DispatchBody),
        (status = 202, description = "Async mode, or sync mode timed out: accepted and queued.", body = Accepted),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = ServiceUnavailable),
    ),
)]
pub async fn submit(
    State(s): State<AppState>,
    AuthAccount(account): AuthAccount,
    ApiQuery(q): ApiQuery<SubmitQuery>,
    headers: HeaderMap,
    ApiJson(raw): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let is_async = parse_async(&q)?;
    let key = idempotency_key(&headers)?;
    let request_hash: Vec<u8> = Sha256::digest(raw.to_string().as_bytes()).to_vec();

    if let Some(key) = &key {
        if let Some(hit) = dispatches::find_by_idempotency_key(&s.pool, account, key).await? {
            return replay(&s, account, hit, &request_hash, is_async).await;
        }
    }

    // Replays above add no work; new work waits while delivery works through a backlog.
    if let Some(wait) = s.estimator.overloaded() {
        return Err(ApiError::Overloaded(wait));
    }
    // Behind more work than `ingest.pace_target`, new work waits its turn.
    s.estimator.wait_turn().await;
    let prepared = prepare(&s, account, raw).await?;
    let (row, accepted) = prepared.into_row(
        &s,
        account,
        Idempotency {
            key: key.clone(),
            request_hash: request_hash.clone(),
        },
        !is_async,
    );
    let id = row.id;

    // Register before writing so a fast worker's notification cannot be missed.
    let waiter = (!is_async).then(|| s.waiters.register(id));
    let inserted = s
        .writer
        .write(row)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if !inserted {
        // Lost a race with a concurrent request carrying the same key: answer as its replay.
        drop(waiter);
        let key = key.expect("only keyed rows can conflict");
        let hit = dispatches::find_by_idempotency_key(&s.pool, account, &key)
            .await?
            .ok_or_else(|| ApiError::Internal("idempotency conflict without a row".into()))?;
        return replay(&s, account, hit, &request_hash, is_async).await;
    }
    metrics::counter!("dispatcher_dispatches_accepted_total", "mode" => if is_async { "async" } else { "sync" })
        .increment(1);
    match waiter {
        None => Ok((StatusCode::ACCEPTED, Json(accepted)).into_response()),
        Some(w) => wait_for_outcome(&s, account, id, w, Json(accepted).into_response()).await,
    }
}

/// An Idempotency-Key seen before with another request body.
pub(crate) fn key_reused() -> ApiError {
    ApiError::Conflict {
        code: "idempotency_key_reused",
        message: "this Idempotency-Key was used with a different request body".into(),
    }
}

/// A repeated Idempotency-Key: the same body gets the original answer, another body 409.
async fn replay(
    s: &AppState,
    account: Uuid,
    hit: dispatches::IdempotentHit,
    request_hash: &[u8],
    is_async: bool,
) -> Result<Response, ApiError> {
    if hit.request_hash.as_deref() != Some(request_hash) {
        return Err(key_reused());
    }
    let original = hit.response.unwrap_or(serde_json::Value::Null);
    if is_async {
        return Ok((StatusCode::ACCEPTED, Json(original)).into_response());
    }
    let waiter = s.waiters.register(hit.id);
    wait_for_outcome(s, account, hit.id, waiter, Json(original).into_response()).await
}

/// Waits up to `sync_timeout` for the dispatch to finish: 200 with its status body, or the 202
/// `on_timeout` answer. The dispatch keeps going either way.
async fn wait_for_outcome(
    s: &AppState,
    account: Uuid,
    id: Uuid,
    mut waiter: crate::waiters::Waiter,
    on_timeout: Response,
) -> Result<Response, ApiError> {
    let deadline = tokio::time::Instant::now() + s.settings.ingest.sync_timeout;
    loop {
        if let Some(view) = dispatches::get(&s.pool, account, id).await? {
            if view.status.is_terminal() {
                let body = DispatchBody::new(view, s.settings.public_base());
                return Ok((StatusCode::OK, Json(body)).into_response());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                let mut resp = on_timeout;
                *resp.status_mut() = StatusCode::ACCEPTED;
                return Ok(resp);
            }
            // Shutting down: answer now, the dispatch goes on (the client polls `statusUrl`).
            _ = s.draining.cancelled() => {
                let mut resp = on_timeout;
                *resp.status_mut() = StatusCode::ACCEPTED;
                return Ok(resp);
            }
            _ = waiter.own.changed() => {}
            _ = waiter.all.changed() => {}
            // A notification can be lost while the listener reconnects; re-check now and then.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// A dispatch request that passed every check made at submission: ready to render or to write.
pub(crate) struct Prepared {
    template_id: Option<Uuid>,
    format: TemplateFormat,
    body: String,
    data: serde_json::Map<String, serde_json::Value>,
    provider: Provider,
    callback_url: Option<String>,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A single submission's Idempotency-Key and the hash of its body.
pub(crate) struct Idempotency {
    pub(crate) key: Option<String>,
    pub(crate) request_hash: Vec<u8>,
}

/// Checks one dispatch body as `POST /v1/dispatches` does: fields, template (its syntax), provider
/// and callback addresses. The same checks serve `validate` and each item of `batch`.
pub(crate) async fn prepare(
    s: &AppState,
    account: Uuid,
    raw: serde_json::Value,
) -> Result<Prepared, ApiError> {
    // Postgres text and jsonb cannot hold U+0000: refuse it here rather than fail the write.
    super::reject_nul(&raw)?;
    let req: DispatchRequest = serde_path_to_error::deserialize(raw)
        .map_err(|e| ApiError::unprocessable("invalid_field", describe_path_error(&e)))?;
    let (template_id, format, body) = resolve_template(s, account, &req).await?;
    let provider = req.provider.unwrap_or(Provider::Store);
    // Checked by the address policy at submission too, so a refused address fails fast.
    let check = |url: &str, code: &'static str, field: &str| {
        let d = &s.settings.delivery;
        check_url(url, d.allow_http, &d.allow_hosts)
            .map_err(|e| ApiError::unprocessable(code, format!("{field}: {e}")))
    };
    match &provider {
        Provider::Http { url } => {
            check(url, "invalid_provider_url", "provider.url")?;
        }
        Provider::Email(email) => check_email(s, email)?,
        Provider::Store => {}
    }
    if let Some(url) = &req.callback_url {
        check(url, "invalid_callback_url", "callbackUrl")?;
    }
    Ok(Prepared {
        template_id,
        format,
        body,
        data: req.data,
        provider,
        callback_url: req.callback_url,
        metadata: req.metadata,
    })
}

/// An email request is sendable: a relay is configured, the shape is right, every address
/// parses and the subject is a template that compiles.
fn check_email(s: &AppState, email: &EmailRequest) -> Result<(), ApiError> {
    if !s.settings.smtp.enabled() {
        return Err(ApiError::unprocessable(
            "email_not_configured",
            "this deployment sends no email: set smtp.url (DISPATCHER__SMTP__URL) and smtp.from",
        ));
    }
    email
        .check_shape()
        .map_err(|m| ApiError::unprocessable("invalid_field", m))?;
    for (field, address) in email.addresses() {
        address.parse::<lettre::message::Mailbox>().map_err(|e| {
            ApiError::unprocessable(
                "invalid_email_address",
                format!("provider.{field}: `{address}` is not an email address ({e})"),
            )
        })?;
    }
    dispatcher_render::check_syntax(TemplateFormat::Text, &email.subject).map_err(|e| {
        ApiError::unprocessable("template_syntax_error", format!("provider.subject: {e}"))
    })?;
    Ok(())
}

impl Prepared {
    /// What rendering needs: the format, the template's body and the data.
    pub(crate) fn into_template_and_data(self) -> (TemplateFormat, String, serde_json::Value) {
        (self.format, self.body, serde_json::Value::Object(self.data))
    }

    /// The row to write (with its `dispatch.requested` message) and the 202 body that answers it.
    pub(crate) fn into_row(
        self,
        s: &AppState,
        account: Uuid,
        idempotency: Idempotency,
        notify_on_finish: bool,
    ) -> (NewDispatch, Accepted) {
        let id = Uuid::now_v7();
        let queued_at = Utc::now();
        let accepted = Accepted {
            dispatch_id: id,
            status: DispatchStatus::Queued,
            queued_at,
            estimated_completion_time: queued_at
                + chrono::Duration::from_std(s.estimator.current()).unwrap_or_default(),
            status_url: status_url(s.settings.public_base(), id),
        };
        let message = DispatchRequested {
            message_id: Uuid::now_v7(),
            dispatch_id: id,
            account_id: account,
            queued_at,
            provider_attempts: 0,
        };
        let keyed = idempotency.key.is_some();
        let row = NewDispatch {
            id,
            account_id: account,
            template_id: self.template_id,
            template_format: self.format,
            template_body: self.body,
            data: serde_json::Value::Object(self.data),
            provider: serde_json::to_value(&self.provider).expect("provider serializes"),
            callback_url: self.callback_url,
            metadata: self.metadata.map(serde_json::Value::Object),
            idempotency_key: idempotency.key,
            request_hash: keyed.then_some(idempotency.request_hash),
            idempotency_response: keyed
                .then(|| serde_json::to_value(&accepted).expect("body serializes")),
            notify_on_finish,
            queued_at,
            message_id: message.message_id,
            message: serde_json::to_vec(&message).expect("message serializes"),
        };
        (row, accepted)
    }
}

async fn resolve_template(
    s: &AppState,
    account: Uuid,
    req: &DispatchRequest,
) -> Result<(Option<Uuid>, TemplateFormat, String), ApiError> {
    match (&req.template_id, &req.template) {
        (Some(_), Some(_)) => Err(ApiError::unprocessable(
            "invalid_field",
            "give either templateId or template, not both",
        )),
        (None, None) => Err(ApiError::unprocessable(
            "invalid_field",
            "templateId or template is required",
        )),
        (None, Some(t)) => {
            super::templates::check_body(t.format, &t.body)?;
            Ok((None, t.format, t.body.clone()))
        }
        (Some(id), None) => {
            if let Some(t) = s.templates.get(account, *id) {
                return Ok((Some(*id), t.0, t.1.clone()));
            }
            let t = dispatcher_db::templates::get(&s.pool, account, *id)
                .await?
                .ok_or_else(|| {
                    ApiError::unprocessable(
                        "unknown_template",
                        format!("templateId: no template {id}"),
                    )
                })?;
            s.templates.put(account, t.id, t.format, t.body.clone());
            Ok((Some(t.id), t.format, t.body))
        }
    }
}

fn describe_path_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    if path == "." || path.is_empty() {
        e.inner().to_string()
    } else {
        format!("{path}: {}", e.inner())
    }
}
