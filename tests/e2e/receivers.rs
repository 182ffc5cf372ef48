//! Delivery to the receivers people actually run: Python's `http.server` as it comes (listen
//! backlog 5, HTTP/1.0, a thread per request), under a burst, with and without crashes.

use dispatcher_e2e::{ok_if, wait_until, PythonServer, ServiceProcess, Services, TestApp};
use std::collections::HashSet;
use std::time::Duration;

/// Dispatches per run.
const N: usize = 1000;
/// Every webhook arrives within this long after the last submission.
const WITHIN: Duration = Duration::from_secs(60);

/// A running `tests/python/naive_receiver.py` and the webhook-ids it answered.
struct NaiveReceiver {
    url: String,
    server: PythonServer,
}

impl NaiveReceiver {
    async fn start() -> Self {
        let server = PythonServer::start("naive_receiver.py", &[]).await;
        Self {
            url: format!("http://127.0.0.1:{}/hook", server.port),
            server,
        }
    }

    fn distinct(&self) -> usize {
        self.server.lines().iter().collect::<HashSet<_>>().len()
    }
}

fn settings() -> Vec<(&'static str, &'static str)> {
    vec![
        // The shipped delivery settings, with a schedule that fits the test's minute.
        ("DISPATCHER__DELIVERY__RETRY_SCHEDULE", "1s,5s,10s,20s"),
        ("DISPATCHER__DELIVERY__TIMEOUT", "10s"),
    ]
}

/// Waits up to [`WITHIN`] for every delivery to succeed, then checks the counts.
async fn assert_all_delivered(app: &TestApp, rx: &NaiveReceiver) {
    wait_until(WITHIN, Duration::from_millis(200), || async move {
        let done = app
            .count("SELECT count(*) FROM deliveries WHERE status = 'succeeded'")
            .await;
        let dead = app
            .count("SELECT count(*) FROM deliveries WHERE status IN ('dead', 'failed')")
            .await;
        assert_eq!(dead, 0, "no delivery may give up");
        ok_if(done == N as i64, || {
            format!("{done} of {N} delivered within {WITHIN:?} of the last submission")
        })
    })
    .await;
    assert_eq!(app.count("SELECT count(*) FROM deliveries").await, N as i64);
    let attempts = app.count("SELECT count(*) FROM delivery_attempts").await;
    let per_delivery = attempts as f64 / N as f64;
    let held = app
        .count("SELECT count(*) FROM deliveries WHERE attempts > 1")
        .await;
    let answered = rx.server.lines().len();
    println!(
        "attempts: {attempts} ({per_delivery:.3} per delivery), {held} deliveries needed more than one, \
         receiver answered {answered} requests for {} webhook-ids",
        rx.distinct()
    );
    assert!(
        per_delivery <= 1.2,
        "{per_delivery:.3} attempts per delivery (at most 1.2)"
    );
    // Every webhook reached the receiver (a request answered after its attempt timed out counts
    // for the receiver, not for the delivery).
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async move {
            let answered = rx.distinct();
            ok_if(answered >= N, || {
                format!("the receiver answered {answered} of {N} webhook-ids")
            })
        },
    )
    .await;
}

#[tokio::test]
async fn a_naive_http_server_gets_every_webhook_of_a_burst() {
    let app = TestApp::spawn_with(Services::ALL, &settings()).await;
    let rx = NaiveReceiver::start().await;
    let acct = app.create_account("naive@example.com").await;
    let ids = app.submit_many(&acct, N, 32, &rx.url).await;
    assert_eq!(ids.len(), N);
    assert_all_delivered(&app, &rx).await;
}

#[tokio::test]
async fn a_naive_http_server_gets_every_webhook_when_worker_and_deliverer_are_killed() {
    let app = TestApp::spawn_with(
        Services {
            worker: false,
            deliverer: false,
            ..Services::ALL
        },
        &settings(),
    )
    .await;
    let rx = NaiveReceiver::start().await;
    let acct = app.create_account("naive-kill@example.com").await;
    let env = app.process_env();
    let log = |name: &str| format!("{}-{name}.log", app.prefix);
    let worker = ServiceProcess::spawn("dispatch-worker", &env, &log("worker-1"));
    let deliverer = ServiceProcess::spawn("webhook-deliverer", &env, &log("deliverer-1"));
    let submit = app.submit_many(&acct, N, 32, &rx.url);
    let chaos = async {
        // One second into the load, both die without warning and come back.
        tokio::time::sleep(Duration::from_secs(1)).await;
        worker.kill9().await;
        deliverer.kill9().await;
        (
            ServiceProcess::spawn("dispatch-worker", &env, &log("worker-2")),
            ServiceProcess::spawn("webhook-deliverer", &env, &log("deliverer-2")),
        )
    };
    let (ids, _restarted) = tokio::join!(submit, chaos);
    assert_eq!(ids.len(), N);
    assert_all_delivered(&app, &rx).await;
}
