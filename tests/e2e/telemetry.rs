//! Telemetry across the broker: one dispatch is one trace from the client's request to the webhook.

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use dispatcher_e2e::{ok_if, wait_until, Receiver, ServiceProcess, Services, TestApp, PATIENCE};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// (service.name, traceId, span name) of every span an OTLP/HTTP JSON receiver got.
type Spans = Arc<Mutex<Vec<(String, String, String)>>>;

async fn collect(State(spans): State<Spans>, body: Bytes) -> &'static str {
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut out = spans.lock().unwrap();
    for rs in v["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or("")
            .to_owned();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for sp in ss["spans"].as_array().into_iter().flatten() {
                out.push((
                    service.clone(),
                    sp["traceId"].as_str().unwrap_or("").to_owned(),
                    sp["name"].as_str().unwrap_or("").to_owned(),
                ));
            }
        }
    }
    "{}"
}

#[tokio::test]
async fn one_trace_crosses_ingest_worker_and_deliverer_into_the_webhook() {
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let s = spans.clone();
    tokio::spawn(async move {
        let app = Router::new()
            .route("/v1/traces", post(collect))
            .with_state(s);
        axum::serve(listener, app).await.unwrap();
    });

    let app = TestApp::spawn_with(
        Services {
            ingest: false,
            worker: false,
            deliverer: false,
            status: true,
        },
        &[],
    )
    .await;
    let rx = Receiver::start().await;
    let acct = app.create_account("trace@example.com").await;
    let mut env = app.process_env();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.insert(
        "DISPATCHER__INGEST__LISTEN".into(),
        format!("127.0.0.1:{port}"),
    );
    env.insert("DISPATCHER__TELEMETRY__OTLP_ENDPOINT".into(), otlp);
    env.insert(
        "DISPATCHER__TELEMETRY__OTLP_PROTOCOL".into(),
        "http/json".into(),
    );
    env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into());
    let _procs = [
        ServiceProcess::spawn(
            "ingest-api",
            &env,
            &format!("{}-otel-ingest.log", app.prefix),
        ),
        ServiceProcess::spawn(
            "dispatch-worker",
            &env,
            &format!("{}-otel-worker.log", app.prefix),
        ),
        ServiceProcess::spawn(
            "webhook-deliverer",
            &env,
            &format!("{}-otel-deliverer.log", app.prefix),
        ),
    ];
    let ingest = format!("http://127.0.0.1:{port}");
    app.wait_ready(&ingest).await;

    // The client starts the trace.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let r = app
        .http
        .post(format!("{ingest}/v1/dispatches?async=true"))
        .basic_auth(&acct.email, Some(&acct.password))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"template": {"format": "text", "body": "x"}, "data": {}, "callbackUrl": rx.url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let hook = &rx.wait_for(1).await[0];
    let tp = hook.header("traceparent");
    assert_eq!(
        tp.split('-').nth(1),
        Some(trace_id.as_str()),
        "the webhook carries the trace: {tp}"
    );

    let want: HashSet<&str> = ["ingest-api", "dispatch-worker", "webhook-deliverer"].into();
    let (spans, trace_id, want) = (&spans, &trace_id, &want);
    let services = wait_until(PATIENCE, Duration::from_millis(100), || async move {
        let got = spans.lock().unwrap().clone();
        let mut services: HashMap<String, Vec<String>> = HashMap::new();
        for (svc, tid, name) in got {
            if &tid == trace_id {
                services.entry(svc).or_default().push(name);
            }
        }
        ok_if(want.iter().all(|s| services.contains_key(*s)), || {
            format!("spans in the trace so far: {services:?}")
        })
        .map(|()| services)
    })
    .await;
    assert!(services["dispatch-worker"].contains(&"dispatch.process".to_owned()));
    assert!(services["webhook-deliverer"].contains(&"webhook.deliver".to_owned()));
}

/// Parses Prometheus text format into (metric name with labels, value); panics on a bad line.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line: {l}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {l}"));
            (name.to_owned(), value)
        })
        .collect()
}

fn has(metrics: &[(String, f64)], name: &str) -> bool {
    metrics.iter().any(|(n, _)| {
        n == name || n.starts_with(&format!("{name}{{")) || n.starts_with(&format!("{name}_"))
    })
}

#[tokio::test]
async fn every_service_serves_prometheus_metrics() {
    let app = TestApp::spawn_with(
        Services {
            ingest: false,
            worker: false,
            deliverer: false,
            status: true,
        },
        &[],
    )
    .await;
    let rx = Receiver::start().await;
    let acct = app.create_account("metrics@example.com").await;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (pi, pw, pd) = (free(), free(), free());
    let mut env = app.process_env();
    env.insert(
        "DISPATCHER__INGEST__LISTEN".into(),
        format!("127.0.0.1:{pi}"),
    );
    env.insert(
        "DISPATCHER__WORKER__LISTEN".into(),
        format!("127.0.0.1:{pw}"),
    );
    env.insert(
        "DISPATCHER__DELIVERER__LISTEN".into(),
        format!("127.0.0.1:{pd}"),
    );
    let _procs = [
        ServiceProcess::spawn(
            "ingest-api",
            &env,
            &format!("{}-metrics-ingest.log", app.prefix),
        ),
        ServiceProcess::spawn(
            "dispatch-worker",
            &env,
            &format!("{}-metrics-worker.log", app.prefix),
        ),
        ServiceProcess::spawn(
            "webhook-deliverer",
            &env,
            &format!("{}-metrics-deliverer.log", app.prefix),
        ),
    ];
    let ingest = format!("http://127.0.0.1:{pi}");
    for port in [pi, pw, pd] {
        app.wait_ready(&format!("http://127.0.0.1:{port}")).await;
    }
    for i in 0..5 {
        let body = if i == 0 { "{{ missing }}" } else { "ok" };
        let r = app
            .post(&ingest, "/v1/dispatches?async=true", &acct, &json!({"template": {"format": "text", "body": body}, "data": {}, "callbackUrl": rx.url()}))
            .await;
        assert_eq!(r.status(), 202);
    }
    rx.wait_for(5).await;
    let _ = app.get(&app.status_url, "/v1/dispatches", &acct).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let scrape = |url: String| {
        let http = app.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert!(r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"));
            parse_prometheus(&r.text().await.unwrap())
        }
    };
    let ing = scrape(format!("{ingest}/metrics")).await;
    for name in [
        "dispatcher_http_requests_total",
        "dispatcher_http_request_duration_seconds",
        "dispatcher_dispatches_accepted_total",
        "dispatcher_messages_published_total",
        "dispatcher_outbox_backlog",
        "dispatcher_outbox_oldest_unsent_seconds",
    ] {
        assert!(has(&ing, name), "ingest-api lacks {name}");
    }
    assert!(ing
        .iter()
        .any(|(n, _)| n.contains("route=\"/v1/dispatches\"") && n.contains("status=\"202\"")));
    let worker = scrape(format!("http://127.0.0.1:{pw}/metrics")).await;
    for name in [
        "dispatcher_messages_consumed_total",
        "dispatcher_messages_acked_total",
        "dispatcher_dispatches_finished_total",
        "dispatcher_messages_published_total",
    ] {
        assert!(has(&worker, name), "dispatch-worker lacks {name}");
    }
    assert!(worker.iter().any(|(n, v)| n.contains("status=\"failed\"")
        && n.starts_with("dispatcher_dispatches_finished_total")
        && *v >= 1.0));
    // The deliverer counts its batch after the receiver has answered and the attempts are
    // committed: scrape until the batch is in (or the patience runs out).
    let wanted = [
        "dispatcher_delivery_attempts_total",
        "dispatcher_deliveries_total",
        "dispatcher_delivery_duration_seconds",
        "dispatcher_webhook_delivery_lag_seconds",
        "dispatcher_circuit_breakers_open",
        "dispatcher_messages_acked_total",
    ];
    let wanted = &wanted;
    let deliverer = wait_until(PATIENCE, Duration::from_millis(100), || async move {
        let m = scrape(format!("http://127.0.0.1:{pd}/metrics")).await;
        let lacking: Vec<_> = wanted.iter().filter(|n| !has(&m, n)).collect();
        ok_if(lacking.is_empty(), || {
            format!("webhook-deliverer lacks {lacking:?}")
        })
        .map(|()| m)
    })
    .await;
    // Any relay may publish any outbox row, so the five requests are counted across the three.
    let requested: f64 = [&ing, &worker, &deliverer]
        .iter()
        .flat_map(|m| m.iter())
        .filter(|(n, _)| {
            n.starts_with("dispatcher_messages_published_total")
                && n.contains("routing_key=\"dispatch.requested\"")
        })
        .map(|(_, v)| v)
        .sum();
    assert!(
        requested >= 5.0,
        "published dispatch.requested: {requested}"
    );
    for name in [
        "dispatcher_outbox_relay_delay_seconds",
        "dispatcher_outbox_publish_seconds",
    ] {
        assert!(
            [&ing, &worker, &deliverer].iter().any(|m| has(m, name)),
            "no relay reports {name}"
        );
    }
    let status = scrape(format!("{}/metrics", app.status_url)).await;
    assert!(has(&status, "dispatcher_http_requests_total"));
}
