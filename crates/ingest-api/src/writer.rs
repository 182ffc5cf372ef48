//! Groups concurrent submissions into multi-row inserts, several in flight at once.
//!
//! Each request hands its row to the writer and waits for the commit that contains it; the writer
//! takes everything queued (up to `batch_max`) and writes it with one statement on one of
//! `write_lanes` connections. A request never waits for a commit ahead of it while a lane is
//! free, and a request arriving while every lane is busy joins the next batch, so batches are one
//! row when the system is quiet and grow with the load. Under load this turns thousands of
//! single-row transactions into a few dozen larger ones, and a request is still only answered
//! after its own row is durable.

use dispatcher_config::IngestSettings;
use dispatcher_db::dispatches::{insert_batch, NewDispatch};
use dispatcher_db::outbox::OutboxWake;
use dispatcher_db::{DbError, Pool};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
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
    let batch_max = settings.batch_max;
    let lanes = Arc::new(Semaphore::new(settings.write_lanes.max(1)));
    let mut writing = JoinSet::new();
    loop {
        // A free lane first: while every lane is busy, submissions gather in the channel and
        // the next batch takes them together.
        let lane = lanes.clone().acquire_owned().await.expect("never closed");
        let first = tokio::select! {
            biased;
            m = rx.recv() => m,
            _ = stop.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { break };
        let mut batch = Vec::with_capacity(batch_max);
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        writing.spawn(write(
            pool.clone(),
            wake.clone(),
            batch,
            settings.requests_per_message,
            lane,
        ));
        while writing.try_join_next().is_some() {}
    }
    // Stopping: every accepted row still gets its commit and its answer.
    while writing.join_next().await.is_some() {}
}

/// Writes one batch in one transaction and answers each of its requests.
async fn write(
    pool: Pool,
    wake: OutboxWake,
    mut batch: Vec<Job>,
    requests_per_message: usize,
    _lane: OwnedSemaphorePermit,
) {
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
