//! `estimatedCompletionTime`: what the cluster currently looks like, refreshed every few seconds.
//!
//! estimate = typical recent processing time + work ahead of a new dispatch / current drain rate
//!
//! - typical processing time: the median `completed_at - queued_at` of the most recent finished
//!   dispatches (a primary-key range scan: ids are UUIDv7, so ordered by time);
//! - work ahead: ready messages in the `dispatch.requested` and webhook event queues (passive
//!   declares) plus unpublished outbox rows. An event message may carry a worker batch's
//!   outcome events (`worker.events_per_message`), so the event queue's messages are weighed by
//!   the events a worker batch finishes on average: the recent finished dispatches per finishing
//!   transaction (rows a transaction wrote share its `xmin`); likewise the dispatch queue's
//!   messages by the requests an ingest transaction accepted (`ingest.requests_per_message`),
//!   from the recent dispatches still queued;
//! - drain rate: how many of the most recent dispatches (a primary-key range scan) finished in
//!   the last few seconds, i.e. what all workers together finish right now.

//!
//! The same figures pace submissions: the queue depths are sampled every [`DEPTH_REFRESH`], and
//! while the work waiting would take longer than `ingest.pace_target` to drain, a new submission
//! waits its turn (up to `ingest.pace_max_wait`) before it is written. Clients in a closed loop
//! then go at the pace of delivery, and a dispatch's wait in line stays near the target instead
//! of the queue growing for as long as ingest outruns the workers. A batch is bulk work the
//! client chose to put in line: batches are paced only once the work waiting is
//! `ingest.pace_batch_burst` past the target, so a burst of batches goes in at full speed and
//! the backlog it leaves is bounded all the same.

use dispatcher_config::Settings;
use dispatcher_db::Pool;
use dispatcher_mq::Topology;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const REFRESH: Duration = Duration::from_secs(2);
/// How often the queue depths are read (two passive declares), for pacing.
const DEPTH_REFRESH: Duration = Duration::from_millis(50);
/// Work waiting below which nothing is paced, whatever the rate: a batch's worth, so consumers
/// keep taking whole batches.
const PACE_FLOOR: u64 = 32;
/// How often a paced submission looks again.
const PACE_STEP: Duration = Duration::from_millis(5);
/// Used until the first sample, and as the floor: nothing is faster than one round trip.
const DEFAULT_LATENCY: Duration = Duration::from_millis(500);

/// Combines the three measurements. Pure, so the arithmetic is tested on its own.
pub fn compute(median_latency: Option<Duration>, backlog: u64, drain_per_sec: f64) -> Duration {
    let base = median_latency
        .unwrap_or(DEFAULT_LATENCY)
        .max(Duration::from_millis(10));
    if backlog == 0 {
        return base;
    }
    // No finished work in the last interval but work waiting: assume a slow cluster (10/s)
    // rather than promising the impossible.
    let rate = if drain_per_sec > 0.0 {
        drain_per_sec
    } else {
        10.0
    };
    base + Duration::from_secs_f64((backlog as f64 / rate).min(86_400.0))
}

/// Past `ingest.max_backlog` accepted messages waiting, submissions are refused with `429
/// overloaded` and a `Retry-After` of the time the backlog needs to drain to the limit (1 to 60
/// s): when delivery cannot keep pace with ingest, clients wait instead of the backlog growing
/// without bound. Pure, like [`compute`].
pub fn push_back(backlog: u64, max_backlog: u64, drain_per_sec: f64) -> Option<u64> {
    if max_backlog == 0 || backlog <= max_backlog {
        return None;
    }
    let rate = drain_per_sec.max(10.0);
    Some((((backlog - max_backlog) as f64 / rate).ceil() as u64).clamp(1, 60))
}

/// Whether a new submission should wait its turn: the work waiting (`backlog`) would take
/// longer than `target` to drain at `drain_per_sec`, by more than `burst` dispatches (0 for a
/// single submission, `ingest.pace_batch_burst` for a batch). Never while nothing is finishing
/// (a stalled pipeline is `ingest.max_backlog`'s business: waiting would not help), nor below
/// [`PACE_FLOOR`]. A zero target turns pacing off. Pure, like [`compute`].
pub fn pace(backlog: u64, drain_per_sec: f64, target: Duration, burst: u64) -> bool {
    if target.is_zero() || drain_per_sec <= 0.0 {
        return false;
    }
    let allowed = (drain_per_sec * target.as_secs_f64()) as u64;
    backlog > allowed.max(PACE_FLOOR).saturating_add(burst)
}

/// Work waiting in a queue of `messages` that carry `per_message` items each on average (at
/// least one). Pure, like [`compute`].
pub fn weigh(messages: u32, per_message: f64) -> u64 {
    (f64::from(messages) * per_message.max(1.0)).round() as u64
}

/// The work waiting in the dispatch and event queues (`ready[0]`, `ready[1]`: ready messages,
/// and whether the queue has consumers), each message weighed by the items its queue's messages
/// carry (`per_message`, in the same order): all of it, and the part that consumers drain.
fn weigh_queues(ready: [(u32, bool); 2], per_message: [f64; 2]) -> (u64, u64) {
    let (mut depth, mut consumed) = (0, 0);
    for ((messages, has_consumers), per_message) in ready.into_iter().zip(per_message) {
        let work = weigh(messages, per_message);
        depth += work;
        // A queue nobody consumes does not drain however long new work waits: it is not
        // paced for.
        if has_consumers {
            consumed += work;
        }
    }
    (depth, consumed)
}

#[derive(Clone, Copy)]
struct Snapshot {
    estimate: Duration,
    backlog: u64,
    drain_per_sec: f64,
    /// Items per message recently, in the dispatch queue (requests per `dispatch.requested`)
    /// and in the event queue (outcome events per message): see [`weigh`].
    per_message: [f64; 2],
}

#[derive(Clone)]
pub struct Estimator {
    current: Arc<RwLock<Snapshot>>,
    /// Ready messages in the work queues that have consumers, refreshed every
    /// [`DEPTH_REFRESH`].
    queued: Arc<AtomicU64>,
    max_backlog: u64,
    pace_target: Duration,
    pace_max_wait: Duration,
    pace_batch_burst: u64,
}

impl Estimator {
    pub fn current(&self) -> Duration {
        self.current.read().expect("estimate").estimate
    }

    /// `Some(seconds to wait)` while the backlog is past `ingest.max_backlog`.
    pub fn overloaded(&self) -> Option<u64> {
        let s = *self.current.read().expect("estimate");
        push_back(s.backlog, self.max_backlog, s.drain_per_sec)
    }

    /// Holds a new submission back while the work waiting is past `ingest.pace_target` at the
    /// current drain rate, for at most `ingest.pace_max_wait`.
    pub async fn wait_turn(&self) {
        self.wait_in_line(0).await
    }

    /// As [`Self::wait_turn`], for a batch: only once the work waiting is also
    /// `ingest.pace_batch_burst` past the target.
    pub async fn wait_batch_turn(&self) {
        self.wait_in_line(self.pace_batch_burst).await
    }

    async fn wait_in_line(&self, burst: u64) {
        let started = tokio::time::Instant::now();
        let over = || {
            let drain = self.current.read().expect("estimate").drain_per_sec;
            pace(
                self.queued.load(Ordering::Relaxed),
                drain,
                self.pace_target,
                burst,
            )
        };
        if !over() {
            return;
        }
        while over() && started.elapsed() < self.pace_max_wait {
            tokio::time::sleep(PACE_STEP).await;
        }
        metrics::counter!("dispatcher_ingest_paced_total").increment(1);
        metrics::histogram!("dispatcher_ingest_pace_seconds")
            .record(started.elapsed().as_secs_f64());
    }

    pub fn start(settings: Arc<Settings>, pool: Pool, cancel: CancellationToken) -> Self {
        let me = Self {
            current: Arc::new(RwLock::new(Snapshot {
                estimate: DEFAULT_LATENCY,
                backlog: 0,
                drain_per_sec: 0.0,
                per_message: [1.0; 2],
            })),
            queued: Arc::new(AtomicU64::new(0)),
            max_backlog: settings.ingest.max_backlog,
            pace_target: settings.ingest.pace_target,
            pace_max_wait: settings.ingest.pace_max_wait,
            pace_batch_burst: settings.ingest.pace_batch_burst,
        };
        let current = me.current.clone();
        let queued = me.queued.clone();
        // Without pacing the depths are only needed with each full sample.
        let depth_every = if settings.ingest.pace_target.is_zero() {
            REFRESH
        } else {
            DEPTH_REFRESH
        };
        tokio::spawn(async move {
            let topology = Topology::from_settings(&settings);
            // One connection for the life of the estimator, closed when it stops. After a
            // failure (broker down, a queue not declared yet: that closes the channel) it tries
            // again every REFRESH, not every tick, so a missing queue costs no connection churn.
            let mut conn: Option<lapin::Connection> = None;
            let mut channel: Option<lapin::Channel> = None;
            let mut retry_at = tokio::time::Instant::now();
            let mut next_sample = tokio::time::Instant::now() + REFRESH;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => {
                        if let Some(c) = conn.take() {
                            let _ = c.close(200, "shutdown".into()).await;
                        }
                        return;
                    }
                    _ = tokio::time::sleep(depth_every) => {}
                }
                if conn.as_ref().is_some_and(|c| !c.status().connected()) {
                    (conn, channel) = (None, None);
                }
                if channel.is_none() && tokio::time::Instant::now() >= retry_at {
                    retry_at = tokio::time::Instant::now() + REFRESH;
                    if conn.is_none() {
                        conn = dispatcher_mq::connect_any(&settings.amqp, "ingest-api-estimator")
                            .await
                            .ok();
                    }
                    if let Some(c) = &conn {
                        channel = c.create_channel().await.ok();
                    }
                }
                // Ready messages in the dispatch and event queues, and whether each has
                // consumers: weighed by the items their messages carry when they are used, so a
                // fresh sample's figures apply to the depths read with it.
                let mut ready = [(0, false); 2];
                if let Some(ch) = &channel {
                    let queues = [topology.dispatch_queue(), topology.webhook_events_queue()];
                    for (slot, queue) in ready.iter_mut().zip(&queues) {
                        match Topology::depth_and_consumers(ch, queue).await {
                            Ok((d, consumers)) => *slot = (d, consumers > 0),
                            Err(_) => {
                                channel = None;
                                break;
                            }
                        }
                    }
                }
                let per_message = current.read().expect("estimate").per_message;
                let (_, consumed) = weigh_queues(ready, per_message);
                queued.store(consumed, Ordering::Relaxed);
                metrics::gauge!("dispatcher_ingest_work_waiting").set(consumed as f64);
                if tokio::time::Instant::now() < next_sample {
                    continue;
                }
                next_sample = tokio::time::Instant::now() + REFRESH;
                let Ok(sample) = sample(&pool).await else {
                    continue;
                };
                let most_events = settings.worker.events_per_message.max(1) as f64;
                let most_requests = settings.ingest.requests_per_message.max(1) as f64;
                let per_message = [
                    sample.queued_per_commit.clamp(1.0, most_requests),
                    sample.finished_per_commit.clamp(1.0, most_events),
                ];
                let backlog = weigh_queues(ready, per_message).0 + sample.unsent;
                let estimate = compute(sample.median, backlog, sample.drain_per_sec);
                *current.write().expect("estimate") = Snapshot {
                    estimate,
                    backlog,
                    drain_per_sec: sample.drain_per_sec,
                    per_message,
                };
                metrics::gauge!("dispatcher_ingest_backlog").set(backlog as f64);
                metrics::gauge!("dispatcher_ingest_drain_per_second").set(sample.drain_per_sec);
                metrics::gauge!("dispatcher_ingest_requests_per_message").set(per_message[0]);
                metrics::gauge!("dispatcher_ingest_events_per_message").set(per_message[1]);
                metrics::gauge!("dispatcher_estimated_completion_seconds")
                    .set(estimate.as_secs_f64());
            }
        });
        me
    }
}

/// Seconds over which finished dispatches are counted for the drain rate.
const RATE_WINDOW: f64 = 5.0;

struct Sample {
    median: Option<Duration>,
    unsent: u64,
    drain_per_sec: f64,
    /// Recent finished dispatches per transaction that finished them (1 without any).
    finished_per_commit: f64,
    /// Recent dispatches still queued per transaction that accepted them (1 without any): the
    /// requests a `dispatch.requested` message carries, up to `ingest.requests_per_message`.
    queued_per_commit: f64,
}

async fn sample(pool: &Pool) -> Result<Sample, dispatcher_db::DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM completed_at - queued_at))::float8,
                    count(*) FILTER (WHERE completed_at > now() - make_interval(secs => $1)),
                    count(*) FILTER (WHERE completed_at IS NOT NULL)::float8
                        / NULLIF(count(DISTINCT xmin::text) FILTER (WHERE completed_at IS NOT NULL), 0),
                    count(*) FILTER (WHERE status = 'queued')::float8
                        / NULLIF(count(DISTINCT xmin::text) FILTER (WHERE status = 'queued'), 0)
             FROM (SELECT completed_at, queued_at, status, xmin FROM dispatches
                   ORDER BY id DESC LIMIT 5000) recent",
            &[&RATE_WINDOW],
        )
        .await?;
    let median: Option<f64> = row.get(0);
    let finished: i64 = row.get(1);
    let per_commit: Option<f64> = row.get(2);
    let queued_per_commit: Option<f64> = row.get(3);
    let unsent: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT 100000) o",
            &[],
        )
        .await?
        .get(0);
    Ok(Sample {
        median: median.map(|m| Duration::from_secs_f64(m.max(0.0))),
        unsent: unsent as u64,
        drain_per_sec: finished as f64 / RATE_WINDOW,
        finished_per_commit: per_commit.unwrap_or(1.0),
        queued_per_commit: queued_per_commit.unwrap_or(1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submissions_wait_their_turn_only_behind_more_than_the_target_of_work() {
        let target = Duration::from_millis(25);
        // 1 000/s for 25 ms is 25 messages, under the floor: a batch's worth is never paced.
        assert!(!pace(PACE_FLOOR, 1_000.0, target, 0));
        assert!(pace(PACE_FLOOR + 1, 1_000.0, target, 0));
        // 4 000/s for 25 ms is 100 messages.
        assert!(!pace(100, 4_000.0, target, 0));
        assert!(pace(101, 4_000.0, target, 0));
        // Nothing finishing (a stopped worker): waiting would not help.
        assert!(!pace(1_000_000, 0.0, target, 0));
        // A zero target turns pacing off.
        assert!(!pace(1_000_000, 1_000.0, Duration::ZERO, 0));
    }

    #[test]
    fn batches_are_paced_only_past_their_burst() {
        let target = Duration::from_millis(25);
        // 4 000/s for 25 ms is 100 messages, and a batch may put 50 000 more in line.
        assert!(!pace(50_100, 4_000.0, target, 50_000));
        assert!(pace(50_101, 4_000.0, target, 50_000));
        // Below the floor the burst counts from the floor.
        assert!(!pace(PACE_FLOOR + 10, 100.0, target, 10));
        assert!(pace(PACE_FLOOR + 11, 100.0, target, 10));
        // Still never while nothing finishes, nor with the target at 0; a huge burst never
        // overflows.
        assert!(!pace(u64::MAX, 0.0, target, 50_000));
        assert!(!pace(u64::MAX, 1_000.0, Duration::ZERO, 50_000));
        assert!(!pace(u64::MAX, 1_000.0, target, u64::MAX));
    }

    #[test]
    fn event_messages_weigh_as_the_events_they_carry() {
        assert_eq!(weigh(10, 1.0), 10);
        assert_eq!(weigh(10, 12.5), 125);
        // Never less than a message's worth: a message carries at least one event.
        assert_eq!(weigh(10, 0.0), 10);
        assert_eq!(weigh(0, 128.0), 0);
        assert_eq!(weigh(u32::MAX, 128.0), u32::MAX as u64 * 128);
    }

    #[test]
    fn a_backlog_past_the_limit_asks_clients_to_wait_until_it_drains() {
        assert_eq!(push_back(500, 1_000, 100.0), None);
        assert_eq!(push_back(1_000, 1_000, 100.0), None);
        assert_eq!(push_back(1_500, 1_000, 100.0), Some(5));
        // At least a second, at most a minute, and a stalled drain counts as 10/s.
        assert_eq!(push_back(1_001, 1_000, 5_000.0), Some(1));
        assert_eq!(push_back(1_000_000, 1_000, 0.0), Some(60));
        // 0 turns the limit off.
        assert_eq!(push_back(u64::MAX, 0, 0.0), None);
    }

    #[test]
    fn an_idle_cluster_estimates_its_typical_latency() {
        assert_eq!(
            compute(Some(Duration::from_millis(40)), 0, 0.0),
            Duration::from_millis(40)
        );
        assert_eq!(compute(None, 0, 0.0), DEFAULT_LATENCY);
    }

    #[test]
    fn a_backlog_adds_the_time_to_drain_it() {
        let e = compute(Some(Duration::from_millis(100)), 5000, 1000.0);
        assert_eq!(e, Duration::from_millis(5100));
    }

    #[test]
    fn a_stalled_cluster_does_not_promise_the_impossible() {
        let e = compute(Some(Duration::from_millis(100)), 100, 0.0);
        assert_eq!(e, Duration::from_millis(10_100));
        assert!(compute(None, u64::MAX, 0.0) <= Duration::from_secs(86_401));
    }
}
