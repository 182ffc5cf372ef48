//! Groups concurrent submissions into multi-row inserts, several in flight at once under load.
//!
//! Each request hands its row to the writer and waits for the commit that contains it; the writer
//! takes everything queued (up to `batch_max`) and writes it with one statement. A request that
//! arrives while nothing is being written is written at once, so batches are one row when the
//! system is quiet. One arriving while a batch is being written joins the next batch, which
//! starts when that write commits: each commit carries everything that arrived during the one
//! before, so batches grow with the load and the commits per second stay near what the database
//! can take. A further batch goes beside those in flight (up to `write_lanes`, each on its own
//! pooled connection) only once it holds `batch_max / write_lanes` requests: then splitting the
//! work pays for the extra commit. Measured on two cores, a batch of any size going beside
//! another cost more CPU per dispatch than it saved waiting (bench/README.md). A request is only
//! answered after its own row is durable.

use dispatcher_config::IngestSettings;
use dispatcher_db::dispatches::{insert_batch, NewDispatch};
use dispatcher_db::outbox::OutboxWake;
use dispatcher_db::{DbError, Pool};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

type Reply = oneshot::Sender<Result<bool, String>>;
/// A row, the trace context of the request that submitted it, and where to send the result.
type Job = (NewDispatch, Option<String>, Reply);

#[derive(Clone)]
pub struct BatchWriter {
    tx: mpsc::Sender<Job>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

impl BatchWriter {
    pub fn start(
        pool: Pool,
        wake: OutboxWake,
        settings: &IngestSettings,
        stop: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.batch_max * 8);
        let handle = tokio::spawn(run(pool, wake, rx, settings.clone(), stop));
        (Self { tx }, handle)
    }

    /// Writes the dispatch; `Ok(true)` once committed, `Ok(false)` if its idempotency key already
    /// existed (nothing written).
    pub async fn write(&self, row: NewDispatch) -> Result<bool, WriteError> {
        let (reply, rx) = oneshot::channel();
        // Captured here, on the request's task, so the message continues the request's trace.
        let traceparent = dispatcher_telemetry::current_traceparent();
        self.tx
            .send((row, traceparent, reply))
            .await
            .map_err(|_| WriteError::Unavailable("writer stopped".into()))?;
        rx.await
            .map_err(|_| WriteError::Unavailable("writer stopped".into()))?
            .map_err(WriteError::Unavailable)
    }
}

async fn run(
    pool: Pool,
    wake: OutboxWake,
    mut rx: mpsc::Receiver<Job>,
    settings: IngestSettings,
    stop: CancellationToken,
) {
    let batch_max = settings.batch_max.max(1);
    let lanes = settings.write_lanes.max(1);
    let opens_lane = opens_lane_at(batch_max, lanes);
    let mut writing = JoinSet::new();
    loop {
        // A free lane first: while every lane is busy, submissions gather in the channel and
        // the next batch takes them together.
        while writing.len() >= lanes {
            writing.join_next().await;
        }
        let first = tokio::select! {
            biased;
            m = rx.recv() => m,
            _ = stop.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { break };
        let mut batch = Vec::with_capacity(batch_max);
        batch.push(first);
        take_queued(&mut rx, &mut batch, batch_max);
        // While batches are being written, a smaller one waits for them to commit, taking what
        // arrives meanwhile; only a batch of `opens_lane` requests goes beside them.
        while !writing.is_empty() && batch.len() < opens_lane {
            tokio::select! {
                biased;
                _ = writing.join_next() => {}
                m = rx.recv() => match m {
                    Some(m) => {
                        batch.push(m);
                        take_queued(&mut rx, &mut batch, batch_max);
                    }
                    None => break,
                },
            }
        }
        // Writes that finished but were not joined yet are not in flight.
        while writing.try_join_next().is_some() {}
        if !writing.is_empty() {
            metrics::counter!("dispatcher_ingest_parallel_writes_total").increment(1);
        }
        writing.spawn(write(
            pool.clone(),
            wake.clone(),
            batch,
            settings.requests_per_message,
        ));
    }
    // Stopping: every accepted row still gets its commit and its answer.
    while writing.join_next().await.is_some() {}
}

/// The size at which a batch is written beside those in flight rather than after them.
fn opens_lane_at(batch_max: usize, lanes: usize) -> usize {
    (batch_max / lanes.max(1)).max(1)
}

/// Moves what is already queued into `batch`, up to `batch_max`, without waiting.
fn take_queued(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>, batch_max: usize) {
    while batch.len() < batch_max {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => break,
        }
    }
}

/// Writes one batch in one transaction and answers each of its requests.
async fn write(pool: Pool, wake: OutboxWake, mut batch: Vec<Job>, requests_per_message: usize) {
    // Batches in flight together take row locks on idempotency keys in one order (rows without
    // a key lock nothing another batch could want), so two of them never deadlock.
    batch.sort_by(|a, b| {
        (a.0.account_id, &a.0.idempotency_key).cmp(&(b.0.account_id, &b.0.idempotency_key))
    });
    let mut rows = Vec::with_capacity(batch.len());
    let mut traces = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for (row, trace, reply) in batch {
        rows.push(row);
        traces.push(trace);
        replies.push(reply);
    }
    metrics::histogram!("dispatcher_ingest_batch_size").record(rows.len() as f64);
    match insert_batch(&pool, &rows, &traces, requests_per_message).await {
        Ok(inserted) => {
            wake.hand_over(inserted.outbox);
            for (row, reply) in rows.iter().zip(replies) {
                let _ = reply.send(Ok(inserted.ids.contains(&row.id)));
            }
        }
        Err(e) => {
            let msg = describe(&e);
            for reply in replies {
                let _ = reply.send(Err(msg.clone()));
            }
        }
    }
}

fn describe(e: &DbError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_beside_others_only_with_its_share_of_the_largest_batch() {
        // The defaults: 256 per batch over 4 lanes.
        assert_eq!(opens_lane_at(256, 4), 64);
        // One lane: never beside another (the writer waits for a free lane first anyway).
        assert_eq!(opens_lane_at(256, 1), 256);
        // Small batches or many lanes: any batch may go beside the others.
        assert_eq!(opens_lane_at(4, 4), 1);
        assert_eq!(opens_lane_at(4, 8), 1);
        assert_eq!(opens_lane_at(1, 0), 1);
    }
}
