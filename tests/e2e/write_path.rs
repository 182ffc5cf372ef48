//! The writes a dispatch costs, counted row by row with triggers: a `store` dispatch whose message
//! arrives for the first time is read and then finished in one write (no `processing` step), its
//! webhook delivery is written once, with its first attempt, and copies of its message change
//! nothing; nor do copies of its outcome event.

use dispatcher_core::{
    BatchedOutcome, DispatchRequested, OutcomeBatch, OutcomeEvent, WebhookPayload,
};
use dispatcher_e2e::{
    ok_if, queue_state, wait_queue_state, wait_until, Receiver, Services, TestApp, AMQP_URL,
    PATIENCE,
};
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Every row version written to `dispatches`, `deliveries` and `outbox` from now on, in
/// `write_log`.
const WRITE_LOG: &str = "
    CREATE TABLE write_log (tbl text, op text, id text, status text, routing_key text);
    CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_TABLE_NAME = 'outbox' THEN
            INSERT INTO write_log VALUES (TG_TABLE_NAME, TG_OP, NEW.message_id::text, NULL,
                                          NEW.routing_key);
        ELSE
            INSERT INTO write_log VALUES (TG_TABLE_NAME, TG_OP, NEW.id::text, NEW.status, NULL);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER dispatches_log AFTER INSERT OR UPDATE ON dispatches
        FOR EACH ROW EXECUTE FUNCTION log_write();
    CREATE TRIGGER deliveries_log AFTER INSERT OR UPDATE ON deliveries
        FOR EACH ROW EXECUTE FUNCTION log_write();
    CREATE TRIGGER outbox_log AFTER INSERT ON outbox
        FOR EACH ROW EXECUTE FUNCTION log_write();";

/// The row versions written to `tbl` since `WRITE_LOG` was installed, in order: the operation
/// and the row's status (or the outbox row's routing key).
async fn written(c: &tokio_postgres::Client, tbl: &str) -> Vec<String> {
    c.query(
        "SELECT op || ' ' || COALESCE(status, routing_key) FROM write_log
         WHERE tbl = $1 ORDER BY ctid",
        &[&tbl],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<_, String>(0))
    .collect()
}

/// Publishes each body as its own persistent message, each a first delivery as far as the
/// broker knows (as after a relay that published twice).
async fn publish_copies(exchange: &str, routing_key: &str, bodies: &[&[u8]]) {
    let conn = dispatcher_mq::connect(AMQP_URL, "write-path-copies")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for (i, body) in bodies.iter().enumerate() {
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_message_id(format!("copy-{i}").into())
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let _ = conn.close(200, "done".into()).await;
}

/// Waits until the consumer has taken every message of `queue`, stops it, and checks that none
/// comes back: what it had not acknowledged would return to the queue.
async fn drain_then_stop(queue: &str, consumer: &CancellationToken) {
    wait_until(PATIENCE, Duration::from_millis(50), || async move {
        let (ready, _) = queue_state(queue).await;
        ok_if(ready == 0, || format!("copies not taken: {ready} ready"))
    })
    .await;
    consumer.cancel();
    wait_until(PATIENCE, Duration::from_millis(50), || async move {
        let (_, consumers) = queue_state(queue).await;
        ok_if(consumers == 0, || "the consumer did not stop".into())
    })
    .await;
    assert_eq!(queue_state(queue).await.0, 0, "every copy was acknowledged");
}

#[tokio::test]
async fn a_store_dispatch_is_finished_in_one_write_and_copies_of_its_message_change_nothing() {
    let mut app = TestApp::spawn_with(
        Services {
            worker: false,
            ..Services::ALL
        },
        &[],
    )
    .await;
    let c = app.pool.get().await.unwrap();
    c.batch_execute(WRITE_LOG).await.unwrap();
    let rx = Receiver::start().await;
    let acct = app.create_account("write-path@example.com").await;
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &acct,
            &json!({"template": {"format": "text", "body": "hello {{ who }}"},
                    "data": {"who": "world"}, "callbackUrl": rx.url()}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let id = body["dispatchId"].as_str().unwrap().to_owned();
    // Its message is in the queue (relayed by ingest); three copies join it, each a first
    // delivery as far as the broker knows (as after a relay that published twice).
    app.wait_equal("SELECT count(*) FROM outbox", 0).await;
    let queue = dispatcher_mq::Topology::from_settings(&app.settings).dispatch_queue();
    let copy = DispatchRequested {
        message_id: Uuid::now_v7(),
        dispatch_id: id.parse().unwrap(),
        account_id: acct.account_id,
        queued_at: body["queuedAt"].as_str().unwrap().parse().unwrap(),
        provider_attempts: 0,
    };
    let copy = serde_json::to_vec(&copy).unwrap();
    publish_copies("", &queue, &[&copy, &copy, &copy]).await;
    wait_queue_state(&queue, (4, 0)).await;

    // A worker takes all four, then stops: what it had not acknowledged would be back in the
    // queue, so an empty queue means every copy was handled.
    let worker = app.child_token();
    app.start_worker(worker.clone());
    let hooks = rx.wait_for(1).await;
    drain_then_stop(&queue, &worker).await;
    app.wait_equal("SELECT count(*) FROM outbox", 0).await;
    app.wait_equal("SELECT count(*) FROM delivery_attempts", 1)
        .await;

    // The dispatch: inserted queued, then one update straight to completed.
    let log = |tbl| written(&c, tbl);
    assert_eq!(
        log("dispatches").await,
        ["INSERT queued", "UPDATE completed"]
    );
    let row = c
        .query_one(
            "SELECT processing_attempts, started_at IS NOT NULL AND started_at <= completed_at
             FROM dispatches WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 0, "never claimed");
    assert!(row.get::<_, bool>(1), "started before it completed");
    // One request and one outcome event, whatever the copies did.
    assert_eq!(
        log("outbox").await,
        ["INSERT dispatch.requested", "INSERT dispatch.completed"]
    );
    // The delivery: one row version, written with its (successful) first attempt.
    assert_eq!(log("deliveries").await, ["INSERT succeeded"]);
    let d = c
        .query_one("SELECT attempts, status FROM deliveries", &[])
        .await
        .unwrap();
    assert_eq!(
        (d.get::<_, i32>(0), d.get::<_, String>(1)),
        (1, "succeeded".into())
    );

    let status = app.wait_finished(&acct, &id).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(rx.requests().len(), 1, "one webhook");
    assert_eq!(hooks[0].json()["data"]["dispatchId"], id.as_str());
}

#[tokio::test]
async fn a_batchs_requests_share_messages_and_a_quarantined_one_is_dead_lettered_alone() {
    let mut app = TestApp::spawn_with(
        Services {
            worker: false,
            ..Services::ALL
        },
        &[
            ("DISPATCHER__INGEST__REQUESTS_PER_MESSAGE", "4"),
            ("DISPATCHER__WORKER__MAX_PROCESSING_ATTEMPTS", "2"),
        ],
    )
    .await;
    let rx = Receiver::start().await;
    let acct = app.create_account("grouped@example.com").await;
    let item = json!({"template": {"format": "text", "body": "n={{ n }}"}, "data": {"n": 1},
                      "callbackUrl": rx.url()});
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches/batch",
            &acct,
            &json!({"items": vec![item; 10]}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let ids: Vec<String> = resp.json::<Value>().await.unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["dispatchId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 10);

    // Ten requests, four to a message: three messages wait for a worker.
    app.wait_equal("SELECT count(*) FROM outbox", 0).await;
    let queue = dispatcher_mq::Topology::from_settings(&app.settings).dispatch_queue();
    wait_queue_state(&queue, (3, 0)).await;

    // One request of the second message has been taken up as often as a dispatch may be (its
    // workers died each time): it alone is quarantined, the others in its message go on.
    let stuck = &ids[5];
    app.pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE dispatches SET processing_attempts = 2 WHERE id = $1::text::uuid",
            &[stuck],
        )
        .await
        .unwrap();
    app.start_worker(app.child_token());
    let others: Vec<String> = ids.iter().filter(|id| *id != stuck).cloned().collect();
    assert_eq!(rx.wait_all_delivered(&others).await, 0, "no repeats");
    app.wait_equal("SELECT count(*) FROM dead_letters", 1).await;
    let (message_id, body): (Option<String>, Vec<u8>) = {
        let client = app.pool.get().await.unwrap();
        let row = client
            .query_one("SELECT message_id, body FROM dead_letters", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let letter: DispatchRequested =
        serde_json::from_slice(&body).expect("the dead letter is the request alone");
    assert_eq!(letter.dispatch_id.to_string(), *stuck);
    assert_eq!(message_id, Some(letter.message_id.to_string()));
    assert_eq!(
        app.text(&format!(
            "SELECT status FROM dispatches WHERE id = '{stuck}'"
        ))
        .await,
        "queued"
    );

    // Replayed on its own, it completes; every dispatch was delivered once.
    let replayed = app.dispatchctl(&["dlq", "replay", "--id", stuck]).await;
    assert!(replayed.contains(stuck.as_str()), "{replayed}");
    assert_eq!(rx.wait_all_delivered(&ids).await, 0, "no repeats");
    assert_eq!(app.count("SELECT count(*) FROM dead_letters").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM dispatches WHERE status = 'completed'")
            .await,
        10
    );
}

#[tokio::test]
async fn copies_of_an_outcome_event_send_no_webhook_again() {
    let mut app = TestApp::spawn_with(
        Services {
            deliverer: false,
            ..Services::ALL
        },
        &[],
    )
    .await;
    let c = app.pool.get().await.unwrap();
    c.batch_execute(WRITE_LOG).await.unwrap();
    let own = Receiver::start().await;
    let subscriber = Receiver::start().await;
    let acct = app.create_account("event-copies@example.com").await;
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/webhooks",
            &acct,
            &json!({"event": "dispatch.completed", "callbackUrl": subscriber.url()}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let deliverer = app.child_token();
    app.start_deliverer(deliverer.clone());
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &acct,
            &json!({"template": {"format": "text", "body": "hello"}, "data": {},
                    "callbackUrl": own.url()}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    own.wait_for(1).await;
    subscriber.wait_for(1).await;
    app.wait_equal("SELECT count(*) FROM delivery_attempts", 2)
        .await;

    // The event again, as a relay that published it twice would send it: alone, twice, and
    // twice in one batched message. Its deliveries are written: no copy sends anything.
    let row = c
        .query_one(
            "SELECT event_id, dispatch_id, payload FROM deliveries LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let event = OutcomeEvent {
        event_id: row.get(0),
        account_id: acct.account_id,
        dispatch_id: row.get(1),
        callback_url: Some(own.url()),
        payload: serde_json::from_slice::<WebhookPayload>(row.get::<_, &[u8]>(2)).unwrap(),
    };
    let single = serde_json::to_vec(&event).unwrap();
    let batched = serde_json::to_vec(&OutcomeBatch {
        events: vec![
            BatchedOutcome {
                event: event.clone(),
                traceparent: None,
            };
            2
        ],
    })
    .unwrap();
    let topology = dispatcher_mq::Topology::from_settings(&app.settings);
    publish_copies(
        &topology.events_exchange(),
        "dispatch.completed",
        &[&single, &single, &batched],
    )
    .await;

    // Every copy taken and acknowledged: once the deliverer stops, none is back in the queue.
    drain_then_stop(&topology.webhook_events_queue(), &deliverer).await;

    assert_eq!(
        own.requests().len(),
        1,
        "one webhook to the dispatch's callback"
    );
    assert_eq!(
        subscriber.requests().len(),
        1,
        "one webhook to the subscriber"
    );
    assert_eq!(app.count("SELECT count(*) FROM delivery_attempts").await, 2);
    assert_eq!(
        written(&c, "deliveries").await,
        ["INSERT succeeded", "INSERT succeeded"]
    );
}
