//! Measures publisher-confirm latency to a quorum queue on the local broker (loopback only):
//! `cargo run --release -p dispatcher-mq --example confirm_latency`.

use dispatcher_mq::publisher::{OutgoingMessage, Publisher};
use dispatcher_mq::Topology;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let conn = dispatcher_mq::connect(url, "confirm-latency").await?;
    let ch = conn.create_channel().await?;
    let topology = Topology::new("confirm-latency", &[Duration::from_secs(1)]);
    topology.declare(&ch).await?;
    let publisher = Publisher::new(&conn, topology.events_exchange(), "confirm-latency").await?;
    for batch in [1usize, 10, 100, 500] {
        let mut times = Vec::new();
        for _ in 0..20 {
            let msgs: Vec<_> = (0..batch)
                .map(|_| OutgoingMessage {
                    message_id: uuid::Uuid::new_v4(),
                    routing_key: "provider.event".into(),
                    payload: b"{}".to_vec(),
                    traceparent: None,
                })
                .collect();
            let t = Instant::now();
            publisher.publish_batch(&msgs).await?;
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "batch {batch:>4}: median {:?}, max {:?}",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    topology.delete(&ch).await?;
    Ok(())
}
