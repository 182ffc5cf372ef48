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
}
