//! Security and bad input: rate limits, credential changes, SSRF, tenants, hostile requests.

use dispatcher_e2e::{ok_if, wait_until, CloneForTest, Receiver, Services, TestApp, PATIENCE};
use futures::StreamExt;
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let app = TestApp::spawn_with(
        Services::ALL,
        &[
            ("DISPATCHER__RATE_LIMIT__REQUESTS_PER_SECOND", "1"),
            ("DISPATCHER__RATE_LIMIT__BURST", "3"),
        ],
    )
    .await;
    let acct = app.create_account("limit@example.com").await;
    let other = app.create_account("other@example.com").await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = app.get(&app.status_url, "/v1/dispatches", &acct).await;
        if r.status() == 429 {
            assert!(
                r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 1
            );
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    // Per account: another account is unaffected.
    assert_eq!(
        app.get(&app.status_url, "/v1/dispatches", &other)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_password_change_ends_the_old_password_at_once() {
    let app = TestApp::spawn().await;
    let acct = app.create_account("rotate-pw@example.com").await;
    assert_eq!(
        app.get(&app.status_url, "/v1/dispatches", &acct)
            .await
            .status(),
        200
    );
    let out = app
        .dispatchctl(&[
            "accounts",
            "rotate-password",
            "--email",
            "rotate-pw@example.com",
        ])
        .await;
    let new_pw = serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["password"]
        .as_str()
        .unwrap()
        .to_owned();
    // The cached old credentials are dropped by the change notification.
    let (app_ref, old) = (&app, &acct);
    wait_until(PATIENCE, Duration::from_millis(50), || async move {
        let status = app_ref
            .get(&app_ref.status_url, "/v1/dispatches", old)
            .await
            .status();
        ok_if(status == 401, || {
            format!("old password still accepted ({status})")
        })
    })
    .await;
    let mut fresh = acct.clone_for_test();
    fresh.password = new_pw;
    assert_eq!(
        app.get(&app.status_url, "/v1/dispatches", &fresh)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn loopback_names_and_addresses_outside_allow_hosts_are_never_contacted() {
    let app = TestApp::spawn().await;
    let acct = app.create_account("ssrf@example.com").await;
    // Receivers on loopback addresses that are not in allow_hosts (only 127.0.0.1 is).
    let on_v4 = Receiver::start().await;
    let port = on_v4.addr.port();
    let l2 = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let p2 = l2.local_addr().unwrap().port();
    let hits2 = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h2 = hits2.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l2.accept().await {
            h2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });

    // At registration, literal internal addresses and internal names are refused with 422.
    for url in [
        format!("http://127.0.0.2:{p2}/hook"),
        format!("http://[::1]:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.0.0.1/hook".to_owned(),
        "http://[fd00::1]/hook".to_owned(),
    ] {
        let r = app
            .post(
                &app.ingest_url,
                "/v1/webhooks",
                &acct,
                &json!({"event": "*", "callbackUrl": url}),
            )
            .await;
        assert_eq!(r.status(), 422, "{url}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_callback_url", "{url}");
        let r = app
            .post(&app.ingest_url, "/v1/dispatches?async=true", &acct, &json!({"template": {"format": "text", "body": "x"}, "data": {}, "callbackUrl": url}))
            .await;
        assert_eq!(r.status(), 422, "{url}");
    }

    // At delivery time the check runs again on what the name resolves to (a registered name can
    // later resolve inward: DNS rebinding). Simulate that by writing such endpoints directly.
    let client = app.pool.get().await.unwrap();
    for url in [
        format!("http://localhost:{port}/hook"),
        format!("http://127.0.0.2:{p2}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
    ] {
        client
            .execute(
                "INSERT INTO webhook_subscriptions (id, account_id, event, callback_url) VALUES (gen_random_uuid(), $1, '*', $2)",
                &[&acct.account_id, &url],
            )
            .await
            .unwrap();
    }
    drop(client);
    // And one allowed endpoint, which must be delivered.
    let r = app
        .post(&app.ingest_url, "/v1/dispatches", &acct, &json!({"template": {"format": "text", "body": "x"}, "data": {}, "callbackUrl": on_v4.url()}))
        .await;
    assert_eq!(r.status(), 200);
    on_v4.wait_for(1).await;
    app.wait_count(
        "SELECT count(*) FROM delivery_attempts WHERE error LIKE '%refused%'",
        4,
    )
    .await;
    // Every refused delivery ran out of retries: no attempt is left that could still go out.
    app.wait_equal("SELECT count(*) FROM deliveries WHERE status = 'dead'", 4)
        .await;
    assert_eq!(
        on_v4.requests().len(),
        1,
        "only the allowed endpoint was contacted"
    );
    assert_eq!(
        hits2.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "127.0.0.2 was never contacted"
    );
}

#[tokio::test]
async fn another_accounts_objects_are_404_on_every_endpoint() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let a = app.create_account("owner@example.com").await;
    let b = app.create_account("intruder@example.com").await;
    let tid = app
        .post(
            &app.ingest_url,
            "/v1/templates",
            &a,
            &json!({"name": "t", "format": "text", "body": "hi"}),
        )
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["templateId"]
        .as_str()
        .unwrap()
        .to_owned();
    let wid = app
        .post(
            &app.ingest_url,
            "/v1/webhooks",
            &a,
            &json!({"event": "*", "callbackUrl": rx.url()}),
        )
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["webhookId"]
        .as_str()
        .unwrap()
        .to_owned();
    let did = app
        .post(
            &app.ingest_url,
            "/v1/dispatches",
            &a,
            &json!({"templateId": tid, "data": {}}),
        )
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    rx.wait_for(1).await;

    let (ing, st) = (&app.ingest_url, &app.status_url);
    let cases: Vec<(Method, String)> = vec![
        (Method::GET, format!("{ing}/v1/templates/{tid}")),
        (Method::GET, format!("{ing}/v1/webhooks/{wid}")),
        (Method::DELETE, format!("{ing}/v1/webhooks/{wid}")),
        (Method::GET, format!("{st}/v1/dispatches/{did}")),
        (Method::GET, format!("{st}/v1/dispatches/{did}/result")),
        (Method::GET, format!("{st}/v1/dispatches/{did}/attempts")),
        (Method::POST, format!("{st}/v1/dispatches/{did}/redeliver")),
    ];
    for (m, url) in &cases {
        let r = app
            .http
            .request(m.clone(), url)
            .basic_auth(&b.email, Some(&b.password))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{m} {url}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
    // B cannot use A's template for a dispatch either.
    let r = app
        .post(
            ing,
            "/v1/dispatches?async=true",
            &b,
            &json!({"templateId": tid, "data": {}}),
        )
        .await;
    assert_eq!(r.status(), 422);
    // Lists never show A's objects to B.
    for url in [
        format!("{ing}/v1/templates"),
        format!("{ing}/v1/webhooks"),
        format!("{st}/v1/dispatches"),
    ] {
        let v: serde_json::Value = app
            .http
            .get(&url)
            .basic_auth(&b.email, Some(&b.password))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 0, "{url}");
        let v: serde_json::Value = app
            .http
            .get(&url)
            .basic_auth(&a.email, Some(&a.password))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 1, "{url}");
    }
    // And A still sees everything (B's DELETE did nothing).
    for (m, url) in &cases[..6] {
        if *m == Method::GET {
            let r = app
                .http
                .get(url)
                .basic_auth(&a.email, Some(&a.password))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{url}");
        }
    }
}

/// One hostile request: method, service, path, headers, raw body, expected status and error code.
struct Case {
    method: Method,
    status_api: bool,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    auth: bool,
    want: u16,
    code: &'static str,
}

fn case(
    method: Method,
    path: &'static str,
    body: Option<&str>,
    want: u16,
    code: &'static str,
) -> Case {
    Case {
        method,
        status_api: false,
        path,
        headers: vec![("content-type", "application/json".into())],
        body: body.map(|b| b.as_bytes().to_vec()),
        auth: true,
        want,
        code,
    }
}

#[tokio::test]
async fn hostile_inputs_get_clear_errors_and_the_service_keeps_working() {
    let app = TestApp::spawn_with(
        Services::ALL,
        &[("DISPATCHER__INGEST__MAX_BODY_BYTES", "65536")],
    )
    .await;
    let acct = app.create_account("hostile@example.com").await;
    let huge = format!(
        "{{\"template\": {{\"format\": \"text\", \"body\": \"{}\"}}, \"data\": {{}}}}",
        "x".repeat(70_000)
    );
    let deep = format!("{{\"data\": {}1{}}}", "[".repeat(200), "]".repeat(200));
    let mut cases = vec![
        case(
            Method::POST,
            "/v1/dispatches",
            Some("{"),
            400,
            "malformed_json",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some("not json at all"),
            400,
            "malformed_json",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(""),
            400,
            "malformed_json",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some("[]"),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some("null"),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some("{}"),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(r#"{"data": {}}"#),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(r#"{"template": {"format": "text", "body": "x"}}"#),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(r#"{"template": {"format": "text", "body": "x"}, "data": []}"#),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(r#"{"template": {"format": "text", "body": "x"}, "data": "s"}"#),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(r#"{"template": {"format": "docx", "body": "x"}, "data": {}}"#),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(r#"{"template": {"format": "text", "body": 5}, "data": {}}"#),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(r#"{"template": {"format": "text", "body": "{% if %}"}, "data": {}}"#),
            422,
            "template_syntax_error",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(r#"{"template": {"format": "text", "body": "{{ x "}, "data": {}}"#),
            422,
            "template_syntax_error",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(r#"{"templateId": "00000000-0000-0000-0000-000000000000", "data": {}}"#),
            422,
            "unknown_template",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(r#"{"templateId": "not-a-uuid", "data": {}}"#),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(
                r#"{"templateId": "00000000-0000-0000-0000-000000000000", "template": {"format": "text", "body": "x"}, "data": {}}"#,
            ),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(r#"{"template": {"format": "text", "body": "x"}, "data": {}, "extra": 1}"#),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(
                r#"{"template": {"format": "text", "body": "x"}, "data": {}, "callbackUrl": "ftp://x.example/"}"#,
            ),
            422,
            "invalid_callback_url",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(
                r#"{"template": {"format": "text", "body": "x"}, "data": {}, "callbackUrl": "not a url"}"#,
            ),
            422,
            "invalid_callback_url",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(
                r#"{"template": {"format": "text", "body": "x"}, "data": {}, "callbackUrl": "http://user:pw@127.0.0.1/"}"#,
            ),
            422,
            "invalid_callback_url",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(
                r#"{"template": {"format": "text", "body": "x"}, "data": {}, "provider": {"type": "fax"}}"#,
            ),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(
                r#"{"template": {"format": "text", "body": "x"}, "data": {}, "provider": {"type": "http"}}"#,
            ),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(
                r#"{"template": {"format": "text", "body": "x"}, "data": {}, "provider": {"type": "http", "url": "http://169.254.169.254/"}}"#,
            ),
            422,
            "invalid_provider_url",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(r#"{"template": {"format": "text", "body": "x"}, "data": {}, "metadata": 7}"#),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/dispatches?async=maybe",
            Some(r#"{"template": {"format": "text", "body": "x"}, "data": {}}"#),
            400,
            "invalid_query",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(&huge),
            413,
            "payload_too_large",
        ),
        case(
            Method::POST,
            "/v1/dispatches",
            Some(&deep),
            400,
            "malformed_json",
        ),
        case(
            Method::POST,
            "/v1/templates",
            Some(r#"{"name": "", "format": "text", "body": "x"}"#),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/templates",
            Some(r#"{"name": "n", "format": "text"}"#),
            422,
            "invalid_field",
        ),
        case(
            Method::POST,
            "/v1/templates",
            Some(r#"{"name": "n", "format": "text", "body": "{% for %}"}"#),
            422,
            "template_syntax_error",
        ),
        case(
            Method::POST,
            "/v1/webhooks",
            Some(r#"{"event": "dispatch.exploded", "callbackUrl": "https://x.example/"}"#),
            422,
            "invalid_event",
        ),
        case(
            Method::POST,
            "/v1/webhooks",
            Some(r#"{"event": "*", "callbackUrl": "http://[::1]/"}"#),
            422,
            "invalid_callback_url",
        ),
        case(
            Method::POST,
            "/v1/webhooks",
            Some(r#"{"event": "*"}"#),
            422,
            "invalid_field",
        ),
        case(
            Method::GET,
            "/v1/templates/not-a-uuid",
            None,
            404,
            "not_found",
        ),
        case(
            Method::GET,
            "/v1/templates?limit=0",
            None,
            400,
            "invalid_limit",
        ),
        case(
            Method::GET,
            "/v1/templates?cursor=%00%01",
            None,
            400,
            "invalid_cursor",
        ),
        case(
            Method::DELETE,
            "/v1/webhooks/00000000-0000-0000-0000-000000000000",
            None,
            404,
            "not_found",
        ),
        case(Method::GET, "/v1/nothing-here", None, 404, "not_found"),
        case(
            Method::PUT,
            "/v1/dispatches",
            Some("{}"),
            405,
            "method_not_allowed",
        ),
        case(
            Method::DELETE,
            "/v1/templates",
            None,
            405,
            "method_not_allowed",
        ),
    ];
    // Raw bytes that are not UTF-8.
    let mut c = case(Method::POST, "/v1/dispatches", None, 400, "malformed_json");
    c.body = Some(vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}']);
    cases.push(c);
    // Wrong content type.
    let mut c = case(
        Method::POST,
        "/v1/dispatches",
        Some("{}"),
        415,
        "unsupported_media_type",
    );
    c.headers = vec![("content-type", "text/plain".into())];
    cases.push(c);
    // Bad idempotency keys.
    for key in ["", &"k".repeat(300), "has space", "tab\tkey"] {
        let mut c = case(
            Method::POST,
            "/v1/dispatches?async=true",
            Some(r#"{"template": {"format": "text", "body": "x"}, "data": {}}"#),
            400,
            "invalid_idempotency_key",
        );
        c.headers.push(("idempotency-key", key.to_owned()));
        cases.push(c);
    }
    // Authentication problems.
    for header in ["Basic", "Basic !!!", "Bearer abc", "Basic Zm9v"] {
        let mut c = case(Method::GET, "/v1/templates", None, 401, "unauthorized");
        c.auth = false;
        c.headers.push(("authorization", header.to_owned()));
        cases.push(c);
    }
    // Status API.
    for (path, want, code) in [
        ("/v1/dispatches/not-a-uuid", 404, "not_found"),
        (
            "/v1/dispatches/00000000-0000-0000-0000-000000000000/result",
            404,
            "not_found",
        ),
        ("/v1/dispatches?status=exploded", 400, "invalid_status"),
        ("/v1/dispatches?limit=-1", 400, "invalid_limit"),
        ("/v1/dispatches?limit=abc", 400, "invalid_query"),
    ] {
        let mut c = case(Method::GET, path, None, want, code);
        c.status_api = true;
        cases.push(c);
    }
    let mut c = case(
        Method::POST,
        "/v1/dispatches/00000000-0000-0000-0000-000000000000/redeliver",
        Some("{\"x\": 1}"),
        422,
        "invalid_field",
    );
    c.status_api = true;
    cases.push(c);
    let mut c = case(
        Method::POST,
        "/v1/dispatches/00000000-0000-0000-0000-000000000000/redeliver",
        None,
        404,
        "not_found",
    );
    c.status_api = true;
    cases.push(c);

    assert!(cases.len() >= 40, "{} cases", cases.len());
    for c in &cases {
        let base = if c.status_api {
            &app.status_url
        } else {
            &app.ingest_url
        };
        let mut req = app
            .http
            .request(c.method.clone(), format!("{base}{}", c.path));
        if c.auth {
            req = req.basic_auth(&acct.email, Some(&acct.password));
        }
        for (k, v) in &c.headers {
            req = req.header(*k, v.as_str());
        }
        if let Some(b) = &c.body {
            req = req.body(b.clone());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, c.want, "{} {}: {text}", c.method, c.path);
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{} {}: not JSON: {text}", c.method, c.path));
        assert_eq!(
            v["error"]["code"], c.code,
            "{} {}: {text}",
            c.method, c.path
        );
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    println!("hostile input cases: {}", cases.len());

    // An enormous header block is refused without taking the service down.
    let r = app
        .http
        .get(format!("{}/v1/templates", app.ingest_url))
        .header("x-big", "y".repeat(200_000))
        .send()
        .await;
    assert!(r.map(|r| r.status().is_client_error()).unwrap_or(true));

    // After all of that, a normal dispatch still completes.
    let r = app.post(&app.ingest_url, "/v1/dispatches", &acct, &json!({"template": {"format": "text", "body": "still {{ ok }}"}, "data": {"ok": "fine"}})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["status"],
        "completed"
    );
}

#[tokio::test]
async fn provider_callbacks_are_verified_stored_and_applied_in_order() {
    use dispatcher_core::signing::sign_hex_sha256;
    let app = TestApp::spawn_with(
        Services::ALL,
        &[("DISPATCHER__PROVIDERS__ACME__SECRET", "acme-signing-key")],
    )
    .await;
    let acct = app.create_account("provider@example.com").await;
    let r = app
        .post(
            &app.ingest_url,
            "/v1/dispatches",
            &acct,
            &json!({"template": {"format": "text", "body": "x"}, "data": {}}),
        )
        .await;
    let id = r.json::<serde_json::Value>().await.unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!("{}/v1/providers/acme/events", app.ingest_url);
    let now = chrono::Utc::now();
    let event = |eid: &str, ty: &str, at: chrono::DateTime<chrono::Utc>| {
        json!({"eventId": eid, "dispatchId": id, "type": ty, "occurredAt": at.to_rfc3339()})
            .to_string()
    };
    let send = |body: String, sig: Option<String>| {
        let mut req = app
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(sig) = sig {
            req = req.header("x-provider-signature", sig);
        }
        req.send()
    };
    let key = b"acme-signing-key";

    // Unsigned, wrongly signed, unknown provider, stale: refused, nothing stored.
    let delivered = event("ev-2", "delivered", now);
    assert_eq!(send(delivered.clone(), None).await.unwrap().status(), 401);
    assert_eq!(
        send(
            delivered.clone(),
            Some(sign_hex_sha256(b"wrong", delivered.as_bytes()))
        )
        .await
        .unwrap()
        .status(),
        401
    );
    let tampered = event("ev-2", "failed", now);
    assert_eq!(
        send(tampered, Some(sign_hex_sha256(key, delivered.as_bytes())))
            .await
            .unwrap()
            .status(),
        401
    );
    let other = app
        .http
        .post(format!("{}/v1/providers/nobody/events", app.ingest_url))
        .body(delivered.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    let stale = event("ev-0", "accepted", now - chrono::Duration::hours(2));
    let r = send(stale.clone(), Some(sign_hex_sha256(key, stale.as_bytes())))
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "stale_event"
    );
    assert_eq!(app.count("SELECT count(*) FROM provider_events").await, 0);

    // The newer event first, then an older one, then a duplicate: "delivered" must win.
    let r = send(
        delivered.clone(),
        Some(sign_hex_sha256(key, delivered.as_bytes())),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let accepted = event("ev-1", "accepted", now - chrono::Duration::seconds(10));
    assert_eq!(
        send(
            accepted.clone(),
            Some(sign_hex_sha256(key, accepted.as_bytes()))
        )
        .await
        .unwrap()
        .status(),
        200
    );
    let dup = send(
        delivered.clone(),
        Some(sign_hex_sha256(key, delivered.as_bytes())),
    )
    .await
    .unwrap();
    assert_eq!(dup.status(), 200);
    assert_eq!(
        dup.json::<serde_json::Value>().await.unwrap()["duplicate"],
        true
    );
    app.wait_count(
        "SELECT count(*) FROM provider_events WHERE applied_at IS NOT NULL",
        2,
    )
    .await;
    let s: serde_json::Value = app
        .get(&app.status_url, &format!("/v1/dispatches/{id}"), &acct)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(s["providerStatus"], "delivered", "{s}");
    assert!(s["providerStatusAt"].is_string(), "{s}");
}

#[tokio::test]
async fn the_documented_node_verifier_accepts_real_webhooks_and_rejects_tampering() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let acct = app.create_account("node@example.com").await;
    let r = app
        .post(&app.ingest_url, "/v1/dispatches", &acct, &json!({"template": {"format": "text", "body": "x"}, "data": {}, "callbackUrl": rx.url()}))
        .await;
    assert_eq!(r.status(), 200);
    let hook = &rx.wait_for(1).await[0];
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/verify-webhook.js");
    let run = |secret: &str, body: &str| {
        let input = json!({
            "secret": secret,
            "headers": {
                "webhook-id": hook.header("webhook-id"),
                "webhook-timestamp": hook.header("webhook-timestamp"),
                "webhook-signature": hook.header("webhook-signature"),
            },
            "body": body,
        })
        .to_string();
        let script = script.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let mut child = tokio::process::Command::new("node")
                .arg(script)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("node is installed (the README's Node example is tested with it)");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .await
                .unwrap();
            child.wait().await.unwrap().success()
        }
    };
    let body = String::from_utf8(hook.body.to_vec()).unwrap();
    assert!(
        run(&acct.webhook_secret, &body).await,
        "valid webhook accepted"
    );
    assert!(
        !run(&acct.webhook_secret, &body.replace("completed", "failed")).await,
        "tampered body rejected"
    );
    assert!(
        !run("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &body).await,
        "wrong secret rejected"
    );
}

/// Resident memory of this process (the test runs the services in-process), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_flood_of_failed_logins_is_refused_before_argon2_and_good_clients_go_on() {
    let app = TestApp::spawn_with(
        Services {
            worker: false,
            deliverer: false,
            ..Services::ALL
        },
        &[],
    )
    .await;
    let good = app.create_account("good@example.com").await;
    let victim = app.create_account("victim@example.com").await;
    // The good client has signed in before (its credentials are verified and cached).
    let r = app.get(&app.ingest_url, "/v1/templates", &good).await;
    assert_eq!(r.status(), 200);
    let before = rss_kib();

    let mut wrong = victim.clone_for_test();
    wrong.password = "not-the-password".into();
    let statuses: Vec<u16> = futures::stream::iter(0..2000)
        .map(|_| async { app.get(&app.ingest_url, "/v1/templates", &wrong).await })
        .buffer_unordered(50)
        .then(|r| async move {
            let code = r.status().as_u16();
            if code == 429 {
                assert!(r.headers().contains_key("retry-after"));
            }
            code
        })
        .collect()
        .await;
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    println!(
        "401: {unauthorized}, 429: {limited}, RSS {} -> {} MiB",
        before / 1024,
        rss_kib() / 1024
    );
    assert_eq!(unauthorized + limited, 2000, "{statuses:?}");
    // The account's allowance is 10 failed sign-ins a minute, burst 10, and each verification
    // holds one of them while it runs: at most 10, plus what refills while the flood lasts (under
    // a minute: at most 10 more).
    assert!(unauthorized <= 10 + 10, "{unauthorized} verifications ran");
    assert!(
        rss_kib() < before + 200 * 1024,
        "memory grew by {} MiB",
        (rss_kib() - before) / 1024
    );
    // The good client is still served. The victim, signing in correctly for the first time, is
    // refused for now like the attacker: its account's failed sign-ins are used up.
    let r = app.get(&app.ingest_url, "/v1/templates", &good).await;
    assert_eq!(r.status(), 200);
    let r = app.get(&app.ingest_url, "/v1/templates", &victim).await;
    assert_eq!(r.status(), 429, "the account's failed sign-ins are used up");
}
