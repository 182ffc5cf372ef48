//! ingest-api: authenticates clients, validates and accepts dispatches (dispatch row and outbox row
//! in one transaction, many requests per transaction), answers sync submissions when their
//! dispatch finishes, manages templates, and relays the outbox to RabbitMQ.

mod estimate;
pub mod openapi;
mod routes;
mod templates_cache;
mod waiters;
mod writer;

use axum::extract::FromRef;
use axum::routing::get;
use axum::Router;
use dispatcher_config::Settings;
use dispatcher_db::pool::AsyncCommitPool;
use dispatcher_db::Pool;
use dispatcher_http::{health_router, with_common_layers, Authenticator, HealthState};
use dispatcher_mq::Readiness;
pub use openapi::ApiDoc;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: Pool,
    pub auth: Arc<Authenticator>,
    pub writer: writer::BatchWriter,
    /// Wakes this process's outbox relay after a commit that wrote outbox rows.
    pub outbox_wake: dispatcher_db::outbox::OutboxWake,
    pub waiters: Arc<waiters::Waiters>,
    pub templates: Arc<templates_cache::TemplateCache>,
    pub estimator: estimate::Estimator,
    /// Renders documents for `POST /v1/dispatches/validate`, within `render` limits and a
    /// bounded number of slots, so previews cannot queue without limit beside the submission path.
    pub previews: dispatcher_http::preview::Previewer,
    /// Cancelled when shutdown starts: sync submissions stop waiting and answer their 202.
    pub draining: CancellationToken,
}

impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(s: &AppState) -> Self {
        s.auth.clone()
    }
}

/// Binds `ingest.listen` and serves until `cancel`.
pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(settings.ingest.listen).await?;
    serve(settings, listener, cancel).await
}

/// Serves on an already-bound listener (tests bind port 0) until `cancel`, then drains: the HTTP
/// server stops accepting, queued writes are committed, and the relay finishes its batch.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let pool = dispatcher_db::pool::start(&settings.database).await?;
    let metrics = dispatcher_telemetry::metrics_handle();
    let readiness = Readiness::default();
    let tasks = TaskTracker::new();
    let background = cancel.child_token();

    let relay_ready = readiness.register("outbox-relay");
    let outbox_wake = dispatcher_db::outbox::OutboxWake::default();
    tasks.spawn(dispatcher_mq::relay::run_relay(
        settings.clone(),
        AsyncCommitPool::connect(&settings.database, dispatcher_mq::relay::CONNECTIONS)?,
        "ingest-api".into(),
        outbox_wake.clone(),
        relay_ready,
        background.clone(),
    ));
    let waiters = waiters::Waiters::start(&settings.database, background.clone());
    let writer_stop = CancellationToken::new();
    let (writer, writer_task) = writer::BatchWriter::start(
        pool.clone(),
        outbox_wake.clone(),
        &settings.ingest,
        writer_stop.clone(),
    );

    let renderer = dispatcher_render::Renderer::start(dispatcher_render::Limits::from_settings(
        &settings.render,
    ))?;
    let auth = Authenticator::new(pool.clone(), settings.rate_limit.clone());
    auth.watch_invalidations(&settings.database, background.clone());
    let state = AppState {
        settings: settings.clone(),
        pool: pool.clone(),
        auth: auth.clone(),
        writer,
        outbox_wake,
        waiters,
        templates: Arc::new(templates_cache::TemplateCache::new(
            settings.ingest.template_cache_bytes,
        )),
        estimator: estimate::Estimator::start(settings.clone(), pool.clone(), background.clone()),
        previews: dispatcher_http::preview::Previewer::new(renderer),
        draining: cancel.clone(),
    };
    let app: Router = routes::router(state)
        .merge(health_router(HealthState {
            pool,
            readiness,
            metrics,
        }))
        .route("/openapi.json", get(openapi::serve));
    let request_timeout = settings
        .request_timeout
        .max(settings.ingest.sync_timeout + std::time::Duration::from_secs(5));
    let app = with_common_layers(app, settings.ingest.max_body_bytes, request_timeout);
    tracing::info!(addr = %listener.local_addr()?, "ingest-api listening");
    // Sync submissions still waiting answer their 202 as soon as `cancel` fires (see
    // `AppState::draining`), so the drain is short.
    dispatcher_http::serve(listener, app, cancel.clone(), settings.shutdown_timeout / 2).await?;

    // Requests have drained; commit what the writer still holds, then stop the background tasks.
    writer_stop.cancel();
    let _ = writer_task.await;
    background.cancel();
    tasks.close();
    if tokio::time::timeout(settings.shutdown_timeout / 2, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop within shutdown_timeout");
    }
    Ok(())
}
