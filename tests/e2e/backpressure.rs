//! When delivery cannot keep pace, the ingest pushes back: past `ingest.max_backlog` accepted
//! messages waiting, new submissions get `429 overloaded` with `Retry-After`, replays are still
//! answered, and once the backlog drains submissions are accepted again.

use dispatcher_e2e::{Services, TestApp, PATIENCE};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_backlog_past_the_limit_is_answered_429_until_it_drains() {
    // No worker: accepted dispatches wait in the queue.
    let mut app = TestApp::spawn_with(
        Services {
            ingest: true,
            worker: false,
            deliverer: true,
            status: true,
        },
        &[("DISPATCHER__INGEST__MAX_BACKLOG", "5")],
    )
    .await;
    let acct = app.create_account("backlog@example.com").await;
    let (http, url) = (
        app.http.clone(),
        format!("{}/v1/dispatches?async=true", app.ingest_url),
    );
    let submit = |key: String| {
        let (http, url, acct) = (&http, &url, &acct);
        async move {
            http.post(url)
                .basic_auth(&acct.email, Some(&acct.password))
                .header("Idempotency-Key", key)
                .json(&json!({"template": {"format": "text", "body": "x"}, "data": {}}))
                .send()
                .await
                .unwrap()
        }
    };
    let mut accepted = Vec::new();
    for i in 0..10 {
        let r = submit(format!("early-{i}")).await;
        assert_eq!(r.status(), 202);
        accepted.push(r.json::<serde_json::Value>().await.unwrap());
    }

    // The backlog is sampled every 2 s: within a bounded wait, new work is refused.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let refused = loop {
        let r = submit(format!("late-{}", uuid::Uuid::new_v4())).await;
        if r.status() == 429 {
            break r;
        }
        assert_eq!(r.status(), 202);
        assert!(
            tokio::time::Instant::now() < deadline,
            "a backlog of 10 past a limit of 5 was never pushed back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");

    // A replay adds no work and is answered as before.
    let again = submit("early-0".into()).await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap(),
        accepted[0]
    );

    // A worker drains the backlog; submissions are accepted again and nothing was lost.
    app.start_worker(app.child_token());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = submit(format!("after-{}", uuid::Uuid::new_v4())).await;
        if r.status() == 202 {
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused after the backlog drained"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for a in &accepted {
        let done = app
            .wait_finished(&acct, a["dispatchId"].as_str().unwrap())
            .await;
        assert_eq!(done["status"], "completed");
    }
}
