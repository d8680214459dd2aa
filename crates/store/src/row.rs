//! Rows of either driver to records and changes.

use std::str::FromStr;

use badge_core::clock::from_unix_micros;
use badge_core::{Error, Kind, Result};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use crate::error::db_error;
use crate::types::{Change, EventType, Record};

/// Typed column access on either driver's rows.
pub(crate) trait RowExt {
    fn text(&self, col: &str) -> Result<String>;
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>>;
}

macro_rules! row_ext {
    ($($row:ty),*) => {$(
        impl RowExt for $row {
            fn text(&self, col: &str) -> Result<String> {
                self.try_get(col).map_err(|e| db_error(e, None))
            }
            fn int(&self, col: &str) -> Result<i64> {
                self.try_get(col).map_err(|e| db_error(e, None))
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>> {
                self.try_get(col).map_err(|e| db_error(e, None))
            }
            fn bytes(&self, col: &str) -> Result<Vec<u8>> {
                self.try_get(col).map_err(|e| db_error(e, None))
            }
        }
    )*};
}
row_ext!(PgRow, SqliteRow);

pub(crate) fn record_from_row(row: &impl RowExt) -> Result<Record> {
    let kind = row.text("kind")?;
    let kind = Kind::from_str(&kind).map_err(|e| Error::Internal(format!("stored object: {e}")))?;
    let name = row.text("name")?;
    let labels = row.text("labels")?;
    let labels = serde_json::from_str(&labels).map_err(|e| {
        Error::Internal(format!(
            "stored labels of {} \"{name}\" are not a json object of strings: {e}",
            kind.resource()
        ))
    })?;
    Ok(Record {
        kind,
        namespace: row.text("namespace")?,
        uid: row.text("uid")?,
        resource_version: row.int("resource_version")?,
        labels,
        data: row.bytes("data")?,
        creation_timestamp: from_unix_micros(row.int("creation_timestamp")?),
        deletion_timestamp: row.opt_int("deletion_timestamp")?.map(from_unix_micros),
        name,
    })
}

/// A feed row (not yet opened).
pub(crate) fn change_from_row(row: &impl RowExt) -> Result<Change> {
    Ok(Change {
        revision: row.int("revision")?,
        event: EventType::parse(&row.text("event")?)?,
        record: record_from_row(row)?,
    })
}
