//! Templates. They are immutable once created, which lets the ingest cache them.

use crate::{DbError, Pool};
use chrono::{DateTime, Utc};
use dispatcher_core::TemplateFormat;
use tokio_postgres::Row;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Template {
    pub id: Uuid,
    pub account_id: Uuid,
    pub name: String,
    pub format: TemplateFormat,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

fn from_row(r: &Row) -> Result<Template, DbError> {
    let format: String = r.get("format");
    Ok(Template {
        id: r.get("id"),
        account_id: r.get("account_id"),
        name: r.get("name"),
        format: TemplateFormat::parse(&format)
            .ok_or_else(|| DbError::Corrupt(format!("template format `{format}`")))?,
        body: r.get("body"),
        created_at: r.get("created_at"),
    })
}

pub async fn insert(
    pool: &Pool,
    account_id: Uuid,
    name: &str,
    format: TemplateFormat,
    body: &str,
) -> Result<Template, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO templates (id, account_id, name, format, body)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING id, account_id, name, format, body, created_at",
        )
        .await?;
    let row = client
        .query_one(
            &stmt,
            &[&Uuid::now_v7(), &account_id, &name, &format.as_str(), &body],
        )
        .await?;
    from_row(&row)
}

pub async fn get(pool: &Pool, account_id: Uuid, id: Uuid) -> Result<Option<Template>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT id, account_id, name, format, body, created_at FROM templates
             WHERE id = $1 AND account_id = $2",
        )
        .await?;
    client
        .query_opt(&stmt, &[&id, &account_id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Newest first; `before` is the keyset cursor (created_at, id) of the last row already seen.
pub async fn list(
    pool: &Pool,
    account_id: Uuid,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Template>, DbError> {
    let client = pool.get().await?;
    let (ts, id) = before.unzip();
    let stmt = client
        .prepare_cached(
            "SELECT id, account_id, name, format, body, created_at FROM templates
             WHERE account_id = $1
               AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
             ORDER BY created_at DESC, id DESC LIMIT $4",
        )
        .await?;
    client
        .query(&stmt, &[&account_id, &ts, &id, &limit])
        .await?
        .iter()
        .map(from_row)
        .collect()
}
