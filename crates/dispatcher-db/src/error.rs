use thiserror::Error;

/// The driver's errors are spelled out with their causes, on one line: its own messages say only
/// "error performing TLS handshake" or "db error", the causes say which certificate was refused
/// and why, or which constraint was violated.
#[derive(Debug, Error)]
pub enum DbError {
    #[error("database unavailable: {}", with_causes(.0))]
    Pool(deadpool_postgres::PoolError),
    #[error("database error: {}", with_causes(.0))]
    Postgres(tokio_postgres::Error),
    #[error("database pool set-up: {0}")]
    Build(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError::Pool(e)
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::Postgres(e)
    }
}

/// `e` and its causes, each said once (the pool's errors repeat their cause's message).
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let m = c.to_string();
        if !s.ends_with(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cause = c.source();
    }
    s
}

impl DbError {
    /// True when the database could not be reached (as opposed to a query it rejected): callers
    /// answer 503 and retry rather than treating the request as bad.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Pool(_) | DbError::Build(_) => true,
            DbError::Postgres(e) => match e.code() {
                None => true,
                Some(code) => e.is_closed() || is_unavailable_code(code.code()),
            },
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

/// SQLSTATEs of a server that cannot serve this session now but another (or a later) one can:
/// a connection failure (class 08), the server shutting down or starting (57P01 admin shutdown,
/// 57P02 crash shutdown, 57P03 cannot connect now), too many connections (53300), and a write
/// reaching a server that is read-only (25006: a standby, or a primary being demoted). A
/// failover shows them all; each is answered 503 and retried, not taken for a bad request.
fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "25006")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failover_s_errors_are_unavailability() {
        for code in [
            "08006", "08001", "57P01", "57P02", "57P03", "53300", "25006",
        ] {
            assert!(is_unavailable_code(code), "{code}");
        }
        // Errors of the statement itself stay what they are.
        for code in ["23505", "22P02", "42P01", "40001", "57014"] {
            assert!(!is_unavailable_code(code), "{code}");
        }
    }

    #[derive(Debug, Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] Inner);

    #[derive(Debug, Error)]
    #[error("inner")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn causes_are_spelled_out_once_each() {
        let e = Repeats(Inner(std::io::Error::other("certificate refused")));
        assert_eq!(with_causes(&e), "outer: inner: certificate refused");
    }
}
