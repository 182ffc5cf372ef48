//! Drains `{prefix}.dead`: messages the broker dead-lettered from a work queue (past
//! `x-delivery-limit`, i.e. they kept failing or their consumers kept dying) are stored in
//! `dead_letters` with the broker's reason, where `dispatchctl dlq list` shows them.

use dispatcher_db::dead_letters::{self, NewDeadLetter};
use dispatcher_db::Pool;
use dispatcher_mq::{BatchHandler, HandlerError, Incoming};

pub struct DeadLetterHandler {
    pool: Pool,
    queue: String,
}

impl DeadLetterHandler {
    pub fn new(pool: Pool, queue: String) -> Self {
        Self { pool, queue }
    }
}

impl BatchHandler for DeadLetterHandler {
    async fn handle(&self, batch: &[Incoming]) -> Result<(), HandlerError> {
        let rows: Vec<NewDeadLetter> = batch
            .iter()
            .map(|m| NewDeadLetter {
                queue: m
                    .header("x-first-death-queue")
                    .unwrap_or(&self.queue)
                    .to_owned(),
                message_id: m.message_id.clone(),
                reason: format!(
                    "dead-lettered by the broker: {}",
                    m.header("x-first-death-reason").unwrap_or("unknown reason")
                ),
                body: m.data.clone(),
            })
            .collect();
        dead_letters::insert_batch(&self.pool, &rows)
            .await
            .map_err(HandlerError::from)?;
        metrics::counter!("dispatcher_messages_dead_lettered_total", "queue" => self.queue.clone())
            .increment(rows.len() as u64);
        Ok(())
    }
}
