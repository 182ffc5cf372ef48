//! One batch of `dispatch.requested` messages: claim, render, provide, finish.

use crate::email::{Mailer, Sent};
use crate::results::{Results, UploadError};
use chrono::{DateTime, Utc};
use dispatcher_config::Settings;
use dispatcher_core::email::{self, EmailRequest};
use dispatcher_core::{
    parse_requests, BatchedRequest, DispatchError, DispatchRequested, DispatchStatus, ErrorCode,
    EventType, OutcomeEvent, ProviderEventMessage, ProviderEventType, TemplateFormat, WebhookData,
    WebhookPayload,
};
use dispatcher_db::dead_letters::{self, NewDeadLetter};
use dispatcher_db::dispatches::{
    self, ClaimRequest, Claimed, Finished, OwnProviderEvent, Requeued,
};
use dispatcher_db::outbox::OutboxWake;
use dispatcher_db::pool::AsyncCommitPool;
use dispatcher_db::Pool;
use dispatcher_mq::topology::DISPATCH_JITTER_STEPS;
use dispatcher_mq::{BatchHandler, HandlerError, Incoming, Received, Topology};
use dispatcher_outbound::Policy;
use dispatcher_render::{Document, Renderer};
use futures::{StreamExt, TryStreamExt};
use rand::Rng;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use uuid::Uuid;

pub struct WorkerHandler {
    settings: Arc<Settings>,
    pool: Pool,
    /// For the claim, which may be lost in a crash (the message is redelivered).
    claim_pool: AsyncCommitPool,
    outbox_wake: OutboxWake,
    http: reqwest::Client,
    policy: Policy,
    queue: String,
    renderer: Renderer,
    /// The email provider's relay; `None` without `smtp.url`.
    mailer: Option<Mailer>,
    results: Results,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Provider {
    Store,
    Http { url: String },
    Email(EmailRequest),
}

/// What handing a document to its provider came to.
enum Provided {
    /// The provider has it; `reply` is what it answered, when that is worth keeping.
    Done { reply: Option<String> },
    /// The dispatch fails. `reported`: the failure is the provider's own answer, sent on as a
    /// `provider.failed` event as well.
    Failed {
        error: DispatchError,
        reported: bool,
    },
    /// A failure for now (an SMTP `4xx`, a connection error): try again later.
    Transient(DispatchError),
}

/// One claimed dispatch, once run: finished, or back in line for a provider retry.
enum Settled {
    // Boxed: a finished dispatch carries its document and events, a retry only a message.
    Finished(Box<Finished>),
    Requeued(Requeued),
}

impl WorkerHandler {
    pub fn new(
        settings: Arc<Settings>,
        pool: Pool,
        claim_pool: AsyncCommitPool,
        outbox_wake: OutboxWake,
        renderer: Renderer,
        mailer: Option<Mailer>,
        store: Option<dispatcher_storage::Store>,
    ) -> Self {
        let http = dispatcher_outbound::client(&settings.delivery, "dispatcher-provider/1");
        let policy = Policy::from_settings(&settings.delivery);
        let queue = Topology::new(&settings.amqp.prefix, &[]).dispatch_queue();
        Self {
            settings,
            pool,
            claim_pool,
            outbox_wake,
            http,
            policy,
            queue,
            renderer,
            mailer,
            results: Results::new(store),
        }
    }

    /// Runs one dispatch in a span that continues the trace of the message that requested it.
    async fn run_traced(
        &self,
        d: Claimed,
        message: &DispatchRequested,
        traceparent: Option<&str>,
    ) -> Result<Settled, UploadError> {
        let span = tracing::info_span!("dispatch.process", dispatch_id = %d.id);
        dispatcher_telemetry::set_remote_parent(&span, traceparent);
        self.run_one(d, message.queued_at).instrument(span).await
    }

    /// Renders one dispatch, keeps its document (in the object store, if one is configured) and
    /// hands it to its provider. The outcome says what happened; the only error is a document
    /// the store would not take, which is not the dispatch's outcome: its batch is tried again.
    async fn run_one(
        &self,
        mut d: Claimed,
        queued_at: DateTime<Utc>,
    ) -> Result<Settled, UploadError> {
        let started_at = Utc::now();
        // Nothing after rendering reads the template: hand it over. The data stays shared, for
        // an email's subject.
        let data = Arc::new(std::mem::take(&mut d.data));
        let rendered = self
            .renderer
            .render(
                d.template_format,
                Arc::from(std::mem::take(&mut d.template_body)),
                data.clone(),
            )
            .await;
        let (doc, mut result_key, provided) = match rendered {
            Err(e) => (
                None,
                None,
                Provided::Failed {
                    error: DispatchError::new(ErrorCode::TemplateRenderError, e.message),
                    reported: false,
                },
            ),
            Ok(doc) => {
                // Stored before the provider has it: see `results`.
                let key = self.results.put(d.account_id, d.id, &doc.bytes).await?;
                let provided = self.provide(&d, &doc, data).await;
                (Some(doc), key, provided)
            }
        };
        let tries = d.provider_attempts + 1;
        let (reply, failure) = match provided {
            Provided::Done { reply } => (reply, None),
            Provided::Failed { error, reported } => (None, Some((error, reported))),
            Provided::Transient(error) => {
                match email::retry_delay(tries + 1, &self.settings.smtp.retry_schedule) {
                    Some(wait) => {
                        return Ok(Settled::Requeued(self.requeue(&d, queued_at, wait, error)))
                    }
                    None => (
                        None,
                        Some((
                            DispatchError::new(
                                error.code,
                                format!("gave up after {tries} tries: {}", error.message),
                            ),
                            true,
                        )),
                    ),
                }
            }
        };
        if failure.is_some() {
            if let Some(key) = &result_key {
                if self.results.discard(key).await {
                    result_key = None;
                }
            }
        }
        let completed_at = Utc::now();
        let base = self.settings.public_base();
        let provider_event = match (&reply, &failure) {
            (Some(reply), _) => Some(own_event(
                d.id,
                ProviderEventType::Accepted,
                serde_json::json!({ "reply": reply }),
            )),
            (None, Some((error, true))) => Some(own_event(
                d.id,
                ProviderEventType::Failed,
                serde_json::json!({ "error": error }),
            )),
            _ => None,
        };
        let (status, result, content_type, error) = match (doc, failure) {
            (Some(doc), None) => (
                DispatchStatus::Completed,
                // In the store already, or kept in the row.
                result_key.is_none().then_some(doc.bytes),
                Some(doc.content_type.to_owned()),
                None,
            ),
            (_, Some((e, _))) => (DispatchStatus::Failed, None, None, Some(e)),
            (None, None) => unreachable!("a dispatch without a document has failed"),
        };
        let event_type = EventType::for_outcome(status).expect("terminal status");
        let event = OutcomeEvent {
            event_id: Uuid::now_v7(),
            account_id: d.account_id,
            dispatch_id: d.id,
            callback_url: d.callback_url.clone(),
            payload: WebhookPayload {
                event_type,
                timestamp: completed_at,
                data: WebhookData {
                    dispatch_id: d.id,
                    status,
                    completed_at,
                    result_url: (status == DispatchStatus::Completed)
                        .then(|| dispatcher_http::views::result_url(base, d.id)),
                    error: error.clone(),
                    metadata: d.metadata.clone(),
                }
                .into(),
            },
        };
        metrics::counter!("dispatcher_dispatches_finished_total", "status" => status.as_str())
            .increment(1);
        Ok(Settled::Finished(Box::new(Finished {
            id: d.id,
            status,
            provider_attempts: d.provider_attempts,
            started_at,
            completed_at,
            result,
            result_key,
            content_type,
            error: error.map(|e| serde_json::to_value(e).expect("error serializes")),
            event_id: event.event_id,
            routing_key: event_type.as_str(),
            event: serde_json::to_vec(&event).expect("event serializes"),
            // The outcome event continues this dispatch's trace.
            traceparent: dispatcher_telemetry::current_traceparent(),
            provider_reply: reply,
            provider_event,
        })))
    }

    /// The dispatch back in line: its retry message waits in the delay queue nearest `wait`
    /// (jittered, so a relay that was down does not get every retry at once).
    fn requeue(
        &self,
        d: &Claimed,
        queued_at: DateTime<Utc>,
        wait: Duration,
        error: DispatchError,
    ) -> Requeued {
        let factor =
            DISPATCH_JITTER_STEPS[rand::thread_rng().gen_range(0..DISPATCH_JITTER_STEPS.len())];
        let ms = Topology::dispatch_delay_for(wait, factor);
        let message = DispatchRequested {
            message_id: Uuid::now_v7(),
            dispatch_id: d.id,
            account_id: d.account_id,
            queued_at,
            provider_attempts: d.provider_attempts + 1,
        };
        tracing::info!(dispatch_id = %d.id, retry_in_ms = ms, error = %error.message,
            "provider failed for now; retrying later");
        metrics::counter!("dispatcher_provider_retries_total").increment(1);
        Requeued {
            id: d.id,
            error: serde_json::to_value(&error).expect("error serializes"),
            message_id: message.message_id,
            routing_key: Topology::dispatch_delay_key(ms),
            message: serde_json::to_vec(&message).expect("message serializes"),
            traceparent: dispatcher_telemetry::current_traceparent(),
        }
    }

    async fn provide(&self, d: &Claimed, doc: &Document, data: Arc<serde_json::Value>) -> Provided {
        let fail = |code, message: String| Provided::Failed {
            error: DispatchError::new(code, message),
            reported: false,
        };
        let provider: Provider = match serde_json::from_value(d.provider.clone()) {
            Ok(p) => p,
            Err(e) => return fail(ErrorCode::ProviderError, format!("unknown provider: {e}")),
        };
        match provider {
            Provider::Store => Provided::Done { reply: None },
            Provider::Http { url } => match self.post(d, doc, &url).await {
                Ok(()) => Provided::Done { reply: None },
                Err(error) => Provided::Failed {
                    error,
                    reported: false,
                },
            },
            Provider::Email(request) => {
                let Some(mailer) = &self.mailer else {
                    return fail(
                        ErrorCode::ProviderError,
                        "email is not configured on this deployment (smtp.url)".into(),
                    );
                };
                let subject = match self
                    .renderer
                    .render(
                        TemplateFormat::Text,
                        Arc::from(request.subject.as_str()),
                        data,
                    )
                    .await
                {
                    Ok(s) => one_line(&String::from_utf8_lossy(&s.bytes)),
                    Err(e) => {
                        return fail(
                            ErrorCode::TemplateRenderError,
                            format!("provider.subject: {}", e.message),
                        )
                    }
                };
                if subject.is_empty() {
                    return fail(
                        ErrorCode::TemplateRenderError,
                        "provider.subject rendered to nothing".into(),
                    );
                }
                let sent = mailer
                    .send(
                        d.id,
                        &request,
                        &subject,
                        d.template_format,
                        &doc.bytes,
                        doc.content_type,
                    )
                    .await;
                metrics::counter!("dispatcher_emails_total", "outcome" => match &sent {
                    Sent::Accepted { .. } => "accepted",
                    Sent::Rejected(_) => "rejected",
                    Sent::Transient(_) => "transient",
                })
                .increment(1);
                match sent {
                    Sent::Accepted { reply } => Provided::Done { reply: Some(reply) },
                    Sent::Rejected(error) => Provided::Failed {
                        error,
                        reported: true,
                    },
                    Sent::Transient(error) => Provided::Transient(error),
                }
            }
        }
    }

    /// The `http` provider: POSTs the document to `url`.
    async fn post(&self, d: &Claimed, doc: &Document, url: &str) -> Result<(), DispatchError> {
        let parsed: url::Url = url.parse().map_err(|_| {
            DispatchError::new(ErrorCode::ProviderUrlRefused, "provider URL is invalid")
        })?;
        self.policy
            .check(&parsed)
            .map_err(|e| DispatchError::new(ErrorCode::ProviderUrlRefused, e))?;
        let resp = self
            .http
            .post(parsed)
            .header("content-type", doc.content_type)
            .header("dispatch-id", d.id.to_string())
            .body(doc.bytes.clone())
            .send()
            .await
            .map_err(|e| {
                DispatchError::new(
                    ErrorCode::ProviderError,
                    format!(
                        "provider request failed: {}",
                        dispatcher_outbound::error_chain(&e)
                    ),
                )
            })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(DispatchError::new(
                ErrorCode::ProviderError,
                format!("provider answered {}", resp.status()),
            ))
        }
    }
}

/// A subject line: whitespace (newlines included) folded to single spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The email provider's own report on a dispatch, recorded with its outcome and applied like a
/// provider callback. Its id is fixed by the dispatch and the type, so it is stored once.
fn own_event(
    dispatch_id: Uuid,
    kind: ProviderEventType,
    body: serde_json::Value,
) -> OwnProviderEvent {
    let event_id = format!("{dispatch_id}.{}", kind.as_str());
    let message = ProviderEventMessage {
        provider: email::PROVIDER_NAME.to_owned(),
        event_id: event_id.clone(),
    };
    OwnProviderEvent {
        provider: email::PROVIDER_NAME,
        event_id,
        event_type: kind.as_str(),
        body: serde_json::to_vec(&body).expect("body serializes"),
        message_id: Uuid::now_v7(),
        message: serde_json::to_vec(&message).expect("message serializes"),
    }
}

impl BatchHandler for WorkerHandler {
    type Body = Vec<BatchedRequest>;
    const KIND: &'static str = "dispatch.requested";

    fn read(&self, message: &Incoming) -> Result<Self::Body, String> {
        parse_requests(&message.data).map_err(|e| e.to_string())
    }

    async fn handle(&self, batch: &[Received<Self::Body>]) -> Result<(), HandlerError> {
        let mut requests: Vec<ClaimRequest> = Vec::with_capacity(batch.len());
        let mut claim_index: HashMap<(Uuid, i32), usize> = HashMap::new();
        let mut messages: HashMap<Uuid, (&Incoming, &BatchedRequest)> = HashMap::new();
        for m in batch {
            for r in &m.body {
                let key = (r.request.dispatch_id, r.request.provider_attempts);
                match claim_index.get(&key) {
                    // The same request twice in a batch is a first delivery only if both are.
                    Some(&i) => requests[i].first_delivery &= !m.redelivered,
                    None => {
                        claim_index.insert(key, requests.len());
                        requests.push(ClaimRequest {
                            id: key.0,
                            provider_attempts: key.1,
                            first_delivery: !m.redelivered,
                        });
                    }
                }
                messages.insert(key.0, (&m.message, r));
            }
        }
        // Finished dispatches are not claimed: a redelivered message is acknowledged untouched,
        // and so is a message that a scheduled provider retry has replaced.
        let claim = if requests.is_empty() {
            dispatches::Claim::default()
        } else {
            dispatches::claim(
                &self.claim_pool,
                &requests,
                self.settings.worker.max_processing_attempts,
            )
            .await
            .map_err(HandlerError::from)?
        };
        let limit = self.settings.worker.max_processing_attempts;
        // Each dead-lettered on its own, whatever else its message carried.
        let exhausted: Vec<NewDeadLetter> = claim
            .exhausted
            .iter()
            .map(|id| {
                let (message_id, body) = request_dead_letter(&messages[id].1.request);
                NewDeadLetter {
                    queue: self.queue.clone(),
                    message_id,
                    reason: format!(
                        "processing started {limit} times without finishing (its worker stopped \
                         each time); replay it with `dispatchctl dlq replay`"
                    ),
                    body,
                }
            })
            .collect();
        if !exhausted.is_empty() {
            dead_letters::insert_batch(&self.pool, &exhausted)
                .await
                .map_err(HandlerError::from)?;
            metrics::counter!("dispatcher_messages_dead_lettered_total", "queue" => self.queue.clone())
                .increment(exhausted.len() as u64);
        }
        let claimed_ids: Vec<Uuid> = claim.claimed.iter().map(|d| d.id).collect();
        // Each document is in the object store (if one is configured) before the batch commits.
        let settled: Vec<Settled> = match futures::stream::iter(claim.claimed)
            .map(|d| {
                let (m, r) = &messages[&d.id];
                let traceparent = r.traceparent.as_deref().or(m.header("traceparent"));
                self.run_traced(d, &r.request, traceparent)
            })
            .buffer_unordered(self.settings.worker.concurrency)
            .try_collect()
            .await
        {
            Ok(settled) => settled,
            Err(e) => {
                // Not the dispatch's failure: the batch is handled again (this attempt does not
                // count towards quarantine), and any object already written is overwritten then.
                tracing::warn!(error = %e, "batch not finished: a document could not be stored");
                dispatches::unclaim(&self.claim_pool, &claimed_ids)
                    .await
                    .map_err(HandlerError::from)?;
                return Err(HandlerError::Transient(e.to_string()));
            }
        };
        let mut finished = Vec::with_capacity(settled.len());
        let mut requeued = Vec::new();
        for s in settled {
            match s {
                Settled::Finished(f) => finished.push(*f),
                Settled::Requeued(r) => requeued.push(r),
            }
        }
        if !finished.is_empty() || !requeued.is_empty() {
            let outbox = dispatches::settle(
                &self.pool,
                &finished,
                &requeued,
                self.settings.worker.events_per_message,
            )
            .await
            .map_err(HandlerError::from)?;
            self.outbox_wake.hand_over(outbox);
        }
        Ok(())
    }

    fn weight(&self, requests: &Self::Body) -> usize {
        requests.len()
    }

    fn dead_letter_bodies(&self, message: &Received<Self::Body>) -> Vec<(Option<String>, Vec<u8>)> {
        one_dead_letter_per_request(message, &message.body)
    }
}

/// A `dispatch.requested` message as dead letters: one per request it carries (each a single
/// request, which `dispatchctl dlq replay` sends again on its own), or the message itself when
/// it holds one request or could not be read (`requests` empty).
pub fn one_dead_letter_per_request(
    message: &Incoming,
    requests: &[BatchedRequest],
) -> Vec<(Option<String>, Vec<u8>)> {
    if requests.len() > 1 {
        requests
            .iter()
            .map(|r| request_dead_letter(&r.request))
            .collect()
    } else {
        vec![(message.message_id.clone(), message.data.clone())]
    }
}

/// One request as a dead letter: its own message id and a single-request body.
fn request_dead_letter(request: &DispatchRequested) -> (Option<String>, Vec<u8>) {
    let body = serde_json::to_vec(request).expect("request serializes");
    (Some(request.message_id.to_string()), body)
}
