//! Drains `{prefix}.dead`: messages the broker dead-lettered from a work queue (past
//! `x-delivery-limit`, i.e. they kept failing or their consumers kept dying) are stored in
//! `dead_letters` with the broker's reason, where `dispatchctl dlq list` shows them.

use crate::process::one_dead_letter_per_request;
use dispatcher_core::parse_requests;
use dispatcher_db::dead_letters::{self, NewDeadLetter};
use dispatcher_db::Pool;
use dispatcher_mq::{BatchHandler, HandlerError, Incoming, Received};

pub struct DeadLetterHandler {
    pool: Pool,
    queue: String,
    dispatch_queue: String,
}

impl DeadLetterHandler {
    pub fn new(pool: Pool, queue: String, dispatch_queue: String) -> Self {
        Self {
            pool,
            queue,
            dispatch_queue,
        }
    }
}

impl BatchHandler for DeadLetterHandler {
    /// Bodies are stored as they are, readable or not.
    type Body = ();
    const KIND: &'static str = "dead letter";

    fn read(&self, _message: &Incoming) -> Result<(), String> {
        Ok(())
    }

    async fn handle(&self, batch: &[Received<()>]) -> Result<(), HandlerError> {
        let mut rows: Vec<NewDeadLetter> = Vec::with_capacity(batch.len());
        for m in batch {
            let queue = m.header("x-first-death-queue").unwrap_or(&self.queue);
            let reason = format!(
                "dead-lettered by the broker: {}",
                m.header("x-first-death-reason").unwrap_or("unknown reason")
            );
            // A message of requests is stored as one dead letter per request, as the worker
            // quarantines them, so each is listed and replayed on its own.
            let bodies = if queue == self.dispatch_queue {
                one_dead_letter_per_request(m, &parse_requests(&m.data).unwrap_or_default())
            } else {
                vec![(m.message_id.clone(), m.data.clone())]
            };
            rows.extend(bodies.into_iter().map(|(message_id, body)| NewDeadLetter {
                queue: queue.to_owned(),
                message_id,
                reason: reason.clone(),
                body,
            }));
        }
        dead_letters::insert_batch(&self.pool, &rows)
            .await
            .map_err(HandlerError::from)?;
        metrics::counter!("dispatcher_messages_dead_lettered_total", "queue" => self.queue.clone())
            .increment(rows.len() as u64);
        Ok(())
    }
}
