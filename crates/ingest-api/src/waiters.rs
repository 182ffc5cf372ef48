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

pub struct Waiter {
    pub own: watch::Receiver<u64>,
    pub all: watch::Receiver<u64>,
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

    pub fn register(&self, id: Uuid) -> Waiter {
        let mut map = self.by_id.lock().expect("waiters");
        let own = map
            .entry(id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Waiter {
            own,
            all: self.epoch.subscribe(),
        }
    }

    pub fn unregister(&self, id: Uuid) {
        let mut map = self.by_id.lock().expect("waiters");
        if map.get(&id).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(&id);
        }
    }
}
