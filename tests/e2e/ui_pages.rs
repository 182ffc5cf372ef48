//! The dashboard's templates, dead letters, metadata search, subscription switches, per-delivery
//! redelivery and session ending, over HTTP against the real services.

use dispatcher_db::accounts::CreatedAccount;
use dispatcher_e2e::ui::UiClient;
use dispatcher_e2e::{Receiver, TestApp};
use serde_json::json;

async fn submit(app: &TestApp, who: &CreatedAccount, body: serde_json::Value) -> String {
    let r = app
        .post(&app.ingest_url, "/v1/dispatches?async=true", who, &body)
        .await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let v: serde_json::Value = r.json().await.unwrap();
    v["dispatchId"].as_str().unwrap().to_owned()
}

async fn signed_in(app: &TestApp, who: &CreatedAccount) -> (UiClient, String) {
    let mut ui = UiClient::new(&app.status_url);
    assert_eq!(ui.sign_in(&who.email, &who.password).await.status, 303);
    let csrf = ui.csrf().await;
    (ui, csrf)
}

#[tokio::test]
async fn templates_are_created_through_the_api_rules_and_previewed_as_validate_renders() {
    let app = TestApp::spawn().await;
    let acct = app.create_account("ui-tpl@example.com").await;
    let other = app.create_account("ui-tpl-other@example.com").await;
    let (mut ui, csrf) = signed_in(&app, &acct).await;

    let page = ui.get("/ui/templates/new").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("formtarget=\"preview-frame\""));

    // The preview is what POST /v1/dispatches/validate answers for the same template and data.
    let body = "<h1>Hello {{ name }}</h1><p>{{ items | length }} items</p>";
    let data = r#"{"name": "Ada <b>", "items": [1, 2, 3]}"#;
    let preview = ui
        .post(
            "/ui/templates/preview",
            &[
                ("csrf", &csrf),
                ("name", "x"),
                ("format", "html"),
                ("body", body),
                ("data", data),
            ],
        )
        .await;
    assert_eq!(preview.status, 200, "{}", preview.body);
    assert!(preview.header("content-type").starts_with("text/html"));
    let csp = preview.header("content-security-policy");
    assert!(
        csp.starts_with("sandbox;") && !csp.contains("script"),
        "{csp}"
    );
    let validate = app
        .post(
            &app.ingest_url,
            "/v1/dispatches/validate",
            &acct,
            &json!({"template": {"format": "html", "body": body},
                    "data": serde_json::from_str::<serde_json::Value>(data).unwrap()}),
        )
        .await;
    assert_eq!(validate.status(), 200);
    assert_eq!(preview.body, validate.text().await.unwrap());
    assert!(
        preview.body.contains("Hello Ada &lt;b&gt;"),
        "{}",
        preview.body
    );

    // A syntax error and a render error read as the API's, in the preview frame.
    let bad = ui
        .post(
            "/ui/templates/preview",
            &[
                ("csrf", &csrf),
                ("format", "text"),
                ("body", "{% if %}"),
                ("data", "{}"),
            ],
        )
        .await;
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("template_syntax_error"), "{}", bad.body);
    assert!(bad
        .header("content-security-policy")
        .contains("frame-ancestors 'self'"));
    let not_object = ui
        .post(
            "/ui/templates/preview",
            &[
                ("csrf", &csrf),
                ("format", "text"),
                ("body", "x"),
                ("data", "[1]"),
            ],
        )
        .await;
    assert_eq!(not_object.status, 422);
    assert!(not_object.body.contains("data: must be a JSON object"));
    // Without the CSRF token nothing renders.
    let forged = ui
        .post(
            "/ui/templates/preview",
            &[("format", "text"), ("body", "x"), ("data", "{}")],
        )
        .await;
    assert_eq!(forged.status, 403);

    // Creating refuses what the API refuses, keeping what was typed.
    let refused = ui
        .post(
            "/ui/templates",
            &[
                ("csrf", &csrf),
                ("name", "  "),
                ("format", "text"),
                ("body", "Hi {{ who }}"),
            ],
        )
        .await;
    assert_eq!(refused.status, 422);
    assert!(
        refused.body.contains("name: must be 1 to 200"),
        "{}",
        refused.body
    );
    assert!(refused.body.contains("Hi {{ who }}"));
    assert_eq!(app.count("SELECT count(*) FROM templates").await, 0);

    let name = "<script>alert('t')</script> invoice";
    let created = ui
        .post(
            "/ui/templates",
            &[
                ("csrf", &csrf),
                ("name", name),
                ("format", "text"),
                ("body", "Hi {{ who }}"),
            ],
        )
        .await;
    assert_eq!(created.status, 303, "{}", created.body);
    let tid = app.text("SELECT id::text FROM templates").await;
    assert_eq!(
        created.location(),
        format!("/ui/templates/{tid}?done=created")
    );
    // The API sees the same template, and a dispatch can name it.
    let api: serde_json::Value = app
        .get(&app.ingest_url, &format!("/v1/templates/{tid}"), &acct)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(api["name"], name);
    assert_eq!(api["body"], "Hi {{ who }}");
    let id = submit(
        &app,
        &acct,
        json!({"templateId": tid, "data": {"who": "Grace"}}),
    )
    .await;
    app.wait_finished(&acct, &id).await;
    let shown = ui.get(&format!("/ui/dispatches/{id}")).await;
    assert!(shown.body.contains("Hi Grace"), "{}", shown.body);

    // Its name is text on the list and on its page.
    for path in ["/ui/templates".to_owned(), format!("/ui/templates/{tid}")] {
        let page = ui.get(&path).await;
        assert_eq!(page.status, 200);
        assert!(
            !page.body.contains("<script>alert"),
            "{path}: {}",
            page.body
        );
        assert!(
            page.body
                .contains("&lt;script&gt;alert(&#x27;t&#x27;)&lt;&#x2f;script&gt; invoice"),
            "{path}: {}",
            page.body
        );
    }

    // Another account does not see it.
    let (mut stranger, _) = signed_in(&app, &other).await;
    assert!(!stranger.get("/ui/templates").await.body.contains(&tid));
    let r = stranger.get(&format!("/ui/templates/{tid}")).await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("template not found"));
}

#[tokio::test]
async fn dead_letters_are_listed_per_account_with_their_reason_and_replayed() {
    let app = TestApp::spawn().await;
    // Fails every attempt of the first round (three, with the tests' retry schedule).
    let rx = Receiver::failing_first(3).await;
    let acct = app.create_account("ui-dlq@example.com").await;
    let other = app.create_account("ui-dlq-other@example.com").await;
    let id = submit(
        &app,
        &acct,
        json!({"template": {"format": "text", "body": "x"}, "data": {}, "callbackUrl": rx.url()}),
    )
    .await;
    app.wait_count("SELECT count(*) FROM deliveries WHERE status = 'dead'", 1)
        .await;
    let delivery = app.text("SELECT id::text FROM deliveries").await;

    let (mut ui, csrf) = signed_in(&app, &acct).await;
    let page = ui.get("/ui/dead-letters").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(&format!("data-id=\"{delivery}\"")),
        "{}",
        page.body
    );
    assert!(page.body.contains(&id));
    assert!(page.body.contains("500"), "the reason: {}", page.body);

    // Another account neither sees nor replays it.
    let (mut stranger, their_csrf) = signed_in(&app, &other).await;
    let theirs = stranger.get("/ui/dead-letters").await;
    assert!(!theirs.body.contains(&delivery));
    assert!(theirs.body.contains("No dead-lettered deliveries."));
    let r = stranger
        .post(
            "/ui/dead-letters/replay",
            &[("csrf", &their_csrf), ("id", &delivery)],
        )
        .await;
    assert_eq!(r.status, 404);
    let r = stranger
        .post("/ui/dead-letters/replay", &[("csrf", &their_csrf)])
        .await;
    assert_eq!(r.location(), "/ui/dead-letters?deliveries=0&dispatches=0");
    assert_eq!(
        app.count("SELECT count(*) FROM deliveries WHERE status = 'dead'")
            .await,
        1
    );

    // Its owner replays it: a new round, which the endpoint now accepts.
    let r = ui
        .post(
            "/ui/dead-letters/replay",
            &[("csrf", &csrf), ("id", &delivery)],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/ui/dead-letters?deliveries=1&dispatches=0");
    app.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'succeeded'",
        1,
    )
    .await;
    assert_eq!(rx.requests().len(), 4);
    let page = ui.get("/ui/dead-letters?deliveries=1&dispatches=0").await;
    assert!(page.body.contains("Replayed: 1 delivery, 0 dispatches."));
    assert!(!page.body.contains(&format!("data-id=\"{delivery}\"")));
}

#[tokio::test]
async fn dispatches_are_found_by_metadata_value_and_redelivered_one_endpoint_at_a_time() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let hook = Receiver::start().await;
    let acct = app.create_account("ui-search@example.com").await;
    let other = app.create_account("ui-search-other@example.com").await;
    let (mut ui, csrf) = signed_in(&app, &acct).await;
    let r = ui
        .post(
            "/ui/webhooks",
            &[
                ("csrf", &csrf),
                ("event", "dispatch.*"),
                ("callback_url", &hook.url()),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let wanted = submit(
        &app,
        &acct,
        json!({"template": {"format": "text", "body": "a"}, "data": {},
               "callbackUrl": rx.url(), "metadata": {"order": "A-17", "n": 42}}),
    )
    .await;
    let unwanted = submit(
        &app,
        &acct,
        json!({"template": {"format": "text", "body": "b"}, "data": {},
               "metadata": {"order": "B-9", "note": "A-17 is another order"}}),
    )
    .await;
    let theirs = submit(
        &app,
        &other,
        json!({"template": {"format": "text", "body": "c"}, "data": {},
               "metadata": {"order": "A-17"}}),
    )
    .await;

    let found = ui.get("/ui/dispatches?q=A-17").await;
    assert_eq!(found.status, 200);
    assert!(found.body.contains(&wanted), "{}", found.body);
    assert!(!found.body.contains(&unwanted), "only whole values match");
    assert!(!found.body.contains(&theirs), "another account's dispatch");
    // A number, and a key.
    assert!(ui.get("/ui/dispatches?q=42").await.body.contains(&wanted));
    let keyed = ui.get("/ui/dispatches?key=note&q=A-17").await;
    assert!(!keyed.body.contains(&wanted) && !keyed.body.contains(&unwanted));
    let none = ui.get("/ui/dispatches?q=%3Cb%3Enope").await;
    assert!(none.body.contains("&lt;b&gt;nope"), "{}", none.body);
    assert!(none.body.contains("id=\"no-match\""));
    // An id of the account opens it; another account's id is only a search without results.
    let open = ui.get(&format!("/ui/dispatches?q={wanted}")).await;
    assert_eq!(open.location(), format!("/ui/dispatches/{wanted}"));
    let miss = ui.get(&format!("/ui/dispatches?q={theirs}")).await;
    assert_eq!(miss.status, 200);
    assert!(!miss
        .body
        .contains(&format!("href=\"/ui/dispatches/{theirs}\"")));

    // Each delivery row redelivers to its endpoint alone.
    app.wait_finished(&acct, &wanted).await;
    // A delivery's row is committed with its attempt, after the endpoint answered.
    app.wait_equal(
        &format!("SELECT count(*) FROM deliveries WHERE dispatch_id = '{wanted}' AND attempts = 1"),
        2,
    )
    .await;
    let to_rx = app
        .text(&format!(
            "SELECT id::text FROM deliveries WHERE dispatch_id = '{wanted}' AND webhook_id IS NULL"
        ))
        .await;
    let page = ui.get(&format!("/ui/dispatches/{wanted}")).await;
    assert!(
        page.body.contains(&format!("value=\"{to_rx}\"")),
        "{}",
        page.body
    );
    let r = ui
        .post(
            &format!("/ui/dispatches/{wanted}/redeliver"),
            &[("csrf", &csrf), ("delivery_id", &to_rx)],
        )
        .await;
    assert_eq!(
        r.location(),
        format!("/ui/dispatches/{wanted}?redelivered=1")
    );
    rx.wait_for(2).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let to_hook = hook
        .requests()
        .iter()
        .filter(|r| r.json()["data"]["dispatchId"] == wanted.as_str())
        .count();
    assert_eq!(to_hook, 1, "the other endpoint got nothing more");
    let r = ui
        .post(
            &format!("/ui/dispatches/{wanted}/redeliver"),
            &[("csrf", &csrf), ("delivery_id", &uuid_of_nothing())],
        )
        .await;
    assert_eq!(r.status, 404);
}

fn uuid_of_nothing() -> String {
    "00000000-0000-7000-8000-000000000000".into()
}

#[tokio::test]
async fn a_disabled_subscription_gets_nothing_until_enabled_again() {
    let app = TestApp::spawn().await;
    let hook = Receiver::start().await;
    let acct = app.create_account("ui-switch@example.com").await;
    let other = app.create_account("ui-switch-other@example.com").await;
    let (mut ui, csrf) = signed_in(&app, &acct).await;
    ui.post(
        "/ui/webhooks",
        &[
            ("csrf", &csrf),
            ("event", "dispatch.*"),
            ("callback_url", &hook.url()),
        ],
    )
    .await;
    let wid = app.text("SELECT id::text FROM webhook_subscriptions").await;

    // Another account cannot switch it.
    let (mut stranger, their_csrf) = signed_in(&app, &other).await;
    let r = stranger
        .post(
            &format!("/ui/webhooks/{wid}/disable"),
            &[("csrf", &their_csrf)],
        )
        .await;
    assert_eq!(r.status, 404);

    let r = ui
        .post(&format!("/ui/webhooks/{wid}/disable"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.location(), "/ui/webhooks?done=disabled");
    let page = ui.get("/ui/webhooks").await;
    assert!(
        page.body.contains("disabled by the account"),
        "{}",
        page.body
    );
    assert!(page.body.contains(&format!("/ui/webhooks/{wid}/enable")));
    let api = app.webhook(&acct, &wid).await;
    assert!(!api["disabledAt"].is_null(), "{api}");
    let id = submit(
        &app,
        &acct,
        json!({"template": {"format": "text", "body": "x"}, "data": {}}),
    )
    .await;
    app.wait_finished(&acct, &id).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(hook.requests().len(), 0);

    let r = ui
        .post(&format!("/ui/webhooks/{wid}/enable"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.location(), "/ui/webhooks?done=enabled");
    let id = submit(
        &app,
        &acct,
        json!({"template": {"format": "text", "body": "y"}, "data": {}}),
    )
    .await;
    app.wait_finished(&acct, &id).await;
    let got = hook.wait_for(1).await;
    assert_eq!(got[0].json()["data"]["dispatchId"], id);
}

#[tokio::test]
async fn a_subscription_enabled_again_after_its_endpoint_was_disabled_starts_a_fresh_streak() {
    let app = TestApp::spawn_with(
        dispatcher_e2e::Services::ALL,
        &[
            ("DISPATCHER__DELIVERY__CIRCUIT_BREAKER_THRESHOLD", "2"),
            ("DISPATCHER__DELIVERY__CIRCUIT_BREAKER_COOLDOWN", "1s"),
            (
                "DISPATCHER__DELIVERY__RETRY_SCHEDULE",
                "300ms,300ms,300ms,300ms",
            ),
            ("DISPATCHER__DELIVERY__DISABLE_FAILING_AFTER", "1s"),
        ],
    )
    .await;
    let acct = app.create_account("ui-fresh@example.com").await;
    let hook = Receiver::failing_first(usize::MAX).await;
    let created: serde_json::Value = app
        .post(
            &app.ingest_url,
            "/v1/webhooks",
            &acct,
            &json!({"event": "dispatch.completed", "callbackUrl": hook.url()}),
        )
        .await
        .json()
        .await
        .unwrap();
    let wid = created["webhookId"].as_str().unwrap().to_owned();
    let subscription = || app.webhook(&acct, &wid);

    // The endpoint fails long enough for the policy to disable it, with its breaker open, and
    // the delivery runs out of retries (so none of its attempts can reach the fixed endpoint).
    submit(
        &app,
        &acct,
        json!({"template": {"format": "text", "body": "a"}, "data": {}}),
    )
    .await;
    app.wait_equal(
        &format!(
            "SELECT count(*) FROM webhook_subscriptions WHERE id = '{wid}' AND disabled_at IS NOT NULL"
        ),
        1,
    )
    .await;
    app.wait_equal(
        &format!("SELECT count(*) FROM deliveries WHERE webhook_id = '{wid}' AND status = 'dead'"),
        1,
    )
    .await;
    let before = subscription().await;
    assert_ne!(before["health"]["breaker"], "closed", "{before}");
    assert!(before["health"]["consecutiveFailures"].as_i64().unwrap() >= 2);

    // Fixed, and enabled again: the streak starts afresh, the history stays.
    hook.fail_next(0);
    let (mut ui, csrf) = signed_in(&app, &acct).await;
    let r = ui
        .post(&format!("/ui/webhooks/{wid}/enable"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.location(), "/ui/webhooks?done=enabled");
    let after = subscription().await;
    assert!(after["disabledAt"].is_null(), "{after}");
    assert_eq!(after["health"]["breaker"], "closed", "{after}");
    assert_eq!(after["health"]["consecutiveFailures"], 0, "{after}");
    assert_eq!(after["health"]["lastError"], before["health"]["lastError"]);

    // One failure, then a success on its retry: one failure is below the breaker's threshold,
    // so the delivery goes out and the subscription stays enabled. (With the old streak, that
    // failure would disable the subscription again at once.)
    hook.fail_next(1);
    let id = submit(
        &app,
        &acct,
        json!({"template": {"format": "text", "body": "b"}, "data": {}}),
    )
    .await;
    app.wait_equal(
        &format!(
            "SELECT count(*) FROM deliveries
             WHERE webhook_id = '{wid}' AND dispatch_id = '{id}' AND status = 'succeeded'"
        ),
        1,
    )
    .await;
    let last = subscription().await;
    assert!(last["disabledAt"].is_null(), "{last}");
    assert_eq!(last["health"]["breaker"], "closed", "{last}");
}

#[tokio::test]
async fn a_password_change_ends_the_accounts_dashboard_sessions() {
    let app = TestApp::spawn().await;
    let acct = app.create_account("ui-pw@example.com").await;
    let other = app.create_account("ui-pw-other@example.com").await;
    let (mut ui, _) = signed_in(&app, &acct).await;
    let (mut bystander, _) = signed_in(&app, &other).await;
    dispatcher_db::accounts::rotate_password(&app.pool, &acct.email, None)
        .await
        .unwrap();
    let r = ui.get("/ui/dispatches").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "/ui/login");
    assert_eq!(bystander.get("/ui/dispatches").await.status, 200);
}

#[tokio::test]
async fn quarantined_dispatches_are_listed_and_replayed_for_their_account_only() {
    use dispatcher_db::dead_letters::{self, NewDeadLetter};
    let services = dispatcher_e2e::Services {
        worker: false,
        ..dispatcher_e2e::Services::ALL
    };
    let mut app = TestApp::spawn_with(services, &[]).await;
    let acct = app.create_account("ui-dlq-msg@example.com").await;
    let other = app.create_account("ui-dlq-msg-other@example.com").await;
    let body = json!({"template": {"format": "text", "body": "z"}, "data": {}});
    let mine = submit(&app, &acct, body.clone()).await;
    let theirs = submit(&app, &other, body).await;
    // As a worker quarantines a message the broker gave up on.
    let queue = dispatcher_mq::Topology::from_settings(&app.settings).dispatch_queue();
    let mut rows = Vec::new();
    for (dispatch, who) in [(&mine, &acct), (&theirs, &other)] {
        let message = dispatcher_core::DispatchRequested {
            message_id: uuid::Uuid::now_v7(),
            dispatch_id: dispatch.parse().unwrap(),
            account_id: who.account_id,
            queued_at: chrono::Utc::now(),
            provider_attempts: 0,
        };
        rows.push(NewDeadLetter {
            queue: queue.clone(),
            message_id: Some(message.message_id.to_string()),
            reason: "delivery limit reached <x-death>".into(),
            body: serde_json::to_vec(&message).unwrap(),
        });
    }
    dead_letters::insert_batch(&app.pool, &rows).await.unwrap();

    let (mut ui, csrf) = signed_in(&app, &acct).await;
    let page = ui.get("/ui/dead-letters").await;
    assert!(
        page.body.contains(&format!("data-dispatch=\"{mine}\"")),
        "{}",
        page.body
    );
    assert!(!page.body.contains(&theirs));
    assert!(page.body.contains("delivery limit reached &lt;x-death&gt;"));
    // Another account's dispatch id is not this account's dead letter.
    let r = ui
        .post(
            "/ui/dead-letters/replay",
            &[("csrf", &csrf), ("id", &theirs)],
        )
        .await;
    assert_eq!(r.status, 404);
    let r = ui.post("/ui/dead-letters/replay", &[("csrf", &csrf)]).await;
    assert_eq!(r.location(), "/ui/dead-letters?deliveries=0&dispatches=1");
    assert_eq!(app.count("SELECT count(*) FROM dead_letters").await, 1);
    let (mut stranger, _) = signed_in(&app, &other).await;
    let page = stranger.get("/ui/dead-letters").await;
    assert!(page.body.contains(&format!("data-dispatch=\"{theirs}\"")));
    // The replayed dispatch is processed once a worker runs.
    let cancel = app.child_token();
    app.start_worker(cancel);
    let done = app.wait_finished(&acct, &mine).await;
    assert_eq!(done["status"], "completed");
}
