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
                prefetch: request_prefetch(&settings),
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
            prefetch: settings.amqp.prefetch,
            dead_letters: pool.clone(),
        },
        Arc::new(dead::DeadLetterHandler::new(
            pool.clone(),
            topology.dead_queue(),
            topology.dispatch_queue(),
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
            prefetch: settings.amqp.prefetch,
            dead_letters: pool.clone(),
        },
        Arc::new(provider_events::ProviderEventHandler::new(
            pool.clone(),
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

/// Messages a dispatch consumer may hold: about `amqp.prefetch` requests' worth, where a message
/// may carry up to `ingest.requests_per_message` of them (requests held unacknowledged are not in
/// the queue's ready count, which ingest paces by), but never fewer than `worker.concurrency`, so
/// single requests (provider retries, a quiet moment) still fill a batch's provider calls.
fn request_prefetch(settings: &Settings) -> u16 {
    let per_message = settings
        .ingest
        .requests_per_message
        .clamp(1, usize::from(u16::MAX)) as u16;
    let concurrency = settings.worker.concurrency.min(usize::from(u16::MAX)) as u16;
    settings
        .amqp
        .prefetch
        .div_ceil(per_message)
        .max(concurrency)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatcher_config::Sources;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::load(Sources {
            env: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (format!("DISPATCHER__{k}"), v.to_string()))
                    .collect::<HashMap<_, _>>(),
            ),
            skip_cwd_files: true,
            ..Sources::default()
        })
        .unwrap()
    }

    #[test]
    fn a_dispatch_consumer_holds_about_a_prefetch_of_requests() {
        let at = |prefetch: &str, per_message: &str, concurrency: &str| {
            request_prefetch(&settings(&[
                ("AMQP__PREFETCH", prefetch),
                ("INGEST__REQUESTS_PER_MESSAGE", per_message),
                ("WORKER__CONCURRENCY", concurrency),
            ]))
        };
        // One request per message: the prefetch as configured.
        assert_eq!(at("256", "1", "32"), 256);
        // 32 to a message: 8 messages would do, but single requests still fill the concurrency.
        assert_eq!(at("256", "32", "32"), 32);
        assert_eq!(at("256", "32", "4"), 8);
        assert_eq!(at("4", "32", "1"), 1);
    }
}
