//! Compatibility with the outside world: real webhooks verified by third-party Standard Webhooks
//! libraries (Python `standardwebhooks` and `svix`), and real broker messages, webhook bodies and
//! provider callbacks validated against the JSON Schemas in `proto-schemas/`.
//!
//! These tests use the test virtualenv (`make venv`, via `DISPATCHER_TEST_PYTHON`).

use base64::Engine;
use dispatcher_core::signing::{sign_hex_sha256, WebhookSecret};
use dispatcher_db::accounts::CreatedAccount;
use dispatcher_e2e::{
    assert_webhooks_match_schema, ok_if, python_script, run_python, test_python,
    validate_against_schemas, verify_webhook, wait_until, Received, Receiver, Services, TestApp,
    AMQP_URL, PATIENCE,
};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Submits an async dispatch of an inline text template and returns its id.
async fn submit(
    app: &TestApp,
    who: &CreatedAccount,
    body: &str,
    data: Value,
    callback: &str,
) -> String {
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            who,
            &json!({"template": {"format": "text", "body": body}, "data": data, "callbackUrl": callback}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    v["dispatchId"].as_str().unwrap().to_owned()
}

/// The first received outcome webhook (`dispatch.*`) about `dispatch_id` (a forwarded provider
/// event names the dispatch too).
fn hook_for(rx: &Receiver, dispatch_id: &str) -> Option<Received> {
    rx.requests().into_iter().find(|r| {
        let v = r.json();
        v["data"]["dispatchId"] == dispatch_id
            && v["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("dispatch."))
    })
}

async fn wait_hook_for(rx: &Receiver, dispatch_id: &str) -> Received {
    wait_until(PATIENCE, Duration::from_millis(20), || async move {
        hook_for(rx, dispatch_id).ok_or_else(|| format!("no webhook for dispatch {dispatch_id}"))
    })
    .await
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    Valid,
    Invalid,
}

/// Checks `hook` with each of `secrets` separately in both Python libraries
/// (`tests/python/verify_webhook.py`): with `Valid` each must accept, with `Invalid` each must
/// reject.
async fn python_verify(secrets: &[&str], headers: &Value, body: &[u8], expect: Expect) {
    let input = json!({
        "secrets": secrets,
        "headers": headers,
        "bodyBase64": B64.encode(body),
        "expect": if expect == Expect::Valid { "valid" } else { "invalid" },
    });
    let out = run_python(
        &[&python_script("verify_webhook.py")],
        input.to_string().as_bytes(),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "verify_webhook.py ({expect:?}, {} secret(s)) failed ({}):\n{stdout}\n{stderr}",
        secrets.len(),
        out.status
    );
    // Guard against a script that passes without checking anything.
    let report: Value = serde_json::from_str(stdout.trim()).expect("verify_webhook.py report");
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 2 * secrets.len(), "{report}");
    for lib in ["standardwebhooks", "svix"] {
        assert_eq!(
            results.iter().filter(|r| r["library"] == lib).count(),
            secrets.len(),
            "{report}"
        );
    }
    assert!(results
        .iter()
        .all(|r| r["accepted"] == (expect == Expect::Valid)));
}

/// The signed headers of a received webhook, as a receiver would pass them to a library.
fn webhook_headers(r: &Received) -> Value {
    json!({
        "webhook-id": r.header("webhook-id"),
        "webhook-timestamp": r.header("webhook-timestamp"),
        "webhook-signature": r.header("webhook-signature"),
        "content-type": r.header("content-type"),
    })
}

/// The body with one field's value changed (same length class, still valid JSON).
fn tamper(body: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(body).unwrap();
    let changed = if text.contains(r#""status":"completed""#) {
        text.replacen(r#""status":"completed""#, r#""status":"failed""#, 1)
    } else {
        text.replacen(r#""status":"failed""#, r#""status":"completed""#, 1)
    };
    assert_ne!(changed, text, "body has a status to tamper with: {text}");
    changed.into_bytes()
}

#[tokio::test]
async fn webhooks_verify_with_standardwebhooks_and_svix_across_a_secret_rotation() {
    test_python();
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let acct = app.create_account("compat@example.com").await;
    let old_secret = acct.webhook_secret.clone();

    let first = submit(
        &app,
        &acct,
        "Hello {{ who }}",
        json!({"who": "Ada"}),
        &rx.url(),
    )
    .await;
    let hook = wait_hook_for(&rx, &first).await;
    assert_eq!(hook.json()["type"], "dispatch.completed");
    let sig = hook.header("webhook-signature").to_owned();
    assert_eq!(
        sig.split(' ').count(),
        1,
        "one signature before rotation: {sig}"
    );
    let headers = webhook_headers(&hook);

    python_verify(&[&old_secret], &headers, &hook.body, Expect::Valid).await;
    // A changed body, a changed webhook-id, or another secret: both libraries refuse.
    python_verify(
        &[&old_secret],
        &headers,
        &tamper(&hook.body),
        Expect::Invalid,
    )
    .await;
    let mut other_id = headers.clone();
    other_id["webhook-id"] = json!(format!("{}x", hook.header("webhook-id")));
    python_verify(&[&old_secret], &other_id, &hook.body, Expect::Invalid).await;
    let stranger = WebhookSecret::generate().expose();
    python_verify(&[&stranger], &headers, &hook.body, Expect::Invalid).await;

    // Rotate: deliveries are signed with the new secret and, during the grace period, the old one.
    let resp = app
        .http
        .post(format!("{}/v1/webhooks/secret/rotate", app.ingest_url))
        .basic_auth(&acct.email, Some(&acct.password))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rotated: Value = resp.json().await.unwrap();
    let new_secret = rotated["webhookSecret"].as_str().unwrap().to_owned();
    assert!(new_secret.starts_with("whsec_"), "{rotated}");
    assert_ne!(new_secret, old_secret);
    assert!(rotated["previousSecretExpiresAt"].is_string(), "{rotated}");

    let second = submit(
        &app,
        &acct,
        "Bye {{ who }}",
        json!({"who": "Ada"}),
        &rx.url(),
    )
    .await;
    let hook2 = wait_hook_for(&rx, &second).await;
    let sig2 = hook2.header("webhook-signature").to_owned();
    let entries: Vec<&str> = sig2.split(' ').collect();
    assert_eq!(entries.len(), 2, "two signatures after rotation: {sig2}");
    assert!(entries.iter().all(|e| e.starts_with("v1,")), "{sig2}");
    assert!(verify_webhook(&old_secret, &hook2) && verify_webhook(&new_secret, &hook2));

    let headers2 = webhook_headers(&hook2);
    // Each secret on its own verifies, in both libraries.
    python_verify(
        &[&old_secret, &new_secret],
        &headers2,
        &hook2.body,
        Expect::Valid,
    )
    .await;
    python_verify(
        &[&old_secret, &new_secret],
        &headers2,
        &tamper(&hook2.body),
        Expect::Invalid,
    )
    .await;
    python_verify(&[&stranger], &headers2, &hook2.body, Expect::Invalid).await;
}

/// One message captured from the events exchange.
#[derive(Debug, Clone)]
struct Captured {
    routing_key: String,
    body: Vec<u8>,
}

/// The schema a broker message's routing key calls for, or `None` for an unknown key.
fn schema_for(routing_key: &str) -> Option<&'static str> {
    match routing_key {
        "dispatch.requested" => Some("dispatch.requested.schema.json"),
        "dispatch.completed" | "dispatch.failed" | "endpoint.failing" | "endpoint.recovered"
        | "endpoint.disabled" | "delivery.exhausted" | "provider.accepted"
        | "provider.delivered" | "provider.bounced" | "provider.failed" => {
            Some("dispatch.outcome.schema.json")
        }
        "webhook.retry" => Some("delivery.task.schema.json"),
        "provider.event" => Some("provider.event.schema.json"),
        k if k
            .strip_prefix("webhook.delay.")
            .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit())) =>
        {
            Some("delivery.task.schema.json")
        }
        _ => None,
    }
}

/// The kind a routing key is counted under (`webhook.delay.<ms>` are one kind).
fn kind_of(routing_key: &str) -> &str {
    if routing_key.starts_with("webhook.delay.") {
        "webhook.delay.*"
    } else {
        routing_key
    }
}

/// The events in an outcome message's body: the body itself, or each of a batch's.
fn outcome_events(body: &Value) -> Vec<&Value> {
    match body.get("events").and_then(Value::as_array) {
        Some(batch) => batch.iter().map(|item| &item["event"]).collect(),
        None => vec![body],
    }
}

impl Captured {
    /// How many events, requests (or other messages) this message carries.
    fn events(&self) -> usize {
        match schema_for(&self.routing_key) {
            Some("dispatch.outcome.schema.json") => {
                let v: Value = serde_json::from_slice(&self.body).expect("outcome is JSON");
                outcome_events(&v).len()
            }
            Some("dispatch.requested.schema.json") => dispatcher_core::parse_requests(&self.body)
                .expect("a dispatch.requested body")
                .len(),
            _ => 1,
        }
    }
}

/// Everything published to the events exchange with a routing key matching `binding`, captured
/// by a queue of the test's own (exclusive, removed with its connection).
struct Capture {
    conn: lapin::Connection,
    /// Kept open for as long as the capture runs.
    _channel: lapin::Channel,
    captured: Arc<Mutex<Vec<Captured>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Capture {
    /// Binds the queue before returning: start it before the traffic to capture.
    async fn start(app: &TestApp, binding: &str) -> Self {
        let topology = dispatcher_mq::Topology::from_settings(&app.settings);
        let conn = dispatcher_mq::connect(AMQP_URL, "compat-capture")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.exchange_declare(
            topology.events_exchange().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let queue = format!("{}.test.capture", app.prefix);
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("classic".into()),
        );
        ch.queue_declare(
            queue.clone().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
        ch.queue_bind(
            queue.clone().into(),
            topology.events_exchange().into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut consumer = ch
            .basic_consume(
                queue.clone().into(),
                "compat-capture".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let captured: Arc<Mutex<Vec<Captured>>> = Arc::default();
        let sink = captured.clone();
        let capture_task = tokio::spawn(async move {
            while let Some(d) = consumer.next().await {
                let Ok(d) = d else { break };
                sink.lock().unwrap().push(Captured {
                    routing_key: d.routing_key.to_string(),
                    body: d.data.clone(),
                });
                let _ = d.ack(BasicAckOptions::default()).await;
            }
        });
        Self {
            conn,
            _channel: ch,
            captured,
            task: capture_task,
        }
    }

    fn messages(&self) -> Vec<Captured> {
        self.captured.lock().unwrap().clone()
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.conn.close(200, "done".into()).await;
    }
}

#[tokio::test]
async fn broker_messages_and_webhooks_match_the_schemas() {
    test_python();
    let app = TestApp::spawn_with(
        Services::ALL,
        &[("DISPATCHER__PROVIDERS__ACME__SECRET", "acme-signing-key")],
    )
    .await;

    // A queue of the test's own on the events exchange, bound to everything, before any traffic.
    let capture = Capture::start(&app, "#").await;

    let acct = app.create_account("schemas@example.com").await;
    let rx = Receiver::start().await;
    let flaky = Receiver::failing_first(1).await;

    // A completed dispatch, a failed one (undefined variable), and one whose first delivery fails
    // (a retry goes through a delay queue).
    let ok = submit(
        &app,
        &acct,
        "Hi {{ who }}",
        json!({"who": "Ada"}),
        &rx.url(),
    )
    .await;
    let failed = submit(&app, &acct, "{{ missing }}", json!({}), &rx.url()).await;
    let retried = submit(&app, &acct, "Again {{ n }}", json!({"n": 1}), &flaky.url()).await;
    // A batch: its requests go out together in one message.
    let item = json!({"template": {"format": "text", "body": "Batch {{ n }}"}, "data": {"n": 2},
                      "provider": {"type": "store"}});
    let r = app
        .post(
            &app.ingest_url,
            "/v1/dispatches/batch",
            &acct,
            &json!({"items": [item.clone(), item.clone(), item]}),
        )
        .await;
    assert_eq!(r.status(), 202);

    // A provider callback about the completed dispatch.
    let callback = json!({
        "eventId": "ev-compat-1",
        "dispatchId": ok,
        "type": "delivered",
        "occurredAt": chrono::Utc::now().to_rfc3339(),
    })
    .to_string();
    let resp = app
        .http
        .post(format!("{}/v1/providers/acme/events", app.ingest_url))
        .header("content-type", "application/json")
        .header(
            "x-provider-signature",
            sign_hex_sha256(b"acme-signing-key", callback.as_bytes()),
        )
        .body(callback.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["duplicate"], false);

    let hooks = rx.wait_for(2).await;
    let flaky_hooks = flaky.wait_for(2).await;
    assert_eq!(
        wait_hook_for(&rx, &ok).await.json()["type"],
        "dispatch.completed"
    );
    assert_eq!(
        wait_hook_for(&rx, &failed).await.json()["type"],
        "dispatch.failed"
    );
    assert!(flaky_hooks
        .iter()
        .all(|h| h.json()["data"]["dispatchId"] == retried.as_str()));
    app.wait_count(
        "SELECT count(*) FROM provider_events WHERE applied_at IS NOT NULL",
        1,
    )
    .await;

    // Every kind, and at least as many of each as this test caused.
    let wanted: BTreeMap<&str, usize> = [
        ("dispatch.requested", 6),
        ("dispatch.completed", 2),
        ("dispatch.failed", 1),
        ("webhook.delay.*", 1),
        ("webhook.retry", 1),
        ("provider.event", 1),
    ]
    .into_iter()
    .collect();
    let messages = wait_until(PATIENCE, Duration::from_millis(50), || async {
        let got = capture.messages();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &got {
            // An outcome message may carry several events: each counts.
            *counts.entry(kind_of(&m.routing_key)).or_default() += m.events();
        }
        let all = wanted
            .iter()
            .all(|(k, n)| counts.get(k).copied().unwrap_or(0) >= *n);
        ok_if(all, || {
            format!("captured {counts:?}, want at least {wanted:?}")
        })
        .map(|()| got)
    })
    .await;
    capture.stop().await;

    let mut items = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(schema) = schema_for(&m.routing_key) else {
            panic!(
                "message {i} has routing key {:?}, which no schema in proto-schemas/ covers: {}",
                m.routing_key,
                String::from_utf8_lossy(&m.body)
            );
        };
        let body = String::from_utf8(m.body.clone()).expect("message bodies are UTF-8 JSON");
        let schema = if schema == "dispatch.requested.schema.json" {
            // The requests of one insert travel together.
            let requests = dispatcher_core::parse_requests(&m.body).expect("a requested body");
            if requests.len() > 1 {
                "dispatch.requests.schema.json"
            } else {
                schema
            }
        } else if schema == "dispatch.outcome.schema.json" {
            // The routing key is the payload's type, of each event in a batch.
            let v: Value = serde_json::from_str(&body).expect("outcome is JSON");
            for event in outcome_events(&v) {
                assert_eq!(event["payload"]["type"], m.routing_key.as_str(), "{body}");
            }
            if v.get("events").is_some() {
                "dispatch.outcomes.schema.json"
            } else {
                schema
            }
        } else {
            schema
        };
        items.push(json!({
            "schema": schema,
            "label": format!("broker message {i} ({})", m.routing_key),
            "body": body,
        }));
    }
    for (i, h) in hooks.iter().chain(flaky_hooks.iter()).enumerate() {
        items.push(json!({
            "schema": "webhook.schema.json",
            "label": format!("webhook body {i}"),
            "body": String::from_utf8(h.body.to_vec()).expect("webhook bodies are UTF-8"),
        }));
    }
    items.push(json!({
        "schema": "provider.callback.schema.json",
        "label": "provider callback body",
        "body": callback,
    }));

    let n_items = items.len();
    let report = validate_against_schemas(items).await;
    let validated: usize = report["validated"]
        .as_object()
        .expect("validated counts")
        .values()
        .map(|n| n.as_u64().unwrap() as usize)
        .sum();
    assert_eq!(validated, n_items, "{report}");
    for schema in [
        "dispatch.requested.schema.json",
        "dispatch.requests.schema.json",
        "dispatch.outcome.schema.json",
        "delivery.task.schema.json",
        "provider.event.schema.json",
        "webhook.schema.json",
        "provider.callback.schema.json",
    ] {
        assert!(
            report["validated"][schema].as_u64().unwrap_or(0) >= 1,
            "nothing validated against {schema}: {report}"
        );
    }
}

/// Sends a signed provider callback to `/v1/providers/acme/events`; returns the HTTP status and
/// whether the event was a duplicate.
async fn provider_event(
    app: &TestApp,
    dispatch_id: &str,
    event_id: &str,
    kind: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> (u16, bool) {
    let body = json!({"eventId": event_id, "dispatchId": dispatch_id, "type": kind, "occurredAt": at.to_rfc3339()})
        .to_string();
    let sig = dispatcher_core::signing::sign_hex_sha256(b"acme-signing-key", body.as_bytes());
    let r = app
        .http
        .post(format!("{}/v1/providers/acme/events", app.ingest_url))
        .header("content-type", "application/json")
        .header("x-provider-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, v["duplicate"] == true)
}

#[tokio::test]
async fn provider_events_are_forwarded_once_per_endpoint_and_verify_with_the_libraries() {
    test_python();
    let app = TestApp::spawn_with(
        dispatcher_e2e::Services::ALL,
        &[("DISPATCHER__PROVIDERS__ACME__SECRET", "acme-signing-key")],
    )
    .await;
    let acct = app.create_account("forward@example.com").await;
    let (callback, everything, family, other) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    for (event, rx) in [
        ("*", &everything),
        ("provider.*", &family),
        ("dispatch.*", &other),
    ] {
        let r = app
            .post(
                &app.ingest_url,
                "/v1/webhooks",
                &acct,
                &json!({"event": event, "callbackUrl": rx.url()}),
            )
            .await;
        assert_eq!(r.status(), 201, "{event}");
    }
    let id = submit(&app, &acct, "hello", json!({}), &callback.url()).await;
    // The dispatch's own outcome reached its callback, so it exists and is finished.
    wait_hook_for(&callback, &id).await;

    let now = chrono::Utc::now();
    assert_eq!(
        provider_event(&app, &id, "ev-2", "delivered", now).await,
        (200, false)
    );
    assert_eq!(
        provider_event(&app, &id, "ev-2", "delivered", now).await,
        (200, true)
    );
    // Stamped before `delivered` but arriving after it.
    let earlier = now - chrono::Duration::seconds(30);
    assert_eq!(
        provider_event(&app, &id, "ev-1", "bounced", earlier).await,
        (200, false)
    );

    // Two provider events to three endpoints (the callback, `*`, `provider.*`), each once.
    app.wait_equal(
        "SELECT count(*) FROM deliveries WHERE event_type LIKE 'provider.%' AND status = 'succeeded'",
        6,
    )
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM deliveries WHERE event_type LIKE 'provider.%'")
            .await,
        6
    );
    let provider_hooks = |rx: &Receiver| -> Vec<Received> {
        rx.requests()
            .into_iter()
            .filter(|r| r.json()["type"].as_str().unwrap().starts_with("provider."))
            .collect()
    };
    for rx in [&callback, &everything, &family] {
        let hooks = provider_hooks(rx);
        assert_eq!(hooks.len(), 2, "one webhook per provider event");
        let mut types: Vec<String> = hooks
            .iter()
            .map(|h| h.json()["type"].as_str().unwrap().to_owned())
            .collect();
        types.sort();
        assert_eq!(types, ["provider.bounced", "provider.delivered"]);
        let bounced = hooks
            .iter()
            .map(Received::json)
            .find(|v| v["type"] == "provider.bounced")
            .unwrap();
        assert_eq!(bounced["data"]["dispatchId"], id.as_str());
        assert_eq!(bounced["data"]["provider"], "acme");
        assert_eq!(bounced["data"]["eventId"], "ev-1");
        assert_eq!(bounced["data"]["type"], "bounced");
        let stamped: chrono::DateTime<chrono::Utc> = bounced["data"]["occurredAt"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            stamped.timestamp(),
            earlier.timestamp(),
            "forwarded with its own time"
        );
    }
    assert!(
        provider_hooks(&other).is_empty(),
        "dispatch.* takes no provider events"
    );
    // The late, older report did not move the status back.
    let s: Value = app
        .get(&app.status_url, &format!("/v1/dispatches/{id}"), &acct)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(s["providerStatus"], "delivered", "{s}");
    assert_eq!(
        s["providerStatusAt"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
            .timestamp(),
        now.timestamp()
    );

    // Signed like every webhook: both Standard Webhooks libraries accept them.
    for h in provider_hooks(&family) {
        python_verify(
            &[&acct.webhook_secret],
            &webhook_headers(&h),
            &h.body,
            Expect::Valid,
        )
        .await;
    }
    // And each matches the published schema.
    assert_webhooks_match_schema(&provider_hooks(&everything)).await;
}

#[tokio::test]
async fn the_outcomes_of_a_worker_batch_share_messages_and_each_is_delivered_once() {
    test_python();
    // No worker yet: the dispatches wait in their queue, so the worker's batches hold many, and
    // their outcome events go out at most three to a message.
    let mut app = TestApp::spawn_with(
        Services {
            worker: false,
            ..Services::ALL
        },
        &[("DISPATCHER__WORKER__EVENTS_PER_MESSAGE", "3")],
    )
    .await;
    let capture = Capture::start(&app, "dispatch.*").await;
    let acct = app.create_account("batched@example.com").await;
    let rx = Receiver::start().await;
    let mut expected: BTreeMap<String, &str> = BTreeMap::new();
    for n in 0..30 {
        if n % 5 == 0 {
            let id = submit(&app, &acct, "{{ missing }}", json!({}), &rx.url()).await;
            expected.insert(id, "dispatch.failed");
        } else {
            let id = submit(&app, &acct, "Hi {{ n }}", json!({ "n": n }), &rx.url()).await;
            expected.insert(id, "dispatch.completed");
        }
    }
    app.start_worker(app.child_token());

    // Each dispatch's outcome reaches its callback once, with its own type.
    rx.wait_for(expected.len()).await;
    let mut hooked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in rx.requests() {
        let v = h.json();
        hooked
            .entry(v["data"]["dispatchId"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["type"].as_str().unwrap().to_owned());
    }
    let want: BTreeMap<String, Vec<String>> = expected
        .iter()
        .map(|(id, t)| (id.clone(), vec![t.to_string()]))
        .collect();
    assert_eq!(hooked, want);

    // On the broker: every event once, in messages of at most three, and fewer messages than
    // events.
    let outcomes = wait_until(PATIENCE, Duration::from_millis(50), || async {
        let outcomes: Vec<Captured> = capture
            .messages()
            .into_iter()
            .filter(|m| m.routing_key != "dispatch.requested")
            .collect();
        let events: usize = outcomes.iter().map(Captured::events).sum();
        ok_if(events >= expected.len(), || {
            format!("captured {events} outcome events")
        })
        .map(|()| outcomes)
    })
    .await;
    capture.stop().await;
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut items = Vec::new();
    for m in &outcomes {
        let v: Value = serde_json::from_slice(&m.body).unwrap();
        let events = outcome_events(&v);
        assert!(events.len() <= 3, "{v}");
        for e in events {
            assert_eq!(e["payload"]["type"], m.routing_key.as_str());
            let id = e["dispatchId"].as_str().unwrap().to_owned();
            assert!(seen.insert(id, m.routing_key.clone()).is_none(), "{v}");
        }
        let schema = if v.get("events").is_some() {
            "dispatch.outcomes.schema.json"
        } else {
            "dispatch.outcome.schema.json"
        };
        items.push(json!({
            "schema": schema,
            "label": format!("{} message", m.routing_key),
            "body": String::from_utf8(m.body.clone()).unwrap(),
        }));
    }
    let want: BTreeMap<String, String> = expected
        .iter()
        .map(|(id, t)| (id.clone(), t.to_string()))
        .collect();
    assert_eq!(seen, want);
    assert!(
        outcomes.len() < expected.len(),
        "{} messages for {} events",
        outcomes.len(),
        expected.len()
    );

    // And each body matches its schema.
    let report = validate_against_schemas(items).await;
    assert!(
        report["validated"]["dispatch.outcomes.schema.json"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "no batch validated: {report}"
    );
}
