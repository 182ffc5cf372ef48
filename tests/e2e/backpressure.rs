//! When delivery cannot keep pace, the ingest pushes back: past `ingest.max_backlog` accepted
//! messages waiting, new submissions get `429 overloaded` with `Retry-After`, replays are still
//! answered, and once the backlog drains submissions are accepted again. Well before that, while
//! the work waiting would take longer than `ingest.pace_target` to drain, submissions are
//! answered later (paced) instead of the queue growing; batches, bulk work, only once it is
//! `ingest.pace_batch_burst` past that.

use dispatcher_e2e::{ok_if, wait_until, Receiver, Services, TestApp, PATIENCE};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn a_backlog_past_the_limit_is_answered_429_until_it_drains() {
    // No worker: accepted dispatches wait in the queue.
    let mut app = TestApp::spawn_with(
        Services {
            ingest: true,
            worker: false,
            deliverer: true,
            status: true,
        },
        &[("DISPATCHER__INGEST__MAX_BACKLOG", "5")],
    )
    .await;
    let acct = app.create_account("backlog@example.com").await;
    let (http, url) = (
        app.http.clone(),
        format!("{}/v1/dispatches?async=true", app.ingest_url),
    );
    let submit = |key: String| {
        let (http, url, acct) = (&http, &url, &acct);
        async move {
            http.post(url)
                .basic_auth(&acct.email, Some(&acct.password))
                .header("Idempotency-Key", key)
                .json(&json!({"template": {"format": "text", "body": "x"}, "data": {}}))
                .send()
                .await
                .unwrap()
        }
    };
    let mut accepted = Vec::new();
    for i in 0..10 {
        let r = submit(format!("early-{i}")).await;
        assert_eq!(r.status(), 202);
        accepted.push(r.json::<serde_json::Value>().await.unwrap());
    }

    // The backlog is sampled every 2 s: within a bounded wait, new work is refused.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let refused = loop {
        let r = submit(format!("late-{}", uuid::Uuid::new_v4())).await;
        if r.status() == 429 {
            break r;
        }
        assert_eq!(r.status(), 202);
        assert!(
            tokio::time::Instant::now() < deadline,
            "a backlog of 10 past a limit of 5 was never pushed back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");

    // A replay adds no work and is answered as before.
    let again = submit("early-0".into()).await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap(),
        accepted[0]
    );

    // A worker drains the backlog; submissions are accepted again and nothing was lost.
    app.start_worker(app.child_token());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = submit(format!("after-{}", uuid::Uuid::new_v4())).await;
        if r.status() == 202 {
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused after the backlog drained"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for a in &accepted {
        let done = app
            .wait_finished(&acct, a["dispatchId"].as_str().unwrap())
            .await;
        assert_eq!(done["status"], "completed");
    }
}

/// An `http` provider that takes `delay_ms` (read at each call) to answer each document: a slow
/// worker, for as long as the test wants one.
async fn slow_provider(delay_ms: Arc<AtomicU64>) -> String {
    use axum::{routing::post, Router};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/provider", listener.local_addr().unwrap());
    let app = Router::new().route(
        "/provider",
        post(move || async move {
            let ms = delay_ms.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(ms)).await
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn dispatch_ids(body: &serde_json::Value) -> Vec<String> {
    match body.get("data") {
        Some(items) => items
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["dispatchId"].as_str().expect("accepted").to_owned())
            .collect(),
        None => vec![body["dispatchId"].as_str().unwrap().to_owned()],
    }
}

/// Pacing at a 1 ms target, held for at most 400 ms, in front of workers that take one
/// dispatch at a time per consumer and prefetch little, so the backlog stays visible as ready
/// messages.
const SLOW_WORKER_PACED: [(&str, &str); 5] = [
    ("DISPATCHER__INGEST__PACE_TARGET", "1ms"),
    ("DISPATCHER__INGEST__PACE_MAX_WAIT", "400ms"),
    ("DISPATCHER__AMQP__PREFETCH", "4"),
    ("DISPATCHER__WORKER__CONCURRENCY", "1"),
    // One request per message, so the queue's depth counts dispatches exactly.
    ("DISPATCHER__INGEST__REQUESTS_PER_MESSAGE", "1"),
];

#[tokio::test]
async fn submissions_wait_their_turn_while_the_workers_fall_behind_and_nothing_is_lost() {
    // Two consumers that finish one dispatch at a time, each taking 200 ms at its provider
    // (about 10/s): far slower than ingest accepts even on a busy machine, so requests pile up
    // in the dispatch queue.
    let pace_max_wait = Duration::from_millis(400);
    let app = TestApp::spawn_with(Services::ALL, &SLOW_WORKER_PACED).await;
    let provider = slow_provider(Arc::new(AtomicU64::new(200))).await;
    let rx = Receiver::start().await;
    let acct = app.create_account("paced@example.com").await;
    let paced_count = || app.ingest_metric("dispatcher_ingest_paced_total");
    let mut ids = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let paced = loop {
        let started = tokio::time::Instant::now();
        let r = app
            .post(
                &app.ingest_url,
                "/v1/dispatches?async=true",
                &acct,
                &json!({"template": {"format": "text", "body": "x"}, "data": {},
                        "provider": {"type": "http", "url": provider},
                        "callbackUrl": rx.url()}),
            )
            .await;
        let took = started.elapsed();
        // Held back, never refused: the backlog is far below ingest.max_backlog.
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<serde_json::Value>().await.unwrap()["dispatchId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        // Held for the longest wait, and counted as paced (not slow for another reason).
        if took >= pace_max_wait && paced_count().await > 0.0 {
            break took;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} submissions behind a growing queue and none was paced",
            ids.len()
        );
    };
    println!("submission {} was held {paced:?}", ids.len());

    // The worker catches up: every accepted dispatch's webhook arrives.
    rx.wait_all_delivered(&ids).await;
}

#[tokio::test]
async fn batches_go_in_at_full_speed_up_to_their_burst_and_wait_their_turn_past_it() {
    // Two consumers, one call at a time each, 200 ms per document: about 10 dispatches/s.
    // Singles are paced past 32 waiting (the floor); batches only past 32 + 200.
    let pace_max_wait = Duration::from_millis(400);
    let app = TestApp::spawn_with(
        Services::ALL,
        &[
            SLOW_WORKER_PACED.as_slice(),
            &[("DISPATCHER__INGEST__PACE_BATCH_BURST", "200")],
        ]
        .concat(),
    )
    .await;
    let delay_ms = Arc::new(AtomicU64::new(200));
    let provider = slow_provider(delay_ms.clone()).await;
    let rx = Receiver::start().await;
    let acct = app.create_account("bulk@example.com").await;
    let item = json!({"template": {"format": "text", "body": "x"}, "data": {},
                      "provider": {"type": "http", "url": provider}, "callbackUrl": rx.url()});
    let mut ids = Vec::new();
    let submit = |path: &'static str, body: serde_json::Value| {
        let (app, acct) = (&app, &acct);
        async move {
            let started = tokio::time::Instant::now();
            let r = app.post(&app.ingest_url, path, acct, &body).await;
            assert_eq!(r.status(), 202);
            let took = started.elapsed();
            (dispatch_ids(&r.json().await.unwrap()), took)
        }
    };
    let batch = |n: usize| json!({"items": vec![item.clone(); n]});

    // 100 in line; pacing needs to know how fast they finish.
    ids.extend(submit("/v1/dispatches/batch", batch(100)).await.0);
    let app_ref = &app;
    // ... and how much is waiting: the depths are read from the broker as soon as the
    // estimator's connection is up.
    wait_until(PATIENCE, Duration::from_millis(100), || async move {
        let rate = app_ref
            .ingest_metric("dispatcher_ingest_drain_per_second")
            .await;
        let waiting = app_ref
            .ingest_metric("dispatcher_ingest_work_waiting")
            .await;
        ok_if(rate > 0.0 && waiting > 40.0, || {
            format!("drain rate {rate}/s, {waiting} waiting")
        })
    })
    .await;
    // A single submission behind them waits its turn ...
    let (one, took) = submit("/v1/dispatches?async=true", item.clone()).await;
    ids.extend(one);
    let paced = app.ingest_metric("dispatcher_ingest_paced_total").await;
    assert!(
        took >= pace_max_wait && paced >= 1.0,
        "single not paced: answered after {took:?}, {paced} paced, {} waiting",
        app.ingest_metric("dispatcher_ingest_work_waiting").await
    );
    // ... a batch of 50 does not: at most 151 are waiting, within its burst.
    ids.extend(submit("/v1/dispatches/batch", batch(50)).await.0);
    assert_eq!(
        app.ingest_metric("dispatcher_ingest_paced_total").await,
        paced
    );
    // Past the burst, batches wait their turn too.
    let mut batches = 0;
    loop {
        let (more, took) = submit("/v1/dispatches/batch", batch(50)).await;
        ids.extend(more);
        batches += 1;
        if app.ingest_metric("dispatcher_ingest_paced_total").await > paced {
            assert!(took >= pace_max_wait, "paced for {took:?}");
            break;
        }
        assert!(batches < 20, "{} waiting and no batch was paced", ids.len());
    }

    // Every accepted dispatch is delivered once the provider is quick again.
    delay_ms.store(0, Ordering::Relaxed);
    rx.wait_all_delivered(&ids).await;
}

#[tokio::test]
async fn batched_outcome_events_count_as_the_events_they_carry() {
    // No worker and no deliverer yet: the worker then finishes the dispatches in a few large
    // batches, and their outcome events wait, several to a message, in the event queue.
    let mut app = TestApp::spawn_with(
        Services {
            worker: false,
            deliverer: false,
            ..Services::ALL
        },
        &[],
    )
    .await;
    let rx = Receiver::start().await;
    let acct = app.create_account("weighed@example.com").await;
    let ids = app.submit_many(&acct, 30, 6, &rx.url()).await;
    app.start_worker(app.child_token());
    app.wait_equal(
        "SELECT count(*) FROM dispatches WHERE status = 'completed'",
        ids.len() as i64,
    )
    .await;
    app.wait_equal("SELECT count(*) FROM outbox", 0).await;
    let events = dispatcher_mq::Topology::from_settings(&app.settings).webhook_events_queue();
    let (messages, _) = dispatcher_e2e::queue_state(&events).await;
    assert!(
        (messages as usize) < ids.len(),
        "{messages} messages: the events were not batched"
    );

    // The ingest's backlog counts the 30 events, not the messages.
    let (probe, want) = (&app, ids.len() as f64);
    let (backlog, per_message) = wait_until(PATIENCE, Duration::from_millis(200), || async move {
        let backlog = probe.ingest_metric("dispatcher_ingest_backlog").await;
        let per_message = probe
            .ingest_metric("dispatcher_ingest_events_per_message")
            .await;
        match backlog >= want {
            true => Ok((backlog, per_message)),
            false => Err(format!(
                "backlog {backlog} for {want} events in {messages} messages \
                 (events per message: {per_message})"
            )),
        }
    })
    .await;
    assert!(backlog <= want + 1.0, "backlog {backlog}");
    assert!(
        per_message > 1.0,
        "events per message {per_message}, backlog {backlog}"
    );

    // And every one of them is delivered once a deliverer runs.
    app.start_deliverer(app.child_token());
    assert_eq!(rx.wait_all_delivered(&ids).await, 0, "a webhook repeated");
}
