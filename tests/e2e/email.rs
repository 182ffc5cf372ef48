//! The email provider against a real SMTP server on loopback (`tests/python/smtp_sink.py`, on
//! aiosmtpd from the test virtualenv): what arrives, what a refusal and a deferral do, and what
//! is refused at submission.

use base64::Engine;
use dispatcher_db::accounts::CreatedAccount;
use dispatcher_e2e::{
    assert_webhooks_match_schema, wait_until, PythonServer, Receiver, Services, TestApp, PATIENCE,
};
use serde_json::{json, Value};
use std::time::Duration;

const FROM: &str = "Billing <billing@dispatcher.test>";

/// A running SMTP sink and the JSON lines it printed.
struct SmtpSink {
    server: PythonServer,
}

impl SmtpSink {
    async fn start(args: &[&str]) -> Self {
        Self {
            server: PythonServer::start("smtp_sink.py", args).await,
        }
    }

    fn events(&self) -> Vec<Value> {
        self.server
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).expect("the sink prints JSON"))
            .collect()
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.server.port)
    }

    fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|e| e["event"] == event).count()
    }

    /// Waits until `n` messages were accepted, and returns them.
    async fn accepted(&self, n: usize) -> Vec<Value> {
        wait_until(PATIENCE, Duration::from_millis(20), || async move {
            let got: Vec<Value> = self
                .events()
                .into_iter()
                .filter(|e| e["event"] == "accepted")
                .collect();
            match got.len() >= n {
                true => Ok(got),
                false => Err(format!("{} of {n} messages arrived", got.len())),
            }
        })
        .await
    }
}

async fn app_with_relay(url: &str) -> TestApp {
    TestApp::spawn_with(
        Services::ALL,
        &[
            ("DISPATCHER__SMTP__URL", url),
            ("DISPATCHER__SMTP__FROM", FROM),
            ("DISPATCHER__SMTP__TIMEOUT", "5s"),
            ("DISPATCHER__SMTP__RETRY_SCHEDULE", "200ms,300ms,300ms"),
        ],
    )
    .await
}

async fn submit(app: &TestApp, who: &CreatedAccount, body: Value) -> String {
    let resp = app
        .post(&app.ingest_url, "/v1/dispatches?async=true", who, &body)
        .await;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{v}");
    v["dispatchId"].as_str().unwrap().to_owned()
}

fn part<'a>(message: &'a Value, content_type: &str) -> &'a Value {
    message["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["contentType"] == content_type)
        .unwrap_or_else(|| panic!("no {content_type} part in {message}"))
}

fn payload(part: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(part["payloadB64"].as_str().unwrap())
        .unwrap()
}

/// The forwarded `provider.<kind>` webhook about `id`, once it arrived.
async fn provider_hook(rx: &Receiver, id: &str, kind: &str) -> Value {
    wait_until(PATIENCE, Duration::from_millis(20), || async move {
        rx.requests()
            .iter()
            .map(|r| r.json())
            .find(|v| v["type"] == format!("provider.{kind}") && v["data"]["dispatchId"] == id)
            .ok_or_else(|| format!("no provider.{kind} webhook for {id}"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_email_arrives_with_its_sender_recipients_subject_and_body() {
    let smtp = SmtpSink::start(&[]).await;
    let mut app = app_with_relay(&smtp.url()).await;
    let who = app.create_account("mail-html@example.com").await;
    let rx = Receiver::start().await;
    let id = submit(
        &app,
        &who,
        json!({
            "template": {"format": "html", "body": "<h1>Invoice {{ number }}</h1><p>Dear {{ name }}, you owe {{ total }} &euro;.</p>"},
            "data": {"number": 42, "name": "Ada", "total": "12.50"},
            "provider": {"type": "email", "to": ["Ada Lovelace <ada@example.com>"],
                         "cc": ["books@example.com"], "bcc": ["audit@example.com"],
                         "subject": "Invoice {{ number }}\nfor {{ name }}", "replyTo": "help@dispatcher.test"},
            "callbackUrl": rx.url(),
            "metadata": {"order": "A-7"},
        }),
    )
    .await;
    let done = app.wait_finished(&who, &id).await;
    assert_eq!(done["status"], "completed", "{done}");

    let m = &smtp.accepted(1).await[0];
    assert_eq!(m["mailFrom"], "billing@dispatcher.test");
    let mut rcpts: Vec<&str> = m["rcptTos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["ada@example.com", "audit@example.com", "books@example.com"]
    );
    let h = &m["headers"];
    assert_eq!(h["from"], FROM);
    assert_eq!(h["to"], "Ada Lovelace <ada@example.com>");
    assert_eq!(h["cc"], "books@example.com");
    assert!(
        h.get("bcc").is_none(),
        "Bcc must not be in the message: {h}"
    );
    assert_eq!(h["subject"], "Invoice 42 for Ada");
    assert_eq!(h["reply-to"], "help@dispatcher.test");
    assert_eq!(h["message-id"], format!("<{id}@dispatcher.test>"));
    let html = String::from_utf8(payload(part(m, "text/html"))).unwrap();
    let result = app
        .get(
            &app.status_url,
            &format!("/v1/dispatches/{id}/result"),
            &who,
        )
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        html.trim_end(),
        result.trim_end(),
        "the body is the document"
    );
    let text = String::from_utf8(payload(part(m, "text/plain"))).unwrap();
    assert!(text.contains("Invoice 42"), "{text}");
    assert!(text.contains("Dear Ada, you owe 12.50 €."), "{text}");

    // The relay's reply is recorded, and the outcome is sent on as provider.accepted.
    let reply = done["providerReply"].as_str().unwrap();
    assert!(
        reply.starts_with("250") && reply.contains(m["queueId"].as_str().unwrap()),
        "{reply}"
    );
    let hook = provider_hook(&rx, &id, "accepted").await;
    assert_eq!(hook["data"]["provider"], "email");
    assert_eq!(hook["data"]["metadata"], json!({"order": "A-7"}));
    let status = app.wait_provider_status(&who, &id, "accepted").await;
    assert!(status["providerStatusAt"].is_string(), "{status}");
    assert_webhooks_match_schema(&rx.requests()).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdf_is_attached_byte_for_byte() {
    let smtp = SmtpSink::start(&[]).await;
    let mut app = app_with_relay(&smtp.url()).await;
    let who = app.create_account("mail-pdf@example.com").await;
    let mut ids = Vec::new();
    for name in [Some("invoice-42.pdf"), None] {
        let mut provider =
            json!({"type": "email", "to": ["ada@example.com"], "subject": "Your invoice"});
        if let Some(n) = name {
            provider["attachmentName"] = json!(n);
        }
        ids.push(
            submit(
                &app,
                &who,
                json!({
                    "template": {"format": "pdf", "body": "= Invoice #data.number\n\nTotal: #data.total"},
                    "data": {"number": "42", "total": "12.50 EUR"},
                    "provider": provider,
                }),
            )
            .await,
        );
    }
    let messages = smtp.accepted(2).await;
    for (id, name) in ids.iter().zip(["invoice-42.pdf", "document.pdf"]) {
        let done = app.wait_finished(&who, id).await;
        assert_eq!(done["status"], "completed", "{done}");
        let m = messages
            .iter()
            .find(|m| {
                m["headers"]["message-id"]
                    .as_str()
                    .unwrap()
                    .contains(id.as_str())
            })
            .expect("each dispatch sent its message");
        let pdf = part(m, "application/pdf");
        assert_eq!(pdf["filename"], name);
        let stored = app
            .get(
                &app.status_url,
                &format!("/v1/dispatches/{id}/result"),
                &who,
            )
            .await
            .bytes()
            .await
            .unwrap();
        assert!(stored.starts_with(b"%PDF-"));
        assert_eq!(payload(pdf), stored.to_vec(), "the attachment is /result");
        let body = String::from_utf8(payload(part(m, "text/plain"))).unwrap();
        assert!(body.contains(name), "{body}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_550_fails_the_dispatch_with_provider_rejected() {
    let smtp = SmtpSink::start(&["--reject", "550"]).await;
    let mut app = app_with_relay(&smtp.url()).await;
    let who = app.create_account("mail-550@example.com").await;
    let rx = Receiver::start().await;
    let id = submit(
        &app,
        &who,
        json!({
            "template": {"format": "text", "body": "hello"}, "data": {},
            "provider": {"type": "email", "to": ["ada@example.com"], "subject": "Hi"},
            "callbackUrl": rx.url(),
        }),
    )
    .await;
    let done = app.wait_finished(&who, &id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "provider_rejected", "{done}");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("550") && message.contains("refused by policy"),
        "{message}"
    );
    assert_eq!(smtp.count("rejected"), 1, "a refusal is not retried");
    let hook = provider_hook(&rx, &id, "failed").await;
    assert_eq!(hook["data"]["provider"], "email");
    app.wait_provider_status(&who, &id, "failed").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_451_twice_then_accepted_is_delivered_once() {
    let smtp = SmtpSink::start(&["--defer", "2"]).await;
    let mut app = app_with_relay(&smtp.url()).await;
    let who = app.create_account("mail-451@example.com").await;
    let rx = Receiver::start().await;
    let id = submit(
        &app,
        &who,
        json!({
            "template": {"format": "markdown", "body": "# Hello {{ name }}"}, "data": {"name": "Ada"},
            "provider": {"type": "email", "to": ["ada@example.com"], "subject": "Hi"},
            "callbackUrl": rx.url(),
        }),
    )
    .await;
    let done = app.wait_finished(&who, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["providerRetries"], 2, "{done}");
    assert!(done.get("error").is_none(), "{done}");
    let m = &smtp.accepted(1).await[0];
    assert_eq!(smtp.count("deferred"), 2);
    assert!(String::from_utf8(payload(part(m, "text/html")))
        .unwrap()
        .contains("<h1>Hello Ada</h1>"));
    // One outcome webhook, one accepted event, and no second message once things settle.
    provider_hook(&rx, &id, "accepted").await;
    let completed = rx.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(smtp.count("accepted"), 1, "delivered once");
    let outcomes = rx
        .requests()
        .iter()
        .filter(|r| r.json()["type"] == "dispatch.completed")
        .count();
    assert_eq!(outcomes, 1, "{completed:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_stays_unreachable_fails_the_dispatch_after_its_retries() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut app = app_with_relay(&format!("smtp://127.0.0.1:{port}")).await;
    let who = app.create_account("mail-down@example.com").await;
    let id = submit(
        &app,
        &who,
        json!({
            "template": {"format": "text", "body": "hello"}, "data": {},
            "provider": {"type": "email", "to": ["ada@example.com"], "subject": "Hi"},
        }),
    )
    .await;
    let done = app.wait_finished(&who, &id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "provider_error", "{done}");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("gave up after 4 tries"), "{message}");
    assert_eq!(done["providerRetries"], 3, "{done}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_requests_are_checked_at_submission() {
    let mut plain = TestApp::spawn_with(Services::ALL, &[]).await;
    let who = plain.create_account("mail-none@example.com").await;
    let body = |provider: Value| json!({"template": {"format": "text", "body": "x"}, "data": {}, "provider": provider});
    let ok = json!({"type": "email", "to": ["ada@example.com"], "subject": "Hi"});
    let resp = plain
        .post(&plain.ingest_url, "/v1/dispatches", &who, &body(ok.clone()))
        .await;
    assert_eq!(resp.status(), 422);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "email_not_configured", "{v}");
    plain.shutdown().await;

    // Checked before anything is sent: the relay is never reached.
    let mut app = app_with_relay("smtp://127.0.0.1:9").await;
    let who = app.create_account("mail-bad@example.com").await;
    for (provider, code, mentions) in [
        (
            json!({"type": "email", "to": ["not an address"], "subject": "Hi"}),
            "invalid_email_address",
            "provider.to",
        ),
        (
            json!({"type": "email", "to": ["a@b.example"], "cc": ["x@"], "subject": "Hi"}),
            "invalid_email_address",
            "provider.cc",
        ),
        (
            json!({"type": "email", "to": ["a@b.example"], "replyTo": "@nope", "subject": "Hi"}),
            "invalid_email_address",
            "provider.replyTo",
        ),
        (
            json!({"type": "email", "to": [], "subject": "Hi"}),
            "invalid_field",
            "provider.to",
        ),
        (
            json!({"type": "email", "to": ["a@b.example"], "subject": "{% if %}"}),
            "template_syntax_error",
            "provider.subject",
        ),
        (
            json!({"type": "email", "to": ["a@b.example"], "subject": "Hi", "attachmentName": "../x.pdf"}),
            "invalid_field",
            "attachmentName",
        ),
        (
            json!({"type": "email", "to": ["a@b.example"], "subject": "Hi", "from": "me@b.example"}),
            "invalid_field",
            "from",
        ),
        (
            json!({"type": "email", "to": ["a@b.example"]}),
            "invalid_field",
            "subject",
        ),
    ] {
        for path in ["/v1/dispatches", "/v1/dispatches/validate"] {
            let resp = app
                .post(&app.ingest_url, path, &who, &body(provider.clone()))
                .await;
            assert_eq!(resp.status(), 422, "{path} {provider}");
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["code"], code, "{path} {provider}: {v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(mentions),
                "{path} {provider}: {v}"
            );
        }
    }
    let n = app.count("SELECT count(*) FROM dispatches").await;
    assert_eq!(n, 0, "nothing refused was stored");
    // The same request with good addresses is accepted.
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &who,
            &body(ok),
        )
        .await;
    assert_eq!(resp.status(), 202);
    app.shutdown().await;
}
