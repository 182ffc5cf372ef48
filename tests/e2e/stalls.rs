//! Nothing stalls: a message that fails the same way every time is quarantined once while its
//! batch goes on, the relay quarantines a row it cannot route instead of repeating its batch,
//! rows handed to a relay in memory go out without waiting for a sweep (and are swept only once
//! their grace is up), and a dispatch whose processing never finished is quarantined and can be
//! replayed.

use axum::routing::post;
use dispatcher_core::{DispatchStatus, EventType, OutcomeEvent, WebhookData, WebhookPayload};
use dispatcher_e2e::{
    ok_if, wait_until, Receiver, ServiceProcess, Services, TestApp, AMQP_URL, PATIENCE,
};
use dispatcher_mq::{OutgoingMessage, Publisher, Topology};
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Publishes raw messages to the app's events exchange, as a relay would.
async fn publish(app: &TestApp, messages: &[OutgoingMessage]) {
    let conn = dispatcher_mq::connect(AMQP_URL, "test-publisher")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let topology = Topology::from_settings(&app.settings);
    topology.declare(&ch).await.unwrap();
    let publisher = Publisher::new(&conn, topology.events_exchange(), "test")
        .await
        .unwrap();
    publisher.publish_batch(messages).await.unwrap();
    let _ = conn.close(200, "done".into()).await;
}

/// Distinct `webhook-id`s the receiver saw, and how many requests repeated one.
fn distinct_and_repeats(rx: &Receiver) -> (usize, usize) {
    let reqs = rx.requests();
    let ids: HashSet<String> = reqs
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    (ids.len(), reqs.len() - ids.len())
}

#[tokio::test]
async fn a_message_refused_every_time_is_quarantined_once_and_its_batch_goes_on() {
    // No deliverer yet: the good events and the bad one wait in the queue together, so the
    // deliverer's first batches hold both.
    let mut app = TestApp::spawn_with(
        Services {
            deliverer: false,
            ..Services::ALL
        },
        &[],
    )
    .await;
    let rx = Receiver::start().await;
    let acct = app.create_account("poison@example.com").await;

    // A well-formed event the database refuses every time: its callback URL holds a NUL
    // character, which no Postgres text value can store.
    let dispatch_id = Uuid::now_v7();
    let bad = OutcomeEvent {
        event_id: Uuid::now_v7(),
        account_id: acct.account_id,
        dispatch_id,
        callback_url: Some(format!("{}\u{0}", rx.url())),
        payload: WebhookPayload {
            event_type: EventType::DispatchCompleted,
            timestamp: chrono::Utc::now(),
            data: WebhookData {
                dispatch_id,
                status: DispatchStatus::Completed,
                completed_at: chrono::Utc::now(),
                result_url: None,
                error: None,
                metadata: None,
            }
            .into(),
        },
    };
    let bad_id = Uuid::now_v7();
    publish(
        &app,
        &[OutgoingMessage {
            message_id: bad_id,
            routing_key: "dispatch.completed".into(),
            payload: serde_json::to_vec(&bad).unwrap(),
            traceparent: None,
        }],
    )
    .await;
    let ids = app.submit_many(&acct, 40, 8, &rx.url()).await;
    app.wait_equal(
        "SELECT count(*) FROM dispatches WHERE status = 'completed'",
        40,
    )
    .await;
    app.wait_equal("SELECT count(*) FROM outbox", 0).await;

    app.start_deliverer(app.child_token());
    app.wait_equal(
        "SELECT count(*) FROM deliveries WHERE status = 'succeeded'",
        ids.len() as i64,
    )
    .await;
    app.wait_equal("SELECT count(*) FROM dead_letters", 1).await;
    let (distinct, repeats) = distinct_and_repeats(&rx);
    assert_eq!(distinct, ids.len(), "every good event delivered");
    // A batch retried as single messages may send a good one again (same webhook-id); it
    // never sends one that was already recorded as delivered.
    println!("repeats: {repeats}");
    let reason = app
        .text(&format!(
            "SELECT reason FROM dead_letters WHERE message_id = '{bad_id}' AND queue = '{}'",
            Topology::from_settings(&app.settings).webhook_events_queue()
        ))
        .await;
    assert!(reason.starts_with("refused 3 times"), "{reason}");
    assert_eq!(app.count("SELECT count(*) FROM deliveries").await, 40);
}

#[tokio::test]
async fn the_relay_quarantines_a_row_it_cannot_route_and_relays_the_rest_once() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let acct = app.create_account("unroutable@example.com").await;
    // A row no queue is bound for, committed like any other outbox row.
    app.count(
        "WITH ins AS (
             INSERT INTO outbox (message_id, routing_key, payload)
             VALUES (gen_random_uuid(), 'no.such.route', '\\x7b7d') RETURNING id)
         SELECT count(*) FROM ins",
    )
    .await;
    let ids = app.submit_many(&acct, 30, 6, &rx.url()).await;
    app.wait_equal(
        "SELECT count(*) FROM deliveries WHERE status = 'succeeded'",
        ids.len() as i64,
    )
    .await;
    app.wait_equal("SELECT count(*) FROM outbox", 0).await;
    assert_eq!(
        app.count(
            "SELECT count(*) FROM dead_letters WHERE queue = 'outbox'
             AND reason LIKE 'no queue is bound to routing key `no.such.route`%'"
        )
        .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM dead_letters").await, 1);
    let (distinct, repeats) = distinct_and_repeats(&rx);
    assert_eq!(distinct, ids.len());
    assert_eq!(repeats, 0, "no batch was published twice");
}

#[tokio::test]
async fn the_sweep_leaves_a_handed_over_row_to_its_relay_until_its_grace_is_up() {
    let app = TestApp::spawn().await;
    // Committed together: a row handed to a relay in memory an hour's grace ago (as if its
    // process had crashed before publishing it) and a row due at once. Neither route has a
    // queue, so the sweep quarantines what it takes.
    app.count(
        "WITH ins AS (
             INSERT INTO outbox (message_id, routing_key, payload, relay_after)
             VALUES (gen_random_uuid(), 'handed.route', '\\x7b7d', now() + interval '1 hour'),
                    (gen_random_uuid(), 'due.route', '\\x7b7d', now())
             RETURNING id)
         SELECT count(*) FROM ins",
    )
    .await;
    let quarantined = |route: &str| {
        format!(
            "SELECT count(*) FROM dead_letters WHERE queue = 'outbox'
             AND reason LIKE '%`{route}`%'"
        )
    };
    app.wait_equal(&quarantined("due.route"), 1).await;
    // The sweep that took the due row saw the other one and left it.
    assert_eq!(app.count(&quarantined("handed.route")).await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM outbox WHERE routing_key = 'handed.route'")
            .await,
        1
    );
    // Its grace is up: the next sweep takes it.
    app.count(
        "WITH upd AS (UPDATE outbox SET relay_after = now() RETURNING id)
         SELECT count(*) FROM upd",
    )
    .await;
    app.wait_equal(&quarantined("handed.route"), 1).await;
    app.wait_equal("SELECT count(*) FROM outbox", 0).await;
}

#[tokio::test]
async fn handed_over_rows_are_published_and_deleted_without_a_sweep() {
    // No timed sweep within the test: each hop's message must go out from memory.
    let app = TestApp::spawn_with(
        Services::ALL,
        &[("DISPATCHER__OUTBOX__POLL_INTERVAL", "1h")],
    )
    .await;
    let rx = Receiver::start().await;
    let acct = app.create_account("handed-over@example.com").await;
    let ids = app.submit_many(&acct, 40, 8, &rx.url()).await;
    let repeats = rx.wait_all_delivered(&ids).await;
    assert_eq!(repeats, 0);
    app.wait_equal("SELECT count(*) FROM outbox", 0).await;
    assert_eq!(
        app.count("SELECT count(*) FROM dispatches WHERE status = 'completed'")
            .await,
        40
    );
}

/// A provider that hangs while `hang` is set (its worker is killed meanwhile) and answers 200
/// once it is cleared.
async fn hanging_provider(hang: Arc<AtomicBool>, hits: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/provider", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/provider",
        post(move || {
            let hang = hang.clone();
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                while hang.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_dispatch_whose_processing_never_finished_is_quarantined_then_replayed() {
    let mut app = TestApp::spawn_with(
        Services {
            worker: false,
            ..Services::ALL
        },
        &[
            ("DISPATCHER__WORKER__MAX_PROCESSING_ATTEMPTS", "1"),
            ("DISPATCHER__DELIVERY__TIMEOUT", "60s"),
        ],
    )
    .await;
    let hang = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicUsize::new(0));
    let provider = hanging_provider(hang.clone(), hits.clone()).await;
    let acct = app.create_account("replay@example.com").await;
    let worker = ServiceProcess::spawn("dispatch-worker", &app.process_env(), "replay-worker.log");
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &acct,
            &json!({"template": {"format": "text", "body": "hello"}, "data": {},
                    "provider": {"type": "http", "url": provider}}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    // The worker is inside the provider call when it dies.
    let calls = &hits;
    wait_until(PATIENCE, Duration::from_millis(20), || async move {
        ok_if(calls.load(Ordering::SeqCst) > 0, || {
            "provider never called".into()
        })
    })
    .await;
    worker.kill9().await;

    // Its replacement finds the dispatch already taken up once: quarantined, not run again.
    app.start_worker(app.child_token());
    app.wait_equal("SELECT count(*) FROM dead_letters", 1).await;
    let listed = app.dispatchctl(&["dlq", "list"]).await;
    assert!(
        listed.contains(&format!("\"dispatchId\":\"{id}\"")),
        "{listed}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the provider was called once"
    );
    let status = app
        .text(&format!("SELECT status FROM dispatches WHERE id = '{id}'"))
        .await;
    assert_eq!(status, "processing");

    hang.store(false, Ordering::SeqCst);
    let replayed = app.dispatchctl(&["dlq", "replay", "--id", &id]).await;
    assert!(replayed.contains(&id), "{replayed}");
    let done = app.wait_finished(&acct, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(app.count("SELECT count(*) FROM dead_letters").await, 0);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}
