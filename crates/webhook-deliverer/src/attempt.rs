//! Making delivery attempts and deciding what comes next.

use chrono::Utc;
use dispatcher_config::Settings;
use dispatcher_core::health::{self, Change};
use dispatcher_core::retry::{next_step, AttemptOutcome, NextStep};
use dispatcher_core::signing::{signature_header, WebhookSecret};
use dispatcher_core::DeliveryTask;
use dispatcher_core::EventType;
use dispatcher_db::deliveries::{self, AttemptRecord, Delivery, Held, RetryMessage};
use dispatcher_db::outbox::OutboxWake;
use dispatcher_db::{accounts, endpoint_health, outbox, subscriptions, DbError, Pool};
use dispatcher_mq::Topology;
use dispatcher_outbound::Policy;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;
use uuid::Uuid;

use crate::endpoints::{Endpoints, Entry, Limits, Outcome, Permit};
use crate::operational;
use crate::rates::{self, RateLimits};

pub struct Deliverer {
    settings: Arc<Settings>,
    pub pool: Pool,
    /// Retries are outbox rows: this process's relay is woken after they commit.
    outbox_wake: OutboxWake,
    http: reqwest::Client,
    policy: Policy,
    /// Per-endpoint (URL origin) in-flight limits and circuit breakers.
    endpoints: Endpoints,
    /// Requests in flight from this process, all endpoints together.
    in_flight: Semaphore,
    /// Subscriptions' `rateLimit`s.
    rates: RateLimits,
}

/// An attempt made, with what health and the operational events need to know of its delivery.
pub(crate) struct Made {
    pub record: AttemptRecord,
    pub webhook_id: Option<Uuid>,
    pub url: String,
    pub event_type: String,
}

/// What one POST came back with.
struct PostResult {
    outcome: AttemptOutcome,
    /// The receiver looked overwhelmed: a timeout, a connection error, a 429 or a 503.
    overloaded: bool,
    response_status: Option<i32>,
    error: Option<String>,
    duration: Duration,
}

impl Deliverer {
    pub fn new(settings: Arc<Settings>, pool: Pool, outbox_wake: OutboxWake) -> Self {
        let http = dispatcher_outbound::client(&settings.delivery, "dispatcher-webhooks/1");
        let policy = Policy::from_settings(&settings.delivery);
        let d = &settings.delivery;
        let endpoints = Endpoints::new(Limits {
            initial_in_flight: d.endpoint_initial_in_flight,
            max_in_flight: d.endpoint_max_in_flight,
            breaker_threshold: d.circuit_breaker_threshold,
            breaker_cooldown: d.circuit_breaker_cooldown,
            probe_wait: d.timeout + Duration::from_secs(1),
        });
        let in_flight = Semaphore::new(settings.deliverer.concurrency.max(1));
        Self {
            settings,
            pool,
            outbox_wake,
            http,
            policy,
            endpoints,
            in_flight,
            rates: RateLimits::default(),
        }
    }

    /// Re-schedules deliveries whose endpoint's circuit is open, for about one cool-down. Each
    /// endpoint's held deliveries take the delay steps in turn (0.8, 0.9, ... 1.2 times the
    /// cool-down), so they come back spread out rather than together.
    async fn hold(&self, held: Vec<(Delivery, usize)>) -> Result<(), DbError> {
        if held.is_empty() {
            return Ok(());
        }
        let cooldown = self.settings.delivery.circuit_breaker_cooldown;
        let rows: Vec<_> = held
            .into_iter()
            .map(|(d, spread)| {
                let factor = dispatcher_core::retry::DELAY_FACTORS[spread % 5];
                let ms = Topology::delay_for(cooldown, factor);
                let task = DeliveryTask {
                    delivery_id: d.id,
                    attempt: (d.attempts + 1) as u32,
                };
                Held {
                    id: d.id,
                    next_attempt_at: Utc::now() + chrono::Duration::milliseconds(ms as i64),
                    retry: RetryMessage {
                        message_id: Uuid::now_v7(),
                        routing_key: Topology::delay_key(ms),
                        payload: serde_json::to_vec(&task).expect("task serializes"),
                    },
                    insert: d.row_to_insert(),
                }
            })
            .collect();
        metrics::counter!("dispatcher_deliveries_held_total").increment(rows.len() as u64);
        deliveries::hold_batch(&self.pool, &rows).await?;
        self.outbox_wake.committed();
        Ok(())
    }

    /// Attempts every delivery (each one's attempt number is `attempts + 1`) as its endpoint
    /// admits it, and records the outcomes, retries and dead letters in one statement. `known`:
    /// signing secrets the caller read with the deliveries' targets; the other accounts' are read
    /// in one statement.
    pub async fn attempt_all(
        &self,
        deliveries: Vec<Delivery>,
        known: HashMap<Uuid, Vec<WebhookSecret>>,
    ) -> Result<(), DbError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut secrets: HashMap<Uuid, Arc<Vec<WebhookSecret>>> =
            known.into_iter().map(|(a, s)| (a, Arc::new(s))).collect();
        let mut unknown: Vec<Uuid> = deliveries
            .iter()
            .map(|d| d.account_id)
            .filter(|a| !secrets.contains_key(a))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            let read = accounts::signing_secrets_of(&self.pool, &unknown).await?;
            secrets.extend(read.into_iter().map(|(a, s)| (a, Arc::new(s))));
        }
        // Every delivery of the batch waits for its own endpoint, in order, so a slow endpoint
        // does not hold back the others' turns.
        let results = futures::future::join_all(deliveries.into_iter().map(|d| {
            let keys = secrets[&d.account_id].clone();
            async move {
                if let (Some(webhook), Some(rate)) = (d.webhook_id, d.rate_limit) {
                    if let Err(spread) = self
                        .rates
                        .admit(webhook, rate.max(1) as u32, rates::MAX_WAIT)
                        .await
                    {
                        metrics::counter!("dispatcher_deliveries_rate_limited_total").increment(1);
                        return Err((d, spread));
                    }
                }
                let endpoint = self.endpoints.get(&d.url);
                match endpoint.enter().await {
                    Entry::Hold { spread } => Err((d, spread)),
                    Entry::Send(permit) => {
                        let _slot = self.in_flight.acquire().await.expect("never closed");
                        // Each attempt is a span in the dispatch's trace.
                        let span = tracing::info_span!("webhook.deliver", delivery_id = %d.id, attempt = d.attempts + 1);
                        dispatcher_telemetry::set_remote_parent(&span, d.traceparent.as_deref());
                        Ok(self.attempt_one(d, &keys, permit).instrument(span).await)
                    }
                }
            }
        }))
        .await;
        let mut made = Vec::with_capacity(results.len());
        let mut held = Vec::new();
        for r in results {
            match r {
                Ok(m) => made.push(m),
                Err(h) => held.push(h),
            }
        }
        metrics::gauge!("dispatcher_circuit_breakers_open").set(self.endpoints.open() as f64);
        self.hold(held).await?;
        if !made.is_empty() {
            let published = self.record(made).await?;
            if published {
                self.outbox_wake.committed();
            }
        }
        Ok(())
    }

    /// Records the attempts, folds them into their endpoints' health and writes the operational
    /// events the changes call for, in one transaction. Returns whether it wrote outbox rows.
    async fn record(&self, made: Vec<Made>) -> Result<bool, DbError> {
        let records: Vec<&AttemptRecord> = made.iter().map(|m| &m.record).collect();
        let retries = records.iter().any(|r| r.retry.is_some());
        let mut client = self.pool.get().await?;
        // Attempts to no subscription (no endpoint health to fold) that exhaust no delivery (no
        // operational event) write nothing beside themselves: one statement, no transaction.
        if made
            .iter()
            .all(|m| m.webhook_id.is_none() && m.record.new_status != "dead")
        {
            deliveries::record_attempts(&client, &records).await?;
            return Ok(retries);
        }
        let tx = client.transaction().await?;
        let recorded = deliveries::record_attempts(&tx, &records).await?;
        let mut events = operational::exhausted(&made, &recorded);
        let by_webhook = operational::observed_by_webhook(&made);
        if !by_webhook.is_empty() {
            let keys: Vec<(Uuid, Uuid)> =
                by_webhook.iter().map(|(w, o)| (*w, o.account_id)).collect();
            let mut health = endpoint_health::lock(&tx, &keys).await?;
            let policy = self.health_policy();
            let mut disable = Vec::new();
            for (webhook, seen) in &by_webhook {
                let Some(h) = health.get_mut(webhook) else {
                    continue;
                };
                match h.apply(&seen.attempts, policy) {
                    Some(Change::Failing) => {
                        events.push(seen.event(EventType::EndpointFailing, *webhook, h, None))
                    }
                    Some(Change::Recovered) => {
                        events.push(seen.event(EventType::EndpointRecovered, *webhook, h, None))
                    }
                    Some(Change::Disable) => {
                        let since = h.failing_since.map(|t| t.to_rfc3339()).unwrap_or_default();
                        disable.push((*webhook, format!("the endpoint has failed since {since}")));
                    }
                    None => {}
                }
            }
            let disabled = subscriptions::disable(&tx, &disable).await?;
            for (webhook, reason) in disable
                .into_iter()
                .filter(|(w, _)| disabled.contains(w))
                .chain(
                    recorded
                        .gone
                        .iter()
                        .map(|w| (*w, deliveries::GONE_REASON.to_owned())),
                )
            {
                if let (Some(seen), Some(h)) = (by_webhook.get(&webhook), health.get(&webhook)) {
                    events.push(seen.event(EventType::EndpointDisabled, webhook, h, Some(reason)));
                }
            }
            endpoint_health::store(&tx, &health).await?;
        }
        let messages: Vec<_> = events.iter().map(operational::message).collect();
        outbox::insert(&tx, &messages).await?;
        tx.commit().await?;
        for e in &events {
            metrics::counter!("dispatcher_operational_events_total", "type" => e.payload.event_type.as_str())
                .increment(1);
        }
        Ok(!messages.is_empty() || retries)
    }

    fn health_policy(&self) -> health::Policy {
        let d = &self.settings.delivery;
        health::Policy {
            threshold: d.circuit_breaker_threshold,
            disable_after: (!d.disable_failing_after.is_zero()).then_some(d.disable_failing_after),
        }
    }

    async fn attempt_one(&self, d: Delivery, keys: &[WebhookSecret], permit: Permit) -> Made {
        let attempt = d.attempts + 1;
        let attempted_at = Utc::now();
        let post = self.post(&d, keys).await;
        permit.finish(match post.outcome {
            AttemptOutcome::Success => Outcome::Success,
            _ if post.overloaded => Outcome::Overloaded,
            _ => Outcome::Failed,
        });
        let schedule = &self.settings.delivery.retry_schedule;
        let step = next_step(attempt as u32, schedule, post.outcome, || {
            rand::thread_rng().gen_range(0..5)
        });
        let (new_status, next_attempt_at, retry, disable) = match step {
            NextStep::Succeeded => ("succeeded", None, None, None),
            NextStep::Disabled => ("failed", None, None, d.webhook_id),
            NextStep::Dead => ("dead", None, None, None),
            NextStep::Retry { base, factor } => {
                let ms = Topology::delay_for(base, factor);
                let task = DeliveryTask {
                    delivery_id: d.id,
                    attempt: (attempt + 1) as u32,
                };
                (
                    "pending",
                    Some(attempted_at + chrono::Duration::milliseconds(ms as i64)),
                    Some(RetryMessage {
                        message_id: Uuid::now_v7(),
                        routing_key: Topology::delay_key(ms),
                        payload: serde_json::to_vec(&task).expect("task serializes"),
                    }),
                    None,
                )
            }
        };
        metrics::counter!("dispatcher_delivery_attempts_total", "outcome" => new_status)
            .increment(1);
        metrics::histogram!("dispatcher_delivery_duration_seconds")
            .record(post.duration.as_secs_f64());
        let succeeded = matches!(post.outcome, AttemptOutcome::Success);
        if succeeded {
            // From the outcome (the payload's timestamp) to the receiver's acknowledgement.
            if let Ok(p) = serde_json::from_slice::<PayloadTimestamp>(&d.payload) {
                let lag = (Utc::now() - p.timestamp).to_std().unwrap_or_default();
                metrics::histogram!("dispatcher_webhook_delivery_lag_seconds")
                    .record(lag.as_secs_f64());
            }
            metrics::counter!("dispatcher_deliveries_total", "outcome" => "succeeded").increment(1);
        } else if new_status == "dead" || new_status == "failed" {
            metrics::counter!("dispatcher_deliveries_total", "outcome" => new_status).increment(1);
        }
        let insert = d.row_to_insert();
        let record = AttemptRecord {
            insert,
            id: Uuid::now_v7(),
            delivery_id: d.id,
            dispatch_id: d.dispatch_id,
            account_id: d.account_id,
            attempt,
            succeeded,
            response_status: post.response_status,
            error: post.error,
            duration_ms: post.duration.as_millis().min(i32::MAX as u128) as i32,
            attempted_at,
            next_attempt_at,
            new_status,
            retry,
            disable_webhook: disable,
        };
        Made {
            record,
            webhook_id: d.webhook_id,
            url: d.url,
            event_type: d.event_type,
        }
    }

    async fn post(&self, d: &Delivery, keys: &[WebhookSecret]) -> PostResult {
        let start = Instant::now();
        let fail = |error: String, status: Option<i32>, retry_after: Option<Duration>| PostResult {
            outcome: AttemptOutcome::Failure { retry_after },
            overloaded: false,
            response_status: status,
            error: Some(error),
            duration: start.elapsed(),
        };
        let url: url::Url = match d.url.parse() {
            Ok(u) => u,
            Err(_) => return fail("callback URL is invalid".into(), None, None),
        };
        if let Err(e) = self.policy.check(&url) {
            return fail(format!("callback URL refused: {e}"), None, None);
        }
        let ts = Utc::now().timestamp();
        let signature = signature_header(keys, &d.msg_id, ts, &d.payload);
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(d.payload.clone());
        // The receiver can join the dispatch's trace.
        let sent = match dispatcher_telemetry::current_traceparent() {
            Some(tp) => sent.header("traceparent", tp),
            None => sent,
        }
        .send()
        .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else {
                    "connection error"
                };
                return PostResult {
                    overloaded: true,
                    ..fail(
                        format!("{kind}: {}", dispatcher_outbound::error_chain(&e)),
                        None,
                        None,
                    )
                };
            }
        };
        let status = resp.status();
        let code = Some(status.as_u16() as i32);
        if status.is_success() {
            return PostResult {
                outcome: AttemptOutcome::Success,
                overloaded: false,
                response_status: code,
                error: None,
                duration: start.elapsed(),
            };
        }
        if status.as_u16() == 410 {
            return PostResult {
                outcome: AttemptOutcome::Gone,
                overloaded: false,
                response_status: code,
                error: Some("endpoint answered 410 Gone; subscription disabled".into()),
                duration: start.elapsed(),
            };
        }
        let retry_after = matches!(status.as_u16(), 429 | 503)
            .then(|| resp.headers().get("retry-after"))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let what = if status.is_redirection() {
            format!("endpoint answered {status} (redirects are not followed)")
        } else {
            format!("endpoint answered {status}")
        };
        PostResult {
            overloaded: matches!(status.as_u16(), 429 | 503),
            ..fail(what, code, retry_after)
        }
    }
}

/// The only field of a stored webhook payload the lag metric needs; the rest of the payload is
/// skipped rather than parsed.
#[derive(serde::Deserialize)]
struct PayloadTimestamp {
    timestamp: chrono::DateTime<Utc>,
}
