//! What the cluster tests share: the cluster's nodes, load at a fixed rate, and counting what
//! the receiver got.

use dispatcher_db::accounts::CreatedAccount;
use dispatcher_e2e::{workspace_root, Received};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Runs `scripts/rabbit-cluster.sh` with `args`, within a minute and a half.
pub async fn rabbit_cluster(args: &[&str]) -> String {
    let script = workspace_root().join("scripts/rabbit-cluster.sh");
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("bash")
            .arg(&script)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("rabbit-cluster.sh {args:?} took over 90 s"))
    .unwrap();
    assert!(
        out.status.success(),
        "rabbit-cluster.sh {args:?} failed (run `make test-cluster`, which starts the cluster): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The cluster's AMQP URLs, comma-separated, after making sure all three nodes run.
pub async fn cluster_urls() -> String {
    for n in ["1", "2", "3"] {
        rabbit_cluster(&["start", n]).await;
    }
    rabbit_cluster(&["urls"]).await.trim().to_owned()
}

/// Which node (1–3) leads the queue holding the most messages among those named `prefix.*`,
/// and that queue's name.
pub async fn busiest_queue_leader(prefix: &str) -> (String, String) {
    let listing = rabbit_cluster(&["queues"]).await;
    listing
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, leader, messages) = (f.next()?, f.next()?, f.next()?.parse::<u64>().ok()?);
            name.starts_with(&format!("{prefix}."))
                .then(|| (messages, name.to_owned(), leader.to_owned()))
        })
        .max()
        .map(|(_, name, leader)| (leader, name))
        .unwrap_or_else(|| panic!("no queue of {prefix} in:\n{listing}"))
}

/// Submissions waiting for their answer at once, at most.
const MAX_IN_FLIGHT: usize = 128;

/// What a run at a fixed rate got back.
#[derive(Debug, Default)]
pub struct Submitted {
    /// Dispatch ids answered 202.
    pub accepted: Vec<String>,
    /// Answers other than 202, by status (0: no answer at all).
    pub refused: HashMap<u16, usize>,
    /// The first request error, if any request got no answer.
    pub first_error: Option<String>,
}

impl Submitted {
    /// Every one of `n` submissions was answered 202 (the ingest needs neither the broker nor
    /// another replica to accept).
    pub fn assert_all_accepted(&self, n: usize) {
        assert!(
            self.refused.is_empty(),
            "refused: {:?}, first error: {:?}",
            self.refused,
            self.first_error
        );
        assert_eq!(self.accepted.len(), n);
    }
}

/// Submits `n` async dispatches at `rate` per second, round robin over `ingests`, each with
/// `callback`; a request is answered or abandoned within 30 s. At most `MAX_IN_FLIGHT` wait for
/// their answers: a slower system is offered less, not more connections.
pub async fn submit_at_rate(
    http: &reqwest::Client,
    ingests: &[String],
    who: &CreatedAccount,
    n: usize,
    rate: usize,
    callback: &str,
) -> Submitted {
    let mut out = Submitted::default();
    let mut in_flight = FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (rate / 100).max(1);
    let mut sent = 0;
    while sent < n || !in_flight.is_empty() {
        let room = MAX_IN_FLIGHT.saturating_sub(in_flight.len());
        tokio::select! {
            _ = tick.tick(), if sent < n && room > 0 => {
                for _ in 0..per_tick.min(n - sent).min(room) {
                    let base = &ingests[sent % ingests.len()];
                    let req = http
                        .post(format!("{base}/v1/dispatches?async=true"))
                        .basic_auth(&who.email, Some(&who.password))
                        .timeout(Duration::from_secs(30))
                        .json(&serde_json::json!({
                            "template": {"format": "text", "body": "n={{ i }}"},
                            "data": {"i": sent},
                            "callbackUrl": callback,
                        }))
                        .send();
                    in_flight.push(async move {
                        match req.await {
                            Ok(r) if r.status() == 202 => {
                                let v: serde_json::Value = r.json().await.unwrap_or_default();
                                Ok(v["dispatchId"].as_str().unwrap_or_default().to_owned())
                            }
                            Ok(r) => Err((r.status().as_u16(), None)),
                            Err(e) => Err((0, Some(format!("{e:?}")))),
                        }
                    });
                    sent += 1;
                }
            }
            Some(answer) = in_flight.next() => match answer {
                Ok(id) => out.accepted.push(id),
                Err((status, error)) => {
                    *out.refused.entry(status).or_default() += 1;
                    if out.first_error.is_none() {
                        out.first_error = error;
                    }
                }
            },
        }
    }
    out
}

/// The `dispatch.completed` webhooks a receiver got, counted.
#[derive(Debug)]
pub struct Tally {
    /// Dispatches with at least one completion webhook.
    pub dispatches: HashSet<String>,
    /// Requests beyond the first for a webhook-id (at-least-once repeats).
    pub repeats: usize,
    /// Dispatches whose completion came with more than one webhook-id: a real duplicate.
    pub conflicting: Vec<String>,
}

pub fn tally(requests: &[Received]) -> Tally {
    let mut per_webhook: HashMap<&str, usize> = HashMap::new();
    let mut ids_of: HashMap<String, HashSet<&str>> = HashMap::new();
    for r in requests {
        let body = r.json();
        if body["type"] != "dispatch.completed" {
            continue;
        }
        let webhook = r.header("webhook-id");
        *per_webhook.entry(webhook).or_default() += 1;
        let dispatch = body["data"]["dispatchId"].as_str().unwrap_or_default();
        ids_of
            .entry(dispatch.to_owned())
            .or_default()
            .insert(webhook);
    }
    Tally {
        repeats: per_webhook.values().map(|n| n - 1).sum(),
        conflicting: ids_of
            .iter()
            .filter(|(_, ids)| ids.len() > 1)
            .map(|(d, _)| d.clone())
            .collect(),
        dispatches: ids_of.into_keys().collect(),
    }
}

/// The longest time between two consecutive requests at the receiver: how long deliveries
/// stopped while the system failed over.
pub fn longest_pause(requests: &[Received]) -> Duration {
    let mut at: Vec<_> = requests.iter().map(|r| r.at).collect();
    at.sort();
    at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// Waits, at most `limit`, until the receiver has a completion for every id in `want`; returns
/// the final tally.
pub async fn wait_delivered(
    requests: impl Fn() -> Vec<Received>,
    want: &[String],
    limit: Duration,
) -> Tally {
    let want: HashSet<&String> = want.iter().collect();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let t = tally(&requests());
        let missing = want
            .iter()
            .filter(|id| !t.dispatches.contains(**id))
            .count();
        if missing == 0 {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} accepted dispatches never got their webhook within {limit:?}",
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
