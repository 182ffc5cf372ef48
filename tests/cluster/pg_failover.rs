//! The primary dies: dispatches keep being submitted at a fixed rate through the real ingest-api
//! while the Postgres primary is killed and its synchronous standby promoted. Ingest answers 503
//! while no server accepts writes, then serves again on the promoted standby; every dispatch it
//! answered 202, before or after, is delivered to the webhook receiver.
//!
//! Size and pace: `DISPATCHER_FAILOVER_N` (default 5 000) at `DISPATCHER_FAILOVER_RATE` per second
//! (default 200); the primary is killed after a third of them, and the standby promoted
//! `DISPATCHER_FAILOVER_PROMOTE_AFTER_MS` (default 2 000, an operator's detection time) later.

use crate::pg_pair;
use dispatcher_e2e::{Receiver, Services, TestApp, PATIENCE};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Limit for the whole test: generous for a loaded machine, a liveness bound only.
const TIME_LIMIT: Duration = Duration::from_secs(900);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one submission got.
#[derive(Debug)]
struct Answer {
    sent: Instant,
    answered: Instant,
    /// HTTP status, or `None` when no answer came (connection error, client timeout).
    status: Option<u16>,
    dispatch_id: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_primary_dies() {
    tokio::time::timeout(TIME_LIMIT, the_primary_dies_within_limit())
        .await
        .expect("the failover test ran past its time limit");
}

async fn the_primary_dies_within_limit() {
    let n = env_or("DISPATCHER_FAILOVER_N", 5_000) as usize;
    let rate = env_or("DISPATCHER_FAILOVER_RATE", 200).max(1);
    let promote_after =
        Duration::from_millis(env_or("DISPATCHER_FAILOVER_PROMOTE_AFTER_MS", 2_000));

    pg_pair::up().await;
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_on(
        pg_pair::server(),
        Services::ALL,
        &[
            ("DISPATCHER__DATABASE__CONNECT_TIMEOUT", "2s"),
            ("DISPATCHER__DATABASE__ACQUIRE_TIMEOUT", "2s"),
            // A delivery whose attempt could not be recorded during the failover is retried;
            // give it room to outlast the failover.
            (
                "DISPATCHER__DELIVERY__RETRY_SCHEDULE",
                "500ms,1s,2s,4s,8s,8s,8s,8s,8s,8s",
            ),
        ],
    )
    .await;
    let who = Arc::new(app.create_account("failover@example.com").await);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let url = format!("{}/v1/dispatches?async=true", app.ingest_url);
    let callback = receiver.url();

    // Open loop: request i leaves at start + i/rate whatever the earlier ones are doing.
    let start = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = Vec::with_capacity(n);
    let kill_at = n / 3;
    let mut fault = None;
    for i in 0..n {
        interval.tick().await;
        if i == kill_at {
            // Killed and promoted beside the traffic, which goes on meanwhile.
            fault = Some(tokio::spawn(async move {
                let stopped = Instant::now();
                pg_pair::script(&["stop-primary"]).await;
                tokio::time::sleep(promote_after).await;
                pg_pair::script(&["promote"]).await;
                (stopped, Instant::now())
            }));
        }
        let (http, url, who, callback) = (http.clone(), url.clone(), who.clone(), callback.clone());
        requests.push(tokio::spawn(async move {
            let sent = Instant::now();
            let resp = http
                .post(&url)
                .basic_auth(&who.email, Some(&who.password))
                .json(&serde_json::json!({
                    "template": {"format": "text", "body": "n={{ i }}"},
                    "data": {"i": i},
                    "callbackUrl": callback,
                    "metadata": {"i": i},
                }))
                .send()
                .await;
            let (status, dispatch_id) = match resp {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    let id = body["dispatchId"].as_str().map(str::to_owned);
                    (Some(status), id)
                }
                Err(e) => {
                    eprintln!("request {i}: no answer: {e}");
                    (None, None)
                }
            };
            Answer {
                sent,
                answered: Instant::now(),
                status,
                dispatch_id,
            }
        }));
    }
    let submitted_in = start.elapsed();
    let (stopped, promoted) = fault.expect("the fault was started").await.unwrap();
    let mut answers = Vec::with_capacity(n);
    for r in requests {
        answers.push(r.await.unwrap());
    }
    let answered_in = start.elapsed();

    // The answers.
    let mut by_status: HashMap<Option<u16>, usize> = HashMap::new();
    for a in &answers {
        *by_status.entry(a.status).or_default() += 1;
    }
    let accepted: HashSet<String> = answers
        .iter()
        .filter(|a| a.status == Some(202))
        .map(|a| a.dispatch_id.clone().expect("a 202 names its dispatch"))
        .collect();
    let unavailable: Vec<&Answer> = answers.iter().filter(|a| a.status == Some(503)).collect();
    // The window: from the first request answered 503 being sent to the last one answered.
    let window = match (
        unavailable.iter().map(|a| a.sent).min(),
        unavailable.iter().map(|a| a.answered).max(),
    ) {
        (Some(from), Some(to)) => to - from,
        _ => Duration::ZERO,
    };
    let accepted_after_promotion = answers
        .iter()
        .filter(|a| a.status == Some(202) && a.sent > promoted)
        .count();
    // The first 202 answered after the promotion, counted from the kill and from the promotion.
    let first_accept = answers
        .iter()
        .filter(|a| a.status == Some(202) && a.sent > stopped && a.answered > promoted)
        .map(|a| a.answered)
        .min();

    // Every accepted dispatch delivered; counted by dispatch, deduplicated by webhook-id.
    let deadline = tokio::time::Instant::now() + PATIENCE * 5;
    let delivered = loop {
        let got = receiver.requests();
        let ids: HashSet<String> = got
            .iter()
            .filter_map(|r| r.json()["data"]["dispatchId"].as_str().map(str::to_owned))
            .collect();
        if accepted.is_subset(&ids) || tokio::time::Instant::now() >= deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut per_webhook_id: HashMap<String, usize> = HashMap::new();
    let mut delivered_ids = HashSet::new();
    for r in &delivered {
        *per_webhook_id
            .entry(r.header("webhook-id").to_owned())
            .or_default() += 1;
        if let Some(id) = r.json()["data"]["dispatchId"].as_str() {
            delivered_ids.insert(id.to_owned());
        }
    }
    let duplicates: usize = per_webhook_id.values().map(|c| c - 1).sum();
    let lost: Vec<&String> = accepted.difference(&delivered_ids).collect();
    // Dispatches delivered that no 202 announced: answered 503 (or not at all) although their
    // commit reached the standby; a client retrying with its Idempotency-Key gets them back.
    let unannounced = delivered_ids.difference(&accepted).count();
    // The other paths came back on the promoted node too: a sync submission (woken by its
    // dispatch's NOTIFY through a LISTEN connection made anew) and status-api's pool.
    let sync_started = Instant::now();
    let sync = app
        .post(
            &app.ingest_url,
            "/v1/dispatches",
            &who,
            &serde_json::json!({"template": {"format": "text", "body": "after"}, "data": {}}),
        )
        .await;
    assert_eq!(sync.status(), 200, "sync submission after the failover");
    let sync: serde_json::Value = sync.json().await.unwrap();
    assert_eq!(sync["status"], "completed", "{sync}");
    let sync_took = sync_started.elapsed();
    let status = app
        .get(
            &app.status_url,
            &format!("/v1/dispatches/{}", sync["dispatchId"].as_str().unwrap()),
            &who,
        )
        .await;
    assert_eq!(status.status(), 200, "status-api after the failover");

    let standby_in_recovery = pg_pair::query_text(
        pg_pair::STANDBY_PORT,
        "postgres",
        "SELECT pg_is_in_recovery()::text",
    )
    .await;

    eprintln!(
        "primary failover: {n} dispatches at {rate}/s submitted in {:.1}s, answered in {:.1}s; \
         primary killed after {kill_at}, standby promoted {:.1}s later\n  \
         answers: {} x 202, {} x 503, other {:?}\n  \
         503 window: {:.2}s (first 503 sent to last 503 answered); \
         first 202 after the kill: {}; 202s sent after promotion: {accepted_after_promotion}\n  \
         delivered: {} dispatches ({} requests, {} distinct webhook-ids), lost: {}, \
         duplicates (same webhook-id): {duplicates}, delivered without a 202: {unannounced}\n  \
         a sync submission afterwards: completed in {:.2}s",
        submitted_in.as_secs_f64(),
        answered_in.as_secs_f64(),
        (promoted - stopped).as_secs_f64(),
        by_status.get(&Some(202)).copied().unwrap_or(0),
        unavailable.len(),
        by_status
            .iter()
            .filter(|(s, _)| !matches!(s, Some(202 | 503)))
            .collect::<Vec<_>>(),
        window.as_secs_f64(),
        first_accept.map_or("none".into(), |t| format!(
            "{:.2}s after it, {:.2}s after the promotion",
            (t - stopped).as_secs_f64(),
            (t - promoted).as_secs_f64()
        )),
        delivered_ids.len(),
        delivered.len(),
        per_webhook_id.len(),
        lost.len(),
        sync_took.as_secs_f64(),
    );

    assert_eq!(standby_in_recovery, "false", "the standby was not promoted");
    assert!(
        lost.is_empty(),
        "{} dispatches answered 202 were never delivered, e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    // Unavailability is a 503, never another error and never a request left without an answer.
    assert!(
        by_status.keys().all(|s| matches!(s, Some(202 | 503))),
        "answers other than 202 and 503: {by_status:?}"
    );
    assert!(
        accepted_after_promotion > 0,
        "ingest did not serve again after the promotion"
    );
}
