//! RabbitMQ nodes die under load: quorum queues keep every message, publisher confirms and
//! consumer acks keep at-least-once, and the services move to a live node by themselves.

use crate::support::{
    busiest_queue_leader, cluster_urls, longest_pause, rabbit_cluster, submit_at_rate,
    wait_delivered,
};
use dispatcher_e2e::{Receiver, ServiceProcess, Services, TestApp};
use std::time::{Duration, Instant};

/// A count from the environment, for shorter runs by hand.
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn sleep_until(start: Instant, at: Duration) {
    tokio::time::sleep(at.saturating_sub(start.elapsed())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_then_the_busiest_queues_leader_die_and_nothing_is_lost() {
    tokio::time::timeout(Duration::from_secs(900), node_deaths())
        .await
        .expect("the test's time limit");
}

async fn node_deaths() {
    let n = knob("DISPATCHER_CLUSTER_N", 20_000);
    let rate = knob("DISPATCHER_CLUSTER_RATE", 400);
    let urls = cluster_urls().await;
    let rx = Receiver::start().await;
    let app = TestApp::spawn_with(Services::ALL, &[("DISPATCHER__AMQP__URLS", &urls)]).await;
    let who = app.create_account("cluster@example.com").await;

    let run = Duration::from_secs_f64(n as f64 / rate as f64);
    let start = Instant::now();
    let faults = async {
        let mut log = Vec::new();
        sleep_until(start, run.mul_f64(0.15)).await;
        rabbit_cluster(&["stop", "2"]).await;
        log.push(format!(
            "{:>6.1} s  node 2 killed",
            start.elapsed().as_secs_f64()
        ));
        sleep_until(start, run.mul_f64(0.35)).await;
        rabbit_cluster(&["start", "2"]).await;
        log.push(format!(
            "{:>6.1} s  node 2 back",
            start.elapsed().as_secs_f64()
        ));

        sleep_until(start, run.mul_f64(0.55)).await;
        let (leader, queue) = busiest_queue_leader(&app.prefix).await;
        rabbit_cluster(&["stop", &leader]).await;
        log.push(format!(
            "{:>6.1} s  node {leader} killed, leader of {queue}",
            start.elapsed().as_secs_f64()
        ));
        sleep_until(start, run.mul_f64(0.75)).await;
        rabbit_cluster(&["start", &leader]).await;
        log.push(format!(
            "{:>6.1} s  node {leader} back",
            start.elapsed().as_secs_f64()
        ));
        log
    };
    let ingests = [app.ingest_url.clone()];
    let callback = rx.url();
    let (submitted, log) = tokio::join!(
        submit_at_rate(&app.http, &ingests, &who, n, rate, &callback),
        faults
    );
    let submit_secs = start.elapsed().as_secs_f64();

    submitted.assert_all_accepted(n);
    let tally = wait_delivered(
        || rx.requests(),
        &submitted.accepted,
        Duration::from_secs(300),
    )
    .await;
    let total = start.elapsed().as_secs_f64();
    println!("broker node deaths under load ({rate}/s):");
    for line in &log {
        println!("  {line}");
    }
    println!(
        "  submitted {n}, accepted {} in {submit_secs:.1} s; delivered {} of them after {total:.1} s; lost 0; repeated deliveries {} (same webhook-id); conflicting webhook-ids {}; longest pause in deliveries {:.2} s",
        submitted.accepted.len(),
        tally.dispatches.len(),
        tally.repeats,
        tally.conflicting.len(),
        longest_pause(&rx.requests()).as_secs_f64()
    );
    assert!(
        tally.conflicting.is_empty(),
        "dispatches delivered under two webhook-ids: {:?}",
        &tally.conflicting[..tally.conflicting.len().min(5)]
    );
    app.wait_equal(
        "SELECT count(*) FROM dispatches WHERE status = 'completed'",
        n as i64,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_of_every_service_deliver_each_webhook_once() {
    tokio::time::timeout(Duration::from_secs(600), two_of_each())
        .await
        .expect("the test's time limit");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn two_of_each() {
    let n = knob("DISPATCHER_CLUSTER_PAIR_N", 5_000);
    let urls = cluster_urls().await;
    let rx = Receiver::start().await;
    // The first replica of each service runs in this process, the second as its own process.
    let app = TestApp::spawn_with(Services::ALL, &[("DISPATCHER__AMQP__URLS", &urls)]).await;
    let mut env = app.process_env();
    let ingest2 = format!("127.0.0.1:{}", free_port());
    env.insert("DISPATCHER__INGEST__LISTEN".into(), ingest2.clone());
    env.insert(
        "DISPATCHER__STATUS__LISTEN".into(),
        format!("127.0.0.1:{}", free_port()),
    );
    let _second: Vec<ServiceProcess> = [
        "ingest-api",
        "dispatch-worker",
        "webhook-deliverer",
        "status-api",
    ]
    .iter()
    .map(|bin| ServiceProcess::spawn(bin, &env, &format!("{}-{bin}.log", app.prefix)))
    .collect();
    let ingest2 = format!("http://{ingest2}");
    app.wait_ready(&ingest2).await;
    let who = app.create_account("pairs@example.com").await;

    let ingests = [app.ingest_url.clone(), ingest2];
    let submitted = submit_at_rate(&app.http, &ingests, &who, n, 500, &rx.url()).await;
    submitted.assert_all_accepted(n);
    let tally = wait_delivered(
        || rx.requests(),
        &submitted.accepted,
        Duration::from_secs(300),
    )
    .await;
    println!(
        "two of each service: accepted {}, delivered {}, repeated deliveries {}, conflicting webhook-ids {}",
        submitted.accepted.len(),
        tally.dispatches.len(),
        tally.repeats,
        tally.conflicting.len()
    );
    // The receiver always answers 200 and nothing fails: exactly one request per webhook-id.
    assert_eq!(tally.repeats, 0, "a webhook was delivered twice");
    assert!(tally.conflicting.is_empty());
}
