//! The change feed: reading it (watches, followers) and compacting it.

use std::time::{Duration, SystemTime};

use badge_core::clock::unix_micros;
use badge_core::{Error, Result};

use crate::error::db_error;
use crate::row::change_from_row;
use crate::types::{Change, Feed, FeedEntry, Unreadable};
use crate::{Db, Store};

/// Bound on one read of the change feed (see [`Store::read_feed`]): far above a
/// healthy read of one batch, short enough that a follower stuck on a frozen
/// server resumes soon after the failover.
const FEED_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    /// Feed entries with revision > `after`, ascending, at most `limit` (≤ 0: no
    /// limit). `after` below the compacted revision → `OutOfRange` (relist). An
    /// entry whose data cannot be opened fails the whole call (a watch must not
    /// skip an event silently); see [`Store::read_feed`] for a reader that goes on.
    pub async fn changes_since(&self, after: i64, limit: i64) -> Result<Vec<Change>> {
        self.read_feed(after, limit)
            .await?
            .entries
            .into_iter()
            .map(|e| match e {
                FeedEntry::Change(c) => Ok(c),
                FeedEntry::Unreadable(u) => Err(Error::Internal(u.reason)),
            })
            .collect()
    }

    /// As [`Store::changes_since`], but an entry whose data cannot be opened comes
    /// back as [`FeedEntry::Unreadable`] (its key, never its data) in its place,
    /// so a follower applies every other change and decides what an unreadable
    /// object means to it (the index drops it: fail closed). Also returns the
    /// revision counter of the snapshot read.
    pub async fn read_feed(&self, after: i64, limit: i64) -> Result<Feed> {
        self.read_feed_marked(after, limit)
            .await
            .map(|(feed, _)| feed)
    }

    /// [`Store::read_feed`], and the compaction mark of the snapshot read (the
    /// relay drops what the database no longer has).
    pub(crate) async fn read_feed_marked(&self, after: i64, limit: i64) -> Result<(Feed, i64)> {
        self.inner
            .feed_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Followers (watch streams, the reviewer's index, key and CA watchers) read
        // the feed from background tasks that have no caller deadline. A query in
        // flight on a server that froze (SIGSTOP, a hung host: the kernel still
        // acknowledges TCP) would never return and the follower would stall for
        // good, even after the store switched to the new primary. Bounded, it fails
        // UNAVAILABLE, the monitor is woken, and the follower resumes from its
        // cursor on the next read.
        match tokio::time::timeout(FEED_READ_TIMEOUT, self.read_feed_once(after, limit)).await {
            Ok(r) => r,
            Err(_) => {
                if let Db::Postgres(primary) = &self.inner.db {
                    primary.suspect();
                }
                Err(Error::Unavailable(format!(
                    "store unavailable: reading the change feed took longer than {FEED_READ_TIMEOUT:?}"
                )))
            }
        }
    }

    async fn read_feed_once(&self, after: i64, limit: i64) -> Result<(Feed, i64)> {
        let limit = if limit <= 0 { i64::MAX } else { limit };
        // One snapshot for the compaction mark, the counter and the rows, so a
        // compaction that commits in between cannot silently cut a hole in what
        // we return.
        let mut tx = self.begin_read().await?;
        let (compacted, counter): (i64, i64) = with_tx!(&mut tx, |c| sqlx::query_as(
            "SELECT compacted_revision, \
             (SELECT revision FROM revision_counter WHERE id = 1) \
             FROM feed_meta WHERE id = 1"
        )
        .fetch_one(&mut **c)
        .await)
        .map_err(|e| db_error(e, None))?;
        if after < compacted {
            return Err(Error::OutOfRange(format!(
                "resource_version {after} is too old: history before {} was compacted; relist",
                compacted.saturating_add(1)
            )));
        }
        let changes = with_tx!(&mut tx, |c| sqlx::query(concat!(
            "SELECT revision, event, ",
            object_columns!(),
            " FROM changes WHERE revision > $1 ORDER BY revision LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&mut **c)
        .await
        .map_err(|e| db_error(e, None))?
        .iter()
        .map(change_from_row)
        .collect::<Result<Vec<_>>>()?);
        tx.commit().await.map_err(|e| db_error(e, None))?;
        let entries = changes
            .into_iter()
            .map(|c| {
                let (kind, resource_version) = (c.record.kind, c.record.resource_version);
                match self.open_or_key(c.record) {
                    Ok(record) => FeedEntry::Change(Change { record, ..c }),
                    Err((namespace, name, reason)) => FeedEntry::Unreadable(Unreadable {
                        revision: c.revision,
                        event: Some(c.event),
                        kind,
                        namespace,
                        name,
                        resource_version,
                        reason,
                    }),
                }
            })
            .collect();
        Ok((
            Feed {
                entries,
                revision: counter,
            },
            compacted,
        ))
    }

    /// Removes the prefix of the feed committed before `older_than` and records the
    /// highest revision removed. Returns how many entries were removed.
    pub async fn compact(&self, older_than: SystemTime) -> Result<u64> {
        let mut tx = self.begin_write().await.map_err(|e| db_error(e, None))?;
        // Cut at a revision, not a time, so what is removed is always a prefix of
        // the feed even if writers' clocks disagree.
        let cutoff: Option<i64> = with_tx!(&mut tx, |c| sqlx::query_scalar(
            "SELECT MAX(revision) FROM changes WHERE committed_at < $1"
        )
        .bind(unix_micros(older_than))
        .fetch_one(&mut **c)
        .await)
        .map_err(|e| db_error(e, None))?;
        let Some(cutoff) = cutoff else {
            tx.rollback().await.map_err(|e| db_error(e, None))?;
            return Ok(0);
        };
        let removed = with_tx!(&mut tx, |c| sqlx::query(
            "DELETE FROM changes WHERE revision <= $1"
        )
        .bind(cutoff)
        .execute(&mut **c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| db_error(e, None))?;
        with_tx!(&mut tx, |c| sqlx::query(
            "UPDATE feed_meta SET compacted_revision = $1 WHERE id = 1 AND compacted_revision < $1",
        )
        .bind(cutoff)
        .execute(&mut **c)
        .await
        .map(drop))
        .map_err(|e| db_error(e, None))?;
        tx.commit().await.map_err(|e| db_error(e, None))?;
        // Followers of this process behind the cut now read the database (and get
        // OutOfRange) at once, not only after the relay's next read.
        if let Some(handle) = self.inner.relay.get() {
            handle.relay.compacted(cutoff);
        }
        Ok(removed)
    }
}
