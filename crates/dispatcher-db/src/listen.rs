//! LISTEN on a Postgres channel from a dedicated connection, as a stream of notification payloads.
//!
//! Used by the outbox relay (woken at commit time instead of polling) and by sync submissions
//! (woken when their dispatch finishes). Notifications can be lost while reconnecting, so every
//! user of this also has a slow fallback poll.

use crate::DbError;
use dispatcher_config::DatabaseSettings;
use futures::{stream, StreamExt};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// Keeps a LISTEN connection on `channels` open until `cancel`, reconnecting with backoff, and
/// forwards each notification's (channel, payload). An empty payload with channel `""` is sent after
/// every (re)connect so listeners can re-check state they may have missed.
pub fn spawn_listener(
    settings: DatabaseSettings,
    channels: &'static [&'static str],
    cancel: CancellationToken,
) -> mpsc::Receiver<(String, String)> {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(async move {
        let mut backoff = std::time::Duration::from_millis(100);
        while !cancel.is_cancelled() {
            match listen_once(&settings, channels, &tx, &cancel).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
        }
    });
    rx
}

async fn listen_once(
    settings: &DatabaseSettings,
    channels: &[&str],
    tx: &mpsc::Sender<(String, String)>,
    cancel: &CancellationToken,
) -> Result<(), DbError> {
    let (client, mut connection) = crate::pool::connect_single(settings).await?;
    let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
    let sql: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
    // The connection must be driven while the LISTEN runs.
    let listen = client.batch_execute(&sql);
    tokio::pin!(listen);
    loop {
        tokio::select! {
            r = &mut listen => { r?; break; }
            m = messages.next() => match m {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(DbError::Build("connection closed".into())),
            }
        }
    }
    let _ = tx.send((String::new(), String::new())).await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = messages.next() => match m {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send((n.channel().to_owned(), n.payload().to_owned())).await.is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(DbError::Build("connection closed".into())),
            }
        }
    }
}
