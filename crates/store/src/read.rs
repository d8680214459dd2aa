//! Reads of objects: one, a page, a whole kind, and pending deletions.

use std::time::SystemTime;

use badge_core::clock::{from_unix_micros, unix_micros};
use badge_core::{Kind, Result};

use crate::error::{db_error, not_found};
use crate::row::record_from_row;
use crate::types::{ListPage, ListQuery, Record, Unreadable};
use crate::{Store, Tx};

/// Upper bound on rows fetched per round trip while listing.
const MAX_BATCH: usize = 500;
/// Lower bound, so a selective filter with a small page does not mean a round trip
/// per row.
const MIN_BATCH: usize = 64;

impl Store {
    pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Record> {
        let record = with_pool!(&self.inner.db, |p| sqlx::query(concat!(
            "SELECT ",
            object_columns!(),
            " FROM objects WHERE kind = $1 AND namespace = $2 AND name = $3"
        ))
        .bind(kind.as_str())
        .bind(namespace)
        .bind(name)
        .fetch_optional(p)
        .await
        .map_err(|e| db_error(e, None))?
        .as_ref()
        .map(record_from_row)
        .transpose()?);
        match record {
            Some(record) => self.open(record),
            None => Err(not_found(kind, name)),
        }
    }

    /// A page of one kind, ordered by (namespace, name), read together with the
    /// counter in one snapshot so `revision` is exactly the state listed.
    pub async fn list(&self, q: ListQuery<'_>) -> Result<ListPage> {
        let limit = if q.limit == 0 { usize::MAX } else { q.limit };
        let batch = limit.saturating_add(1).clamp(MIN_BATCH, MAX_BATCH);
        let batch_i64 = i64::try_from(batch).unwrap_or(500);
        let (mut tx, revision) = self.begin_read_at_revision().await?;
        let mut cursor = q.after.clone();
        let mut items = Vec::new();
        let mut more = false;
        'pages: loop {
            let rows = list_batch(&mut tx, q.kind, q.namespace, cursor.as_ref(), batch_i64).await?;
            let fetched = rows.len();
            let mut last = None;
            for row in rows {
                let record = self.open(row)?;
                last = Some((record.namespace.clone(), record.name.clone()));
                if !(q.filter)(&record) {
                    continue;
                }
                if items.len() == limit {
                    // A further match exists: the caller needs another page.
                    more = true;
                    break 'pages;
                }
                items.push(record);
            }
            if fetched < batch {
                break;
            }
            if items.len() == limit {
                // The page is full and the batch was full: more rows exist beyond
                // it, and they may match. Do not scan on just to find out.
                more = true;
                break;
            }
            cursor = last;
        }
        tx.commit().await.map_err(|e| db_error(e, None))?;
        Ok(ListPage {
            items,
            more,
            revision,
        })
    }

    /// Every object of `kind`, handed to `f` one at a time from one snapshot, in
    /// larger batches than [`Store::list`] and without collecting them: the
    /// in-memory index loads millions of objects this way. Returns the snapshot's
    /// revision (as [`ListPage::revision`]).
    ///
    /// An object whose data cannot be opened (see [`Unreadable`]) goes to
    /// `unreadable` instead of failing the whole scan: one such row must not keep
    /// every other object out of the index.
    pub async fn scan(
        &self,
        kind: Kind,
        mut f: impl FnMut(Record) + Send,
        mut unreadable: impl FnMut(Unreadable) + Send,
    ) -> Result<i64> {
        const SCAN_BATCH: usize = 2_000;
        let (mut tx, revision) = self.begin_read_at_revision().await?;
        let mut cursor: Option<(String, String)> = None;
        loop {
            let rows = list_batch(&mut tx, kind, None, cursor.as_ref(), SCAN_BATCH as i64).await?;
            let fetched = rows.len();
            for (i, row) in rows.into_iter().enumerate() {
                if i + 1 == fetched {
                    cursor = Some((row.namespace.clone(), row.name.clone()));
                }
                let key = (row.resource_version, row.kind);
                match self.open_or_key(row) {
                    Ok(record) => f(record),
                    Err((namespace, name, reason)) => unreadable(Unreadable {
                        revision: key.0,
                        event: None,
                        kind: key.1,
                        namespace,
                        name,
                        resource_version: key.0,
                        reason,
                    }),
                }
            }
            if fetched < SCAN_BATCH {
                break;
            }
        }
        tx.commit().await.map_err(|e| db_error(e, None))?;
        Ok(revision)
    }

    /// The earliest pending deletion_timestamp of a kind (for the reaper's timer).
    pub async fn next_deletion(&self, kind: Kind) -> Result<Option<SystemTime>> {
        let min: Option<i64> = with_pool!(&self.inner.db, |p| sqlx::query_scalar(
            "SELECT MIN(deletion_timestamp) FROM objects \
             WHERE kind = $1 AND deletion_timestamp IS NOT NULL",
        )
        .bind(kind.as_str())
        .fetch_one(p)
        .await)
        .map_err(|e| db_error(e, None))?;
        Ok(min.map(from_unix_micros))
    }

    /// Objects of a kind whose deletion_timestamp is at or before `now`, earliest
    /// first.
    pub async fn expired_deletions(&self, kind: Kind, now: SystemTime) -> Result<Vec<Record>> {
        let records = with_pool!(&self.inner.db, |p| sqlx::query(concat!(
            "SELECT ",
            object_columns!(),
            " FROM objects WHERE kind = $1 AND deletion_timestamp IS NOT NULL \
              AND deletion_timestamp <= $2 \
              ORDER BY deletion_timestamp, namespace, name"
        ))
        .bind(kind.as_str())
        .bind(unix_micros(now))
        .fetch_all(p)
        .await
        .map_err(|e| db_error(e, None))?
        .iter()
        .map(record_from_row)
        .collect::<Result<Vec<_>>>()?);
        records.into_iter().map(|r| self.open(r)).collect()
    }
}

async fn list_batch(
    tx: &mut Tx,
    kind: Kind,
    namespace: Option<&str>,
    after: Option<&(String, String)>,
    batch: i64,
) -> Result<Vec<Record>> {
    with_tx!(tx, |c| {
        let q = match (namespace, after) {
            (None, None) => sqlx::query(concat!(
                "SELECT ",
                object_columns!(),
                " FROM objects WHERE kind = $1 ORDER BY namespace, name LIMIT $2"
            ))
            .bind(kind.as_str())
            .bind(batch),
            (Some(ns), None) => sqlx::query(concat!(
                "SELECT ",
                object_columns!(),
                " FROM objects WHERE kind = $1 AND namespace = $2 ORDER BY namespace, name LIMIT $3"
            ))
            .bind(kind.as_str())
            .bind(ns.to_owned())
            .bind(batch),
            (None, Some((ans, aname))) => sqlx::query(concat!(
                "SELECT ",
                object_columns!(),
                " FROM objects WHERE kind = $1 AND (namespace, name) > ($2, $3) \
                  ORDER BY namespace, name LIMIT $4"
            ))
            .bind(kind.as_str())
            .bind(ans.clone())
            .bind(aname.clone())
            .bind(batch),
            (Some(ns), Some((ans, aname))) => sqlx::query(concat!(
                "SELECT ",
                object_columns!(),
                " FROM objects WHERE kind = $1 AND namespace = $2 AND (namespace, name) > ($3, $4) \
                  ORDER BY namespace, name LIMIT $5"
            ))
            .bind(kind.as_str())
            .bind(ns.to_owned())
            .bind(ans.clone())
            .bind(aname.clone())
            .bind(batch),
        };
        q.fetch_all(&mut **c)
            .await
            .map_err(|e| db_error(e, None))?
            .iter()
            .map(record_from_row)
            .collect()
    })
}
