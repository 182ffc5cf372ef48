//! dispatch-worker: consumes `dispatch.requested`, renders, runs the provider, and records the
//! outcome together with its outcome event (outbox) in one statement per batch.

mod dead;
mod email;
mod process;
mod provider_events;
mod results;
mod retention;

pub use process::WorkerHandler;

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
    let listener = TcpListener::bind(settings.worker.listen).await?;
    serve(settings, listener, cancel).await
}

/// Runs the consumer, the outbox relay and the health/metrics server until `cancel`.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let store = dispatcher_storage::Store::open(&settings.storage)?;
    let pool = dispatcher_db::pool::start(&settings.database).await?;
    let readiness = Readiness::default();
    let tasks = TaskTracker::new();
    let topology = Topology::from_settings(&settings);

    let outbox_wake = OutboxWake::default();
    // Claims and the relay's deletions, shared by the consumers and the relay.
    let async_pool = AsyncCommitPool::connect(
        &settings.database,
        dispatcher_mq::relay::CONNECTIONS + settings.worker.consumers,
    )?;
    let renderer = dispatcher_render::Renderer::start(dispatcher_render::Limits::from_settings(
        &settings.render,
    ))?;
    let handler = Arc::new(WorkerHandler::new(
        settings.clone(),
        pool.clone(),
        async_pool.clone(),
        outbox_wake.clone(),
        renderer,
        email::Mailer::from_settings(&settings.smtp)?,
        store.clone(),
    ));
    // Several consumers, each its own channel: one batch commits while the next is processed.
    for i in 0..settings.worker.consumers {
        tasks.spawn(dispatcher_mq::run_consumer(
            settings.clone(),
            ConsumerConfig {
                name: format!("dispatch-worker-{i}"),
                queue: topology.dispatch_queue(),
                batch_max: settings.worker.batch_max,
                dead_letters: pool.clone(),
            },
            handler.clone(),
            readiness.register(&format!("consumer-{i}")),
            cancel.clone(),
        ));
    }
    tasks.spawn(dispatcher_mq::run_consumer(
        settings.clone(),
        ConsumerConfig {
            name: "dispatch-worker-dead-letters".into(),
            queue: topology.dead_queue(),
            batch_max: settings.worker.batch_max,
            dead_letters: pool.clone(),
        },
        Arc::new(dead::DeadLetterHandler::new(
            pool.clone(),
            topology.dead_queue(),
        )),
        readiness.register("dead-letter-consumer"),
        cancel.clone(),
    ));
    tasks.spawn(dispatcher_mq::run_consumer(
        settings.clone(),
        ConsumerConfig {
            name: "dispatch-worker-provider-events".into(),
            queue: topology.provider_events_queue(),
            batch_max: settings.worker.batch_max,
            dead_letters: pool.clone(),
        },
        Arc::new(provider_events::ProviderEventHandler::new(
            pool.clone(),
            topology.provider_events_queue(),
            outbox_wake.clone(),
        )),
        readiness.register("provider-events-consumer"),
        cancel.clone(),
    ));
    tasks.spawn(retention::run(
        settings.retention.clone(),
        pool.clone(),
        store,
        cancel.clone(),
    ));
    tasks.spawn(dispatcher_mq::relay::run_relay(
        settings.clone(),
        async_pool,
        "dispatch-worker".into(),
        outbox_wake,
        readiness.register("outbox-relay"),
        cancel.clone(),
    ));
    let app = health_app(HealthState {
        pool,
        readiness,
        metrics: dispatcher_telemetry::metrics_handle(),
    });
    tracing::info!(addr = %listener.local_addr()?, "dispatch-worker health listening");
    dispatcher_http::serve(listener, app, cancel.clone(), settings.shutdown_timeout / 2).await?;
    tasks.close();
    if tokio::time::timeout(settings.shutdown_timeout / 2, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("worker tasks did not stop within shutdown_timeout");
    }
    Ok(())
}
