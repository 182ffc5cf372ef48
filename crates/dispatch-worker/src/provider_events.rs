//! Applies stored provider callbacks to their dispatches (newest report wins).

use dispatcher_core::ProviderEventMessage;
use dispatcher_db::dead_letters::{self, NewDeadLetter};
use dispatcher_db::{provider_events, Pool};
use dispatcher_mq::{BatchHandler, HandlerError, Incoming};

pub struct ProviderEventHandler {
    pool: Pool,
    queue: String,
}

impl ProviderEventHandler {
    pub fn new(pool: Pool, queue: String) -> Self {
        Self { pool, queue }
    }
}

impl BatchHandler for ProviderEventHandler {
    async fn handle(&self, batch: &[Incoming]) -> Result<(), HandlerError> {
        let mut keys = Vec::with_capacity(batch.len());
        let mut poison = Vec::new();
        for m in batch {
            match serde_json::from_slice::<ProviderEventMessage>(&m.data) {
                Ok(e) => keys.push((e.provider, e.event_id)),
                Err(e) => poison.push(NewDeadLetter {
                    queue: self.queue.clone(),
                    message_id: m.message_id.clone(),
                    reason: format!("unparseable provider.event: {e}"),
                    body: m.data.clone(),
                }),
            }
        }
        dead_letters::insert_batch(&self.pool, &poison)
            .await
            .map_err(HandlerError::from)?;
        if !keys.is_empty() {
            provider_events::apply(&self.pool, &keys)
                .await
                .map_err(HandlerError::from)?;
        }
        Ok(())
    }
}
