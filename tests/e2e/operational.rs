//! Endpoint health and the operational webhooks: a subscriber to `endpoint.failing`,
//! `endpoint.recovered`, `endpoint.disabled` and `delivery.exhausted` observes each one, exactly
//! once, when an endpoint fails, recovers, answers `410 Gone` or fails for too long; and a
//! subscription's `rateLimit` spaces its requests.

use dispatcher_db::accounts::CreatedAccount;
use dispatcher_e2e::{
    assert_webhooks_match_schema, verify_webhook, wait_until, Received, Receiver, TestApp, PATIENCE,
};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

async fn subscribe(
    app: &TestApp,
    who: &CreatedAccount,
    event: &str,
    url: &str,
    rate_limit: Option<u32>,
) -> String {
    let mut body = json!({"event": event, "callbackUrl": url});
    if let Some(r) = rate_limit {
        body["rateLimit"] = json!(r);
    }
    let resp = app.post(&app.ingest_url, "/v1/webhooks", who, &body).await;
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    v["webhookId"].as_str().unwrap().to_owned()
}

async fn submit(app: &TestApp, who: &CreatedAccount, n: usize) {
    for i in 0..n {
        let resp = app
            .post(
                &app.ingest_url,
                "/v1/dispatches?async=true",
                who,
                &json!({"template": {"format": "text", "body": "n={{ i }}"}, "data": {"i": i}}),
            )
            .await;
        assert_eq!(resp.status(), 202);
    }
}

/// The operational webhooks the receiver got, by type.
fn of_type<'a>(got: &'a [Received], event: &str) -> Vec<&'a Received> {
    got.iter().filter(|r| r.json()["type"] == event).collect()
}

/// Waits until the receiver holds `n` webhooks of type `event`.
async fn wait_for_type(rx: &Receiver, event: &str, n: usize) -> Vec<Received> {
    wait_until(PATIENCE, Duration::from_millis(50), || async move {
        let got = rx.requests();
        match of_type(&got, event).len() >= n {
            true => Ok(got),
            false => Err(format!(
                "{} of {n} {event} webhooks: {:?}",
                of_type(&got, event).len(),
                got.iter().map(|r| r.json()).collect::<Vec<_>>()
            )),
        }
    })
    .await
}

#[tokio::test]
async fn a_subscriber_observes_failing_exhausted_recovered_and_disabled_once_each() {
    let app = TestApp::spawn_with(
        dispatcher_e2e::Services::ALL,
        &[
            ("DISPATCHER__DELIVERY__CIRCUIT_BREAKER_THRESHOLD", "3"),
            ("DISPATCHER__DELIVERY__CIRCUIT_BREAKER_COOLDOWN", "1s"),
            ("DISPATCHER__DELIVERY__RETRY_SCHEDULE", "200ms,400ms"),
        ],
    )
    .await;
    let acct = app.create_account("operations@example.com").await;
    let ops = Receiver::start().await;
    for event in [
        "endpoint.failing",
        "endpoint.recovered",
        "endpoint.disabled",
        "delivery.exhausted",
    ] {
        subscribe(&app, &acct, event, &ops.url(), None).await;
    }
    // A subscriber to everything does not get the operational events (they are asked for by
    // name), and its own deliveries keep succeeding.
    let everything = Receiver::start().await;
    subscribe(&app, &acct, "*", &everything.url(), None).await;

    // An endpoint that fails every request: three attempts per delivery, then dead.
    let bad = Receiver::failing_first(usize::MAX).await;
    let bad_id = subscribe(&app, &acct, "dispatch.completed", &bad.url(), None).await;
    submit(&app, &acct, 2).await;

    let got = wait_for_type(&ops, "delivery.exhausted", 2).await;
    let got = if of_type(&got, "endpoint.failing").is_empty() {
        wait_for_type(&ops, "endpoint.failing", 1).await
    } else {
        got
    };
    let failing = of_type(&got, "endpoint.failing")[0].json();
    assert_eq!(failing["data"]["webhookId"], bad_id.as_str());
    assert_eq!(failing["data"]["url"], bad.url());
    assert!(failing["data"]["consecutiveFailures"].as_i64().unwrap() >= 3);
    assert!(failing["data"]["lastError"]
        .as_str()
        .unwrap()
        .contains("500"));
    for e in of_type(&got, "delivery.exhausted") {
        let d = &e.json()["data"];
        assert_eq!(d["webhookId"], bad_id.as_str());
        assert_eq!(d["eventType"], "dispatch.completed");
        assert_eq!(d["attempts"], 3);
    }
    let exhausted: HashSet<String> = of_type(&got, "delivery.exhausted")
        .iter()
        .map(|e| e.json()["data"]["deliveryId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(exhausted.len(), 2, "one report per dead delivery");

    let health = app.webhook(&acct, &bad_id).await["health"].clone();
    assert!(
        health["consecutiveFailures"].as_i64().unwrap() >= 6,
        "{health}"
    );
    assert_eq!(health["successRate"], 0.0, "{health}");
    assert!(
        matches!(health["breaker"].as_str(), Some("open" | "half_open")),
        "{health}"
    );
    assert!(health["lastErrorAt"].is_string() && health["lastSuccessAt"].is_null());

    // It recovers: the next delivery succeeds, and the breaker closes.
    bad.fail_next(0);
    submit(&app, &acct, 1).await;
    let got = wait_for_type(&ops, "endpoint.recovered", 1).await;
    let recovered = of_type(&got, "endpoint.recovered")[0].json();
    assert_eq!(recovered["data"]["webhookId"], bad_id.as_str());
    assert_eq!(recovered["data"]["consecutiveFailures"], 0);
    let health = app.webhook(&acct, &bad_id).await["health"].clone();
    assert_eq!(health["breaker"], "closed", "{health}");
    assert_eq!(health["consecutiveFailures"], 0);
    let rate = health["successRate"].as_f64().unwrap();
    assert!(rate > 0.0 && rate < 1.0, "{health}");
    assert!(health["lastSuccessAt"].is_string() && health["lastError"].is_string());

    // A `410 Gone` disables its subscription, with the reason, and says so once.
    let gone = Receiver::failing_first(usize::MAX).await;
    gone.set_fail_status(410);
    let gone_id = subscribe(&app, &acct, "dispatch.completed", &gone.url(), None).await;
    submit(&app, &acct, 1).await;
    let got = wait_for_type(&ops, "endpoint.disabled", 1).await;
    let disabled = of_type(&got, "endpoint.disabled")[0].json();
    assert_eq!(disabled["data"]["webhookId"], gone_id.as_str());
    assert!(disabled["data"]["reason"].as_str().unwrap().contains("410"));
    let w = app.webhook(&acct, &gone_id).await;
    assert!(w["disabledAt"].is_string(), "{w}");
    assert!(w["disabledReason"].as_str().unwrap().contains("410"), "{w}");

    // Every dispatch reached the subscriber to everything: 4 dispatches, 4 webhooks.
    everything.wait_for(4).await;

    // Exactly once each: the deliveries of every operational event.
    for (event, n) in [
        ("endpoint.failing", 1),
        ("endpoint.recovered", 1),
        ("endpoint.disabled", 1),
        ("delivery.exhausted", 2),
    ] {
        app.wait_equal(
            &format!("SELECT count(*) FROM deliveries WHERE event_type = '{event}'"),
            n,
        )
        .await;
        app.wait_equal(
            &format!(
                "SELECT count(*) FROM deliveries WHERE event_type = '{event}' AND status = 'succeeded'"
            ),
            n,
        )
        .await;
    }
    let all = ops.requests();
    assert_eq!(all.len(), 5, "one request per operational event");
    for r in &all {
        assert!(
            verify_webhook(&acct.webhook_secret, r),
            "signed like any webhook"
        );
    }
    assert!(everything
        .requests()
        .iter()
        .all(|r| r.json()["type"] == "dispatch.completed"));
    assert_webhooks_match_schema(&all).await;
}

#[tokio::test]
async fn an_endpoint_failing_for_too_long_is_disabled_by_policy() {
    let app = TestApp::spawn_with(
        dispatcher_e2e::Services::ALL,
        &[
            ("DISPATCHER__DELIVERY__CIRCUIT_BREAKER_THRESHOLD", "2"),
            ("DISPATCHER__DELIVERY__CIRCUIT_BREAKER_COOLDOWN", "1s"),
            (
                "DISPATCHER__DELIVERY__RETRY_SCHEDULE",
                "500ms,500ms,500ms,500ms,500ms",
            ),
            ("DISPATCHER__DELIVERY__DISABLE_FAILING_AFTER", "1s"),
        ],
    )
    .await;
    let acct = app.create_account("policy@example.com").await;
    let ops = Receiver::start().await;
    subscribe(&app, &acct, "endpoint.disabled", &ops.url(), None).await;
    let bad = Receiver::failing_first(usize::MAX).await;
    let bad_id = subscribe(&app, &acct, "dispatch.completed", &bad.url(), None).await;
    submit(&app, &acct, 1).await;

    let got = wait_for_type(&ops, "endpoint.disabled", 1).await;
    let d = got[0].json();
    assert_eq!(d["data"]["webhookId"], bad_id.as_str());
    assert!(
        d["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("failed since"),
        "{d}"
    );
    let w = app.webhook(&acct, &bad_id).await;
    assert!(w["disabledAt"].is_string(), "{w}");
    assert_ne!(w["health"]["breaker"], "closed", "{w}");

    // Once disabled, new dispatches no longer go to it: a second subscriber sees the next
    // dispatch's event handled, and the disabled one got no delivery for it.
    let good = Receiver::start().await;
    subscribe(&app, &acct, "dispatch.completed", &good.url(), None).await;
    submit(&app, &acct, 1).await;
    good.wait_for(1).await;
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM deliveries WHERE webhook_id = '{bad_id}'"
        ))
        .await,
        1
    );
    app.wait_equal(
        "SELECT count(*) FROM deliveries WHERE event_type = 'endpoint.disabled' AND status = 'succeeded'",
        1,
    )
    .await;
    assert_eq!(ops.requests().len(), 1, "disabled once");
}

#[tokio::test]
async fn a_rate_limited_subscription_gets_its_requests_spaced() {
    let app = TestApp::spawn_with(
        dispatcher_e2e::Services::ALL,
        &[("DISPATCHER__DELIVERY__CIRCUIT_BREAKER_COOLDOWN", "1s")],
    )
    .await;
    let acct = app.create_account("ratelimit@example.com").await;
    let rx = Receiver::start().await;
    let id = subscribe(&app, &acct, "*", &rx.url(), Some(5)).await;
    assert_eq!(app.webhook(&acct, &id).await["rateLimit"], 5);
    // Out of range is refused.
    for bad in [0, 10_001] {
        let resp = app
            .post(
                &app.ingest_url,
                "/v1/webhooks",
                &acct,
                &json!({"event": "*", "callbackUrl": rx.url(), "rateLimit": bad}),
            )
            .await;
        assert_eq!(resp.status(), 422, "rateLimit {bad}");
    }

    submit(&app, &acct, 20).await;
    let got = rx.wait_for(20).await;
    let ids: HashSet<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 20, "every dispatch delivered once");
    // At 5 per second with a bucket of one: never more than 6 in any second.
    let times: Vec<_> = got.iter().map(|r| r.at).collect();
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .filter(|t| t.duration_since(*start) < Duration::from_secs(1))
            .count();
        assert!(in_window <= 6, "{in_window} requests within one second");
    }
}
