//! webhook-deliverer: turns outcome events into signed webhook deliveries, records every attempt,
//! schedules retries through delay queues and dead-letters deliveries whose schedule ran out.

mod attempt;
mod endpoints;
mod handlers;
mod operational;
mod rates;

pub use handlers::{EventHandler, RetryHandler};

use dispatcher_config::Settings;
use dispatcher_db::outbox::OutboxWake;
use dispatcher_db::pool::AsyncCommitPool;
use dispatcher_http::{health_app, HealthState};
use dispatcher_mq::consumer::ConsumerConfig;
use dispatcher_mq::{Readiness, Topology};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(settings.deliverer.listen).await?;
    serve(settings, listener, cancel).await
}

pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let pool = dispatcher_db::pool::start(&settings.database).await?;
    let readiness = Readiness::default();
    let tasks = TaskTracker::new();
    let topology = Topology::from_settings(&settings);
    let outbox_wake = OutboxWake::default();
    let deliverer = Arc::new(attempt::Deliverer::new(
        settings.clone(),
        pool.clone(),
        outbox_wake.clone(),
    ));

    let events = Arc::new(EventHandler::new(
        deliverer.clone(),
        settings.deliverer.batch_max,
    ));
    // Several consumers, each its own channel: one batch commits while the next is delivered.
    for i in 0..settings.deliverer.consumers {
        tasks.spawn(dispatcher_mq::run_consumer(
            settings.clone(),
            ConsumerConfig {
                name: format!("webhook-deliverer-events-{i}"),
                queue: topology.webhook_events_queue(),
                batch_max: settings.deliverer.batch_max,
                prefetch: settings.amqp.prefetch,
                dead_letters: pool.clone(),
            },
            events.clone(),
            readiness.register(&format!("events-consumer-{i}")),
            cancel.clone(),
        ));
    }
    tasks.spawn(dispatcher_mq::run_consumer(
        settings.clone(),
        ConsumerConfig {
            name: "webhook-deliverer-retries".into(),
            queue: topology.webhook_retry_queue(),
            batch_max: settings.deliverer.batch_max,
            prefetch: settings.amqp.prefetch,
            dead_letters: pool.clone(),
        },
        Arc::new(RetryHandler::new(deliverer)),
        readiness.register("retry-consumer"),
        cancel.clone(),
    ));
    tasks.spawn(dispatcher_mq::relay::run_relay(
        settings.clone(),
        AsyncCommitPool::connect(&settings.database, dispatcher_mq::relay::CONNECTIONS)?,
        "webhook-deliverer".into(),
        outbox_wake,
        readiness.register("outbox-relay"),
        cancel.clone(),
    ));
    let app = health_app(HealthState {
        pool,
        readiness,
        metrics: dispatcher_telemetry::metrics_handle(),
    });
    tracing::info!(addr = %listener.local_addr()?, "webhook-deliverer health listening");
    dispatcher_http::serve(listener, app, cancel.clone(), settings.shutdown_timeout / 2).await?;
    tasks.close();
    if tokio::time::timeout(settings.shutdown_timeout / 2, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("deliverer tasks did not stop within shutdown_timeout");
    }
    Ok(())
}
