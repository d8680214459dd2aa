//! Every write: [`Store::apply`] runs a batch of ops in one transaction, retried
//! on serialization failures.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use badge_core::clock::{from_unix_micros, unix_micros};
use badge_core::{Error, Kind, Result};
use sqlx::Transaction;
use sqlx::postgres::Postgres;

use crate::error::{TxError, already_exists, modified_concurrently, not_found};
use crate::row::record_from_row;
use crate::types::{Change, EventType, Op, Precondition, Record};
use crate::{CHANNEL, Store, Tx, publish};

/// How often a write transaction is retried after a serialization failure or
/// deadlock before answering Conflict.
pub(crate) const MAX_ATTEMPTS: u32 = 5;

impl Store {
    /// Applies every op in one transaction: all or nothing. Returns the changes in
    /// order, one revision each.
    pub async fn apply(&self, ops: Vec<Op>, now: SystemTime) -> Result<Vec<Change>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let ops = self.seal_ops(ops)?;
        let mut attempt = 1;
        loop {
            match self.apply_once(&ops, now).await {
                Ok(changes) => {
                    if let Some(last) = changes.last() {
                        publish(&self.inner.revision, last.revision);
                    }
                    return self.open_applied(changes);
                }
                Err(TxError::Fatal(e)) => return Err(e),
                Err(TxError::Retry(why)) => {
                    if attempt >= MAX_ATTEMPTS {
                        return Err(Error::Conflict(format!(
                            "the write could not be serialised with concurrent writes after {attempt} attempts: {why}; retry"
                        )));
                    }
                    tracing::debug!(attempt, reason = %why, "retrying store transaction");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn apply_once(&self, ops: &[Op], now: SystemTime) -> Result<Vec<Change>, TxError> {
        let mut tx = self.begin_write().await.map_err(TxError::db)?;
        // Lock the counter row first: from here on this transaction is the only
        // writer, so every read below sees all earlier commits and no one can
        // change what it read before it commits. (On SQLite the transaction is
        // already the only writer; this just reads the counter.)
        let base: i64 = with_tx!(&mut tx, |c| sqlx::query_scalar(
            "UPDATE revision_counter SET revision = revision WHERE id = 1 RETURNING revision",
        )
        .fetch_one(&mut **c)
        .await)
        .map_err(TxError::db)?;
        let mut w = Writer {
            tx,
            next: base,
            now_us: unix_micros(now),
            changes: Vec::new(),
        };
        for op in ops {
            w.op(op).await?;
        }
        let Writer {
            mut tx, changes, ..
        } = w;
        let Some(last) = changes.last().map(|c| c.revision) else {
            // Nothing changed (e.g. emptying an empty namespace): nothing to commit.
            tx.rollback().await.map_err(TxError::db)?;
            return Ok(changes);
        };
        with_tx!(&mut tx, |c| sqlx::query(
            "UPDATE revision_counter SET revision = $1 WHERE id = 1"
        )
        .bind(last)
        .execute(&mut **c)
        .await
        .map(drop))
        .map_err(TxError::db)?;
        if let Tx::Postgres(tx) = &mut tx {
            notify(tx, last).await.map_err(TxError::db)?;
        }
        tx.commit().await.map_err(TxError::db)?;
        Ok(changes)
    }
}

/// Postgres-only: wakes every LISTENer when (and only if) the transaction commits.
pub(crate) async fn notify(
    tx: &mut Transaction<'static, Postgres>,
    revision: i64,
) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(revision.to_string())
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

/// The state of one `apply` transaction.
struct Writer {
    tx: Tx,
    /// The last revision handed out.
    next: i64,
    now_us: i64,
    changes: Vec<Change>,
}

impl Writer {
    fn revision(&mut self) -> i64 {
        self.next += 1;
        self.next
    }

    async fn op(&mut self, op: &Op) -> Result<(), TxError> {
        match op {
            Op::Create {
                kind,
                namespace,
                name,
                labels,
                data,
            } => self.create(*kind, namespace, name, labels, data).await,
            Op::Update {
                kind,
                namespace,
                name,
                precondition,
                labels,
                data,
                deletion_timestamp,
            } => {
                self.update(
                    *kind,
                    namespace,
                    name,
                    precondition,
                    labels,
                    data,
                    *deletion_timestamp,
                )
                .await
            }
            Op::Delete {
                kind,
                namespace,
                name,
                precondition,
            } => self.delete(*kind, namespace, name, precondition).await,
            Op::DeleteNamespaceContents { namespace } => {
                self.delete_namespace_contents(namespace).await
            }
        }
    }

    async fn create(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
        data: &[u8],
    ) -> Result<(), TxError> {
        if name.is_empty() {
            return Err(Error::invalid("metadata.name", "is required").into());
        }
        if kind.namespaced() {
            if namespace.is_empty() {
                return Err(Error::invalid("metadata.namespace", "is required").into());
            }
            if self.fetch(Kind::Namespace, "", namespace).await?.is_none() {
                return Err(not_found(Kind::Namespace, namespace).into());
            }
        } else if !namespace.is_empty() {
            return Err(Error::invalid(
                "metadata.namespace",
                format!(
                    "must be empty for cluster-scoped {}, got {namespace:?}",
                    kind.resource()
                ),
            )
            .into());
        }
        if self.fetch(kind, namespace, name).await?.is_some() {
            return Err(already_exists(kind, name).into());
        }
        let record = Record {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uuid::Uuid::new_v4().to_string(),
            resource_version: self.revision(),
            labels: labels.clone(),
            data: data.to_vec(),
            creation_timestamp: from_unix_micros(self.now_us),
            deletion_timestamp: None,
        };
        let labels = labels_json(&record.labels)?;
        let now_us = self.now_us;
        with_tx!(&mut self.tx, |c| sqlx::query(
            "INSERT INTO objects (kind, namespace, name, uid, resource_version, labels, data, \
             creation_timestamp, deletion_timestamp) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(kind.as_str())
        .bind(namespace)
        .bind(name)
        .bind(&record.uid)
        .bind(record.resource_version)
        .bind(&labels)
        .bind(data)
        .bind(now_us)
        .bind(None::<i64>)
        .execute(&mut **c)
        .await
        .map(drop))
        .map_err(|e| TxError::db_about(e, kind, name))?;
        self.record_change(EventType::Added, record).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn update(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition: &Precondition,
        labels: &BTreeMap<String, String>,
        data: &[u8],
        deletion_timestamp: Option<SystemTime>,
    ) -> Result<(), TxError> {
        let current = self
            .fetch_existing(kind, namespace, name, precondition)
            .await?;
        let record = Record {
            resource_version: self.revision(),
            labels: labels.clone(),
            data: data.to_vec(),
            deletion_timestamp,
            ..current.clone()
        };
        let labels = labels_json(&record.labels)?;
        let updated = with_tx!(&mut self.tx, |c| sqlx::query(
            "UPDATE objects SET resource_version = $1, labels = $2, data = $3, \
             deletion_timestamp = $4 \
             WHERE kind = $5 AND namespace = $6 AND name = $7 AND resource_version = $8",
        )
        .bind(record.resource_version)
        .bind(&labels)
        .bind(data)
        .bind(deletion_timestamp.map(unix_micros))
        .bind(kind.as_str())
        .bind(namespace)
        .bind(name)
        .bind(current.resource_version)
        .execute(&mut **c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(TxError::db)?;
        if updated != 1 {
            return Err(modified_concurrently(kind, name).into());
        }
        self.record_change(EventType::Modified, record).await
    }

    async fn delete(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition: &Precondition,
    ) -> Result<(), TxError> {
        let current = self
            .fetch_existing(kind, namespace, name, precondition)
            .await?;
        let deleted = with_tx!(&mut self.tx, |c| sqlx::query(
            "DELETE FROM objects \
             WHERE kind = $1 AND namespace = $2 AND name = $3 AND resource_version = $4",
        )
        .bind(kind.as_str())
        .bind(namespace)
        .bind(name)
        .bind(current.resource_version)
        .execute(&mut **c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(TxError::db)?;
        if deleted != 1 {
            return Err(modified_concurrently(kind, name).into());
        }
        let record = Record {
            resource_version: self.revision(),
            ..current
        };
        self.record_change(EventType::Deleted, record).await
    }

    async fn delete_namespace_contents(&mut self, namespace: &str) -> Result<(), TxError> {
        if namespace.is_empty() {
            return Err(Error::invalid("namespace", "is required").into());
        }
        // Cluster-scoped objects have namespace '', so this only touches namespaced ones.
        let records = with_tx!(&mut self.tx, |c| sqlx::query(concat!(
            "SELECT ",
            object_columns!(),
            " FROM objects WHERE namespace = $1 ORDER BY kind, name"
        ))
        .bind(namespace)
        .fetch_all(&mut **c)
        .await
        .map_err(TxError::db)?
        .iter()
        .map(record_from_row)
        .collect::<Result<Vec<_>>>()?);
        let deleted = with_tx!(&mut self.tx, |c| sqlx::query(
            "DELETE FROM objects WHERE namespace = $1"
        )
        .bind(namespace)
        .execute(&mut **c)
        .await
        .map(|r| r.rows_affected()))
        .map_err(TxError::db)?;
        if usize::try_from(deleted).ok() != Some(records.len()) {
            return Err(Error::Conflict(format!(
                "operation cannot be fulfilled on namespaces \"{namespace}\": its contents changed while being deleted"
            ))
            .into());
        }
        for current in records {
            let record = Record {
                resource_version: self.revision(),
                ..current
            };
            self.record_change(EventType::Deleted, record).await?;
        }
        Ok(())
    }

    /// The current object, after checking the preconditions against it.
    async fn fetch_existing(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition: &Precondition,
    ) -> Result<Record, TxError> {
        let Some(current) = self.fetch(kind, namespace, name).await? else {
            return Err(not_found(kind, name).into());
        };
        check_precondition(&current, precondition)?;
        Ok(current)
    }

    async fn fetch(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Record>, TxError> {
        Ok(with_tx!(&mut self.tx, |c| sqlx::query(concat!(
            "SELECT ",
            object_columns!(),
            " FROM objects WHERE kind = $1 AND namespace = $2 AND name = $3"
        ))
        .bind(kind.as_str())
        .bind(namespace)
        .bind(name)
        .fetch_optional(&mut **c)
        .await
        .map_err(TxError::db)?
        .as_ref()
        .map(record_from_row)
        .transpose()?))
    }

    /// Appends the feed row for a change (same transaction as the object write).
    async fn record_change(&mut self, event: EventType, record: Record) -> Result<(), TxError> {
        let revision = record.resource_version;
        let labels = labels_json(&record.labels)?;
        let now_us = self.now_us;
        with_tx!(&mut self.tx, |c| sqlx::query(
            "INSERT INTO changes (revision, event, kind, namespace, name, uid, resource_version, \
             labels, data, creation_timestamp, deletion_timestamp, committed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(revision)
        .bind(event.as_str())
        .bind(record.kind.as_str())
        .bind(&record.namespace)
        .bind(&record.name)
        .bind(&record.uid)
        .bind(record.resource_version)
        .bind(&labels)
        .bind(&record.data)
        .bind(unix_micros(record.creation_timestamp))
        .bind(record.deletion_timestamp.map(unix_micros))
        .bind(now_us)
        .execute(&mut **c)
        .await
        .map(drop))
        .map_err(TxError::db)?;
        self.changes.push(Change {
            revision,
            event,
            record,
        });
        Ok(())
    }
}

fn check_precondition(current: &Record, p: &Precondition) -> Result<()> {
    if let Some(uid) = &p.uid
        && *uid != current.uid
    {
        return Err(Error::Conflict(format!(
            "precondition failed: uid in precondition: {uid}, uid in object: {}",
            current.uid
        )));
    }
    if let Some(rv) = p.resource_version
        && rv != current.resource_version
    {
        return Err(Error::Conflict(format!(
            "operation cannot be fulfilled on {} \"{}\": the object has been modified: \
             resource_version {rv} is stale, current is {}",
            current.kind.resource(),
            current.name,
            current.resource_version
        )));
    }
    Ok(())
}

fn labels_json(labels: &BTreeMap<String, String>) -> Result<String> {
    serde_json::to_string(labels).map_err(|e| Error::Internal(format!("encoding labels: {e}")))
}
