//! Postgres access for every service: the connection pool, embedded migrations, and one small module
//! per table family. SQL lives here and in `migrations/`, nowhere else; every statement that touches
//! client data takes the account id and filters on it, so tenant isolation is enforced in SQL.
//!
//! Writes on the hot path are multi-row statements over `unnest(...)` arrays: one round trip for a
//! whole batch of dispatches, completions or delivery attempts.

pub mod accounts;
pub mod dead_letters;
pub mod deliveries;
pub mod dispatches;
pub mod endpoint_health;
pub mod error;
pub mod listen;
pub mod migrate;
pub mod outbox;
pub mod pool;
pub mod provider_events;
pub mod retention;
pub mod subscriptions;
pub mod templates;
pub mod tls;
pub mod ui_sessions;

pub use error::DbError;
pub use pool::{connect_pool, Pool};
