use crate::DbError;
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime, Timeouts};
use dispatcher_config::DatabaseSettings;
use std::str::FromStr;
use tokio_postgres::NoTls;

pub use deadpool_postgres::Pool;

fn pg_config(settings: &DatabaseSettings) -> Result<tokio_postgres::Config, DbError> {
    pg_config_with(settings, "")
}

fn pg_config_with(
    settings: &DatabaseSettings,
    extra_options: &str,
) -> Result<tokio_postgres::Config, DbError> {
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
    let ours = format!("-c plan_cache_mode=force_custom_plan {extra_options}");
    let options = match cfg.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {ours}"),
        _ => ours,
    };
    cfg.options(options);
    Ok(cfg)
}

/// A pool whose waits are bounded, so a missing database turns into a quick 503, not a hang.
pub fn connect_pool(settings: &DatabaseSettings) -> Result<Pool, DbError> {
    build_pool(pg_config(settings)?, settings, settings.pool_size)
}

/// A small pool whose connections commit without waiting for the WAL flush
/// (`synchronous_commit = off`), for writes that may be lost in a database crash because their
/// message is redelivered and redone: claiming a dispatch, deleting relayed outbox rows. The
/// setting lives on the connection, so such a write is one statement, where a shared
/// connection needed `BEGIN`, `SET LOCAL` and `COMMIT` around it. Never use it for a write that
/// must survive once a client or the broker has been told it happened.
///
/// A type of its own, so that only the functions written for it can be given it.
#[derive(Clone)]
pub struct AsyncCommitPool(Pool);

impl AsyncCommitPool {
    pub fn connect(settings: &DatabaseSettings, max_size: usize) -> Result<Self, DbError> {
        let cfg = pg_config_with(settings, "-c synchronous_commit=off")?;
        let max_size = max_size.clamp(1, settings.pool_size.max(1));
        Ok(Self(build_pool(cfg, settings, max_size)?))
    }

    pub async fn get(&self) -> Result<deadpool_postgres::Object, DbError> {
        Ok(self.0.get().await?)
    }
}

fn build_pool(
    cfg: tokio_postgres::Config,
    settings: &DatabaseSettings,
    max_size: usize,
) -> Result<Pool, DbError> {
    let manager = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .timeouts(Timeouts {
            wait: Some(settings.acquire_timeout),
            create: Some(settings.connect_timeout),
            recycle: Some(settings.connect_timeout),
        })
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Build(e.to_string()))
}

/// How many connections a service's async-commit pool may open: one for the relay, one for each
/// consumer that claims.
pub fn async_commit_pool_size(consumers: usize) -> usize {
    1 + consumers
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
