//! Documents in object storage (`storage.url`): an S3 bucket on a real S3-compatible server on
//! loopback (moto), and a directory. What `/result` serves is byte for byte what the worker
//! rendered (the same request through `validate`), the object holds the same bytes, retention
//! deletes the objects, a store that refuses writes holds dispatches back without failing or
//! quarantining them (and before their provider has the document), and a worker killed between its upload and its commit leaves the dispatch
//! to complete on redelivery, with its document.

use dispatcher_db::accounts::CreatedAccount;
use dispatcher_e2e::{
    ok_if, overrides, wait_until, workspace_root, Receiver, S3Server, ServiceProcess, Services,
    TestApp, PATIENCE,
};
use serde_json::{json, Value};
use std::time::Duration;

fn invoice() -> Value {
    let dir = workspace_root().join("examples/invoice");
    let body = std::fs::read_to_string(dir.join("invoice.typ")).unwrap();
    let data: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("invoice.json")).unwrap()).unwrap();
    json!({"template": {"format": "pdf", "body": body}, "data": data})
}

/// An html page, the example invoice as a PDF, and a text document of about 1.5 MB (many chunks
/// when streamed), with their content types.
fn documents() -> Vec<(&'static str, Value)> {
    vec![
        (
            "text/html; charset=utf-8",
            json!({
                "template": {"format": "html", "body": "<h1>Invoice for {{ name }}</h1><p>{{ total }} €</p>"},
                "data": {"name": "Ada <Lovelace>", "total": "42.00"},
            }),
        ),
        ("application/pdf", invoice()),
        (
            "text/plain; charset=utf-8",
            json!({
                "template": {"format": "text", "body": "{% for i in range(n) %}line {{ i }} of {{ n }}\n{% endfor %}"},
                "data": {"n": 80000},
            }),
        ),
    ]
}

/// What `validate` renders for `request`: the document a dispatch of it gets.
async fn rendered(app: &TestApp, who: &CreatedAccount, request: &Value) -> (String, Vec<u8>) {
    let resp = app
        .post(&app.ingest_url, "/v1/dispatches/validate", who, request)
        .await;
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    (ct, resp.bytes().await.unwrap().to_vec())
}

/// `GET /v1/dispatches/{id}/result`: content type, declared length, body.
async fn result(app: &TestApp, who: &CreatedAccount, id: &str) -> (String, Option<u64>, Vec<u8>) {
    let resp = app
        .get(&app.status_url, &format!("/v1/dispatches/{id}/result"), who)
        .await;
    assert_eq!(resp.status(), 200, "result of {id}");
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    let len = resp
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (ct, len, resp.bytes().await.unwrap().to_vec())
}

/// Submits `request` synchronously; it must complete. Returns the dispatch id.
async fn dispatch(app: &TestApp, who: &CreatedAccount, request: &Value) -> String {
    let resp = app
        .post(&app.ingest_url, "/v1/dispatches", who, request)
        .await;
    assert_eq!(resp.status(), 200);
    let done: Value = resp.json().await.unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    done["dispatchId"].as_str().unwrap().to_owned()
}

/// The dispatch's `result IS NULL` and `result_key` columns.
async fn columns(app: &TestApp, id: &str) -> (bool, String) {
    let v = app
        .text(&format!(
            "SELECT (result IS NULL)::text || ' ' || COALESCE(result_key, '-') FROM dispatches
             WHERE id = '{id}'"
        ))
        .await;
    let (null, key) = v.split_once(' ').unwrap();
    (null == "true", key.to_owned())
}

/// A finished dispatch whose document is in the `result` column, as every dispatch finished with
/// `storage.url = postgres` (before a switch to an object store) has it.
async fn insert_postgres_stored(app: &TestApp, who: &CreatedAccount, doc: &str) -> String {
    let id = uuid::Uuid::now_v7();
    let inserted = app
        .count(&format!(
            "WITH i AS (
                 INSERT INTO dispatches (id, account_id, status, template_format, template_body,
                                         data, provider, queued_at, completed_at, result,
                                         result_content_type)
                 VALUES ('{id}', '{}', 'completed', 'text', 'x', '{{}}', '{{\"type\": \"store\"}}',
                         now(), now(), convert_to('{doc}', 'UTF8'), 'text/plain; charset=utf-8')
                 RETURNING 1)
             SELECT count(*) FROM i",
            who.account_id
        ))
        .await;
    assert_eq!(inserted, 1);
    id.to_string()
}

/// `dispatchctl purge` of everything finished until now; its JSON report.
async fn purge_all(app: &TestApp) -> Value {
    tokio::time::sleep(Duration::from_millis(2)).await;
    let out = app
        .dispatchctl(&["purge", "--before", &chrono::Utc::now().to_rfc3339()])
        .await;
    serde_json::from_str(out.trim()).expect("one JSON line")
}

#[tokio::test]
async fn documents_round_trip_byte_for_byte_through_s3() {
    let s3 = S3Server::start().await;
    let mut settings = s3.settings();
    // A prefix inside the bucket, as a deployment sharing a bucket would use.
    settings[0].1 = format!("s3://{}/tenant-a", s3.bucket);
    let app = TestApp::spawn_with(Services::ALL, &overrides(&settings)).await;
    let acct = app.create_account("s3@example.com").await;

    let mut keys = Vec::new();
    for (content_type, request) in documents() {
        let (expected_ct, expected) = rendered(&app, &acct, &request).await;
        assert_eq!(expected_ct, content_type);
        let id = dispatch(&app, &acct, &request).await;
        let key = format!("results/{}/{id}", acct.account_id);

        let (ct, len, got) = result(&app, &acct, &id).await;
        assert_eq!(ct, content_type);
        assert_eq!(len, Some(expected.len() as u64));
        assert!(
            got == expected,
            "{content_type}: /result differs from the rendering"
        );
        let object = s3.object(&format!("tenant-a/{key}")).await;
        assert!(
            object.as_deref() == Some(expected.as_slice()),
            "{content_type}: the object in the bucket differs from the rendering"
        );
        assert_eq!(
            columns(&app, &id).await,
            (true, key.clone()),
            "bytes not in Postgres"
        );
        keys.push(key);
    }

    // A failed dispatch has no document, in the bucket or anywhere.
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &acct,
            &json!({"template": {"format": "text", "body": "x"}, "data": {},
                    "provider": {"type": "http", "url": "http://127.0.0.1:1/refused"}}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let failed = resp.json::<Value>().await.unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.wait_finished(&acct, &failed).await["status"], "failed");
    let resp = app
        .get(
            &app.status_url,
            &format!("/v1/dispatches/{failed}/result"),
            &acct,
        )
        .await;
    assert_eq!(resp.status(), 404);
    let failed_key = format!("tenant-a/results/{}/{failed}", acct.account_id);
    assert_eq!(s3.object(&failed_key).await, None);

    // A document kept in Postgres before the switch is still served.
    let old = insert_postgres_stored(&app, &acct, "stored before the switch").await;
    let (ct, _, got) = result(&app, &acct, &old).await;
    assert_eq!(ct, "text/plain; charset=utf-8");
    assert_eq!(got, b"stored before the switch");

    // Another account cannot read a document by its dispatch id.
    let other = app.create_account("s3-other@example.com").await;
    let id = keys[0].rsplit('/').next().unwrap();
    let resp = app
        .get(
            &app.status_url,
            &format!("/v1/dispatches/{id}/result"),
            &other,
        )
        .await;
    assert_eq!(resp.status(), 404);

    // Retention deletes the rows, then their objects.
    let report = purge_all(&app).await;
    assert_eq!(report["dispatches"], 5, "{report}");
    assert_eq!(report["resultObjects"], 3, "{report}");
    for key in &keys {
        assert_eq!(s3.object(&format!("tenant-a/{key}")).await, None, "{key}");
    }
}

#[tokio::test]
async fn documents_round_trip_through_a_directory() {
    // A directory that does not exist yet: the services create it.
    let dir = std::env::temp_dir()
        .join(format!("dispatcher-results-{}", uuid::Uuid::new_v4()))
        .join("documents");
    let url = format!("file://{}", dir.display());
    let app = TestApp::spawn_with(Services::ALL, &[("DISPATCHER__STORAGE__URL", &url)]).await;
    let acct = app.create_account("files@example.com").await;

    let mut files = Vec::new();
    for (content_type, request) in documents() {
        let (_, expected) = rendered(&app, &acct, &request).await;
        let id = dispatch(&app, &acct, &request).await;
        let key = format!("results/{}/{id}", acct.account_id);
        let (ct, len, got) = result(&app, &acct, &id).await;
        assert_eq!(ct, content_type);
        assert_eq!(len, Some(expected.len() as u64));
        assert!(
            got == expected,
            "{content_type}: /result differs from the rendering"
        );
        let file = dir.join(&key);
        assert!(
            std::fs::read(&file).unwrap() == expected,
            "{content_type}: {} differs from the rendering",
            file.display()
        );
        assert_eq!(columns(&app, &id).await, (true, key));
        files.push(file);
    }

    let report = purge_all(&app).await;
    assert_eq!(report["dispatches"], 3, "{report}");
    assert_eq!(report["resultObjects"], 3, "{report}");
    for file in &files {
        assert!(!file.exists(), "{} outlived its dispatch", file.display());
    }
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[tokio::test]
async fn a_worker_killed_between_upload_and_commit_leaves_the_dispatch_to_complete_on_redelivery() {
    let s3 = S3Server::start().await;
    let app = TestApp::spawn_with(
        Services {
            worker: false,
            deliverer: false,
            ..Services::ALL
        },
        &overrides(&s3.settings()),
    )
    .await;
    let acct = app.create_account("s3-kill@example.com").await;
    let request = invoice();
    let (_, expected) = rendered(&app, &acct, &request).await;

    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &acct,
            &request,
        )
        .await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = format!("results/{}/{id}", acct.account_id);
    // Its dispatch.requested message is in the broker (relayed by ingest) ...
    app.wait_equal("SELECT count(*) FROM outbox", 0).await;

    // ... and nothing can commit an outcome now: a completion writes its outcome event to the
    // outbox in the same statement, and this lock holds every write to the outbox back. (A
    // `store` dispatch's first delivery is only read before that statement, never claimed.)
    let (lock, conn) = tokio_postgres::connect(
        &format!("postgres://postgres@127.0.0.1:5432/{}", app.db_name),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    lock.batch_execute("BEGIN; LOCK TABLE outbox IN SHARE MODE")
        .await
        .unwrap();

    // The worker, a process of its own, with its database sessions named so the test finds them.
    let mut env = app.process_env();
    let db_url = env["DISPATCHER__DATABASE__URL"].clone();
    env.insert(
        "DISPATCHER__DATABASE__URL".into(),
        format!("{db_url}?application_name=storage-killed-worker"),
    );
    let worker = ServiceProcess::spawn(
        "dispatch-worker",
        &env,
        &format!("{}-storage-worker-1.log", app.prefix),
    );

    // It renders, uploads, and waits in its completion commit.
    let uploaded = s3.wait_for_object(&key).await;
    assert!(uploaded == expected, "the uploaded object is the rendering");
    app.wait_count(
        "SELECT count(*) FROM pg_stat_activity
         WHERE application_name = 'storage-killed-worker' AND wait_event_type = 'Lock'
           AND query LIKE '%UPDATE dispatches d%'",
        1,
    )
    .await;

    worker.kill9().await;
    // Postgres notices a vanished client only when it next reads from it: the completion the dead
    // worker had sent would still run once the lock is released. Ending its sessions makes the
    // kill whole, as the loss of the worker's host would.
    app.count(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = 'storage-killed-worker'",
    )
    .await;
    app.wait_equal(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'storage-killed-worker'",
        0,
    )
    .await;

    // An orphan object, and a dispatch that is not completed: never the other way round.
    assert_eq!(
        app.text(&format!(
            "SELECT status || ' ' || COALESCE(result_key, '-') FROM dispatches WHERE id = '{id}'"
        ))
        .await,
        "queued -"
    );
    assert!(s3.object(&key).await.is_some());
    lock.batch_execute("ROLLBACK").await.unwrap();

    // The message comes back to a new worker, which completes the dispatch with its document.
    let _worker = ServiceProcess::spawn(
        "dispatch-worker",
        &app.process_env(),
        &format!("{}-storage-worker-2.log", app.prefix),
    );
    let done = tokio::time::timeout(PATIENCE * 2, app.wait_finished(&acct, &id))
        .await
        .expect("the dispatch finishes after redelivery");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        app.count(&format!(
            "SELECT processing_attempts::int8 FROM dispatches WHERE id = '{id}'"
        ))
        .await,
        1,
        "read by the killed worker, then claimed (a redelivery counts) by the new one"
    );
    assert_eq!(columns(&app, &id).await, (true, key.clone()));
    let (ct, _, got) = result(&app, &acct, &id).await;
    assert_eq!(ct, "application/pdf");
    assert!(got == expected, "/result is the rendering");
    assert!(s3.object(&key).await.as_deref() == Some(expected.as_slice()));
}

#[tokio::test]
async fn a_store_that_refuses_writes_holds_the_dispatch_back_until_it_accepts_them() {
    // The bucket does not exist yet: every write is refused (NoSuchBucket).
    let s3 = S3Server::without_bucket().await;
    let mut settings = s3.settings();
    // Two attempts would quarantine a dispatch whose worker died twice.
    settings.push(("DISPATCHER__WORKER__MAX_PROCESSING_ATTEMPTS", "2".into()));
    let app = TestApp::spawn_with(Services::ALL, &overrides(&settings)).await;
    let acct = app.create_account("s3-refused@example.com").await;
    // An `http` provider: its dispatches are claimed (counted) before they run.
    let provider = Receiver::start().await;
    let request = json!({"template": {"format": "text", "body": "held back {{ n }}"},
                         "data": {"n": 7},
                         "provider": {"type": "http",
                                      "url": provider.url().replace("/hook", "/provider")}});
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &acct,
            &request,
        )
        .await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = format!("results/{}/{id}", acct.account_id);

    // The batch is tried again and again (more often than the quarantine limit) ...
    let put = format!("PUT /{}/{key}", s3.bucket);
    let (store, put_line) = (&s3, &put);
    wait_until(PATIENCE, Duration::from_millis(50), || async move {
        let tried = store.requests(put_line);
        ok_if(tried >= 4, || format!("the worker tried {tried} writes"))
    })
    .await;
    // ... without failing the dispatch or quarantining its message, and before its provider
    // has the document: a refused write does not send it again each time.
    assert!(
        provider.requests().is_empty(),
        "the provider got the document before the store took it"
    );
    let status = app
        .text(&format!("SELECT status FROM dispatches WHERE id = '{id}'"))
        .await;
    assert!(
        status == "queued" || status == "processing",
        "a refused write is not the dispatch's outcome: {status}"
    );
    assert_eq!(app.count("SELECT count(*) FROM dead_letters").await, 0);

    // Once the store accepts writes, the dispatch completes with its document, its refused
    // attempts not counted.
    s3.create_bucket().await;
    let done = app.wait_finished(&acct, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(app.count("SELECT count(*) FROM dead_letters").await, 0);
    assert_eq!(
        app.count(&format!(
            "SELECT processing_attempts::int8 FROM dispatches WHERE id = '{id}'"
        ))
        .await,
        1
    );
    let (_, _, got) = result(&app, &acct, &id).await;
    assert_eq!(got, b"held back 7");
    assert_eq!(s3.object(&key).await.as_deref(), Some(&b"held back 7"[..]));
    let sent = provider.requests();
    assert_eq!(sent.len(), 1, "the provider got the document once");
    assert_eq!(&sent[0].body[..], b"held back 7");
}
