//! RabbitMQ access: connections, the topology every service declares, confirmed batch publishing,
//! the outbox relay and a batched consumer loop. Everything reconnects by itself with capped
//! exponential backoff and reports its state to a shared [`Readiness`].

pub mod consumer;
pub mod publisher;
pub mod readiness;
pub mod relay;
pub mod topology;

pub use consumer::{run_consumer, BatchHandler, HandlerError, Incoming};
pub use publisher::{OutgoingMessage, Publisher};
pub use readiness::Readiness;
pub use topology::Topology;

use lapin::{Connection, ConnectionProperties};
use std::time::Duration;

/// Opens a connection named after the service, visible in the management UI.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(name.to_owned().into());
    Connection::connect(url, props).await
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
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let seq: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seq, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
