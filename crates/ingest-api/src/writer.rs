//! Groups concurrent submissions into one multi-row insert.
//!
//! Each request hands its row to the writer and waits for the commit that contains it; the writer
//! takes everything queued (up to `batch_max`) and writes it with one statement. Under load this
//! turns thousands of single-row transactions into a few dozen larger ones, and a request is still
//! only answered after its own row is durable.

use dispatcher_db::dispatches::{insert_batch, NewDispatch};
use dispatcher_db::outbox::OutboxWake;
use dispatcher_db::{DbError, Pool};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
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
        batch_max: usize,
        stop: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(batch_max * 8);
        let handle = tokio::spawn(run(pool, wake, rx, batch_max, stop));
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
    batch_max: usize,
    stop: CancellationToken,
) {
    let mut buf = Vec::with_capacity(batch_max);
    loop {
        let first = tokio::select! {
            biased;
            m = rx.recv() => m,
            _ = stop.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { return };
        buf.push(first);
        while buf.len() < batch_max {
            match rx.try_recv() {
                Ok(m) => buf.push(m),
                Err(_) => break,
            }
        }
        let mut rows = Vec::with_capacity(buf.len());
        let mut traces = Vec::with_capacity(buf.len());
        let mut replies = Vec::with_capacity(buf.len());
        for (row, trace, reply) in buf.drain(..) {
            rows.push(row);
            traces.push(trace);
            replies.push(reply);
        }
        metrics::histogram!("dispatcher_ingest_batch_size").record(rows.len() as f64);
        match insert_batch(&pool, &rows, &traces).await {
            Ok(inserted) => {
                if !inserted.is_empty() {
                    wake.committed();
                }
                for (row, reply) in rows.iter().zip(replies) {
                    let _ = reply.send(Ok(inserted.contains(&row.id)));
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
}

fn describe(e: &DbError) -> String {
    e.to_string()
}
