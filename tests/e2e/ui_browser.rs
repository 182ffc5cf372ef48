//! The dashboard in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`, installed by `scripts/ensure-services.sh`). Each page is
//! saved as a screenshot under `<target dir>/ui-screenshots/`.

use dispatcher_e2e::ui::{screenshot_dir, ChromeDriver};
use dispatcher_e2e::{PythonServer, Receiver, TestApp, PATIENCE};
use fantoccini::{Client, Locator};
use serde_json::json;
use std::time::Duration;

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
}

/// Waits for `css` to match, then returns its text. Pages with work in flight refresh
/// themselves, so an element found just before a refresh is looked up again.
async fn text_of(browser: &Client, css: &str) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let found = browser
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match found.text().await {
            Ok(text) => return text,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{css}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks the element `locator` finds; looked up again if a self-refresh replaced it.
async fn click(browser: &Client, locator: Locator<'_>) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let clicked = match browser.find(locator).await {
            Ok(el) => el.click().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match clicked {
            Ok(()) => return,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "click: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reloads the page until `done` holds for the text of `css` (which may appear only later).
async fn reload_until(browser: &Client, css: &str, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(el) = browser.find(Locator::Css(css)).await {
            if el.text().await.is_ok_and(|t| done(&t)) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {}",
            browser.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        browser.refresh().await.unwrap();
    }
}

async fn sign_in(browser: &Client, email: &str, password: &str) {
    let email_box = browser
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Id("email"))
        .await
        .unwrap();
    email_box.clear().await.unwrap();
    email_box.send_keys(email).await.unwrap();
    browser
        .find(Locator::Id("password"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    browser
        .find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_dispatch_followed_in_the_browser_from_sign_in_to_redelivery_and_sign_out() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let acct = app.create_account("ui-browser@example.com").await;
    let driver = ChromeDriver::start().await;
    let browser = driver.browser(1280, 900).await;
    let result = run(&app, &rx, &acct, &browser).await;
    // Always end the session, whatever happened (a dropped session leaves Chromium running).
    let _ = tokio::time::timeout(PATIENCE, browser.close()).await;
    result.unwrap();
}

async fn run(
    app: &TestApp,
    rx: &Receiver,
    acct: &dispatcher_db::accounts::CreatedAccount,
    browser: &Client,
) -> Result<(), fantoccini::error::CmdError> {
    // 1. A wrong password shows an error; the right one opens the dispatches.
    browser.goto(&format!("{}/ui/", app.status_url)).await?;
    sign_in(browser, &acct.email, "wrong-password").await;
    let error = text_of(browser, "#login-error").await;
    assert_eq!(error, "Wrong email or password.");
    screenshot(browser, "sign-in-error").await;
    sign_in(browser, &acct.email, &acct.password).await;
    assert_eq!(text_of(browser, "main h1").await, "Dispatches");

    // 2. A dispatch submitted through the API appears and turns completed.
    let r = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            acct,
            &json!({
                "template": {"format": "text", "body": "Hello {{ name }}"},
                "data": {"name": "Ada"},
                "callbackUrl": rx.url(),
                "metadata": {"order": "A-17", "note": "<script>alert(1)</script>"},
            }),
        )
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    let badge = format!("tr[data-id=\"{id}\"] .badge");
    reload_until(browser, &badge, "the dispatch turns completed", |t| {
        t == "completed"
    })
    .await;
    // Stored markup is shown as text.
    let meta = text_of(browser, &format!("tr[data-id=\"{id}\"] td.meta")).await;
    assert!(meta.contains("<script>alert(1)</script>"), "{meta}");
    screenshot(browser, "dispatches").await;

    // 3. Its page: the timeline, the document and the webhook attempt.
    click(
        browser,
        Locator::Css(&format!("a[href=\"/ui/dispatches/{id}\"]")),
    )
    .await;
    assert_eq!(text_of(browser, "#status").await, "completed");
    assert_eq!(text_of(browser, "#document-text").await, "Hello Ada");
    reload_until(browser, "#attempts tbody", "the first attempt", |t| {
        t.contains("succeeded") && t.contains("200")
    })
    .await;
    let attempts = text_of(browser, "#attempts tbody").await;
    assert!(attempts.contains(&rx.url()), "{attempts}");
    screenshot(browser, "dispatch").await;

    // 4. Redeliver, and see the new attempt.
    click(browser, Locator::Id("redeliver")).await;
    assert!(text_of(browser, "#redelivered")
        .await
        .contains("Queued again: 1 delivery."));
    reload_until(browser, "#attempts tbody", "the second attempt", |t| {
        t.matches("succeeded").count() == 2
    })
    .await;
    assert_eq!(rx.requests().len(), 2);
    screenshot(browser, "dispatch-redelivered").await;

    // At 390 px the page still fits: nothing wider than the window.
    browser.set_window_size(390, 844).await?;
    let fits = browser
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await?;
    assert_eq!(fits, json!(true), "the dispatch page overflows at 390 px");
    screenshot(browser, "dispatch-390px").await;
    browser.set_window_size(1280, 900).await?;

    // A form posted without its CSRF token is refused and changes nothing.
    browser
        .goto(&format!("{}/ui/dispatches/{id}", app.status_url))
        .await?;
    browser
        .execute(
            "document.querySelectorAll('input[name=csrf]').forEach(e => e.remove()); return null;",
            vec![],
        )
        .await?;
    click(browser, Locator::Id("redeliver")).await;
    assert_eq!(text_of(browser, "main h1").await, "Forbidden");
    assert!(text_of(browser, "main .error")
        .await
        .contains("did not come from this dashboard"));
    screenshot(browser, "csrf-refused").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.requests().len(), 2, "the refused redeliver sent nothing");

    // Another account's dispatch is not found.
    let other = app.create_account("ui-browser-other@example.com").await;
    let r = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &other,
            &json!({"template": {"format": "text", "body": "theirs"}, "data": {}}),
        )
        .await;
    let theirs = r.json::<serde_json::Value>().await.unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    browser
        .goto(&format!("{}/ui/dispatches/{theirs}", app.status_url))
        .await?;
    assert_eq!(text_of(browser, "main h1").await, "Not found");
    screenshot(browser, "other-accounts-dispatch").await;

    // 5. Sign out; the dashboard asks to sign in again, and the old cookie opens nothing.
    let old_cookie = browser.get_named_cookie("dispatcher_ui").await?;
    browser
        .goto(&format!("{}/ui/dispatches", app.status_url))
        .await?;
    click(browser, Locator::Css("form.signout button")).await;
    assert_eq!(
        text_of(browser, "main .notice").await,
        "You are signed out."
    );
    browser
        .goto(&format!("{}/ui/dispatches/{id}", app.status_url))
        .await?;
    assert_eq!(text_of(browser, "main h1").await, "Sign in");
    assert!(browser.current_url().await?.path().ends_with("/ui/login"));
    screenshot(browser, "signed-out").await;
    browser.add_cookie(old_cookie).await?;
    browser
        .goto(&format!("{}/ui/dispatches/{id}", app.status_url))
        .await?;
    assert_eq!(text_of(browser, "main h1").await, "Sign in");
    Ok(())
}

/// Fails when a page is wider than the window (at 390 px, nothing may need sideways scrolling),
/// naming the elements that stick out.
async fn assert_fits(browser: &Client, what: &str) {
    let wide = browser
        .execute(
            "if (document.documentElement.scrollWidth <= window.innerWidth + 1) return []; \
             return [...document.querySelectorAll('body *')] \
               .filter(el => el.getBoundingClientRect().right > window.innerWidth + 1) \
               .map(el => el.tagName + '#' + el.id + '.' + el.className);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(wide, json!([]), "{what} overflows at 390 px");
}

/// Replaces the text of a form field.
async fn fill(browser: &Client, id: &str, text: &str) {
    let field = browser
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"));
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

#[tokio::test]
async fn a_failing_endpoint_turns_red_its_dead_letter_is_replayed_and_a_template_is_previewed() {
    let app = TestApp::spawn().await;
    // Python's http.server, answering 500 until it is told it has recovered.
    let endpoint = PythonServer::start("flaky_receiver.py", &[]).await;
    let acct = app.create_account("ui-browser-dlq@example.com").await;
    let driver = ChromeDriver::start().await;
    let browser = driver.browser(1280, 900).await;
    let result = failing_endpoint_and_template(&app, &endpoint, &acct, &browser).await;
    let _ = tokio::time::timeout(PATIENCE, browser.close()).await;
    result.unwrap();
}

async fn failing_endpoint_and_template(
    app: &TestApp,
    endpoint: &PythonServer,
    acct: &dispatcher_db::accounts::CreatedAccount,
    browser: &Client,
) -> Result<(), fantoccini::error::CmdError> {
    let hook_url = format!("http://127.0.0.1:{}/hook", endpoint.port);
    browser.goto(&format!("{}/ui/", app.status_url)).await?;
    sign_in(browser, &acct.email, &acct.password).await;
    assert_eq!(text_of(browser, "main h1").await, "Dispatches");

    // 5. Subscribe the endpoint from the webhooks page.
    click(browser, Locator::Css("nav a[href=\"/ui/webhooks\"]")).await;
    fill(browser, "callback_url", &hook_url).await;
    click(browser, Locator::Id("create-webhook")).await;
    assert_eq!(text_of(browser, "#done").await, "Subscription created.");

    // A dispatch's outcome goes to it; every attempt fails, and its health turns red.
    let r = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            acct,
            &json!({"template": {"format": "text", "body": "Hi"}, "data": {}}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    let health = "#webhooks tbody tr td:nth-child(3) .badge";
    reload_until(
        browser,
        health,
        "the endpoint's health turns failing",
        |t| t == "failing",
    )
    .await;
    let badge = browser.find(Locator::Css(health)).await?;
    assert_eq!(
        badge.css_value("color").await?,
        "rgba(179, 38, 30, 1)",
        "failing is shown in red"
    );
    let last_error = text_of(browser, "#webhooks tbody tr td.err").await;
    assert!(last_error.contains("500"), "{last_error}");
    screenshot(browser, "webhooks-failing").await;

    // Its attempts run out: the delivery is a dead letter, with the reason.
    click(browser, Locator::Css("nav a[href=\"/ui/dead-letters\"]")).await;
    reload_until(
        browser,
        "#dead-deliveries tbody",
        "the delivery is dead-lettered",
        |t| t.contains(&hook_url) && t.contains("500"),
    )
    .await;
    let attempts = text_of(
        browser,
        &format!("#dead-deliveries tr[data-dispatch=\"{id}\"] td:nth-child(3)"),
    )
    .await;
    assert_eq!(attempts, "3");
    screenshot(browser, "dead-letters").await;
    let failed = endpoint.lines();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(failed.iter().all(|l| l.starts_with("500 ")), "{failed:?}");

    // The endpoint recovers; replaying the dead letter delivers it.
    let recovered = app
        .http
        .get(format!("http://127.0.0.1:{}/recover", endpoint.port))
        .send()
        .await
        .unwrap();
    assert_eq!(recovered.status(), 204);
    click(browser, Locator::Css("#dead-deliveries button.replay")).await;
    assert_eq!(
        text_of(browser, "#replayed").await,
        "Replayed: 1 delivery, 0 dispatches."
    );
    assert_eq!(
        text_of(browser, "#no-dead-deliveries").await,
        "No dead-lettered deliveries."
    );
    browser
        .goto(&format!("{}/ui/dispatches/{id}", app.status_url))
        .await?;
    reload_until(
        browser,
        "#deliveries tbody",
        "the replay is delivered",
        |t| t.contains("succeeded"),
    )
    .await;
    let attempts = text_of(browser, "#attempts tbody").await;
    assert_eq!(attempts.matches("succeeded").count(), 1, "{attempts}");
    let lines = endpoint.lines();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[3].starts_with("200 "), "{lines:?}");
    // The webhook-id stays the same across the replay, so the receiver can deduplicate.
    assert_eq!(lines[0][4..], lines[3][4..]);
    screenshot(browser, "dispatch-replayed").await;
    browser
        .goto(&format!("{}/ui/webhooks", app.status_url))
        .await?;
    reload_until(browser, health, "the endpoint's health is ok again", |t| {
        t == "ok"
    })
    .await;

    // 6. A template, created with a live preview of the sample data.
    click(browser, Locator::Css("nav a[href=\"/ui/templates\"]")).await;
    click(browser, Locator::Id("new-template")).await;
    assert_eq!(text_of(browser, "main h1").await, "New template");
    fill(browser, "name", "Welcome <script>alert(1)</script>").await;
    browser
        .find(Locator::Id("format"))
        .await?
        .select_by_value("html")
        .await?;
    fill(
        browser,
        "body",
        "<h1>Welcome, {{ name }}</h1><ul>{% for i in items %}<li>{{ i }}</li>{% endfor %}</ul>",
    )
    .await;
    fill(
        browser,
        "data",
        r#"{"name": "Grace", "items": ["one", "two"]}"#,
    )
    .await;
    click(browser, Locator::Id("preview")).await;
    browser
        .find(Locator::Id("preview-frame"))
        .await?
        .enter_frame()
        .await?;
    let heading = text_of(browser, "h1").await;
    let items = text_of(browser, "ul").await;
    browser.enter_parent_frame().await?;
    assert_eq!(heading, "Welcome, Grace");
    assert_eq!(items, "one\ntwo");
    screenshot(browser, "template-preview").await;

    // A syntax error shows in the preview, as the API words it.
    fill(browser, "body", "<h1>{% if %}</h1>").await;
    click(browser, Locator::Id("preview")).await;
    browser
        .find(Locator::Id("preview-frame"))
        .await?
        .enter_frame()
        .await?;
    let error = text_of(browser, "#preview-error").await;
    browser.enter_parent_frame().await?;
    assert!(error.starts_with("template_syntax_error:"), "{error}");

    fill(browser, "body", "<h1>Welcome, {{ name }}</h1>").await;
    click(browser, Locator::Id("create-template")).await;
    assert_eq!(text_of(browser, "#done").await, "Template created.");
    assert_eq!(
        text_of(browser, "#template-name").await,
        "Welcome <script>alert(1)</script>"
    );
    let tid = text_of(browser, "#template-id").await;
    let api = app
        .get(&app.ingest_url, &format!("/v1/templates/{tid}"), acct)
        .await;
    assert_eq!(api.status(), 200);
    click(browser, Locator::Css("nav a[href=\"/ui/templates\"]")).await;
    assert_eq!(
        text_of(
            browser,
            &format!("#templates tr[data-id=\"{tid}\"] td.name")
        )
        .await,
        "Welcome <script>alert(1)</script>"
    );
    screenshot(browser, "templates").await;

    // At 390 px the new pages fit, and their controls stay reachable from the keyboard.
    browser.set_window_size(390, 844).await?;
    for (path, name) in [
        (format!("/ui/templates/{tid}"), "template-390px"),
        ("/ui/dead-letters".to_owned(), "dead-letters-390px"),
        ("/ui/webhooks".to_owned(), "webhooks-390px"),
        ("/ui/dispatches".to_owned(), "dispatches-390px"),
    ] {
        browser.goto(&format!("{}{path}", app.status_url)).await?;
        text_of(browser, "main h1").await;
        assert_fits(browser, &path).await;
        screenshot(browser, name).await;
    }
    browser.set_window_size(1280, 900).await?;
    browser
        .goto(&format!("{}/ui/templates/new", app.status_url))
        .await?;
    text_of(browser, "main h1").await;
    let unlabelled = browser
        .execute(
            "const ids = []; \
             for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) { \
               const label = document.querySelector('label[for=\"' + el.id + '\"]'); \
               if (!label && !el.getAttribute('aria-label')) ids.push(el.name); } \
             return ids;",
            vec![],
        )
        .await?;
    assert_eq!(unlabelled, json!([]), "every field has a label");
    Ok(())
}
