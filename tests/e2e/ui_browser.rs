//! The dashboard in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`, installed by `scripts/ensure-services.sh`). Each page is
//! saved as a screenshot under `<target dir>/ui-screenshots/`.

use dispatcher_e2e::ui::{screenshot_dir, ChromeDriver};
use dispatcher_e2e::{Receiver, TestApp, PATIENCE};
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

    // 5. Sign out; the dashboard asks to sign in again.
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
    Ok(())
}
