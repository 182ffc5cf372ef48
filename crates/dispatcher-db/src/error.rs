use thiserror::Error;

#[derive(Debug, Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool set-up: {0}")]
    Build(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl DbError {
    /// True when the database could not be reached (as opposed to a query it rejected): callers
    /// answer 503 and retry rather than treating the request as bad.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Pool(_) | DbError::Build(_) => true,
            DbError::Postgres(e) => e.is_closed() || e.code().is_none(),
            DbError::Corrupt(_) => false,
        }
    }

    /// True when the database refused the data itself (a data exception or an integrity
    /// violation, SQLSTATE classes 22 and 23), or stored data could not be read: the same
    /// statement with the same data fails the same way every time, so retrying cannot help.
    /// Everything else (the server unreachable, a timeout, a deadlock, a missing table during a
    /// deployment) may pass, and is retried.
    pub fn is_deterministic(&self) -> bool {
        match self {
            DbError::Postgres(e) => e
                .code()
                .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23")),
            DbError::Corrupt(_) => true,
            DbError::Pool(_) | DbError::Build(_) => false,
        }
    }
}
