//! status-api: tenant-scoped reads of dispatch state, rendered results and delivery attempts,
//! and the browser dashboard at `/ui/`.

pub mod openapi;
mod reads;
mod routes;

use axum::extract::FromRef;
use axum::routing::get;
use dispatcher_config::Settings;
use dispatcher_db::Pool;
use dispatcher_http::{health_router, with_common_layers, Authenticator, HealthState};
use dispatcher_mq::Readiness;
pub use openapi::ApiDoc;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    /// The primary: writes, and every read the API promises fresh.
    pub pool: Pool,
    /// `database.read_url`'s replica, for the reads [`reads`] lists.
    pub replica: Option<Pool>,
    pub auth: Arc<Authenticator>,
    /// Where documents are kept when not in Postgres (`storage.url`).
    pub store: Option<dispatcher_storage::Store>,
}

impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(s: &AppState) -> Self {
        s.auth.clone()
    }
}

pub async fn run(settings: Settings, cancel: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(settings.status.listen).await?;
    serve(settings, listener, cancel).await
}

pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let store = dispatcher_storage::Store::open(&settings.storage)?;
    let pool = dispatcher_db::pool::start(&settings.database).await?;
    let replica = dispatcher_db::pool::connect_read_pool(&settings.database)?;
    // The status API reads Postgres only; its readiness has no broker part.
    let readiness = Readiness::default();
    let auth = Authenticator::new(pool.clone(), settings.rate_limit.clone());
    let stop_listener = cancel.child_token();
    auth.watch_invalidations(&settings.database, stop_listener.clone());
    let state = AppState {
        settings: settings.clone(),
        pool: pool.clone(),
        replica,
        auth: auth.clone(),
        store: store.clone(),
    };
    let ui = dispatcher_ui::UiState::new(settings.clone(), pool.clone(), auth.clone(), store);
    let app = routes::router(state)
        .merge(dispatcher_ui::router(ui))
        .merge(health_router(HealthState {
            pool,
            readiness,
            metrics: dispatcher_telemetry::metrics_handle(),
        }))
        .route("/openapi.json", get(openapi::serve));
    let app = with_common_layers(app, 64 * 1024, settings.request_timeout);
    tracing::info!(addr = %listener.local_addr()?, "status-api listening");
    dispatcher_http::serve(listener, app, cancel, settings.shutdown_timeout).await?;
    stop_listener.cancel();
    Ok(())
}
