//! Documents: PDF from Typst templates, render limits, `validate` and batch submission, end to end
//! against the real services.

use dispatcher_db::accounts::CreatedAccount;
use dispatcher_e2e::{
    ok_if, queue_state, wait_until, workspace_root, Receiver, Services, TestApp, PATIENCE,
};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

fn invoice() -> (String, Value) {
    let dir = workspace_root().join("examples/invoice");
    let body = std::fs::read_to_string(dir.join("invoice.typ")).unwrap();
    let data =
        serde_json::from_str(&std::fs::read_to_string(dir.join("invoice.json")).unwrap()).unwrap();
    (body, data)
}

/// The text of a PDF, through poppler's `pdftotext` (installed by scripts/ensure-services.sh).
async fn pdf_text(pdf: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("dispatcher-pdf-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("doc.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new("pdftotext")
            .arg("-layout")
            .arg(&path)
            .arg("-")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("pdftotext finishes")
    .expect("pdftotext runs (poppler-utils; make test installs it)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "pdftotext: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

async fn result_bytes(app: &TestApp, who: &CreatedAccount, id: &str) -> (String, Vec<u8>) {
    let resp = app
        .get(&app.status_url, &format!("/v1/dispatches/{id}/result"), who)
        .await;
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    (ct, resp.bytes().await.unwrap().to_vec())
}

/// `POST /v1/dispatches/batch` with an Idempotency-Key.
async fn batch_with_key(
    app: &TestApp,
    who: &CreatedAccount,
    key: &str,
    body: &Value,
) -> reqwest::Result<reqwest::Response> {
    app.http
        .post(format!("{}/v1/dispatches/batch", app.ingest_url))
        .basic_auth(&who.email, Some(&who.password))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
}

/// Ingest and status only: nothing renders a submission or sends a webhook.
async fn ingest_and_status(overrides: &[(&str, &str)]) -> TestApp {
    TestApp::spawn_with(
        Services {
            worker: false,
            deliverer: false,
            ..Services::ALL
        },
        overrides,
    )
    .await
}

async fn error_of(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn a_pdf_dispatch_holds_the_data_and_the_same_input_gives_the_same_bytes() {
    let app = TestApp::spawn().await;
    let acct = app.create_account("pdf@example.com").await;
    let (body, data) = invoice();
    let created = app
        .post(
            &app.ingest_url,
            "/v1/templates",
            &acct,
            &json!({"name": "invoice", "format": "pdf", "body": body}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let template: Value = created.json().await.unwrap();
    assert_eq!(template["format"], "pdf");
    let request = json!({"templateId": template["templateId"], "data": data});

    let mut documents = Vec::new();
    for _ in 0..2 {
        let resp = app
            .post(&app.ingest_url, "/v1/dispatches", &acct, &request)
            .await;
        assert_eq!(resp.status(), 200);
        let done: Value = resp.json().await.unwrap();
        assert_eq!(done["status"], "completed", "{done}");
        let id = done["dispatchId"].as_str().unwrap();
        let (ct, pdf) = result_bytes(&app, &acct, id).await;
        assert_eq!(ct, "application/pdf");
        assert!(pdf.starts_with(b"%PDF-"));
        documents.push(pdf);
    }
    assert_eq!(documents[0], documents[1], "same input, same bytes");

    let text = pdf_text(&documents[0]).await;
    for expected in [
        "Ada Lovelace",
        "INV-2026-0042",
        "27 November 2026",
        "Support hours, batch 15",
        "€1,386.00",
        "€17,959.50",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }

    // validate renders the very same document, and another customer gives another document.
    let preview = app
        .post(&app.ingest_url, "/v1/dispatches/validate", &acct, &request)
        .await;
    assert_eq!(preview.status(), 200);
    assert_eq!(preview.headers()["content-type"], "application/pdf");
    assert_eq!(preview.bytes().await.unwrap().to_vec(), documents[0]);
    let mut other = data.clone();
    other["customer"]["name"] = json!("Grace Hopper");
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches/validate",
            &acct,
            &json!({"templateId": template["templateId"], "data": other}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let text = pdf_text(&resp.bytes().await.unwrap()).await;
    assert!(
        text.contains("Grace Hopper") && !text.contains("Ada Lovelace"),
        "{text}"
    );
}

#[tokio::test]
async fn typst_syntax_and_render_errors_have_their_codes_and_positions() {
    let app = TestApp::spawn().await;
    let acct = app.create_account("typst-errors@example.com").await;
    let broken = "= Title\n#let total = (1, 2\nmore";

    let resp = app
        .post(
            &app.ingest_url,
            "/v1/templates",
            &acct,
            &json!({"name": "broken", "format": "pdf", "body": broken}),
        )
        .await;
    let (status, code, message) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (422, "template_syntax_error"));
    assert!(message.contains("line 2"), "{message}");

    for path in ["/v1/dispatches?async=true", "/v1/dispatches/validate"] {
        let resp = app
            .post(
                &app.ingest_url,
                path,
                &acct,
                &json!({"template": {"format": "pdf", "body": broken}, "data": {}}),
            )
            .await;
        let (status, code, message) = error_of(resp).await;
        assert_eq!(
            (status, code.as_str()),
            (422, "template_syntax_error"),
            "{path}"
        );
        assert!(message.contains("line 2"), "{path}: {message}");
    }

    // Errors at render time fail the dispatch with Typst's message and the position.
    for (body, expect) in [
        ("Hello\n\n#data.customer.name", "line 3"),
        ("#read(\"/etc/hostname\")", "cannot read files"),
        ("#let i = 0\n#while i >= 0 { i += 1 }", "loop"),
    ] {
        let request =
            json!({"template": {"format": "pdf", "body": body}, "data": {"customer": {}}});
        let resp = app
            .post(&app.ingest_url, "/v1/dispatches", &acct, &request)
            .await;
        assert_eq!(resp.status(), 200);
        let done: Value = resp.json().await.unwrap();
        assert_eq!(done["status"], "failed", "{done}");
        assert_eq!(done["error"]["code"], "template_render_error");
        let message = done["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(expect), "{body}: {message}");

        // validate answers exactly the error the dispatch got.
        let resp = app
            .post(&app.ingest_url, "/v1/dispatches/validate", &acct, &request)
            .await;
        let (status, code, preview_message) = error_of(resp).await;
        assert_eq!((status, code.as_str()), (422, "template_render_error"));
        assert_eq!(preview_message, message);
    }
}

#[tokio::test]
async fn runaway_templates_fail_within_their_limits_while_other_work_completes() {
    let app = TestApp::spawn_with(
        Services::ALL,
        &[
            // Long enough for an ordinary render on a busy machine (other tests run beside this
            // one), far too short for the runaway computation below.
            ("DISPATCHER__RENDER__TIMEOUT", "8s"),
            ("DISPATCHER__RENDER__MAX_PAGES", "200"),
            ("DISPATCHER__RENDER__MAX_OUTPUT_BYTES", "1048576"),
            // Small enough that an unoptimised build on a loaded machine runs out of fuel well
            // inside the time limit; an ordinary template needs a few dozen units.
            ("DISPATCHER__RENDER__FUEL", "300000"),
        ],
    )
    .await;
    let acct = app.create_account("runaway@example.com").await;
    let receiver = Receiver::start().await;
    let runaways = [
        // Typst: 100 000 pages; and a computation far longer than the time limit.
        ("pdf", "#for i in range(100000) [#i #pagebreak()]", "limit"),
        (
            "pdf",
            "#for a in range(50000) { for b in range(50000) { } }",
            "limit",
        ),
        // Typst's own bound on `while`.
        ("pdf", "#let i = 0\n#while i >= 0 { i += 1 }", "loop"),
        // minijinja: an endless loop runs out of fuel; an enormous document hits the output cap.
        (
            "text",
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            "fuel",
        ),
        (
            "html",
            "{% for a in range(100000) %}0123456789012345678901234567890123456789{% endfor %}",
            "output limit",
        ),
    ];
    let mut runaway_ids = Vec::new();
    for (format, body, _) in &runaways {
        let resp = app
            .post(
                &app.ingest_url,
                "/v1/dispatches?async=true",
                &acct,
                &json!({"template": {"format": format, "body": body}, "data": {}, "callbackUrl": receiver.url()}),
            )
            .await;
        assert_eq!(resp.status(), 202);
        let v: Value = resp.json().await.unwrap();
        runaway_ids.push(v["dispatchId"].as_str().unwrap().to_owned());
    }
    // 100 ordinary dispatches beside them, half of them PDFs.
    let mut ordinary = HashSet::new();
    for i in 0..100 {
        let template = if i % 2 == 0 {
            json!({"format": "pdf", "body": "= Receipt #data.n\nThank you."})
        } else {
            json!({"format": "text", "body": "receipt {{ n }}"})
        };
        let resp = app
            .post(
                &app.ingest_url,
                "/v1/dispatches?async=true",
                &acct,
                &json!({"template": template, "data": {"n": i}, "callbackUrl": receiver.url()}),
            )
            .await;
        assert_eq!(resp.status(), 202);
        let v: Value = resp.json().await.unwrap();
        ordinary.insert(v["dispatchId"].as_str().unwrap().to_owned());
    }

    let webhooks = receiver.wait_for(105).await;
    let mut completed = HashSet::new();
    for w in &webhooks {
        let v = w.json();
        let id = v["data"]["dispatchId"].as_str().unwrap().to_owned();
        if v["type"] == "dispatch.completed" {
            completed.insert(id);
        } else if ordinary.contains(&id) {
            panic!("an ordinary dispatch failed: {v}");
        }
    }
    assert_eq!(completed, ordinary, "every ordinary dispatch completed");
    for (id, (format, _, expect)) in runaway_ids.iter().zip(&runaways) {
        let done = app.wait_finished(&acct, id).await;
        assert_eq!(done["status"], "failed", "{format}: {done}");
        assert_eq!(done["error"]["code"], "template_render_error");
        let message = done["error"]["message"].as_str().unwrap();
        assert!(message.contains(expect), "{format}: {message}");
    }
}

#[tokio::test]
async fn a_batch_answers_every_item_and_delivers_each_accepted_one_once() {
    let app = TestApp::spawn().await;
    let acct = app.create_account("batch@example.com").await;
    let receiver = Receiver::start().await;
    let unknown_template = uuid::Uuid::new_v4();
    let items: Vec<Value> = (0..1000)
        .map(|i| match i % 10 {
            3 => json!({"template": {"format": "text", "body": "x"}, "data": {}, "callbackUrl": "ftp://example.com/"}),
            7 => json!({"template": {"format": "text", "body": "{% if %}"}, "data": {}}),
            _ if i % 100 == 42 => json!({"template": {"format": "text", "body": "x"}}),
            _ if i % 100 == 91 => json!({"templateId": unknown_template, "data": {}}),
            _ => json!({"template": {"format": "text", "body": "n={{ n }}"}, "data": {"n": i}, "callbackUrl": receiver.url()}),
        })
        .collect();
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches/batch",
            &acct,
            &json!({ "items": items }),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let answer: Value = resp.json().await.unwrap();
    let entries = answer["data"].as_array().unwrap();
    assert_eq!(entries.len(), 1000);
    let mut accepted = HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        let expected_error = match i % 10 {
            3 => Some("invalid_callback_url"),
            7 => Some("template_syntax_error"),
            _ if i % 100 == 42 => Some("invalid_field"),
            _ if i % 100 == 91 => Some("unknown_template"),
            _ => None,
        };
        match expected_error {
            Some(code) => {
                assert_eq!(e["error"]["code"], code, "item {i}: {e}");
                assert!(e.get("dispatchId").is_none());
                let message = e["error"]["message"].as_str().unwrap();
                assert!(message.starts_with(&format!("items[{i}]")), "{message}");
            }
            None => {
                assert_eq!(e["status"], "queued", "item {i}: {e}");
                assert!(e["statusUrl"].as_str().is_some() && e["queuedAt"].as_str().is_some());
                assert!(accepted.insert(e["dispatchId"].as_str().unwrap().to_owned()));
            }
        }
    }
    assert_eq!(accepted.len(), 780);

    // Every accepted item is delivered once; nothing was stored for the refused ones.
    let webhooks = receiver.wait_for(accepted.len()).await;
    // Every delivery finished, so no request is still on its way.
    app.wait_equal(
        "SELECT count(*) FROM deliveries WHERE status = 'succeeded'",
        accepted.len() as i64,
    )
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM deliveries").await,
        accepted.len() as i64
    );
    assert_eq!(
        receiver.requests().len(),
        accepted.len(),
        "one webhook each"
    );
    let delivered: HashSet<String> = webhooks
        .iter()
        .map(|w| w.json()["data"]["dispatchId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, accepted);
    assert_eq!(app.count("SELECT count(*) FROM dispatches").await, 780);

    // One Idempotency-Key covers a whole batch.
    let small = json!({"items": [
        {"template": {"format": "text", "body": "a"}, "data": {}},
        {"template": {"format": "text", "body": "{% if %}"}, "data": {}},
        {"template": {"format": "pdf", "body": "= b"}, "data": {}},
    ]});
    let first = batch_with_key(&app, &acct, "batch-key-1", &small)
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = batch_with_key(&app, &acct, "batch-key-1", &small)
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(app.count("SELECT count(*) FROM dispatches").await, 782);
    let other = json!({"items": [{"template": {"format": "text", "body": "c"}, "data": {}}]});
    let (status, code, _) = error_of(
        batch_with_key(&app, &acct, "batch-key-1", &other)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (409, "idempotency_key_reused"));

    // The number of items is bounded.
    for n in [0, 1001] {
        let items = vec![json!({"template": {"format": "text", "body": "a"}, "data": {}}); n];
        let resp = app
            .post(
                &app.ingest_url,
                "/v1/dispatches/batch",
                &acct,
                &json!({ "items": items }),
            )
            .await;
        let (status, code, message) = error_of(resp).await;
        assert_eq!(
            (status, code.as_str()),
            (422, "invalid_field"),
            "{n}: {message}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM dispatches").await, 782);
}

#[tokio::test]
async fn validate_stores_queues_and_sends_nothing() {
    // No worker: a message that reached the dispatch queue would stay there to be counted.
    let app = TestApp::spawn_with(
        Services {
            worker: false,
            ..Services::ALL
        },
        &[],
    )
    .await;
    let acct = app.create_account("validate@example.com").await;
    let receiver = Receiver::start().await;
    let (invoice_body, invoice_data) = invoice();
    let cases = [
        (
            json!({"template": {"format": "html", "body": "<p>{{ who }}</p>"}, "data": {"who": "<Ada>"}, "callbackUrl": receiver.url()}),
            "text/html; charset=utf-8",
            b"<p>&lt;Ada&gt;</p>".to_vec(),
        ),
        (
            json!({"template": {"format": "csv", "body": "a,b\n{{ x }},{{ y }}"}, "data": {"x": 1, "y": 2}}),
            "text/csv; charset=utf-8",
            b"a,b\n1,2".to_vec(),
        ),
    ];
    for (request, content_type, expected) in cases {
        let resp = app
            .post(&app.ingest_url, "/v1/dispatches/validate", &acct, &request)
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], content_type);
        assert_eq!(resp.bytes().await.unwrap().to_vec(), expected);
    }
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches/validate",
            &acct,
            &json!({"template": {"format": "pdf", "body": invoice_body}, "data": invoice_data, "callbackUrl": receiver.url()}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().starts_with(b"%PDF-"));
    // The same refusals as a submission.
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches/validate",
            &acct,
            &json!({"template": {"format": "text", "body": "x"}, "data": {}, "callbackUrl": "http://10.0.0.1/hook"}),
        )
        .await;
    let (status, code, _) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (422, "invalid_callback_url"));

    let queue_depth = || async {
        let queue = dispatcher_mq::Topology::from_settings(&app.settings).dispatch_queue();
        queue_state(&queue).await.0
    };
    // Nothing was stored (the batch is one transaction), so there is nothing a relay could
    // publish.
    assert_eq!(app.count("SELECT count(*) FROM dispatches").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);
    assert_eq!(queue_depth().await, 0);
    assert!(receiver.requests().is_empty());

    // The same checks see a real submission: the count above could have been non-zero.
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &acct,
            &json!({"template": {"format": "text", "body": "x"}, "data": {}}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    wait_until(PATIENCE, Duration::from_millis(100), || async {
        let depth = queue_depth().await;
        ok_if(depth == 1, || {
            format!("the submission was never queued ({depth} ready)")
        })
    })
    .await;
    assert_eq!(app.count("SELECT count(*) FROM dispatches").await, 1);
}

#[tokio::test]
async fn request_and_batch_bodies_match_the_schemas() {
    dispatcher_e2e::test_python();
    let app = ingest_and_status(&[]).await;
    let acct = app.create_account("schemas@example.com").await;
    let (invoice_body, invoice_data) = invoice();
    let single = json!({"template": {"format": "pdf", "body": invoice_body}, "data": invoice_data,
                        "callbackUrl": "http://127.0.0.1:9/hook", "metadata": {"orderId": "A-1"}});
    let resp = app
        .post(&app.ingest_url, "/v1/dispatches/validate", &acct, &single)
        .await;
    assert_eq!(resp.status(), 200);
    let batch = json!({"items": [
        single,
        {"template": {"format": "text", "body": "{% if %}"}, "data": {}},
        {"template": {"format": "csv", "body": "a\n{{ a }}"}, "data": {"a": 1}, "provider": {"type": "store"}},
    ]});
    let resp = app
        .post(&app.ingest_url, "/v1/dispatches/batch", &acct, &batch)
        .await;
    assert_eq!(resp.status(), 202);
    let answer = resp.text().await.unwrap();
    let mut items = vec![
        json!({"schema": "dispatch.request.schema.json", "label": "validate body", "body": single.to_string()}),
        json!({"schema": "dispatch.batch.request.schema.json", "label": "batch body", "body": batch.to_string()}),
        json!({"schema": "dispatch.batch.response.schema.json", "label": "batch answer", "body": answer}),
    ];
    for (i, item) in batch["items"].as_array().unwrap().iter().enumerate() {
        items.push(json!({"schema": "dispatch.request.schema.json", "label": format!("item {i}"), "body": item.to_string()}));
    }
    let report = dispatcher_e2e::validate_against_schemas(items).await;
    assert_eq!(
        report["validated"]["dispatch.request.schema.json"], 4,
        "{report}"
    );
    assert_eq!(
        report["validated"]["dispatch.batch.response.schema.json"], 1,
        "{report}"
    );
}

#[tokio::test]
async fn batch_items_are_bounded_like_single_bodies_and_refused_batches_keep_no_key() {
    let app = ingest_and_status(&[("DISPATCHER__INGEST__MAX_BODY_BYTES", "4096")]).await;
    let acct = app.create_account("batch-bounds@example.com").await;
    let small = json!({"template": {"format": "text", "body": "a"}, "data": {}});
    let big =
        json!({"template": {"format": "text", "body": "a"}, "data": {"blob": "x".repeat(5000)}});
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches/batch",
            &acct,
            &json!({"items": [small, big, small]}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["data"][1]["error"]["code"], "payload_too_large", "{v}");
    assert_eq!(v["data"][0]["status"], "queued");
    assert_eq!(v["data"][2]["status"], "queued");
    // The same item alone is refused by the single endpoint too.
    let resp = app
        .post(&app.ingest_url, "/v1/dispatches?async=true", &acct, &big)
        .await;
    assert_eq!(resp.status(), 413);

    // A keyed batch whose every item was refused keeps no key: corrected, it is accepted.
    let refused = batch_with_key(
        &app,
        &acct,
        "fix-and-retry",
        &json!({"items": [{"template": {"format": "text", "body": "{% if %}"}, "data": {}}]}),
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), 202);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["data"][0]["error"]["code"], "template_syntax_error");
    let fixed = batch_with_key(
        &app,
        &acct,
        "fix-and-retry",
        &json!({"items": [{"template": {"format": "text", "body": "{{ 1 }}"}, "data": {}}]}),
    )
    .await
    .unwrap();
    assert_eq!(fixed.status(), 202);
    let fixed: Value = fixed.json().await.unwrap();
    assert_eq!(fixed["data"][0]["status"], "queued", "{fixed}");
    assert_eq!(app.count("SELECT count(*) FROM batch_submissions").await, 1);
}

#[tokio::test]
async fn previews_beyond_the_render_slots_are_answered_503_at_once() {
    let app = ingest_and_status(&[
        ("DISPATCHER__RENDER__THREADS", "1"),
        ("DISPATCHER__RENDER__TIMEOUT", "6s"),
    ])
    .await;
    let acct = app.create_account("previews@example.com").await;
    let slow = json!({"template": {"format": "pdf", "body": "#for a in range(20000) { for b in range(20000) { } }"}, "data": {}});
    // One slot: one preview renders and one waits; a third finds no room.
    let first = app.post(&app.ingest_url, "/v1/dispatches/validate", &acct, &slow);
    let second = app.post(&app.ingest_url, "/v1/dispatches/validate", &acct, &slow);
    let third = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = std::time::Instant::now();
        let resp = app
            .post(&app.ingest_url, "/v1/dispatches/validate", &acct, &slow)
            .await;
        (resp, started.elapsed())
    };
    let (first, second, (third, waited)) = tokio::join!(first, second, third);
    assert_eq!(third.status(), 503);
    assert!(third.headers().contains_key("retry-after"));
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    for r in [first, second] {
        let (status, code, message) = error_of(r).await;
        assert_eq!((status, code.as_str()), (422, "template_render_error"));
        assert!(message.contains("limit of 6s"), "{message}");
    }
}
