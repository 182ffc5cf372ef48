//! One batch of `dispatch.requested` messages: claim, render, provide, finish.

use crate::results::Results;
use chrono::Utc;
use dispatcher_config::Settings;
use dispatcher_core::{
    DispatchError, DispatchRequested, DispatchStatus, ErrorCode, EventType, OutcomeEvent,
    WebhookData, WebhookPayload,
};
use dispatcher_db::dead_letters::{self, NewDeadLetter};
use dispatcher_db::dispatches::{self, Claimed, Finished};
use dispatcher_db::outbox::OutboxWake;
use dispatcher_db::pool::AsyncCommitPool;
use dispatcher_db::Pool;
use dispatcher_mq::{BatchHandler, HandlerError, Incoming, Topology};
use dispatcher_outbound::Policy;
use dispatcher_render::{Document, Renderer};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
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
    results: Results,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Provider {
    Store,
    Http { url: String },
}

impl WorkerHandler {
    pub fn new(
        settings: Arc<Settings>,
        pool: Pool,
        claim_pool: AsyncCommitPool,
        outbox_wake: OutboxWake,
        renderer: Renderer,
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
            results: Results::new(store),
        }
    }

    /// Runs one dispatch in a span that continues the trace of the message that requested it.
    async fn run_traced(&self, d: Claimed, traceparent: Option<&str>) -> Finished {
        let span = tracing::info_span!("dispatch.process", dispatch_id = %d.id);
        dispatcher_telemetry::set_remote_parent(&span, traceparent);
        self.run_one(d).instrument(span).await
    }

    /// Renders and hands one dispatch to its provider; never fails, the outcome says what happened.
    async fn run_one(&self, mut d: Claimed) -> Finished {
        let outcome = match self
            .renderer
            // Nothing after rendering reads the template or the data: hand them over.
            .render(
                d.template_format,
                Arc::from(std::mem::take(&mut d.template_body)),
                Arc::new(std::mem::take(&mut d.data)),
            )
            .await
        {
            Err(e) => Err(DispatchError::new(
                ErrorCode::TemplateRenderError,
                e.message,
            )),
            Ok(doc) => self.provide(&d, doc).await,
        };
        let completed_at = Utc::now();
        let base = self.settings.public_base();
        let (status, result, content_type, error) = match outcome {
            Ok(doc) => (
                DispatchStatus::Completed,
                Some(doc.bytes),
                Some(doc.content_type.to_owned()),
                None,
            ),
            Err(e) => (DispatchStatus::Failed, None, None, Some(e)),
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
                    result_url: result
                        .is_some()
                        .then(|| dispatcher_http::views::result_url(base, d.id)),
                    error: error.clone(),
                    metadata: d.metadata.clone(),
                }
                .into(),
            },
        };
        metrics::counter!("dispatcher_dispatches_finished_total", "status" => status.as_str())
            .increment(1);
        Finished {
            id: d.id,
            status,
            completed_at,
            result,
            result_key: None,
            content_type,
            error: error.map(|e| serde_json::to_value(e).expect("error serializes")),
            event_id: event.event_id,
            routing_key: event_type.as_str(),
            event: serde_json::to_vec(&event).expect("event serializes"),
            // The outcome event continues this dispatch's trace.
            traceparent: dispatcher_telemetry::current_traceparent(),
        }
    }

    async fn provide(&self, d: &Claimed, doc: Document) -> Result<Document, DispatchError> {
        let provider: Provider = serde_json::from_value(d.provider.clone()).map_err(|e| {
            DispatchError::new(ErrorCode::ProviderError, format!("unknown provider: {e}"))
        })?;
        match provider {
            Provider::Store => Ok(doc),
            Provider::Http { url } => {
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
                    Ok(doc)
                } else {
                    Err(DispatchError::new(
                        ErrorCode::ProviderError,
                        format!("provider answered {}", resp.status()),
                    ))
                }
            }
        }
    }
}

impl BatchHandler for WorkerHandler {
    async fn handle(&self, batch: &[Incoming]) -> Result<(), HandlerError> {
        let mut ids = Vec::with_capacity(batch.len());
        let mut messages: HashMap<Uuid, &Incoming> = HashMap::new();
        let mut traces: HashMap<Uuid, &str> = HashMap::new();
        let mut quarantine = Vec::new();
        for m in batch {
            match serde_json::from_slice::<DispatchRequested>(&m.data) {
                Ok(msg) => {
                    ids.push(msg.dispatch_id);
                    messages.insert(msg.dispatch_id, m);
                    if let Some(tp) = m.header("traceparent") {
                        traces.insert(msg.dispatch_id, tp);
                    }
                }
                Err(e) => quarantine.push(NewDeadLetter {
                    queue: self.queue.clone(),
                    message_id: m.message_id.clone(),
                    reason: format!("unparseable dispatch.requested: {e}"),
                    body: m.data.clone(),
                }),
            }
        }
        // Finished dispatches are not claimed: a redelivered message is acknowledged untouched.
        let claim = if ids.is_empty() {
            dispatches::Claim::default()
        } else {
            dispatches::claim(
                &self.claim_pool,
                &ids,
                self.settings.worker.max_processing_attempts,
            )
            .await
            .map_err(HandlerError::from)?
        };
        let limit = self.settings.worker.max_processing_attempts;
        for id in &claim.exhausted {
            let m = messages[id];
            quarantine.push(NewDeadLetter {
                queue: self.queue.clone(),
                message_id: m.message_id.clone(),
                reason: format!(
                    "processing started {limit} times without finishing (its worker stopped \
                     each time); replay it with `dispatchctl dlq replay`"
                ),
                body: m.data.clone(),
            });
        }
        let stored = dead_letters::insert_batch(&self.pool, &quarantine)
            .await
            .map_err(HandlerError::from)?;
        metrics::counter!("dispatcher_messages_dead_lettered_total", "queue" => self.queue.clone())
            .increment(stored);
        let claimed = claim.claimed;
        let claimed_ids: Vec<Uuid> = claimed.iter().map(|d| d.id).collect();
        // Each document is in the object store (if one is configured) before the batch commits.
        let finished: Vec<Finished> = match futures::stream::iter(claimed)
            .map(|d| {
                let tp = traces.get(&d.id).copied();
                let account_id = d.account_id;
                async move {
                    let f = self.run_traced(d, tp).await;
                    self.results.keep(account_id, f).await
                }
            })
            .buffer_unordered(self.settings.worker.concurrency)
            .try_collect()
            .await
        {
            Ok(finished) => finished,
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
        if !finished.is_empty() {
            dispatches::finish_batch(&self.pool, &finished)
                .await
                .map_err(HandlerError::from)?;
            self.outbox_wake.committed();
        }
        Ok(())
    }
}
