//! At-least-once under faults: each test counts submitted, completed, delivered and duplicates.

use dispatcher_e2e::{
    ok_if, verify_webhook, wait_until, Proxy, Receiver, ServiceProcess, Services, TestApp, PATIENCE,
};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[tokio::test]
async fn an_always_failing_receiver_is_dead_lettered_then_replayed() {
    let app = TestApp::spawn().await;
    let rx = Receiver::failing_first(usize::MAX / 2).await;
    let acct = app.create_account("dead@example.com").await;
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &acct,
            &json!({"template": {"format": "text", "body": "x"}, "data": {}, "callbackUrl": rx.url()}),
        )
        .await;
    let id = resp.json::<serde_json::Value>().await.unwrap()["dispatchId"]
        .as_str()
        .unwrap()
        .to_owned();
    // Schedule 200ms,400ms: three attempts, then dead.
    app.wait_count("SELECT count(*) FROM deliveries WHERE status = 'dead'", 1)
        .await;
    let status: serde_json::Value = app
        .get(&app.status_url, &format!("/v1/dispatches/{id}"), &acct)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["deliveries"][0]["status"], "dead");
    assert_eq!(status["deliveries"][0]["attempts"], 3);
    let attempts: serde_json::Value = app
        .get(
            &app.status_url,
            &format!("/v1/dispatches/{id}/attempts"),
            &acct,
        )
        .await
        .json()
        .await
        .unwrap();
    let a = attempts["data"].as_array().unwrap();
    assert_eq!(a.len(), 3);
    assert!(a
        .iter()
        .all(|x| x["status"] == "failed" && x["responseStatus"] == 500));
    assert!(
        a[2].get("nextAttemptAt").is_none(),
        "no retry after the last attempt"
    );

    let listed = app.dispatchctl(&["dlq", "list"]).await;
    assert!(
        listed.contains(&id),
        "dlq list shows the dead delivery: {listed}"
    );
    assert!(listed.contains("500"), "with its last error: {listed}");

    rx.fail_next(0); // the receiver is fixed
    let replayed = app.dispatchctl(&["dlq", "replay", "--all"]).await;
    assert!(replayed.contains("replayed"));
    let hooks = rx.wait_for(4).await;
    let ids: HashSet<_> = hooks
        .iter()
        .map(|h| h.header("webhook-id").to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "a replay keeps the webhook-id");
    app.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'succeeded'",
        1,
    )
    .await;

    // An explicit redelivery sends it once more, as a new visible attempt.
    let r = app
        .post(
            &app.status_url,
            &format!("/v1/dispatches/{id}/redeliver"),
            &acct,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 202);
    rx.wait_for(5).await;
    app.wait_count(
        "SELECT count(*) FROM delivery_attempts WHERE status = 'succeeded'",
        2,
    )
    .await;
}

#[tokio::test]
async fn kill_9_of_worker_and_deliverer_mid_load_loses_nothing() {
    const N: usize = 2000;
    let app = TestApp::spawn_with(
        Services {
            worker: false,
            deliverer: false,
            ..Services::ALL
        },
        &[(
            "DISPATCHER__DELIVERY__RETRY_SCHEDULE",
            "300ms,600ms,1s,2s,4s",
        )],
    )
    .await;
    let rx = Receiver::start().await;
    let acct = app.create_account("kill@example.com").await;
    let env = app.process_env();
    let worker = ServiceProcess::spawn(
        "dispatch-worker",
        &env,
        &format!("{}-worker-1.log", app.prefix),
    );
    let deliverer = ServiceProcess::spawn(
        "webhook-deliverer",
        &env,
        &format!("{}-deliverer-1.log", app.prefix),
    );

    let url = rx.url();
    let submit = app.submit_many(&acct, N, 32, &url);
    let chaos = async {
        // Kill the worker once some dispatches are done, then the deliverer, restarting each.
        app.wait_count(
            "SELECT count(*) FROM dispatches WHERE status = 'completed'",
            300,
        )
        .await;
        worker.kill9().await;
        let worker = ServiceProcess::spawn(
            "dispatch-worker",
            &env,
            &format!("{}-worker-2.log", app.prefix),
        );
        app.wait_count(
            "SELECT count(*) FROM deliveries WHERE status = 'succeeded'",
            600,
        )
        .await;
        deliverer.kill9().await;
        let deliverer = ServiceProcess::spawn(
            "webhook-deliverer",
            &env,
            &format!("{}-deliverer-2.log", app.prefix),
        );
        (worker, deliverer)
    };
    let (ids, _procs) = tokio::join!(submit, chaos);
    assert_eq!(ids.len(), N);
    app.wait_count(
        "SELECT count(*) FROM dispatches WHERE status = 'completed'",
        N as i64,
    )
    .await;
    let dups = rx.wait_all_delivered(&ids).await;
    let completed = app
        .count("SELECT count(*) FROM dispatches WHERE status = 'completed'")
        .await;
    let finished_twice = app
        .count("SELECT count(*) FROM (SELECT dispatch_id FROM deliveries GROUP BY dispatch_id HAVING count(*) > 1) x")
        .await;
    println!(
        "kill -9 test: submitted={N} completed={completed} delivered={} duplicates={dups}",
        ids.len()
    );
    assert_eq!(completed, N as i64);
    assert_eq!(finished_twice, 0, "one outcome event per dispatch");
}

#[tokio::test]
async fn broker_connection_loss_mid_load_loses_nothing() {
    const N: usize = 400;
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let amqp = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let app = TestApp::spawn_with(Services::ALL, &[("DISPATCHER__AMQP__URL", &amqp)]).await;
    let rx = Receiver::start().await;
    let acct = app.create_account("broker@example.com").await;

    let first = app.submit_many(&acct, N / 2, 16, &rx.url()).await;
    proxy.cut();
    // The ingest keeps accepting while the broker is gone; readiness says so.
    let during = app.submit_many(&acct, N / 2, 16, &rx.url()).await;
    let ready = app
        .http
        .get(format!("{}/readyz", app.ingest_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();

    let ids: Vec<String> = first.into_iter().chain(during).collect();
    app.wait_count(
        "SELECT count(*) FROM dispatches WHERE status = 'completed'",
        N as i64,
    )
    .await;
    let dups = rx.wait_all_delivered(&ids).await;
    println!(
        "broker test: submitted={N} completed={N} delivered={} duplicates={dups}",
        ids.len()
    );
    let app = &app;
    wait_until(PATIENCE, Duration::from_millis(100), || async move {
        let readyz = format!("{}/readyz", app.ingest_url);
        let status = app.http.get(readyz).send().await.unwrap().status();
        ok_if(status == 200, || {
            format!("ingest never became ready again ({status})")
        })
    })
    .await;
}

#[tokio::test]
async fn postgres_outage_answers_503_and_recovers() {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let db = format!("postgres://postgres@{}/{{db}}", proxy.addr);
    let app = TestApp::spawn_with(
        Services::ALL,
        &[
            ("DISPATCHER__DATABASE__URL", &db),
            ("DISPATCHER__DATABASE__CONNECT_TIMEOUT", "1s"),
            ("DISPATCHER__DATABASE__ACQUIRE_TIMEOUT", "1s"),
        ],
    )
    .await;
    let rx = Receiver::start().await;
    let acct = app.create_account("pg@example.com").await;
    let before = app.submit_many(&acct, 50, 8, &rx.url()).await;

    proxy.cut();
    let started = tokio::time::Instant::now();
    let resp = app
        .post(
            &app.ingest_url,
            "/v1/dispatches?async=true",
            &acct,
            &json!({"template": {"format": "text", "body": "x"}, "data": {}, "callbackUrl": rx.url()}),
        )
        .await;
    assert_eq!(resp.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no hang while the database is down"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "service_unavailable");
    let ready = app
        .http
        .get(format!("{}/readyz", app.ingest_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();

    let after = app.submit_many(&acct, 50, 8, &rx.url()).await;
    let ids: Vec<String> = before.into_iter().chain(after).collect();
    app.wait_count(
        "SELECT count(*) FROM dispatches WHERE status = 'completed'",
        100,
    )
    .await;
    let dups = rx.wait_all_delivered(&ids).await;
    let total = app.count("SELECT count(*) FROM dispatches").await;
    println!(
        "postgres test: submitted=100 completed=100 delivered={} duplicates={dups}",
        ids.len()
    );
    assert_eq!(total, 100, "the 503 request stored nothing");
}

#[tokio::test]
async fn two_workers_and_two_deliverers_share_the_load() {
    const N: usize = 500;
    let mut app = TestApp::spawn().await;
    let (w, d) = (app.child_token(), app.child_token());
    app.start_worker(w);
    app.start_deliverer(d);
    let rx = Receiver::start().await;
    let acct = app.create_account("scale@example.com").await;
    let ids = app.submit_many(&acct, N, 32, &rx.url()).await;
    app.wait_count(
        "SELECT count(*) FROM dispatches WHERE status = 'completed'",
        N as i64,
    )
    .await;
    let dups = rx.wait_all_delivered(&ids).await;
    app.wait_count(
        "SELECT count(*) FROM delivery_attempts WHERE status = 'succeeded'",
        N as i64,
    )
    .await;
    let deliveries = app.count("SELECT count(*) FROM deliveries").await;
    let successes = app
        .count("SELECT count(*) FROM delivery_attempts WHERE status = 'succeeded'")
        .await;
    println!(
        "scale test: submitted={N} completed={N} delivered={} duplicates={dups}",
        ids.len()
    );
    assert_eq!(deliveries, N as i64, "one outcome event per dispatch");
    assert_eq!(successes, N as i64, "one recorded success per delivery");
    assert!(rx
        .requests()
        .iter()
        .all(|r| verify_webhook(&acct.webhook_secret, r)));
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_consumers_keep_going() {
    use lapin::options::BasicPublishOptions;
    use lapin::BasicProperties;
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let acct = app.create_account("poison@example.com").await;
    let conn = dispatcher_mq::connect(dispatcher_e2e::AMQP_URL, "poison-test")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let t = dispatcher_mq::Topology::from_settings(&app.settings);
    // The services declare the topology as they start; make sure it exists before publishing
    // straight to the queues (declaring is idempotent).
    t.declare(&ch).await.unwrap();
    // Each consumer reads a body once, as it arrives; one it cannot read is stored with what its
    // queue carries and the reason, and acknowledged.
    let queues = [
        (t.dispatch_queue(), "dispatch.requested"),
        (t.webhook_events_queue(), "outcome event"),
        (t.webhook_retry_queue(), "delivery retry"),
        (t.provider_events_queue(), "provider.event"),
    ];
    for (i, (queue, _)) in queues.iter().enumerate() {
        ch.basic_publish(
            "".into(),
            queue.clone().into(),
            BasicPublishOptions::default(),
            b"{not json",
            BasicProperties::default().with_message_id(format!("poison-{i}").into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    app.wait_count("SELECT count(*) FROM dead_letters", queues.len() as i64)
        .await;
    let listed = app.dispatchctl(&["dlq", "list"]).await;
    for i in 0..queues.len() {
        assert!(listed.contains(&format!("poison-{i}")), "{listed}");
    }
    assert!(listed.contains("unparseable"));
    for (i, (queue, kind)) in queues.iter().enumerate() {
        let stored = app
            .text(&format!(
                "SELECT queue || ' ' || reason FROM dead_letters WHERE message_id = 'poison-{i}'"
            ))
            .await;
        assert!(
            stored.starts_with(&format!("{queue} unparseable {kind}: ")),
            "{stored}"
        );
    }
    let ids = app.submit_many(&acct, 5, 5, &rx.url()).await;
    rx.wait_all_delivered(&ids).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn an_open_circuit_holds_deliveries_back_until_a_probe_succeeds() {
    let app = TestApp::spawn_with(
        Services::ALL,
        &[
            (
                "DISPATCHER__DELIVERY__RETRY_SCHEDULE",
                "100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms",
            ),
            ("DISPATCHER__DELIVERY__CIRCUIT_BREAKER_THRESHOLD", "3"),
            ("DISPATCHER__DELIVERY__CIRCUIT_BREAKER_COOLDOWN", "8s"),
        ],
    )
    .await;
    let rx = Receiver::failing_first(usize::MAX / 2).await;
    let acct = app.create_account("circuit@example.com").await;
    // One dispatch fails three times in a row: the endpoint's circuit opens.
    let first = app.submit_many(&acct, 1, 1, &rx.url()).await;
    rx.wait_for(3).await;
    app.wait_count("SELECT count(*) FROM delivery_attempts", 3)
        .await;
    let hits_when_open = rx.requests().len();

    // New dispatches to the same endpoint are held back, not attempted and not dropped.
    let later = app.submit_many(&acct, 5, 5, &rx.url()).await;
    app.wait_count(
        "SELECT count(*) FROM deliveries WHERE attempts = 0 AND next_attempt_at IS NOT NULL",
        5,
    )
    .await;
    let (seen, _) = rx.tally();
    assert!(
        later.iter().all(|id| !seen.contains(id)),
        "held deliveries must not reach the endpoint while the circuit is open"
    );
    assert!(
        rx.requests().len() <= hits_when_open + 1,
        "at most the probe got through"
    );

    // The receiver recovers: after the cooldown a probe succeeds and everything is delivered.
    rx.fail_next(0);
    let ids: Vec<String> = first.into_iter().chain(later).collect();
    let dups = rx.wait_all_delivered(&ids).await;
    app.wait_count(
        "SELECT count(*) FROM deliveries WHERE status = 'succeeded'",
        6,
    )
    .await;
    println!("circuit test: submitted=6 delivered=6 duplicates={dups}");
}

#[tokio::test]
async fn every_binary_drains_and_exits_cleanly_on_sigterm() {
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
    let acct = app.create_account("term@example.com").await;
    let (env, ingest) = env_with_ingest_port(&app);
    let mut procs = vec![
        ServiceProcess::spawn(
            "ingest-api",
            &env,
            &format!("{}-term-ingest.log", app.prefix),
        ),
        ServiceProcess::spawn(
            "dispatch-worker",
            &env,
            &format!("{}-term-worker.log", app.prefix),
        ),
        ServiceProcess::spawn(
            "webhook-deliverer",
            &env,
            &format!("{}-term-deliverer.log", app.prefix),
        ),
    ];
    app.wait_ready(&ingest).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = app
            .post(&ingest, "/v1/dispatches?async=true", &acct, &json!({"template": {"format": "text", "body": "{{ i }}"}, "data": {"i": i}, "callbackUrl": rx.url()}))
            .await;
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<serde_json::Value>().await.unwrap()["dispatchId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    rx.wait_all_delivered(&ids).await;
    // shutdown_timeout is 5 s in tests; allow the processes a little more to exit.
    terminate_all(&mut procs, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn a_broker_restart_mid_load_loses_nothing() {
    const N: usize = 400;
    let broker = dispatcher_e2e::OwnBroker::start().await;
    let url = broker.url();
    let app = TestApp::spawn_with(Services::ALL, &[("DISPATCHER__AMQP__URL", &url)]).await;
    let rx = Receiver::start().await;
    let acct = app.create_account("restart@example.com").await;
    let first = app.submit_many(&acct, N / 2, 16, &rx.url()).await;
    broker.restart().await;
    let second = app.submit_many(&acct, N / 2, 16, &rx.url()).await;
    let ids: Vec<String> = first.into_iter().chain(second).collect();
    app.wait_count(
        "SELECT count(*) FROM dispatches WHERE status = 'completed'",
        N as i64,
    )
    .await;
    let dups = rx.wait_all_delivered(&ids).await;
    println!(
        "broker restart test: submitted={N} completed={N} delivered={} duplicates={dups}",
        ids.len()
    );
}

/// A database outage must not hold shutdown hostage: the relays and consumers that are retrying
/// against it stop on SIGTERM like the rest.
#[tokio::test]
async fn sigterm_during_a_database_outage_exits_promptly() {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let db = format!("postgres://postgres@{}/{{db}}", proxy.addr);
    let app = TestApp::spawn_with(
        Services {
            ingest: false,
            worker: false,
            deliverer: false,
            status: false,
        },
        &[
            ("DISPATCHER__DATABASE__URL", &db),
            ("DISPATCHER__DATABASE__CONNECT_TIMEOUT", "1s"),
            ("DISPATCHER__DATABASE__ACQUIRE_TIMEOUT", "1s"),
        ],
    )
    .await;
    let (mut env, ingest) = env_with_ingest_port(&app);
    // Long enough that a process waiting for the database rather than for its own tasks is
    // told apart from one that stops at once.
    env.insert("DISPATCHER__SHUTDOWN_TIMEOUT".into(), "60s".into());
    let mut procs: Vec<ServiceProcess> = ["ingest-api", "dispatch-worker", "webhook-deliverer"]
        .iter()
        .map(|bin| ServiceProcess::spawn(bin, &env, &format!("{}-outage-{bin}.log", app.prefix)))
        .collect();
    app.wait_ready(&ingest).await;
    proxy.cut();
    // Let every relay and consumer run into the outage.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Well inside the 60 s shutdown timeout.
    terminate_all(&mut procs, Duration::from_secs(20)).await;
}

/// The processes' environment with the ingest API on a free port of its own, and that API's URL.
fn env_with_ingest_port(app: &TestApp) -> (HashMap<String, String>, String) {
    let mut env = app.process_env();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    env.insert(
        "DISPATCHER__INGEST__LISTEN".into(),
        format!("127.0.0.1:{port}"),
    );
    (env, format!("http://127.0.0.1:{port}"))
}

/// Sends SIGTERM to every process, then expects each to exit cleanly within `within`.
async fn terminate_all(procs: &mut [ServiceProcess], within: Duration) {
    for p in procs.iter() {
        let pid = p.child.id().unwrap().to_string();
        let st = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(st.success());
    }
    for p in procs.iter_mut() {
        let status = tokio::time::timeout(within, p.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within {within:?} of SIGTERM"))
            .unwrap();
        assert!(status.success(), "clean exit, got {status}");
    }
}

/// SIGTERM while work is in flight, not after it: every service exits within its deadline,
/// pending sync submissions are answered (202 with a status URL) rather than cut off, and after
/// a restart every dispatch that was answered 202 or 200 is delivered.
#[tokio::test]
async fn sigterm_under_load_exits_in_time_and_loses_nothing_accepted() {
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
    let acct = app.create_account("term-load@example.com").await;
    let (env, ingest) = env_with_ingest_port(&app);
    let spawn_all = |round: u32| -> Vec<ServiceProcess> {
        ["ingest-api", "dispatch-worker", "webhook-deliverer"]
            .iter()
            .map(|bin| {
                ServiceProcess::spawn(bin, &env, &format!("{}-{round}-{bin}.log", app.prefix))
            })
            .collect()
    };
    let mut procs = spawn_all(1);
    app.wait_ready(&ingest).await;

    let accepted = std::sync::Mutex::new(Vec::new());
    let stop_submitting = tokio_util::sync::CancellationToken::new();
    let submit_one = |i: usize, sync: bool| {
        let (app, ingest, acct, rx, accepted, stop) =
            (&app, &ingest, &acct, &rx, &accepted, &stop_submitting);
        async move {
            let path = if sync {
                "/v1/dispatches"
            } else {
                "/v1/dispatches?async=true"
            };
            let body = json!({"template": {"format": "text", "body": "{{ i }}"}, "data": {"i": i}, "callbackUrl": rx.url()});
            let r = app
                .http
                .post(format!("{ingest}{path}"))
                .basic_auth(&acct.email, Some(&acct.password))
                .json(&body)
                .send()
                .await;
            // Refused connections after the listener closed are not acceptances; the load
            // stops there.
            let Ok(r) = r else {
                stop.cancel();
                return None;
            };
            let status = r.status().as_u16();
            if matches!(status, 200 | 202) {
                let v: serde_json::Value = r.json().await.unwrap();
                accepted
                    .lock()
                    .unwrap()
                    .push(v["dispatchId"].as_str().unwrap().to_owned());
            }
            Some(status)
        }
    };
    // Steady async load, and sync submissions waiting on their outcome, while SIGTERM arrives.
    let load = async {
        use futures::StreamExt;
        futures::stream::iter(0..100_000)
            .take_until(stop_submitting.cancelled())
            .map(|i| submit_one(i, false))
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
    };
    let sync_waits = async {
        app.wait_count(
            "SELECT count(*) FROM dispatches WHERE status = 'completed'",
            100,
        )
        .await;
        futures::future::join_all((0..8).map(|i| submit_one(1_000_000 + i, true))).await
    };
    let terminate = async {
        app.wait_count(
            "SELECT count(*) FROM dispatches WHERE status = 'completed'",
            300,
        )
        .await;
        let started = std::time::Instant::now();
        // shutdown_timeout is 5 s in tests: each must be gone well inside 5 s plus start-up slack.
        terminate_all(&mut procs, Duration::from_secs(10)).await;
        stop_submitting.cancel();
        started.elapsed()
    };
    let (statuses, sync_statuses, took) = tokio::join!(load, sync_waits, terminate);
    let in_flight_sync: Vec<_> = sync_statuses.iter().flatten().collect();
    assert!(
        in_flight_sync.iter().all(|s| matches!(s, 200 | 202)),
        "sync submissions in flight are answered, not cut off: {sync_statuses:?}"
    );
    let answered = statuses.iter().flatten().count();
    let pending_at_stop = app
        .count("SELECT count(*) FROM dispatches WHERE status <> 'completed'")
        .await
        + app
            .count("SELECT count(*) FROM deliveries WHERE status <> 'succeeded'")
            .await;

    // Start again: everything accepted is finished and delivered.
    let _procs = spawn_all(2);
    let ids = accepted.lock().unwrap().clone();
    let dups = rx.wait_all_delivered(&ids).await;
    app.wait_equal(
        "SELECT count(*) FROM dispatches WHERE status <> 'completed'",
        0,
    )
    .await;
    println!(
        "SIGTERM under load: stopped in {took:?}; answered={answered} accepted={} \
         unfinished at stop={pending_at_stop} delivered={} duplicates={dups}",
        ids.len(),
        ids.len()
    );
    assert!(
        ids.len() > 300,
        "the load was running: {} accepted",
        ids.len()
    );
}
