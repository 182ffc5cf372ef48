//! The client API beyond the basic flow: subscriptions, rotation, listing, redelivery.

use dispatcher_e2e::{ok_if, verify_webhook, wait_until, Receiver, TestApp, PATIENCE};
use serde_json::json;
use std::time::Duration;

async fn subscribe(
    app: &TestApp,
    who: &dispatcher_db::accounts::CreatedAccount,
    event: &str,
    url: &str,
) -> String {
    let r = app
        .post(
            &app.ingest_url,
            "/v1/webhooks",
            who,
            &json!({"event": event, "callbackUrl": url, "description": "test"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["event"], event);
    v["webhookId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn outcome_events_fan_out_to_matching_subscriptions_and_the_callback() {
    let app = TestApp::spawn().await;
    let all = Receiver::start().await;
    let failed_only = Receiver::start().await;
    let own = Receiver::start().await;
    let acct = app.create_account("fan@example.com").await;
    let all_id = subscribe(&app, &acct, "*", &all.url()).await;
    subscribe(&app, &acct, "dispatch.failed", &failed_only.url()).await;

    let ok = app
        .post(&app.ingest_url, "/v1/dispatches", &acct, &json!({"template": {"format": "text", "body": "ok"}, "data": {}, "callbackUrl": own.url()}))
        .await;
    assert_eq!(ok.status(), 200);
    let a = all.wait_for(1).await;
    let o = own.wait_for(1).await;
    assert_ne!(
        a[0].header("webhook-id"),
        o[0].header("webhook-id"),
        "one webhook-id per endpoint"
    );
    assert!(
        verify_webhook(&acct.webhook_secret, &a[0]) && verify_webhook(&acct.webhook_secret, &o[0])
    );
    assert_eq!(a[0].json()["type"], "dispatch.completed");

    let bad = app
        .post(
            &app.ingest_url,
            "/v1/dispatches",
            &acct,
            &json!({"template": {"format": "text", "body": "{{ nope }}"}, "data": {}}),
        )
        .await;
    assert_eq!(bad.status(), 200);
    assert_eq!(
        failed_only.wait_for(1).await[0].json()["type"],
        "dispatch.failed"
    );
    all.wait_for(2).await;

    // The status body lists each delivery with its state.
    let id = a[0].json()["data"]["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, who, path) = (&app.status_url, &acct, &format!("/v1/dispatches/{id}"));
    let deliveries = wait_until(PATIENCE, Duration::from_millis(50), || async {
        let s: serde_json::Value = app.get(status, path, who).await.json().await.unwrap();
        let d = s["deliveries"].as_array().unwrap();
        ok_if(
            d.len() == 2 && d.iter().all(|x| x["status"] == "succeeded"),
            || s.to_string(),
        )
        .map(|()| d.clone())
    })
    .await;
    assert!(deliveries.iter().any(|x| x["webhookId"] == all_id.as_str()));

    // Deleted subscriptions get nothing more; the list no longer shows them.
    let del = app
        .http
        .delete(format!("{}/v1/webhooks/{all_id}", app.ingest_url))
        .basic_auth(&acct.email, Some(&acct.password))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let list: serde_json::Value = app
        .get(&app.ingest_url, "/v1/webhooks", &acct)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let again = app
        .post(&app.ingest_url, "/v1/dispatches", &acct, &json!({"template": {"format": "text", "body": "ok"}, "data": {}, "callbackUrl": own.url()}))
        .await;
    assert_eq!(again.status(), 200);
    let again_id = again.json::<serde_json::Value>().await.unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    own.wait_for(2).await;
    // An outcome's deliveries are written in one statement, with their attempts: once the
    // callback's is there, the deleted subscription would have one too if it had one.
    app.wait_equal(
        &format!("SELECT count(*) FROM deliveries WHERE dispatch_id = '{again_id}'"),
        1,
    )
    .await;
    assert_eq!(
        all.requests().len(),
        2,
        "a deleted subscription receives nothing"
    );
}

#[tokio::test]
async fn gone_disables_a_subscription() {
    let app = TestApp::spawn().await;
    let rx = Receiver::failing_first(usize::MAX / 2).await;
    rx.set_fail_status(410);
    let acct = app.create_account("gone@example.com").await;
    let wid = subscribe(&app, &acct, "*", &rx.url()).await;
    let r = app
        .post(
            &app.ingest_url,
            "/v1/dispatches",
            &acct,
            &json!({"template": {"format": "text", "body": "x"}, "data": {}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    rx.wait_for(1).await;
    wait_until(PATIENCE, Duration::from_millis(50), || async {
        let w = app.webhook(&acct, &wid).await;
        ok_if(w["disabledAt"].is_string(), || w.to_string())
    })
    .await;
    // The delivery is finished (`failed`, not `pending` with a retry scheduled).
    app.wait_equal("SELECT count(*) FROM deliveries WHERE status = 'failed'", 1)
        .await;
    assert_eq!(
        app.count("SELECT count(*) FROM deliveries WHERE status = 'pending'")
            .await,
        0
    );
    assert_eq!(rx.requests().len(), 1, "410 is not retried");
}

#[tokio::test]
async fn rotated_secrets_sign_with_both_keys_during_the_grace_period() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let acct = app.create_account("rotate@example.com").await;
    let r = app
        .post(
            &app.ingest_url,
            "/v1/webhooks/secret/rotate",
            &acct,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let rotated: serde_json::Value = r.json().await.unwrap();
    let new_secret = rotated["webhookSecret"].as_str().unwrap().to_owned();
    assert!(new_secret.starts_with("whsec_") && new_secret != acct.webhook_secret);
    assert!(rotated["previousSecretExpiresAt"].is_string());

    let ok = app
        .post(&app.ingest_url, "/v1/dispatches", &acct, &json!({"template": {"format": "text", "body": "ok"}, "data": {}, "callbackUrl": rx.url()}))
        .await;
    assert_eq!(ok.status(), 200);
    let hook = &rx.wait_for(1).await[0];
    assert_eq!(hook.header("webhook-signature").split(' ').count(), 2);
    assert!(verify_webhook(&new_secret, hook), "the new secret verifies");
    assert!(
        verify_webhook(&acct.webhook_secret, hook),
        "the old one too, during the grace period"
    );
    // Secrets never show up in listings.
    let list = app
        .get(&app.ingest_url, "/v1/webhooks", &acct)
        .await
        .text()
        .await
        .unwrap();
    assert!(!list.contains("whsec_"));
}

#[tokio::test]
async fn listings_paginate_newest_first_with_cursors() {
    let app = TestApp::spawn().await;
    let acct = app.create_account("list@example.com").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let r = app
            .post(
                &app.ingest_url,
                "/v1/dispatches?async=true",
                &acct,
                &json!({"template": {"format": "text", "body": "{{ i }}"}, "data": {"i": i}}),
            )
            .await;
        ids.push(
            r.json::<serde_json::Value>().await.unwrap()["dispatchId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/dispatches?limit=3&cursor={c}"),
            None => "/v1/dispatches?limit=3".to_owned(),
        };
        let page: serde_json::Value = app
            .get(&app.status_url, &path, &acct)
            .await
            .json()
            .await
            .unwrap();
        for d in page["data"].as_array().unwrap() {
            seen.push(d["dispatchId"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "every dispatch once, newest first");
    let bad = app
        .get(&app.status_url, "/v1/dispatches?cursor=garbage", &acct)
        .await;
    assert_eq!(bad.status(), 400);
    let bad = app
        .get(&app.status_url, "/v1/dispatches?limit=100000", &acct)
        .await;
    assert_eq!(bad.status(), 400);
    let bad = app
        .get(&app.status_url, "/v1/dispatches?status=done", &acct)
        .await;
    assert_eq!(bad.status(), 400);
    let completed: serde_json::Value = app
        .get(&app.status_url, "/v1/dispatches?status=queued", &acct)
        .await
        .json()
        .await
        .unwrap();
    assert!(completed["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["status"] == "queued"));
}
