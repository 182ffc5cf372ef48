//! Making delivery attempts and deciding what comes next.

use chrono::Utc;
use dispatcher_config::Settings;
use dispatcher_core::circuit::{Admission, Circuit};
use dispatcher_core::retry::{next_step, AttemptOutcome, NextStep};
use dispatcher_core::signing::{signature_header, WebhookSecret};
use dispatcher_core::DeliveryTask;
use dispatcher_db::deliveries::{self, AttemptRecord, Delivery, RetryMessage};
use dispatcher_db::outbox::OutboxWake;
use dispatcher_db::{accounts, DbError, Pool};
use dispatcher_mq::Topology;
use dispatcher_outbound::Policy;
use futures::StreamExt;
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;
use uuid::Uuid;

pub struct Deliverer {
    settings: Arc<Settings>,
    pub pool: Pool,
    /// Retries are outbox rows: this process's relay is woken after they commit.
    outbox_wake: OutboxWake,
    http: reqwest::Client,
    policy: Policy,
    /// Per-endpoint (URL origin) circuit breakers. Each replica keeps its own: a dead endpoint is
    /// learned by every replica within `threshold` failures, which is cheap and needs no shared
    /// state on the hot path.
    circuits: Mutex<HashMap<String, Circuit>>,
}

fn endpoint_key(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| url.to_owned())
}

/// What one POST came back with.
struct PostResult {
    outcome: AttemptOutcome,
    response_status: Option<i32>,
    error: Option<String>,
    duration: Duration,
}

impl Deliverer {
    pub fn new(settings: Arc<Settings>, pool: Pool, outbox_wake: OutboxWake) -> Self {
        let http = dispatcher_outbound::client(&settings.delivery, "dispatcher-webhooks/1");
        let policy = Policy::from_settings(&settings.delivery);
        Self {
            settings,
            pool,
            outbox_wake,
            http,
            policy,
            circuits: Mutex::new(HashMap::new()),
        }
    }

    /// Splits deliveries into those to attempt now and those held back by an open circuit.
    fn admit(&self, deliveries: Vec<Delivery>) -> (Vec<Delivery>, Vec<Delivery>) {
        let now = Instant::now();
        let mut circuits = self.circuits.lock().expect("circuits");
        deliveries.into_iter().partition(|d| {
            circuits.entry(endpoint_key(&d.url)).or_default().admit(now) != Admission::Hold
        })
    }

    fn record_circuit(&self, url: &str, success: bool) {
        let d = &self.settings.delivery;
        let mut circuits = self.circuits.lock().expect("circuits");
        circuits.entry(endpoint_key(url)).or_default().record(
            success,
            Instant::now(),
            d.circuit_breaker_threshold,
            d.circuit_breaker_cooldown,
        );
        let open = circuits.values().filter(|c| c.is_open()).count();
        // Forget healthy endpoints so the map does not grow without bound.
        if circuits.len() > 10_000 {
            circuits.retain(|_, c| c.is_open());
        }
        metrics::gauge!("dispatcher_circuit_breakers_open").set(open as f64);
    }

    async fn hold(&self, held: Vec<Delivery>) -> Result<(), DbError> {
        if held.is_empty() {
            return Ok(());
        }
        let cooldown = self.settings.delivery.circuit_breaker_cooldown;
        let rows: Vec<_> = held
            .into_iter()
            .map(|d| {
                let factor =
                    dispatcher_core::retry::DELAY_FACTORS[rand::thread_rng().gen_range(0..5)];
                let ms = Topology::delay_for(cooldown, factor);
                let task = DeliveryTask {
                    delivery_id: d.id,
                    attempt: (d.attempts + 1) as u32,
                };
                (
                    d.id,
                    Utc::now() + chrono::Duration::milliseconds(ms as i64),
                    RetryMessage {
                        message_id: Uuid::now_v7(),
                        routing_key: Topology::delay_key(ms),
                        payload: serde_json::to_vec(&task).expect("task serializes"),
                    },
                )
            })
            .collect();
        metrics::counter!("dispatcher_deliveries_held_total").increment(rows.len() as u64);
        deliveries::hold_batch(&self.pool, &rows).await?;
        self.outbox_wake.committed();
        Ok(())
    }

    /// Attempts every delivery (each one's attempt number is `attempts + 1`) and records the
    /// outcomes, retries and dead letters in one statement.
    pub async fn attempt_all(&self, deliveries: Vec<Delivery>) -> Result<(), DbError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let (deliveries, held) = self.admit(deliveries);
        self.hold(held).await?;
        let mut secrets: HashMap<Uuid, Arc<Vec<WebhookSecret>>> = HashMap::new();
        for d in &deliveries {
            if let std::collections::hash_map::Entry::Vacant(slot) = secrets.entry(d.account_id) {
                let s = accounts::signing_secrets(&self.pool, d.account_id).await?;
                slot.insert(Arc::new(s));
            }
        }
        let records: Vec<(AttemptRecord, Option<Uuid>)> = futures::stream::iter(deliveries)
            .map(|d| {
                let keys = secrets[&d.account_id].clone();
                // Each attempt is a span in the dispatch's trace.
                let span = tracing::info_span!("webhook.deliver", delivery_id = %d.id, attempt = d.attempts + 1);
                dispatcher_telemetry::set_remote_parent(&span, d.traceparent.as_deref());
                async move { self.attempt_one(d, &keys).await }.instrument(span)
            })
            .buffer_unordered(self.settings.deliverer.concurrency)
            .collect()
            .await;
        let (records, disable): (Vec<AttemptRecord>, Vec<Option<Uuid>>) =
            records.into_iter().unzip();
        deliveries::record_attempts(&self.pool, &records).await?;
        if records.iter().any(|r| r.retry.is_some()) {
            self.outbox_wake.committed();
        }
        for webhook_id in disable.into_iter().flatten() {
            deliveries::disable_subscription(&self.pool, webhook_id).await?;
        }
        Ok(())
    }

    async fn attempt_one(
        &self,
        d: Delivery,
        keys: &[WebhookSecret],
    ) -> (AttemptRecord, Option<Uuid>) {
        let attempt = d.attempts + 1;
        let attempted_at = Utc::now();
        let post = self.post(&d, keys).await;
        self.record_circuit(&d.url, matches!(post.outcome, AttemptOutcome::Success));
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
        (
            AttemptRecord {
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
            },
            disable,
        )
    }

    async fn post(&self, d: &Delivery, keys: &[WebhookSecret]) -> PostResult {
        let start = Instant::now();
        let fail = |error: String, status: Option<i32>, retry_after: Option<Duration>| PostResult {
            outcome: AttemptOutcome::Failure { retry_after },
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
                return fail(
                    format!("{kind}: {}", dispatcher_outbound::error_chain(&e)),
                    None,
                    None,
                );
            }
        };
        let status = resp.status();
        let code = Some(status.as_u16() as i32);
        if status.is_success() {
            return PostResult {
                outcome: AttemptOutcome::Success,
                response_status: code,
                error: None,
                duration: start.elapsed(),
            };
        }
        if status.as_u16() == 410 {
            return PostResult {
                outcome: AttemptOutcome::Gone,
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
        fail(what, code, retry_after)
    }
}

/// The only field of a stored webhook payload the lag metric needs; the rest of the payload is
/// skipped rather than parsed.
#[derive(serde::Deserialize)]
struct PayloadTimestamp {
    timestamp: chrono::DateTime<Utc>,
}
