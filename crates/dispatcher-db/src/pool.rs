use crate::error::with_causes;
use crate::tls::{self, MakeRustlsConnect};
use crate::DbError;
use deadpool_postgres::{
    ClientWrapper, Hook, HookError, Manager, ManagerConfig, Metrics, RecyclingMethod, Runtime,
    Timeouts,
};
use dispatcher_config::DatabaseSettings;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::tls::MakeTlsConnect;

pub use deadpool_postgres::Pool;

/// A connection outside the pool, as [`connect_single`] makes it: over TLS or not, as `sslmode`
/// and the server decided.
pub type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// Session settings of every pooled connection.
///
/// `plan_cache_mode = force_generic_plan`: the statements on the data path take their rows by
/// id arrays (`= ANY($1)`, `unnest`), for which PostgreSQL's default kept choosing a fresh
/// custom plan at every execution after its five trial runs: planning was a sixth of the
/// server's CPU at 1 000 dispatches/s. A generic plan is made once per prepared statement, and
/// `REPLAN_AT` renews it as the tables grow.
const POOL_OPTIONS: &str = "-c plan_cache_mode=force_generic_plan";

/// Where and how to connect: `database.url` with the session settings `extra_options`, and the
/// TLS connector its `sslmode` and `database.ca_file` call for (see [`crate::tls`]).
fn pg_config_with(
    settings: &DatabaseSettings,
    extra_options: &str,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), DbError> {
    let (url, check) = tls::translate_sslmode(settings.url.expose());
    let mut cfg = tokio_postgres::Config::from_str(&url)
        .map_err(|e| DbError::Build(format!("invalid database.url: {}", with_causes(&e))))?;
    let connector = tls::connector(check, settings.ca_file.as_deref())?;
    cfg.connect_timeout(settings.connect_timeout);
    if cfg.get_application_name().is_none() {
        cfg.application_name("dispatcher");
    }
    if !extra_options.is_empty() {
        let options = match cfg.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {extra_options}"),
            _ => extra_options.to_owned(),
        };
        cfg.options(options);
    }
    Ok((cfg, connector))
}

/// Prepared statements are re-prepared at these connection ages, then every `REPLAN_EVERY`.
///
/// A generic plan is kept for the life of its prepared statement. One made while a table was
/// still small (a new deployment, a benchmark's first seconds) scans it sequentially even after
/// it has grown: seen under load as thousands of sequential scans of `dispatches` reading 80 M
/// rows in a minute. Planning every execution instead (`plan_cache_mode = force_custom_plan`)
/// fixed that but took over a third of PostgreSQL's CPU. Dropping the cached statements now and
/// then makes the next generic plan from the table as it is, at the cost of a few
/// re-preparations.
const REPLAN_AT: [Duration; 6] = [
    Duration::from_secs(1),
    Duration::from_secs(3),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(90),
    Duration::from_secs(180),
];
const REPLAN_EVERY: Duration = Duration::from_secs(300);

/// Which re-preparation period a connection of this age is in.
fn replan_epoch(age: Duration) -> u64 {
    match REPLAN_AT.iter().position(|at| age < *at) {
        Some(i) => i as u64,
        None => {
            let past = age - REPLAN_AT[REPLAN_AT.len() - 1];
            REPLAN_AT.len() as u64 + past.as_secs() / REPLAN_EVERY.as_secs()
        }
    }
}

/// Runs before a pooled connection is handed out again.
fn replan_when_due(client: &mut ClientWrapper, metrics: &Metrics) -> Result<(), HookError> {
    let last_use = metrics.recycled.unwrap_or(metrics.created) - metrics.created;
    if replan_epoch(metrics.age()) != replan_epoch(last_use) {
        client.statement_cache.clear();
    }
    Ok(())
}

/// A pool whose waits are bounded, so a missing database turns into a quick 503, not a hang.
pub fn connect_pool(settings: &DatabaseSettings) -> Result<Pool, DbError> {
    build_pool(settings, settings.pool_size, "")
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
        let max_size = max_size.clamp(1, settings.pool_size.max(1));
        Ok(Self(build_pool(
            settings,
            max_size,
            "-c synchronous_commit=off",
        )?))
    }

    pub async fn get(&self) -> Result<deadpool_postgres::Object, DbError> {
        Ok(self.0.get().await?)
    }
}

/// `extra_options` are session settings on top of `POOL_OPTIONS`.
fn build_pool(
    settings: &DatabaseSettings,
    max_size: usize,
    extra_options: &str,
) -> Result<Pool, DbError> {
    // Every statement is bounded: a query stuck behind a lock or a runaway plan fails and is
    // retried or answered 503, instead of holding its connection and its caller for ever.
    let options = format!(
        "{POOL_OPTIONS} -c statement_timeout={} {extra_options}",
        settings.statement_timeout.as_millis()
    );
    let (cfg, tls) = pg_config_with(settings, options.trim_end())?;
    let manager = Manager::from_config(
        cfg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .pre_recycle(Hook::sync_fn(replan_when_due))
        .timeouts(Timeouts {
            wait: Some(settings.acquire_timeout),
            create: Some(settings.connect_timeout),
            recycle: Some(settings.connect_timeout),
        })
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Build(e.to_string()))
}

/// A pool on `database.read_url`, the replica for reads that may lag; `None` when it is not
/// set. Same sizes, timeouts and TLS settings as the primary's pool; never migrates.
pub fn connect_read_pool(settings: &DatabaseSettings) -> Result<Option<Pool>, DbError> {
    let Some(read_url) = &settings.read_url else {
        return Ok(None);
    };
    let replica = DatabaseSettings {
        url: read_url.clone(),
        read_url: None,
        migrate: false,
        ..settings.clone()
    };
    connect_pool(&replica).map(Some)
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
) -> Result<(tokio_postgres::Client, Connection), DbError> {
    let (cfg, tls) = pg_config_with(settings, "")?;
    Ok(cfg.connect(tls).await?)
}

/// Is the database answering? Used by `/readyz`.
pub async fn ping(pool: &Pool) -> bool {
    match pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatcher_config::Secret;
    use tokio_postgres::config::{Host, TargetSessionAttrs};

    fn settings(url: &str) -> DatabaseSettings {
        DatabaseSettings {
            url: Secret::new(url),
            read_url: None,
            pool_size: 4,
            migrate: false,
            connect_timeout: Duration::from_secs(3),
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(30),
            ca_file: None,
        }
    }

    fn hosts(cfg: &tokio_postgres::Config) -> Vec<(String, u16)> {
        cfg.get_hosts()
            .iter()
            .zip(cfg.get_ports())
            .map(|(h, p)| match h {
                Host::Tcp(h) => (h.clone(), *p),
                Host::Unix(p2) => (p2.display().to_string(), *p),
            })
            .collect()
    }

    #[test]
    fn a_multi_host_url_keeps_every_host_in_order_and_asks_for_the_writable_one() {
        let url = "postgresql://postgres@127.0.0.1:5442,127.0.0.1:5443/dispatcher\
                   ?target_session_attrs=read-write";
        let (cfg, _) = pg_config_with(&settings(url), "-c a=b").unwrap();
        assert_eq!(
            hosts(&cfg),
            vec![("127.0.0.1".into(), 5442), ("127.0.0.1".into(), 5443)]
        );
        assert_eq!(
            cfg.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
        assert_eq!(cfg.get_dbname(), Some("dispatcher"));
        assert_eq!(cfg.get_user(), Some("postgres"));
        assert_eq!(cfg.get_options(), Some("-c a=b"));
    }

    #[test]
    fn a_verifying_sslmode_keeps_a_multi_host_url_whole() {
        let url = "postgresql://u:p%40ss@db1.internal:5432,db2.internal:5433/d\
                   ?sslmode=verify-full&target_session_attrs=read-write";
        let (translated, check) = tls::translate_sslmode(url);
        assert_eq!(check, tls::CertCheck::Full);
        assert_eq!(
            translated,
            "postgresql://u:p%40ss@db1.internal:5432,db2.internal:5433/d\
             ?sslmode=require&target_session_attrs=read-write"
        );
        let (cfg, _) = pg_config_with(&settings(url), "").unwrap();
        assert_eq!(
            hosts(&cfg),
            vec![("db1.internal".into(), 5432), ("db2.internal".into(), 5433)]
        );
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(cfg.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(
            cfg.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
    }

    #[test]
    fn a_key_value_string_with_several_hosts_works_too() {
        let s = "host=10.0.0.1,10.0.0.2 port=5432,5433 dbname=d user=u \
                 target_session_attrs=read-write sslmode=verify-ca";
        let (cfg, _) = pg_config_with(&settings(s), "").unwrap();
        assert_eq!(
            hosts(&cfg),
            vec![("10.0.0.1".into(), 5432), ("10.0.0.2".into(), 5433)]
        );
        assert_eq!(
            cfg.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
    }

    #[test]
    fn the_read_pool_exists_only_with_a_read_url() {
        assert!(connect_read_pool(&settings("postgres://u@h/d"))
            .unwrap()
            .is_none());
        let mut s = settings("postgres://u@h1,h2/d?target_session_attrs=read-write");
        s.read_url = Some(Secret::new("postgres://u@h2:5443/d"));
        s.migrate = true;
        let pool = connect_read_pool(&s).unwrap().expect("a read pool");
        assert_eq!(pool.status().max_size, 4);
    }

    #[test]
    fn statements_are_replanned_often_while_young_then_every_five_minutes() {
        let epoch = |s: u64| replan_epoch(Duration::from_secs(s));
        assert_eq!(epoch(0), 0);
        assert_ne!(epoch(0), epoch(1));
        assert_ne!(epoch(2), epoch(3));
        assert_eq!(epoch(30), epoch(89));
        assert_eq!(epoch(180), epoch(479));
        assert_ne!(epoch(479), epoch(480));
        assert!(epoch(100_000) > epoch(10_000));
    }
}
