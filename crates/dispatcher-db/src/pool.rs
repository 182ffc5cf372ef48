use crate::DbError;
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime, Timeouts};
use dispatcher_config::DatabaseSettings;
use std::str::FromStr;
use tokio_postgres::NoTls;

pub use deadpool_postgres::Pool;

fn pg_config(settings: &DatabaseSettings) -> Result<tokio_postgres::Config, DbError> {
    let mut cfg = tokio_postgres::Config::from_str(settings.url.expose())
        .map_err(|e| DbError::Build(format!("invalid database.url: {e}")))?;
    cfg.connect_timeout(settings.connect_timeout);
    if cfg.get_application_name().is_none() {
        cfg.application_name("dispatcher");
    }
    // Plan every execution of a prepared statement with its actual parameters. Our statements
    // select rows by `id = ANY($1)`; a generic plan cached while a table was still small keeps
    // scanning it sequentially after it has grown (seen under load: thousands of sequential
    // scans of `dispatches`). Statements run once per batch, so planning costs little.
    let custom_plans = "-c plan_cache_mode=force_custom_plan";
    let options = match cfg.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {custom_plans}"),
        _ => custom_plans.to_owned(),
    };
    cfg.options(options);
    Ok(cfg)
}

/// A pool whose waits are bounded, so a missing database turns into a quick 503, not a hang.
pub fn connect_pool(settings: &DatabaseSettings) -> Result<Pool, DbError> {
    let manager = Manager::from_config(
        pg_config(settings)?,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.pool_size)
        .timeouts(Timeouts {
            wait: Some(settings.acquire_timeout),
            create: Some(settings.connect_timeout),
            recycle: Some(settings.connect_timeout),
        })
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Build(e.to_string()))
}

/// The pool a service runs on; applies pending migrations first when `database.migrate` is set.
pub async fn start(settings: &DatabaseSettings) -> Result<Pool, DbError> {
    let pool = connect_pool(settings)?;
    if settings.migrate {
        crate::migrate::run(&pool).await?;
    }
    Ok(pool)
}

/// One dedicated connection outside the pool (LISTEN needs a connection of its own). The returned
/// connection future must be polled by the caller.
pub async fn connect_single(
    settings: &DatabaseSettings,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    DbError,
> {
    Ok(pg_config(settings)?.connect(NoTls).await?)
}

/// Is the database answering? Used by `/readyz`.
pub async fn ping(pool: &Pool) -> bool {
    match pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}
