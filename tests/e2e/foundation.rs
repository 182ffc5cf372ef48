use dispatcher_e2e::{
    verify_webhook, wait_until, CloneForTest, Receiver, Services, TestApp, PATIENCE,
};
use serde_json::json;
use std::time::Duration;

async fn template(
    app: &TestApp,
    who: &dispatcher_db::accounts::CreatedAccount,
    format: &str,
    body: &str,
) -> String {
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/templates",
            who,
            &json!({"name": "t", "format": format, "body": body}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let v: serde_json::Value = resp.json().await.unwrap();
    v["templateId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn extreme_numbers_in_data_survive_storage_and_render() {
    // Postgres writes the largest double out in full (309 digits); reading that back must give
    // the same number, not an error that stops the worker.
    let app = TestApp::spawn().await;
    let acct = app.create_account("numbers@example.com").await;
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &acct,
            &json!({
                "template": {"format": "text", "body": "{{ max }} {{ tiny }} {{ min }}"},
                "data": {"max": f64::MAX, "tiny": 5e-324, "min": f64::MIN},
            }),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = app.wait_finished(&acct, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let text = app
        .get(
            &app.status_url,
            &format!("/v1/dispatches/{id}/result"),
            &acct,
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(
        text.replace('.', "").starts_with("17976931348623157"),
        "{text}"
    );
}

#[tokio::test]
async fn async_dispatch_is_rendered_delivered_signed_and_readable() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let acct = app.create_account("ada@example.com").await;
    let tid = template(&app, &acct, "html", "<h1>Hello {{ name }}</h1>").await;

    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &acct,
            &json!({"templateId": tid, "data": {"name": "Ada & co"}, "callbackUrl": rx.url(), "metadata": {"order": "42"}}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let accepted: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(accepted["status"], "queued");
    let id = accepted["dispatchId"].as_str().unwrap().to_owned();
    for field in ["queuedAt", "estimatedCompletionTime", "statusUrl"] {
        assert!(accepted[field].is_string(), "{field} missing in {accepted}");
    }
    assert!(accepted["statusUrl"]
        .as_str()
        .unwrap()
        .starts_with(&app.status_url));

    let hooks = rx.wait_for(1).await;
    let hook = &hooks[0];
    assert!(
        verify_webhook(&acct.webhook_secret, hook),
        "signature must verify"
    );
    assert!(hook.header("webhook-id").starts_with("msg_"));
    assert_eq!(hook.header("content-type"), "application/json");
    let body = hook.json();
    assert_eq!(body["type"], "dispatch.completed");
    assert_eq!(body["data"]["dispatchId"], id.as_str());
    assert_eq!(body["data"]["status"], "completed");
    assert_eq!(body["data"]["metadata"]["order"], "42");
    let result_url = body["data"]["resultUrl"].as_str().unwrap().to_owned();

    let status = app.wait_finished(&acct, &id).await;
    assert_eq!(status["status"], "completed");
    assert_eq!(status["resultUrl"], result_url.as_str());
    assert!(status["startedAt"].is_string() && status["completedAt"].is_string());

    let doc = app
        .http
        .get(&result_url)
        .basic_auth(&acct.email, Some(&acct.password))
        .send()
        .await
        .unwrap();
    assert_eq!(doc.status(), 200);
    assert_eq!(doc.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(doc.text().await.unwrap(), "<h1>Hello Ada &amp; co</h1>");

    // The attempt is recorded once the deliverer commits, shortly after the receiver answered.
    let attempts = wait_attempts(&app, &acct, &id, 1).await;
    let a = &attempts[0];
    assert_eq!(a["status"], "succeeded");
    assert_eq!(a["responseStatus"], 200);
    assert_eq!(a["attempt"], 1);
    assert_eq!(a["url"], rx.url().as_str());
    assert!(a["durationMs"].is_number());
}

#[tokio::test]
async fn sync_submit_answers_with_the_outcome() {
    let app = TestApp::spawn().await;
    let acct = app.create_account("sync@example.com").await;
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches",
            &acct,
            &json!({"template": {"format": "text", "body": "Dear {{ who }}"}, "data": {"who": "Bob"}}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "completed");
    let result = app
        .http
        .get(body["resultUrl"].as_str().unwrap())
        .basic_auth(&acct.email, Some(&acct.password))
        .send()
        .await
        .unwrap();
    assert_eq!(
        result.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(result.text().await.unwrap(), "Dear Bob");
}

#[tokio::test]
async fn sync_submit_times_out_to_202_and_still_completes() {
    // No worker at first: the sync wait must give up with the async body, and nothing is lost.
    let mut app = TestApp::spawn_with(
        Services {
            worker: false,
            ..Services::ALL
        },
        &[("DISPATCHER__INGEST__SYNC_TIMEOUT", "1s")],
    )
    .await;
    let acct = app.create_account("slow@example.com").await;
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches",
            &acct,
            &json!({"template": {"format": "text", "body": "x"}, "data": {}}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "queued");
    let id = body["dispatchId"].as_str().unwrap().to_owned();
    let c = app.child_token();
    app.start_worker(c);
    assert_eq!(app.wait_finished(&acct, &id).await["status"], "completed");
}

#[tokio::test]
async fn render_errors_fail_the_dispatch_and_send_dispatch_failed() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let acct = app.create_account("oops@example.com").await;
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &acct,
            &json!({"template": {"format": "text", "body": "Hi {{ missing }}"}, "data": {}, "callbackUrl": rx.url()}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = app.wait_finished(&acct, &id).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["error"]["code"], "template_render_error");
    assert!(status.get("resultUrl").is_none());
    let hook = &rx.wait_for(1).await[0];
    assert!(verify_webhook(&acct.webhook_secret, hook));
    let body = hook.json();
    assert_eq!(body["type"], "dispatch.failed");
    assert_eq!(body["data"]["error"]["code"], "template_render_error");
}

#[tokio::test]
async fn authentication_and_tenant_isolation() {
    let app = TestApp::spawn().await;
    let a = app.create_account("a@example.com").await;
    let b = app.create_account("b@example.com").await;

    let mut wrong = a.clone_for_test();
    wrong.password = "not-the-password".into();
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/templates",
            &wrong,
            &json!({"name": "x", "format": "text", "body": "x"}),
        )
        .await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let anon = app
        .http
        .get(format!("{}/v1/dispatches/x", app.status_url))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);

    let tid = template(&app, &a, "text", "hello").await;
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches",
            &a,
            &json!({"templateId": tid, "data": {}}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let id = resp.json::<serde_json::Value>().await.unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();

    for path in [
        format!("/v1/dispatches/{id}"),
        format!("/v1/dispatches/{id}/result"),
        format!("/v1/dispatches/{id}/attempts"),
    ] {
        assert_eq!(
            app.get(&app.status_url, &path, &b).await.status(),
            404,
            "{path}"
        );
        assert_eq!(
            app.get(&app.status_url, &path, &a).await.status(),
            200,
            "{path}"
        );
    }
    assert_eq!(
        app.get(&app.ingest_url, &format!("/v1/templates/{tid}"), &b)
            .await
            .status(),
        404
    );
    // B cannot use A's template either.
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &b,
            &json!({"templateId": tid, "data": {}}),
        )
        .await;
    assert_eq!(resp.status(), 422);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "unknown_template"
    );
    let list: serde_json::Value = app
        .get(&app.status_url, "/v1/dispatches", &b)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let list: serde_json::Value = app
        .get(&app.status_url, "/v1/dispatches", &a)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn idempotency_keys_replay_or_conflict() {
    let app = TestApp::spawn().await;
    let acct = app.create_account("idem@example.com").await;
    let body = json!({"template": {"format": "text", "body": "x"}, "data": {"n": 1}});
    let send = |b: serde_json::Value| {
        let app = &app;
        let acct = &acct;
        async move {
            app.http
                .post(format!("{}/v1/dispatches?async=true", app.ingest_url))
                .basic_auth(&acct.email, Some(&acct.password))
                .header("Idempotency-Key", "order-42")
                .json(&b)
                .send()
                .await
                .unwrap()
        }
    };
    let first = send(body.clone()).await;
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = send(body.clone()).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<serde_json::Value>().await.unwrap(), first);
    let other = send(json!({"template": {"format": "text", "body": "x"}, "data": {"n": 2}})).await;
    assert_eq!(other.status(), 409);
    assert_eq!(
        other.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "idempotency_key_reused"
    );
    let list: serde_json::Value = app
        .get(&app.status_url, "/v1/dispatches", &acct)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        1,
        "one key, one dispatch"
    );
}

#[tokio::test]
async fn concurrent_repeats_of_keys_in_any_order_make_one_dispatch_each() {
    // Several insert batches are in flight at once (batches of 4 over 4 lanes: any batch goes
    // beside the others); repeats of the same keys land in different batches in different
    // orders, and must neither deadlock nor write a second dispatch.
    let app = TestApp::spawn_with(
        Services::ALL,
        &[
            ("DISPATCHER__INGEST__WRITE_LANES", "4"),
            ("DISPATCHER__INGEST__BATCH_MAX", "4"),
        ],
    )
    .await;
    let acct = app.create_account("idem-many@example.com").await;
    let keys = 20;
    let sends: Vec<usize> = (0..10)
        .flat_map(|round| (0..keys).map(move |k| if round % 2 == 0 { k } else { keys - 1 - k }))
        .collect();
    let answers = futures::future::join_all(sends.iter().map(|&k| {
        let app = &app;
        let acct = &acct;
        async move {
            let resp = app
                .http
                .post(format!("{}/v1/dispatches?async=true", app.ingest_url))
                .basic_auth(&acct.email, Some(&acct.password))
                .header("Idempotency-Key", format!("order-{k}"))
                .json(&json!({"template": {"format": "text", "body": "x"}, "data": {"k": k}}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap();
            (
                k,
                status,
                body["dispatchId"].as_str().unwrap_or("").to_owned(),
            )
        }
    }))
    .await;
    let mut ids_of: std::collections::HashMap<usize, std::collections::HashSet<String>> =
        Default::default();
    for (k, status, id) in &answers {
        assert_eq!(*status, 202, "key {k}");
        ids_of.entry(*k).or_default().insert(id.clone());
    }
    assert_eq!(ids_of.len(), keys);
    assert!(
        ids_of.values().all(|ids| ids.len() == 1),
        "every repeat of a key answers with its one dispatch"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM dispatches").await,
        keys as i64
    );
    assert!(
        app.ingest_metric("dispatcher_ingest_parallel_writes_total")
            .await
            > 0.0,
        "some batches were written beside others"
    );
}

#[tokio::test]
async fn accepted_while_the_broker_is_unreachable_then_published() {
    // The first ingest's relay points at a port where no broker listens: it must still accept.
    // Worker and deliverer run relays too (relays share the outbox), so they start only later.
    let mut app = TestApp::spawn_with(
        Services {
            ingest: false,
            worker: false,
            deliverer: false,
            status: true,
        },
        &[],
    )
    .await;
    let rx = Receiver::start().await;
    let (cut_off, stop_cut_off) = app
        .start_ingest(&[(
            "DISPATCHER__AMQP__URL",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        )])
        .await;
    let acct = app.create_account("offline@example.com").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let resp = app
            .post(
                &cut_off,
                "/v1/dispatches?async=true",
                &acct,
                &json!({"template": {"format": "text", "body": "n={{ i }}"}, "data": {"i": i}, "callbackUrl": rx.url()}),
            )
            .await;
        assert_eq!(resp.status(), 202);
        ids.push(
            resp.json::<serde_json::Value>().await.unwrap()["dispatchId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let ready = app
        .http
        .get(format!("{cut_off}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready without a broker");
    for id in &ids {
        let s: serde_json::Value = app
            .get(&app.status_url, &format!("/v1/dispatches/{id}"), &acct)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(s["status"], "queued", "nothing can be published yet");
    }
    let unsent: i64 = app
        .pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(unsent, 5, "accepted dispatches wait in the outbox");
    stop_cut_off.cancel();
    // A relay that can reach the broker publishes the backlog.
    let _ = app.start_ingest(&[]).await;
    let c = app.child_token();
    app.start_worker(c);
    let c = app.child_token();
    app.start_deliverer(c);
    for id in &ids {
        assert_eq!(app.wait_finished(&acct, id).await["status"], "completed");
    }
    let hooks = rx.wait_for(5).await;
    assert!(hooks
        .iter()
        .all(|h| verify_webhook(&acct.webhook_secret, h)));
}

#[tokio::test]
async fn a_receiver_that_fails_first_gets_retried_with_the_same_webhook_id() {
    let app = TestApp::spawn().await;
    let rx = Receiver::failing_first(2).await;
    let acct = app.create_account("retry@example.com").await;
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &acct,
            &json!({"template": {"format": "text", "body": "x"}, "data": {}, "callbackUrl": rx.url()}),
        )
        .await;
    let id = resp.json::<serde_json::Value>().await.unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    let hooks = rx.wait_for(3).await;
    let ids: std::collections::HashSet<_> = hooks
        .iter()
        .map(|h| h.header("webhook-id").to_owned())
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "one event to one endpoint keeps one webhook-id"
    );
    let data = wait_attempts(&app, &acct, &id, 3).await;
    assert_eq!(data[0]["status"], "failed");
    assert_eq!(data[0]["responseStatus"], 500);
    assert_eq!(data[1]["status"], "failed");
    assert_eq!(data[2]["status"], "succeeded");
    let n0 = data[0]["nextAttemptAt"].as_str().unwrap();
    let n1 = data[1]["nextAttemptAt"].as_str().unwrap();
    assert!(n0 < n1, "nextAttemptAt increases");
    assert!(data[2].get("nextAttemptAt").is_none());
}

/// The dispatch's delivery attempts, once there are `n` of them (each is recorded when the
/// deliverer commits, shortly after its receiver answered).
async fn wait_attempts(
    app: &TestApp,
    who: &dispatcher_db::accounts::CreatedAccount,
    id: &str,
    n: usize,
) -> Vec<serde_json::Value> {
    wait_until(PATIENCE, Duration::from_millis(50), || async move {
        let a: serde_json::Value = app
            .get(
                &app.status_url,
                &format!("/v1/dispatches/{id}/attempts"),
                who,
            )
            .await
            .json()
            .await
            .unwrap();
        let data = a["data"].as_array().unwrap();
        match data.len() == n {
            true => Ok(data.clone()),
            false => Err(format!("attempts: {a}")),
        }
    })
    .await
}
