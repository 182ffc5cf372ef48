//! Retention: a purge removes exactly the finished dispatches older than its cut-off, with their
//! deliveries and attempts, and nothing newer or unfinished.

use dispatcher_e2e::{Receiver, TestApp};
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

const COUNTS: &str = "SELECT (SELECT count(*) FROM dispatches) * 1000000
                           + (SELECT count(*) FROM deliveries) * 1000
                           + (SELECT count(*) FROM delivery_attempts)";

#[tokio::test]
async fn a_purge_removes_exactly_the_old_rows() {
    let app = TestApp::spawn().await;
    let acct = app.create_account("retention@example.com").await;
    let rx = Receiver::start().await;

    let old: HashSet<String> = app
        .submit_many(&acct, 10, 4, &rx.url())
        .await
        .into_iter()
        .collect();
    app.wait_equal(
        "SELECT count(*) FROM deliveries WHERE status = 'succeeded'",
        10,
    )
    .await;
    // One old dispatch is still being processed: it is kept, however old.
    let in_flight = old.iter().next().unwrap().clone();
    let updated = app
        .count(&format!(
            "WITH u AS (UPDATE dispatches SET status = 'processing' WHERE id = '{in_flight}'
                        RETURNING 1) SELECT count(*) FROM u"
        ))
        .await;
    assert_eq!(updated, 1);

    // The cut-off: after every old id's millisecond, before every new one's.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(2)).await;

    let new: HashSet<String> = app
        .submit_many(&acct, 5, 4, &rx.url())
        .await
        .into_iter()
        .collect();
    app.wait_equal(
        "SELECT count(*) FROM deliveries WHERE status = 'succeeded'",
        15,
    )
    .await;
    assert_eq!(app.count(COUNTS).await, 15_015_015);

    let out = app
        .dispatchctl(&[
            "purge",
            "--before",
            &cutoff.to_rfc3339(),
            "--batch-size",
            "4",
        ])
        .await;
    let report: Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(report["dispatches"], 9, "{report}");
    assert_eq!(report["deliveries"], 9, "{report}");
    assert_eq!(report["attempts"], 9, "{report}");

    // What is left is exactly the new dispatches and the one in flight, with their rows.
    assert_eq!(app.count(COUNTS).await, 6_006_006);
    let left = app
        .text("SELECT string_agg(id::text, ',' ORDER BY id) FROM dispatches")
        .await;
    let left: HashSet<String> = left.split(',').map(str::to_owned).collect();
    let mut want = new.clone();
    want.insert(in_flight.clone());
    assert_eq!(left, want);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM deliveries d WHERE NOT EXISTS
                 (SELECT 1 FROM dispatches x WHERE x.id = d.dispatch_id)"
        )
        .await,
        0,
        "no delivery outlives its dispatch"
    );
    for id in old.iter().filter(|id| **id != in_flight) {
        let resp = app
            .get(&app.status_url, &format!("/v1/dispatches/{id}"), &acct)
            .await;
        assert_eq!(resp.status(), 404);
    }
    for id in &new {
        let resp = app
            .get(&app.status_url, &format!("/v1/dispatches/{id}"), &acct)
            .await;
        assert_eq!(resp.status(), 200);
    }

    // Again: nothing more to do.
    let again: Value = serde_json::from_str(
        app.dispatchctl(&["purge", "--before", &cutoff.to_rfc3339()])
            .await
            .trim(),
    )
    .unwrap();
    assert_eq!(again["dispatches"], 0, "{again}");

    // An age works too, and a bad one is a clear error.
    let by_age: Value = serde_json::from_str(
        app.dispatchctl(&["purge", "--older-than", "30d"])
            .await
            .trim(),
    )
    .unwrap();
    assert_eq!(by_age["dispatches"], 0, "{by_age}");
    let bad = tokio::process::Command::new(dispatcher_e2e::bin_path("dispatchctl"))
        .args(["purge", "--older-than", "soon"])
        .env_clear()
        .envs(&app.env)
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("30d"));
}

#[tokio::test]
async fn the_worker_sweeps_expired_dispatches_in_the_background() {
    let app = TestApp::spawn_with(
        dispatcher_e2e::Services::ALL,
        &[
            ("DISPATCHER__RETENTION__DAYS", "1"),
            ("DISPATCHER__RETENTION__INTERVAL", "300ms"),
        ],
    )
    .await;
    let acct = app.create_account("sweeper@example.com").await;
    let rx = Receiver::start().await;
    // A dispatch finished two days ago (its UUIDv7 says when it was submitted) and one from now.
    let old = dispatcher_db::retention::v7_floor(chrono::Utc::now() - chrono::Duration::days(2));
    let inserted = app
        .count(&format!(
            "WITH i AS (
                 INSERT INTO dispatches (id, account_id, status, template_format, template_body,
                                         data, provider, queued_at, completed_at)
                 VALUES ('{old}', '{}', 'completed', 'text', 'x', '{{}}', '{{\"type\": \"store\"}}',
                         now() - interval '2 days', now() - interval '2 days')
                 RETURNING 1)
             SELECT count(*) FROM i",
            acct.account_id
        ))
        .await;
    assert_eq!(inserted, 1);
    let new = app.submit_many(&acct, 1, 1, &rx.url()).await;
    rx.wait_for(1).await;

    app.wait_equal(
        &format!("SELECT count(*) FROM dispatches WHERE id = '{old}'"),
        0,
    )
    .await;
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM dispatches WHERE id = '{}'",
            new[0]
        ))
        .await,
        1,
        "a recent dispatch is kept"
    );
}
