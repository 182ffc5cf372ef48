//! RabbitMQ access: connections, the topology every service declares, confirmed batch publishing,
//! the outbox relay and a batched consumer loop. Everything reconnects by itself with capped
//! exponential backoff and reports its state to a shared [`Readiness`].

pub mod consumer;
pub mod publisher;
pub mod readiness;
pub mod relay;
pub mod topology;

pub use consumer::{run_consumer, BatchHandler, HandlerError, Incoming, Received};
pub use publisher::{OutgoingMessage, Publisher};
pub use readiness::Readiness;
pub use topology::Topology;

use dispatcher_config::AmqpSettings;
use lapin::{Connection, ConnectionProperties};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tracing::warn;

/// Longest [`connect`] waits for a broker's handshake: a broker can accept the TCP connection and
/// then never answer.
const SINGLE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection to the broker at `url`, named after the service (visible in the management
/// UI), within a bounded wait.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    connect_within(url, name, SINGLE_CONNECT_TIMEOUT).await
}

/// Where the next [`connect_any`] starts in the list of nodes. Moving one node along at every
/// call spreads a process's connections over the cluster, and makes a connection lost with its
/// node come back on another one first.
static NEXT_NODE: AtomicUsize = AtomicUsize::new(0);

/// Opens a connection to a live node of `amqp.urls` (or `amqp.url`): each node in turn, from a
/// rotating start, until one completes the handshake within `amqp.connect_timeout`. The error is
/// the last node's when none does.
pub async fn connect_any(amqp: &AmqpSettings, name: &str) -> Result<Connection, lapin::Error> {
    let nodes = amqp.addresses();
    let start = NEXT_NODE.fetch_add(1, Ordering::Relaxed);
    let mut last = None;
    for i in 0..nodes.len() {
        let url = nodes[(start + i) % nodes.len()].expose();
        match connect_within(url, name, amqp.connect_timeout).await {
            Ok(conn) => return Ok(conn),
            Err(e) => {
                if nodes.len() > 1 {
                    warn!(connection = name, node = %node_label(url), error = %e, "broker node unavailable; trying the next");
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no broker address configured").into()
    }))
}

async fn connect_within(
    url: &str,
    name: &str,
    limit: Duration,
) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    match tokio::time::timeout(limit, Connection::connect(url, props)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no AMQP handshake from {} within {limit:?}",
                node_label(url)
            ),
        )
        .into()),
    }
}

/// `host:port` of a broker URL, without its credentials, for logs.
fn node_label(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

/// Capped exponential backoff for reconnect loops.
#[derive(Debug, Clone)]
pub struct Backoff {
    current: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            current: min,
            min,
            max,
        }
    }

    /// The delay to wait now; the next one doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_labels_leave_out_credentials() {
        assert_eq!(
            node_label("amqp://user:p%40ss@10.0.0.7:5701/%2f"),
            "10.0.0.7:5701"
        );
        assert_eq!(node_label("amqps://broker.internal"), "broker.internal");
        assert_eq!(
            node_label("amqp://127.0.0.1:5672?heartbeat=10"),
            "127.0.0.1:5672"
        );
    }

    #[tokio::test]
    async fn a_dead_node_is_skipped_for_a_live_one() {
        // A port with nothing listening (bound, then released) before the local broker.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let amqp = AmqpSettings {
            url: dispatcher_config::Secret::new(""),
            urls: dispatcher_config::Secret::new(format!(
                "amqp://guest:guest@127.0.0.1:{dead_port}/%2f,amqp://guest:guest@127.0.0.1:5672/%2f"
            )),
            connect_timeout: Duration::from_secs(5),
            prefix: "unused".into(),
            prefetch: 1,
        };
        // Whatever the rotation's start, two calls both find the live node.
        for _ in 0..2 {
            let conn = tokio::time::timeout(Duration::from_secs(20), connect_any(&amqp, "test"))
                .await
                .expect("bounded")
                .expect("the live broker on 5672");
            assert!(conn.status().connected());
            let _ = conn.close(200, "bye".into()).await;
        }
    }

    #[tokio::test]
    async fn a_node_that_never_answers_the_handshake_times_out() {
        // Accepts TCP connections and says nothing, like a wedged broker.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                open.push(s);
            }
        });
        let amqp = AmqpSettings {
            url: dispatcher_config::Secret::new(format!("amqp://127.0.0.1:{port}/%2f")),
            urls: dispatcher_config::Secret::default(),
            connect_timeout: Duration::from_millis(300),
            prefix: "unused".into(),
            prefetch: 1,
        };
        let err = tokio::time::timeout(Duration::from_secs(10), connect_any(&amqp, "test"))
            .await
            .expect("bounded by connect_timeout")
            .expect_err("nothing answers");
        assert!(err.to_string().contains("no AMQP handshake"), "{err}");
        held.abort();
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let seq: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seq, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
