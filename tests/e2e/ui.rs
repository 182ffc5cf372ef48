//! The dashboard over HTTP: sign-in and sign-out, session cookies, CSRF, escaping, tenant
//! isolation and redelivery, against the real services.

use dispatcher_db::accounts::CreatedAccount;
use dispatcher_e2e::ui::UiClient;
use dispatcher_e2e::{Receiver, TestApp};
use serde_json::json;

/// Submits a dispatch through the ingest API and waits until it has finished.
async fn finished_dispatch(app: &TestApp, who: &CreatedAccount, body: serde_json::Value) -> String {
    let r = app
        .post(&app.ingest_url, "/v1/dispatches?async=true", who, &body)
        .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let v: serde_json::Value = r.json().await.unwrap();
    let id = v["dispatchId"].as_str().unwrap().to_owned();
    app.wait_finished(who, &id).await;
    id
}

#[tokio::test]
async fn sign_in_sets_a_strict_session_cookie_and_sign_out_ends_it_on_the_server() {
    let app = TestApp::spawn().await;
    let acct = app.create_account("ui-signin@example.com").await;
    let mut ui = UiClient::new(&app.status_url);

    // Signed out, every page leads to the sign-in form.
    let r = ui.get("/ui/dispatches").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "/ui/login");
    let form = ui.get("/ui/login").await;
    assert_eq!(form.status, 200);
    let csp = form.header("content-security-policy");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert_eq!(form.header("x-content-type-options"), "nosniff");
    assert_eq!(form.header("referrer-policy"), "no-referrer");
    assert!(!form.body.contains("<script"), "no scripts: {}", form.body);

    // A wrong password: the form again, with an error, and no session.
    let wrong = ui.sign_in(&acct.email, "not-the-password").await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("Wrong email or password."),
        "{}",
        wrong.body
    );
    assert!(wrong.set_cookie("dispatcher_ui").is_none());
    assert_eq!(app.count("SELECT count(*) FROM ui_sessions").await, 0);

    // A sign-in form sent without its token (as another site would) is refused.
    let forged = ui
        .post(
            "/ui/login",
            &[("email", &acct.email), ("password", &acct.password)],
        )
        .await;
    assert_eq!(forged.status, 403);
    assert_eq!(app.count("SELECT count(*) FROM ui_sessions").await, 0);

    let ok = ui.sign_in(&acct.email, &acct.password).await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(ok.location(), "/ui/dispatches");
    let cookie = ok.set_cookie("dispatcher_ui").expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui/", "Max-Age=43200"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    let session_id = ui.cookies["dispatcher_ui"].clone();
    assert_eq!(session_id.len(), 43, "256 bits, base64url");
    // Only a hash of the id is stored.
    assert_eq!(app.count("SELECT count(*) FROM ui_sessions").await, 1);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM ui_sessions WHERE encode(id_hash, 'escape') LIKE '%{session_id}%'"
        ))
        .await,
        0
    );
    let page = ui.get("/ui/dispatches").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Sign out"));
    assert_eq!(page.header("cache-control"), "no-store");

    // Sign out: the row is gone, and the old cookie no longer opens anything.
    let csrf = page.hidden("csrf");
    let out = ui.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert!(out.location().starts_with("/ui/login"));
    assert!(out
        .set_cookie("dispatcher_ui")
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(app.count("SELECT count(*) FROM ui_sessions").await, 0);
    ui.cookies
        .insert("dispatcher_ui".into(), session_id.clone());
    let again = ui.get("/ui/dispatches").await;
    assert_eq!(again.status, 303);
    assert_eq!(again.location(), "/ui/login");
}

#[tokio::test]
async fn the_cookie_is_secure_behind_an_https_proxy_and_sessions_expire_when_idle() {
    let app = TestApp::spawn_with(
        dispatcher_e2e::Services {
            ingest: false,
            worker: false,
            deliverer: false,
            status: true,
        },
        &[("DISPATCHER__UI__SESSION_IDLE", "2s")],
    )
    .await;
    let acct = app.create_account("ui-expiry@example.com").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http
        .get(format!("{}/ui/login", app.status_url))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let login_cookie = form.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(login_cookie.ends_with("; Secure"), "{login_cookie}");

    let mut ui = UiClient::new(&app.status_url);
    assert_eq!(ui.sign_in(&acct.email, &acct.password).await.status, 303);
    assert_eq!(ui.get("/ui/dispatches").await.status, 200);
    // Idle past ui.session_idle: signed out, and the row is gone.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let r = ui.get("/ui/dispatches").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "/ui/login");
    assert_eq!(app.count("SELECT count(*) FROM ui_sessions").await, 0);
}

#[tokio::test]
async fn posts_without_the_csrf_token_change_nothing_and_redeliver_adds_an_attempt() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let acct = app.create_account("ui-csrf@example.com").await;
    let id = finished_dispatch(
        &app,
        &acct,
        json!({"template": {"format": "text", "body": "hi"}, "data": {}, "callbackUrl": rx.url()}),
    )
    .await;
    rx.wait_for(1).await;
    app.wait_count("SELECT count(*) FROM delivery_attempts", 1)
        .await;

    let mut ui = UiClient::new(&app.status_url);
    assert_eq!(ui.sign_in(&acct.email, &acct.password).await.status, 303);
    let page = ui.get(&format!("/ui/dispatches/{id}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body.matches("class=\"attempt\"").count(), 1);
    let csrf = page.hidden("csrf");

    let path = format!("/ui/dispatches/{id}/redeliver");
    let other_session_token = {
        let mut other = UiClient::new(&app.status_url);
        other.sign_in(&acct.email, &acct.password).await;
        other.csrf().await
    };
    for form in [
        vec![],
        vec![("csrf", "")],
        vec![("csrf", "AAAA")],
        vec![("csrf", other_session_token.as_str())],
        vec![("csrf", &csrf[..csrf.len() - 1])],
    ] {
        let r = ui.post(&path, &form).await;
        assert_eq!(r.status, 403, "{form:?}: {}", r.body);
    }
    // Sign-out is a POST too.
    assert_eq!(ui.post("/ui/logout", &[]).await.status, 403);
    assert_eq!(app.count("SELECT count(*) FROM ui_sessions").await, 2);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(app.count("SELECT count(*) FROM delivery_attempts").await, 1);
    assert_eq!(rx.requests().len(), 1);

    let r = ui.post(&path, &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), format!("/ui/dispatches/{id}?redelivered=1"));
    rx.wait_for(2).await;
    app.wait_count("SELECT count(*) FROM delivery_attempts", 2)
        .await;
    let page = ui.get(&format!("/ui/dispatches/{id}?redelivered=1")).await;
    assert!(
        page.body.contains("Queued again: 1 delivery."),
        "{}",
        page.body
    );
    assert_eq!(page.body.matches("class=\"attempt\"").count(), 2);
    // Receiver-supplied URLs are escaped like everything else.
    assert!(page.body.contains(&rx.url().replace('/', "&#x2f;")));
}

#[tokio::test]
async fn stored_markup_renders_as_text_and_other_accounts_dispatches_are_not_found() {
    let app = TestApp::spawn().await;
    let alice = app.create_account("ui-alice@example.com").await;
    let mallory = app.create_account("ui-mallory@example.com").await;
    let payload = "<script>alert('x')</script>";
    let id = finished_dispatch(
        &app,
        &alice,
        json!({
            "template": {"format": "html", "body": "<p>{{ who }}</p><script>alert(1)</script>"},
            "data": {"who": "Ada"},
            "metadata": {"note": payload},
        }),
    )
    .await;

    let mut ui = UiClient::new(&app.status_url);
    assert_eq!(ui.sign_in(&alice.email, &alice.password).await.status, 303);
    for path in ["/ui/dispatches".to_owned(), format!("/ui/dispatches/{id}")] {
        let page = ui.get(&path).await;
        assert_eq!(page.status, 200);
        assert!(page.body.contains(&id), "{path}");
        assert!(!page.body.contains(payload), "{path}: {}", page.body);
        assert!(
            page.body
                .contains("&lt;script&gt;alert(&#x27;x&#x27;)&lt;&#x2f;script&gt;"),
            "{path}: {}",
            page.body
        );
        assert!(!page.body.contains("<script"), "{path}");
    }
    // The HTML document is shown in a sandboxed frame, and served under its own sandbox policy.
    let page = ui.get(&format!("/ui/dispatches/{id}")).await;
    assert!(
        page.body.contains("sandbox src=\"/ui/dispatches/"),
        "{}",
        page.body
    );
    let doc = ui.get(&format!("/ui/dispatches/{id}/result")).await;
    assert_eq!(doc.status, 200);
    assert!(doc.header("content-type").starts_with("text/html"));
    let csp = doc.header("content-security-policy");
    assert!(
        csp.starts_with("sandbox;") && !csp.contains("script"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'self'"), "{csp}");
    let download = ui
        .get(&format!("/ui/dispatches/{id}/result?download=1"))
        .await;
    assert_eq!(
        download.header("content-disposition"),
        format!("attachment; filename=\"dispatch-{id}.html\"")
    );

    // Another account sees none of it, as in the API.
    let mut other = UiClient::new(&app.status_url);
    assert_eq!(
        other
            .sign_in(&mallory.email, &mallory.password)
            .await
            .status,
        303
    );
    let list = other.get("/ui/dispatches").await;
    assert!(!list.body.contains(&id));
    for path in [
        format!("/ui/dispatches/{id}"),
        format!("/ui/dispatches/{id}/result"),
        "/ui/dispatches/not-a-uuid".to_owned(),
    ] {
        let r = other.get(&path).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(r.body.contains("dispatch not found"), "{path}: {}", r.body);
    }
    let csrf = other.csrf().await;
    let r = other
        .post(
            &format!("/ui/dispatches/{id}/redeliver"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, 404);
    let api = app
        .get(&app.status_url, &format!("/v1/dispatches/{id}"), &mallory)
        .await;
    assert_eq!(api.status(), 404);
}

#[tokio::test]
async fn webhooks_page_creates_shows_health_rotates_the_secret_and_deletes() {
    let app = TestApp::spawn().await;
    let rx = Receiver::failing_first(1000).await;
    let acct = app.create_account("ui-hooks@example.com").await;
    let other = app.create_account("ui-hooks-other@example.com").await;
    let mut ui = UiClient::new(&app.status_url);
    assert_eq!(ui.sign_in(&acct.email, &acct.password).await.status, 303);
    let page = ui.get("/ui/webhooks").await;
    assert_eq!(page.status, 200);
    let csrf = page.hidden("csrf");

    // The API's rules: an internal address is refused, and nothing is stored.
    let refused = ui
        .post(
            "/ui/webhooks",
            &[
                ("csrf", &csrf),
                ("event", "*"),
                ("callback_url", "http://10.0.0.1/hook"),
            ],
        )
        .await;
    assert_eq!(refused.status, 422);
    assert!(refused.body.contains("callbackUrl:"), "{}", refused.body);
    assert!(
        refused.body.contains("10.0.0.1"),
        "the form keeps what was typed"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM webhook_subscriptions")
            .await,
        0
    );

    let created = ui
        .post(
            "/ui/webhooks",
            &[
                ("csrf", &csrf),
                ("event", "dispatch.*"),
                ("callback_url", &rx.url()),
                ("description", "<script>alert(2)</script>"),
            ],
        )
        .await;
    assert_eq!(created.status, 303, "{}", created.body);
    let page = ui.get("/ui/webhooks?done=created").await;
    assert!(page.body.contains("Subscription created."));
    assert!(page
        .body
        .contains("&lt;script&gt;alert(2)&lt;&#x2f;script&gt;"));
    assert!(!page.body.contains("<script>alert(2)"));
    assert!(page.body.contains("health-unknown"), "{}", page.body);
    let wid = app.text("SELECT id::text FROM webhook_subscriptions").await;

    // The endpoint fails: its health turns to failing, with the error.
    let r = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &acct,
            &json!({"template": {"format": "text", "body": "x"}, "data": {}}),
        )
        .await;
    assert_eq!(r.status(), 202);
    app.wait_count(
        "SELECT count(*) FROM delivery_attempts WHERE status = 'failed'",
        1,
    )
    .await;
    let page = ui.get("/ui/webhooks").await;
    assert!(page.body.contains("health-failing"), "{}", page.body);
    assert!(page.body.contains("500"), "the last error: {}", page.body);

    // Rotation shows the new secret once: the one now stored.
    let old = app
        .text("SELECT webhook_secret FROM accounts WHERE email = 'ui-hooks@example.com'")
        .await;
    let rotated = ui
        .post("/ui/webhooks/secret/rotate", &[("csrf", &csrf)])
        .await;
    assert_eq!(rotated.status, 200);
    let new = app
        .text("SELECT webhook_secret FROM accounts WHERE email = 'ui-hooks@example.com'")
        .await;
    assert_ne!(old, new);
    // The page escapes '/' (a base64 character) as an entity; a browser shows it as '/'.
    assert!(
        rotated.body.replace("&#x2f;", "/").contains(&new),
        "{}",
        rotated.body
    );
    assert!(
        !ui.get("/ui/webhooks").await.body.contains(&new),
        "shown once"
    );

    // Another account cannot delete it; its owner can.
    let mut stranger = UiClient::new(&app.status_url);
    stranger.sign_in(&other.email, &other.password).await;
    let their_csrf = stranger.csrf().await;
    let r = stranger
        .post(
            &format!("/ui/webhooks/{wid}/delete"),
            &[("csrf", &their_csrf)],
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(!stranger.get("/ui/webhooks").await.body.contains(&wid));
    let r = ui
        .post(&format!("/ui/webhooks/{wid}/delete"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(
        app.count("SELECT count(*) FROM webhook_subscriptions WHERE deleted_at IS NULL")
            .await,
        0
    );
    assert!(!ui.get("/ui/webhooks").await.body.contains(&wid));
}
