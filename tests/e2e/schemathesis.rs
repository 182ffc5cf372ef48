//! Schemathesis (PyPI) drives each HTTP API from its committed OpenAPI document
//! (`proto-schemas/openapi-*.json`), authenticated with HTTP Basic, against the real services,
//! and the run fails on any 5xx and on any response that breaks the document: an undocumented
//! status code or content type, a body or a documented header that its schema rejects.
//!
//! Only those checks run. The request-side checks (`positive_data_acceptance`,
//! `negative_data_rejection`, ...) are left out on purpose: they complain about rules a schema
//! cannot express (a random cursor answers 400, an unknown `templateId` or a refused callback
//! address 422, unknown query parameters are ignored, NUL in free-form `data` is 422).
//!
//! Everything stays on loopback: the services and the receiver listen on 127.0.0.1, and the hooks
//! in `tests/python/schemathesis_hooks.py` replace every generated outbound URL (callback and
//! provider URLs the worker and the deliverer would connect to) with a loopback one.
//!
//! Some real objects are created first (a template, a completed and a failed dispatch with their
//! webhook attempts and a provider report, a webhook subscription) and handed to Schemathesis as
//! dictionaries, so part of the generated ids are existing ones and the 200 answers of the
//! get-by-id operations are checked too.
//!
//! These tests use the test virtualenv (`make venv`, via `DISPATCHER_TEST_PYTHON`).

use dispatcher_core::signing::sign_hex_sha256;
use dispatcher_db::accounts::CreatedAccount;
use dispatcher_e2e::{
    python_script, test_python, workspace_root, Receiver, Services, TestApp, PATIENCE,
};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Fixed, so a failure reproduces with the same command.
const SEED: &str = "20251124";
/// Test cases per operation and phase: each run stays well under a minute on two cores.
const MAX_EXAMPLES: &str = "50";
/// The checks the tests assert, and only them: `--checks` is an allowlist, so every other check
/// is off, in particular `positive_data_acceptance` (ST202) and `negative_data_rejection` (ST201),
/// which fail on runtime rules the document cannot express (see the module comment).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";
const PROVIDER: &str = "acme";
const PROVIDER_SECRET: &str = "acme-schemathesis-key";
/// Loopback, but not in `delivery.allow_hosts`: the address policy refuses it without connecting.
const REFUSED_URL: &str = "http://127.0.0.2:9/refused";

/// The app under test: every service, sync submissions answering within Schemathesis' request
/// timeout, `http://` callbacks allowed (to loopback hosts in `allow_hosts` only) and one
/// inbound provider.
async fn spawn_app() -> TestApp {
    TestApp::spawn_with(
        Services::ALL,
        &[
            ("DISPATCHER__INGEST__SYNC_TIMEOUT", "2s"),
            ("DISPATCHER__DELIVERY__ALLOW_HTTP", "true"),
            ("DISPATCHER__PROVIDERS__ACME__SECRET", PROVIDER_SECRET),
        ],
    )
    .await
}

/// Ids of the objects created before the run.
struct Seeded {
    template_id: String,
    completed_id: String,
    failed_id: String,
    webhook_id: String,
}

async fn created(resp: reqwest::Response, what: &str) -> Value {
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert!(status.is_success(), "creating {what}: {status} {body}");
    serde_json::from_str(&body).unwrap()
}

/// A subscription, a template, a completed and a failed dispatch (both delivered to the
/// receiver), and a provider report on the completed one.
async fn seed(app: &TestApp, who: &CreatedAccount, rx: &Receiver) -> Seeded {
    let webhook = created(
        app.post(
            &app.ingest_url,
            "/v1/webhooks",
            who,
            &json!({"event": "*", "callbackUrl": rx.url(), "description": "seeded"}),
        )
        .await,
        "a subscription",
    )
    .await;
    let template = created(
        app.post(
            &app.ingest_url,
            "/v1/templates",
            who,
            &json!({"name": "greeting", "format": "text", "body": "Hello {{ who }}"}),
        )
        .await,
        "a template",
    )
    .await;
    let template_id = template["templateId"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    // The second one lacks the template's variable: it fails with `template_render_error`.
    for data in [json!({"who": "Ada"}), json!({})] {
        let accepted = created(
            app.post(
                &app.ingest_url,
                "/v1/dispatches?async=true",
                who,
                &json!({
                    "templateId": template_id,
                    "data": data,
                    "callbackUrl": rx.url(),
                    "metadata": {"seeded": true},
                }),
            )
            .await,
            "a dispatch",
        )
        .await;
        ids.push(accepted["dispatchId"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        app.wait_finished(who, id).await;
    }
    // Each outcome goes to the dispatch's callback and to the subscription.
    rx.wait_for(4).await;

    let event = json!({
        "eventId": "seeded-1",
        "dispatchId": ids[0],
        "type": "delivered",
        "occurredAt": chrono::Utc::now().to_rfc3339(),
    })
    .to_string();
    let resp = app
        .http
        .post(format!("{}/v1/providers/{PROVIDER}/events", app.ingest_url))
        .header("content-type", "application/json")
        .header(
            "x-provider-signature",
            sign_hex_sha256(PROVIDER_SECRET.as_bytes(), event.as_bytes()),
        )
        .body(event)
        .send()
        .await
        .unwrap();
    created(resp, "a provider event").await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let body: Value = app
            .get(&app.status_url, &format!("/v1/dispatches/{}", ids[0]), who)
            .await
            .json()
            .await
            .unwrap();
        if body.get("providerStatus").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "provider report not applied: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    Seeded {
        template_id,
        completed_id: ids.remove(0),
        failed_id: ids.remove(0),
        webhook_id: webhook["webhookId"].as_str().unwrap().to_owned(),
    }
}

/// A TOML basic string (JSON string escapes are valid TOML ones).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Binds parameters of one operation (`"GET /v1/templates/{id}"`) to dictionaries:
/// `(parameter, dictionary)`, e.g. `("path.id", "templates")`.
type Binding<'a> = (&'a str, &'a [(&'a str, &'a str)]);

/// A Schemathesis configuration: the cache off, and each bound parameter drawn from its
/// dictionary of known values half of the time (generated the other half).
fn write_config(dir: &Path, dictionaries: &[(&str, Vec<String>)], bindings: &[Binding]) -> PathBuf {
    let mut toml = String::from("[cache]\nenabled = false\n");
    for (name, values) in dictionaries {
        let values: Vec<String> = values.iter().map(|v| toml_str(v)).collect();
        writeln!(
            toml,
            "\n[dictionaries.{name}]\nvalues = [{}]",
            values.join(", ")
        )
        .unwrap();
    }
    for (operation, parameters) in bindings {
        let parameters: Vec<String> = parameters
            .iter()
            .map(|(parameter, dictionary)| {
                format!(
                    "{} = {{ dictionary = {}, probability = 0.5 }}",
                    toml_str(parameter),
                    toml_str(dictionary)
                )
            })
            .collect();
        writeln!(
            toml,
            "\n[[operations]]\ninclude-name = {}\nparameters = {{ {} }}",
            toml_str(operation),
            parameters.join(", ")
        )
        .unwrap();
    }
    let path = dir.join("schemathesis.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// A scratch directory for the configuration; Schemathesis also runs in it, so nothing it might
/// write lands in the repository.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "dispatcher-schemathesis-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `schemathesis run` on the committed document `spec` against `base_url` with the
/// configuration in `scratch`, and fails the test, with Schemathesis' output, unless it exits 0
/// having tested every operation.
async fn schemathesis_run(
    spec: &str,
    base_url: &str,
    who: &CreatedAccount,
    scratch: &Scratch,
    config: &Path,
    rx: &Receiver,
) {
    assert!(
        base_url.starts_with("http://127.0.0.1:"),
        "loopback only: {base_url}"
    );
    let spec = workspace_root().join("proto-schemas").join(spec);
    let spec = spec.to_string_lossy().into_owned();
    let report = scratch.0.join("report.json");
    let auth = format!("{}:{}", who.email, who.password);
    let args = [
        "-m",
        "schemathesis.cli",
        "--config-file",
        &config.to_string_lossy(),
        "--no-color",
        "run",
        &spec,
        "--url",
        base_url,
        "--auth",
        &auth,
        "--checks",
        CHECKS,
        "--max-examples",
        MAX_EXAMPLES,
        "--seed",
        SEED,
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--report",
        "json",
        "--report-json-path",
        &report.to_string_lossy(),
    ];
    let mut cmd = tokio::process::Command::new(test_python());
    cmd.args(args)
        .current_dir(&scratch.0)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUTF8", "1")
        .env("SCHEMATHESIS_HOOKS", python_script("schemathesis_hooks.py"))
        .env("DISPATCHER_ST_ALLOWED_URL", rx.url())
        .env("DISPATCHER_ST_REFUSED_URL", REFUSED_URL)
        .env("DISPATCHER_ST_PROVIDER", PROVIDER)
        .env("DISPATCHER_ST_PROVIDER_SECRET", PROVIDER_SECRET)
        // Straight to the loopback service, never through a proxy from the environment.
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        cmd.spawn()
            .expect("the test virtualenv's python runs")
            .wait_with_output(),
    )
    .await
    .expect("schemathesis finishes within 5 minutes")
    .expect("schemathesis' output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "schemathesis on {spec} took {:.1?}:\n{stdout}\n{stderr}",
        started.elapsed()
    );
    assert!(
        out.status.success(),
        "schemathesis found problems in {spec} ({}):\n{stdout}\n{stderr}",
        out.status
    );

    // Guard against a run that passes without testing anything.
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let operations = &report["operations"];
    assert!(
        report["complete"] == true
            && operations["total"].as_u64() > Some(0)
            && operations["tested"] == operations["total"]
            && report["test_cases"]["generated"].as_u64() > Some(0)
            && report["failures"] == json!([])
            && report["errors"] == json!([]),
        "schemathesis did not test every operation of {spec}: {report:#}\n{stdout}"
    );
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_or_schema_violation_in_the_ingest_api() {
    test_python();
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    let who = app.create_account("schemathesis-ingest@example.com").await;
    let seeded = seed(&app, &who, &rx).await;

    let scratch = Scratch::new("ingest");
    let config = write_config(
        &scratch.0,
        &[
            ("templates", vec![seeded.template_id.clone()]),
            ("webhooks", vec![seeded.webhook_id.clone()]),
            ("dispatches", vec![seeded.completed_id.clone()]),
            ("providers", vec![PROVIDER.to_owned()]),
            // Inside the provider-event window for the whole run.
            ("now", vec![chrono::Utc::now().to_rfc3339()]),
        ],
        &[
            ("GET /v1/templates/{id}", &[("path.id", "templates")]),
            ("POST /v1/dispatches", &[("body.templateId", "templates")]),
            ("GET /v1/webhooks/{id}", &[("path.id", "webhooks")]),
            ("DELETE /v1/webhooks/{id}", &[("path.id", "webhooks")]),
            (
                "POST /v1/providers/{provider}/events",
                &[
                    ("path.provider", "providers"),
                    ("body.dispatchId", "dispatches"),
                    ("body.occurredAt", "now"),
                ],
            ),
        ],
    );
    schemathesis_run(
        "openapi-ingest.json",
        &app.ingest_url,
        &who,
        &scratch,
        &config,
        &rx,
    )
    .await;
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_or_schema_violation_in_the_status_api() {
    test_python();
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    let who = app.create_account("schemathesis-status@example.com").await;
    let seeded = seed(&app, &who, &rx).await;

    let scratch = Scratch::new("status");
    let dispatches = vec![seeded.completed_id.clone(), seeded.failed_id.clone()];
    let config = write_config(
        &scratch.0,
        &[
            ("dispatches", dispatches),
            ("webhooks", vec![seeded.webhook_id.clone()]),
        ],
        &[
            ("GET /v1/dispatches/{id}", &[("path.id", "dispatches")]),
            (
                "GET /v1/dispatches/{id}/result",
                &[("path.id", "dispatches")],
            ),
            (
                "GET /v1/dispatches/{id}/attempts",
                &[("path.id", "dispatches")],
            ),
            (
                "POST /v1/dispatches/{id}/redeliver",
                &[("path.id", "dispatches"), ("body.webhookId", "webhooks")],
            ),
        ],
    );
    schemathesis_run(
        "openapi-status.json",
        &app.status_url,
        &who,
        &scratch,
        &config,
        &rx,
    )
    .await;
}
