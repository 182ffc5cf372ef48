//! Sync submissions wait here for their dispatch to finish.
//!
//! The worker's finishing UPDATE fires a trigger that NOTIFYs `dispatcher_finished` with the
//! dispatch id (only for dispatches submitted in sync mode). One LISTEN connection per ingest
//! process fans the notifications out to the waiting requests. After a reconnect every waiter is
//! woken so it re-reads its dispatch, since notifications sent while disconnected are lost.

use dispatcher_config::DatabaseSettings;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Default)]
pub struct Waiters {
    by_id: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
    /// Bumped on reconnect: every waiter re-checks.
    epoch: watch::Sender<u64>,
}

/// One waiting request. Dropping it (the request answered, or cancelled by a client that went
/// away) removes its entry once no other request waits for the same dispatch.
pub struct Waiter {
    pub own: watch::Receiver<u64>,
    pub all: watch::Receiver<u64>,
    id: Uuid,
    registry: Arc<Waiters>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.registry.by_id.lock().expect("waiters");
        // This waiter's own receiver is still alive here.
        if map.get(&self.id).is_some_and(|tx| tx.receiver_count() <= 1) {
            map.remove(&self.id);
        }
    }
}

impl Waiters {
    pub fn start(settings: &DatabaseSettings, cancel: CancellationToken) -> Arc<Self> {
        let me = Arc::new(Self::default());
        let mut rx = dispatcher_db::listen::spawn_listener(
            settings.clone(),
            &["dispatcher_finished"],
            cancel,
        );
        let w = me.clone();
        tokio::spawn(async move {
            while let Some((channel, payload)) = rx.recv().await {
                if channel.is_empty() {
                    w.epoch.send_modify(|e| *e += 1);
                    continue;
                }
                if let Ok(id) = payload.parse::<Uuid>() {
                    if let Some(tx) = w.by_id.lock().expect("waiters").get(&id) {
                        tx.send_modify(|e| *e += 1);
                    }
                }
            }
        });
        me
    }

    pub fn register(self: &Arc<Self>, id: Uuid) -> Waiter {
        let mut map = self.by_id.lock().expect("waiters");
        let own = map
            .entry(id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Waiter {
            own,
            all: self.epoch.subscribe(),
            id,
            registry: self.clone(),
        }
    }

    /// Requests waiting now (distinct dispatches).
    pub fn len(&self) -> usize {
        self.by_id.lock().expect("waiters").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_waiter_leaves_nothing_behind_unless_another_waits() {
        let w = Arc::new(Waiters::default());
        let id = Uuid::new_v4();
        let first = w.register(id);
        let second = w.register(id);
        drop(first);
        assert_eq!(w.len(), 1, "the second still waits");
        drop(second);
        assert_eq!(w.len(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_request_removes_its_waiter() {
        let w = Arc::new(Waiters::default());
        let id = Uuid::new_v4();
        let registry = w.clone();
        let request = tokio::spawn(async move {
            let mut waiter = registry.register(id);
            let _ = waiter.own.changed().await;
        });
        while w.len() == 0 {
            tokio::task::yield_now().await;
        }
        // The client goes away: the request's future is dropped mid-wait.
        request.abort();
        let _ = request.await;
        assert_eq!(w.len(), 0);
    }
}
