//! `database.read_url`: status-api reads lists and finished dispatches from the standby, and
//! whatever the API promises fresh from the primary. The standby's WAL replay is paused (it
//! still receives and confirms the WAL, so synchronous commits go on) to make its copy visibly
//! older than the primary's.

use crate::pg_pair;
use dispatcher_e2e::{Services, TestApp};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_lagging_data_from_the_replica_and_fresh_data_from_the_primary() {
    tokio::time::timeout(Duration::from_secs(300), run())
        .await
        .expect("the read-replica test ran past its time limit");
}

async fn run() {
    pg_pair::up().await;
    let server = pg_pair::server();
    // The services' read_url needs the database's name, which spawn_on picks: `{db}`.
    let read_url = pg_pair::standby_url("{db}");
    let app = TestApp::spawn_on(
        server,
        Services::ALL,
        &[("DISPATCHER__DATABASE__READ_URL", &read_url)],
    )
    .await;
    let who = app.create_account("replica@example.com").await;
    let sync = |i: u32| {
        serde_json::json!({
            "template": {"format": "text", "body": "n={{ i }}"},
            "data": {"i": i},
            "metadata": {"mark": "original"},
        })
    };

    // A: finished, and on the standby.
    let a = app
        .post(&app.ingest_url, "/v1/dispatches", &who, &sync(1))
        .await;
    assert_eq!(a.status(), 200);
    let a: serde_json::Value = a.json().await.unwrap();
    let a_id = a["dispatchId"].as_str().unwrap().to_owned();
    assert_eq!(a["status"], "completed");
    wait_on_standby(&app.db_name, &a_id, "completed").await;

    let paused = PausedReplay::start().await;
    // Changed on the primary only, while the standby does not apply WAL: a read that shows
    // the change came from the primary, one that does not from the standby.
    let (client, conn) =
        tokio_postgres::connect(&pg_pair::failover_url(&app.db_name), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    client
        .execute(
            "UPDATE dispatches SET metadata = '{\"mark\": \"changed\"}' WHERE id = $1::text::uuid",
            &[&a_id],
        )
        .await
        .unwrap();

    // B: a sync submission made while the standby lags.
    let b = app
        .post(&app.ingest_url, "/v1/dispatches", &who, &sync(2))
        .await;
    assert_eq!(b.status(), 200);
    let b: serde_json::Value = b.json().await.unwrap();
    let b_id = b["dispatchId"].as_str().unwrap().to_owned();
    assert_eq!(b["status"], "completed");

    // The status right after the sync submission: from the primary (the standby has no B).
    let got: serde_json::Value = app
        .get(&app.status_url, &format!("/v1/dispatches/{b_id}"), &who)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "completed", "{got}");

    // A finished dispatch the standby has: from the standby, which has not seen the change.
    let got: serde_json::Value = app
        .get(&app.status_url, &format!("/v1/dispatches/{a_id}"), &who)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "completed", "{got}");
    assert_eq!(
        got["metadata"]["mark"], "original",
        "not read from the standby: {got}"
    );

    // The list: from the standby, without B and with A as it was.
    let list: serde_json::Value = app
        .get(&app.status_url, "/v1/dispatches", &who)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["dispatchId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![a_id.as_str()],
        "not read from the standby: {list}"
    );

    // Once the standby applies the WAL again, it catches up.
    drop(paused);
    wait_on_standby(&app.db_name, &b_id, "completed").await;
    let list: serde_json::Value = app
        .get(&app.status_url, "/v1/dispatches", &who)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list["data"][1]["metadata"]["mark"], "changed", "{list}");
}

/// Waits until the standby shows the dispatch with `status`.
async fn wait_on_standby(db: &str, id: &str, status: &str) {
    let deadline = tokio::time::Instant::now() + dispatcher_e2e::PATIENCE;
    loop {
        let got = pg_pair::query_text(
            pg_pair::STANDBY_PORT,
            db,
            &format!("SELECT coalesce((SELECT status FROM dispatches WHERE id = '{id}'), 'none')"),
        )
        .await;
        if got == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the standby shows dispatch {id} as {got}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The standby's WAL replay paused until dropped (resumed also if the test fails midway).
struct PausedReplay;

impl PausedReplay {
    async fn start() -> Self {
        pg_pair::script(&["pause-replay"]).await;
        PausedReplay
    }
}

impl Drop for PausedReplay {
    fn drop(&mut self) {
        let _ = std::process::Command::new(
            dispatcher_e2e::workspace_root().join("scripts/pg-replica.sh"),
        )
        .arg("resume-replay")
        .status();
    }
}
