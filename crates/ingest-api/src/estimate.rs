//! `estimatedCompletionTime`: what the cluster currently looks like, refreshed every few seconds.
//!
//! estimate = typical recent processing time + work ahead of a new dispatch / current drain rate
//!
//! - typical processing time: the median `completed_at - queued_at` of the most recent finished
//!   dispatches (a primary-key range scan: ids are UUIDv7, so ordered by time);
//! - work ahead: ready messages in the `dispatch.requested` queue (a passive declare) plus
//!   unpublished outbox rows;
//! - drain rate: outcome events written to the outbox per second since the last sample (an id
//!   range scan), i.e. what all workers together finish right now.

use dispatcher_config::Settings;
use dispatcher_db::Pool;
use dispatcher_mq::Topology;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const REFRESH: Duration = Duration::from_secs(2);
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

#[derive(Clone)]
pub struct Estimator {
    current: Arc<RwLock<Duration>>,
}

impl Estimator {
    pub fn current(&self) -> Duration {
        *self.current.read().expect("estimate")
    }

    pub fn start(settings: Arc<Settings>, pool: Pool, cancel: CancellationToken) -> Self {
        let me = Self {
            current: Arc::new(RwLock::new(DEFAULT_LATENCY)),
        };
        let current = me.current.clone();
        tokio::spawn(async move {
            let topology = Topology::from_settings(&settings);
            let mut channel = None;
            let mut last: Option<(i64, Instant)> = None;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(REFRESH) => {}
                }
                if channel.is_none() {
                    if let Ok(conn) =
                        dispatcher_mq::connect(settings.amqp.url.expose(), "ingest-api-estimator")
                            .await
                    {
                        channel = conn.create_channel().await.ok().map(|c| (conn, c));
                    }
                }
                let depth = match &channel {
                    Some((_, ch)) => match Topology::depth(ch, &topology.dispatch_queue()).await {
                        Ok(d) => d as u64,
                        Err(_) => {
                            channel = None;
                            0
                        }
                    },
                    None => 0,
                };
                let Ok(sample) = sample(&pool, last.map(|l| l.0)).await else {
                    continue;
                };
                let rate = match last {
                    Some((_, at)) => sample.outcomes as f64 / at.elapsed().as_secs_f64().max(0.001),
                    None => 0.0,
                };
                last = Some((sample.max_outbox_id, Instant::now()));
                let estimate = compute(sample.median, depth + sample.unsent, rate);
                *current.write().expect("estimate") = estimate;
                metrics::gauge!("dispatcher_estimated_completion_seconds")
                    .set(estimate.as_secs_f64());
            }
        });
        me
    }
}

struct Sample {
    median: Option<Duration>,
    unsent: u64,
    max_outbox_id: i64,
    /// Outcome events written since the previous sample's last outbox id.
    outcomes: i64,
}

async fn sample(pool: &Pool, since: Option<i64>) -> Result<Sample, dispatcher_db::DbError> {
    let client = pool.get().await?;
    let median: Option<f64> = client
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM completed_at - queued_at))::float8
             FROM (SELECT completed_at, queued_at FROM dispatches
                   WHERE completed_at IS NOT NULL ORDER BY id DESC LIMIT 200) recent",
            &[],
        )
        .await?
        .get(0);
    let row = client
        .query_one(
            "SELECT COALESCE(max(id), 0),
                    count(*) FILTER (WHERE sent_at IS NULL)
             FROM (SELECT id, sent_at FROM outbox ORDER BY id DESC LIMIT 100000) o",
            &[],
        )
        .await?;
    let max_outbox_id: i64 = row.get(0);
    let unsent: i64 = row.get(1);
    let outcomes: i64 = match since {
        Some(since) => client
            .query_one(
                "SELECT count(*) FROM outbox WHERE id > $1 AND id <= $2
                   AND routing_key IN ('dispatch.completed', 'dispatch.failed')",
                &[&since, &max_outbox_id],
            )
            .await?
            .get(0),
        None => 0,
    };
    Ok(Sample {
        median: median.map(|m| Duration::from_secs_f64(m.max(0.0))),
        unsent: unsent as u64,
        max_outbox_id,
        outcomes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
