//! Opaque keyset cursors for newest-first listings: base64 of `<unix micros>:<uuid>` of the last
//! row returned. Keyset (not offset) pagination stays stable while new rows arrive.

use crate::ApiError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A row's position in a newest-first listing: (timestamp, id).
pub type Key = (DateTime<Utc>, Uuid);

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

pub fn encode(ts: DateTime<Utc>, id: Uuid) -> String {
    B64.encode(format!("{}:{id}", ts.timestamp_micros()))
}

pub fn decode(s: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::bad_request("invalid_cursor", "cursor is not one this API returned");
    let raw = B64.decode(s).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (ts, id) = raw.split_once(':').ok_or_else(bad)?;
    let ts = DateTime::from_timestamp_micros(ts.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok((ts, id.parse().map_err(|_| bad())?))
}

/// Clamps a requested page size into 1..=MAX_LIMIT.
pub fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let ts = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = Uuid::new_v4();
        assert_eq!(decode(&encode(ts, id)).unwrap(), (ts, id));
        for bad in ["", "!!", "YWJj", &B64.encode("12:not-a-uuid")] {
            assert!(decode(bad).is_err(), "{bad}");
        }
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(MAX_LIMIT + 1)).is_err());
    }
}

/// The `cursor` and `limit` query parameters every listing takes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// `nextCursor` of the previous page (opaque; any other value answers 400).
    #[param(pattern = "^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// A validated page request: the keyset position to continue after, and the page size.
pub fn page(cursor: Option<&str>, limit: Option<i64>) -> Result<(Option<Key>, i64), ApiError> {
    Ok((cursor.map(decode).transpose()?, self::limit(limit)?))
}

/// The `nextCursor` of a page: the key of its last row when the page is full, else none.
pub fn next<T>(
    rows: &[T],
    limit: i64,
    key: impl Fn(&T) -> (DateTime<Utc>, Uuid),
) -> Option<String> {
    if rows.len() as i64 == limit {
        rows.last().map(|r| {
            let (ts, id) = key(r);
            encode(ts, id)
        })
    } else {
        None
    }
}
