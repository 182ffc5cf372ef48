//! Embedded, ordered SQL migrations. Applied under an advisory lock so replicas starting together
//! (or a k8s Job racing a pod with `database.migrate=true`) apply each one exactly once.

use crate::{DbError, Pool};
use tracing::info;

/// (version, name, sql), in order. Files live in `migrations/` at the repository root.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("../../../migrations/0001_init.sql")),
    (
        2,
        "outbox_wake_in_process",
        include_str!("../../../migrations/0002_outbox_wake_in_process.sql"),
    ),
    (
        3,
        "hot_tables_without_foreign_key_checks",
        include_str!("../../../migrations/0003_hot_tables_without_foreign_key_checks.sql"),
    ),
    (
        4,
        "dead_deliveries_table",
        include_str!("../../../migrations/0004_dead_deliveries_table.sql"),
    ),
    (
        5,
        "pdf_templates_and_batch_submissions",
        include_str!("../../../migrations/0005_pdf_templates_and_batch_submissions.sql"),
    ),
    (
        6,
        "results_compressed_with_lz4",
        include_str!("../../../migrations/0006_results_compressed_with_lz4.sql"),
    ),
    (
        7,
        "quarantine_and_health",
        include_str!("../../../migrations/0007_quarantine_and_health.sql"),
    ),
    (
        8,
        "endpoint_health_and_rate_limits",
        include_str!("../../../migrations/0008_endpoint_health_and_rate_limits.sql"),
    ),
    (
        9,
        "retention",
        include_str!("../../../migrations/0009_retention.sql"),
    ),
    (
        10,
        "provider_retries",
        include_str!("../../../migrations/0010_provider_retries.sql"),
    ),
    (
        11,
        "result_storage",
        include_str!("../../../migrations/0011_result_storage.sql"),
    ),
    (
        12,
        "ui_sessions",
        include_str!("../../../migrations/0012_ui_sessions.sql"),
    ),
    (
        13,
        "outbox_handoff",
        include_str!("../../../migrations/0013_outbox_handoff.sql"),
    ),
    (
        14,
        "batched_messages",
        include_str!("../../../migrations/0014_batched_messages.sql"),
    ),
];

const LOCK_KEY: i64 = 0x0d15_9a7c_4e00_0001;

/// Applies pending migrations; returns the versions applied.
pub async fn run(pool: &Pool) -> Result<Vec<i32>, DbError> {
    let mut client = pool.get().await?;
    // A migration may rewrite a large table, and another replica may hold the lock meanwhile:
    // neither is bounded by the pool's statement_timeout. RESET restores it for the pool.
    client.batch_execute("SET statement_timeout = 0").await?;
    let result = migrate(&mut client).await;
    client.batch_execute("RESET statement_timeout").await?;
    result
}

async fn migrate(client: &mut deadpool_postgres::Object) -> Result<Vec<i32>, DbError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply_pending(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await?;
    result
}

async fn apply_pending(client: &mut deadpool_postgres::Object) -> Result<Vec<i32>, DbError> {
    let applied: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut done = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tx.commit().await?;
        info!(version, name, "applied migration");
        done.push(*version);
    }
    Ok(done)
}
