//! Every write: [`Store::apply`] hands its ops to the store's writer task, which
//! commits every request waiting in one transaction (group commit).
//!
//! Why: each write transaction locks the single revision-counter row first, so
//! commit order is revision order and a watcher that has seen revision N has seen
//! everything below it. That lock serialises writers on the commit (one fsync and
//! a handful of round trips each, all while holding the lock). The writer task
//! keeps the lock and its guarantees but takes it once per batch: it collects the
//! requests waiting (at most [`MAX_BATCH`]), opens one transaction, locks the
//! counter, runs each request in turn, advances the counter once, sends one NOTIFY
//! and commits once. Each request still is all-or-nothing on its own:
//!
//! - A request that can fail after writing something (several ops, or emptying a
//!   namespace) runs inside a `SAVEPOINT`; on failure it is rolled back to it,
//!   its revisions are given back (the next request continues from the last
//!   successful one, so the feed has no holes) and it is answered with its error.
//! - A request of one create, update or delete checks everything before it
//!   writes, and writes the object and its feed row in one statement (Postgres: a
//!   CTE), so it needs no savepoint: refused, it has written nothing. (Savepoints
//!   that write take a subtransaction id each; saving them also keeps a batch
//!   under Postgres' 64 cached subtransactions per backend, past which every
//!   other session's snapshot checks get slower.) Should one of its statements
//!   fail anyway, the Postgres transaction is aborted: the batch is run again,
//!   then with a savepoint around every request.
//! - On Postgres, consecutive single creates that cannot see each other are
//!   checked with one query and written with one statement (`Writer::create_run`):
//!   a batch of creates costs a handful of round trips, not two per create.
//! - Answers go out only after COMMIT succeeded; if the batch fails (a failed
//!   COMMIT, a connection lost, retries used up) every request in it gets the
//!   error. Nothing is acknowledged that was not committed.
//!
//! The task owns the transaction: a caller that gives up (its future dropped)
//! only loses its answer and cannot cut a batch in half; one that gave up before
//! its batch began is not written at all.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use badge_core::clock::{from_unix_micros, unix_micros};
use badge_core::{Error, Kind, Result};
use sqlx::Transaction;
use sqlx::postgres::Postgres;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{TxError, already_exists, modified_concurrently, not_found};
use crate::row::record_from_row;
use crate::types::{Change, EventType, Op, Precondition, Record};
use crate::{CHANNEL, Db, Store, Tx, publish};

/// How often a write transaction is retried after a serialization failure or
/// deadlock before answering Conflict.
pub(crate) const MAX_ATTEMPTS: u32 = 5;

/// Most requests committed in one transaction. 64 in flight (a busy identity
/// service) fit in one batch; more only lengthen the time the counter lock is
/// held and the wait of the first request in the batch.
const MAX_BATCH: usize = 64;

/// Requests queued for the writer task; past this `apply` waits for room (back
/// pressure instead of an unbounded queue).
const QUEUE: usize = 1024;

/// Bound on one attempt at a batch. A healthy batch takes milliseconds; a server
/// that froze (SIGSTOP, a hung host: TCP still acknowledged) would otherwise hold
/// every write of this store forever, even after the store found a new primary.
/// Past it the requests are answered UNAVAILABLE (their outcome is unknown, as
/// for a caller's deadline) and the monitor is woken.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One `apply` waiting for the writer task.
pub(crate) struct Request {
    /// Sealed already (see `seal.rs`).
    ops: Vec<Op>,
    now: SystemTime,
    reply: oneshot::Sender<Result<Vec<Change>>>,
}

/// Starts the writer task of a store; it ends when the returned sender (held by
/// the store) is dropped and the queue is drained. Must be called inside a Tokio
/// runtime.
pub(crate) fn spawn_writer(db: Db, revision: watch::Sender<i64>) -> mpsc::Sender<Request> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(writer_task(db, revision, rx));
    tx
}

impl Store {
    /// Applies every op in one transaction: all or nothing. Returns the changes in
    /// order, one revision each. The transaction may hold other callers' writes
    /// too (see the module docs); each caller's ops stay all or nothing.
    pub async fn apply(&self, ops: Vec<Op>, now: SystemTime) -> Result<Vec<Change>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let ops = self.seal_ops(ops)?;
        let (reply, answer) = oneshot::channel();
        let stopped = || Error::Unavailable("store unavailable: the writer task stopped".into());
        self.inner
            .writer
            .send(Request { ops, now, reply })
            .await
            .map_err(|_| stopped())?;
        // The task answers every request it takes; no answer means it is gone.
        let changes = answer.await.map_err(|_| stopped())??;
        self.open_applied(changes)
    }
}

async fn writer_task(db: Db, revision: watch::Sender<i64>, mut queue: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Whatever is waiting when the previous batch is done makes the next one:
    // no timer, so a lone write is not delayed and a busy store batches more.
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A caller that gave up before its write began is not written: the same
        // as an `apply` cancelled before its transaction started.
        batch.retain(|r| !r.reply.is_closed());
        if !batch.is_empty() {
            commit_batch(&db, &revision, std::mem::take(&mut batch)).await;
        }
        batch.clear();
    }
    tracing::debug!("store writer stopped");
}

/// What one attempt at a batch came to.
enum BatchError {
    /// Serialization failure or deadlock: run the batch again.
    Retry(String),
    /// A request without a savepoint had a statement fail, which aborted the
    /// Postgres transaction: run the batch again with a savepoint per request.
    Isolate,
    /// The batch failed as a whole: every request gets this.
    Fatal(Error),
}

impl From<TxError> for BatchError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Retry(why) => BatchError::Retry(why),
            TxError::Statement(e) | TxError::Fatal(e) => BatchError::Fatal(e),
        }
    }
}

/// A statement outside a savepoint failed: retry the batch if that may help;
/// otherwise the Postgres transaction is aborted and the batch is run again with
/// a savepoint per request, where the failure is that request's alone.
fn statement_failed(e: sqlx::Error) -> BatchError {
    match TxError::db(e) {
        TxError::Retry(why) => BatchError::Retry(why),
        TxError::Statement(_) | TxError::Fatal(_) => BatchError::Isolate,
    }
}

/// Commits a batch (retrying as a lone `apply` would) and answers every request.
async fn commit_batch(db: &Db, revision: &watch::Sender<i64>, batch: Vec<Request>) {
    let mut attempt = 1;
    let mut isolate = false;
    let outcome = loop {
        let run = tokio::time::timeout(BATCH_TIMEOUT, run_batch(db, &batch, isolate)).await;
        let Ok(run) = run else {
            if let Db::Postgres(primary) = db {
                primary.suspect();
            }
            break Err(Error::Unavailable(format!(
                "store unavailable: the write took longer than {BATCH_TIMEOUT:?}; it may or may not have been applied"
            )));
        };
        match run {
            Ok(done) => break Ok(done),
            Err(BatchError::Fatal(e)) => break Err(e),
            Err(BatchError::Isolate) if !isolate => {
                tracing::debug!(
                    "a statement failed mid-batch; running the batch again with a savepoint per request"
                );
                isolate = true;
            }
            Err(BatchError::Isolate) => {
                break Err(Error::Internal(
                    "store error: a statement failed outside a savepoint".into(),
                ));
            }
            Err(BatchError::Retry(why)) => {
                if attempt >= MAX_ATTEMPTS {
                    break Err(Error::Conflict(format!(
                        "the write could not be serialised with concurrent writes after {attempt} attempts: {why}; retry"
                    )));
                }
                tracing::debug!(attempt, reason = %why, "retrying store transaction");
                tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                attempt += 1;
            }
        }
    };
    match outcome {
        Ok((answers, last)) => {
            // Before the answers: a caller that wrote and then subscribes starts
            // at (or after) its own revision.
            if let Some(last) = last {
                publish(revision, last);
            }
            for (request, answer) in batch.into_iter().zip(answers) {
                // A caller that gave up meanwhile does not want it; its write is
                // committed all the same.
                let _ = request.reply.send(answer);
            }
        }
        Err(e) => {
            for request in batch {
                let _ = request.reply.send(Err(e.clone()));
            }
        }
    }
}

/// One attempt at a batch: every request's answer (in order) and the last
/// revision committed (None: nothing changed, nothing committed).
async fn run_batch(
    db: &Db,
    batch: &[Request],
    isolate: bool,
) -> std::result::Result<(Vec<Result<Vec<Change>>>, Option<i64>), BatchError> {
    let mut tx = db.begin_write().await.map_err(TxError::db)?;
    // Lock the counter row first: from here on this transaction is the only
    // writer, so every read below sees all earlier commits and no one can change
    // what it read before it commits. (On SQLite the transaction is already the
    // only writer; this just reads the counter.)
    let base: i64 = with_tx!(&mut tx, |c| sqlx::query_scalar(
        "UPDATE revision_counter SET revision = revision WHERE id = 1 RETURNING revision",
    )
    .fetch_one(&mut **c)
    .await)
    .map_err(TxError::db)?;
    // SQLite keeps the transaction going after a failed statement, but a request
    // of two statements could then be half-written: always a savepoint there
    // (in-process, nearly free).
    let always_savepoint = isolate || matches!(tx, Tx::Sqlite(..));
    let mut w = Writer {
        tx,
        next: base,
        now_us: 0,
        changes: Vec::new(),
    };
    // Postgres: consecutive single creates are checked with one query and
    // written with one statement (see `Writer::create_run`).
    let runs = matches!(w.tx, Tx::Postgres(_)) && !isolate;
    let mut answers = Vec::with_capacity(batch.len());
    let mut i = 0;
    while let Some(request) = batch.get(i) {
        let run = if runs { create_run(&batch[i..]) } else { 0 };
        if run > 1 {
            answers.extend(w.create_run(&batch[i..i + run]).await?);
            i += run;
            continue;
        }
        w.now_us = unix_micros(request.now);
        let savepoint = always_savepoint || needs_savepoint(&request.ops);
        answers.push(w.request(&request.ops, savepoint).await?);
        i += 1;
    }
    let Writer { mut tx, next, .. } = w;
    if next == base {
        // Nothing changed (every request failed, or changed nothing): nothing to
        // commit.
        tx.rollback().await.map_err(TxError::db)?;
        return Ok((answers, None));
    }
    with_tx!(&mut tx, |c| sqlx::query(
        "UPDATE revision_counter SET revision = $1 WHERE id = 1"
    )
    .bind(next)
    .execute(&mut **c)
    .await
    .map(drop))
    .map_err(TxError::db)?;
    if let Tx::Postgres(tx) = &mut tx {
        notify(tx, next).await.map_err(TxError::db)?;
    }
    // Only now are the requests done: a failed COMMIT fails them all (the caller
    // retries a retryable one), and nobody was answered before.
    tx.commit().await.map_err(TxError::db)?;
    Ok((answers, Some(next)))
}

/// A request of exactly one create of anything but a namespace: its fields.
fn single_create(request: &Request) -> Option<(Kind, &str, &str)> {
    match request.ops.as_slice() {
        [
            Op::Create {
                kind,
                namespace,
                name,
                ..
            },
        ] if *kind != Kind::Namespace => Some((*kind, namespace, name)),
        _ => None,
    }
}

/// How many requests from the start of `batch` form a run of single creates that
/// cannot see each other: no namespaces (a create in the run could need one made
/// by another) and no name twice (the second must see the first). Within such a
/// run, the outcome of each create depends only on what was committed before it.
fn create_run(batch: &[Request]) -> usize {
    let mut keys = std::collections::HashSet::new();
    batch
        .iter()
        .take_while(|r| single_create(r).is_some_and(|key| keys.insert(key)))
        .count()
}

/// What is wrong with a create before looking at the database.
fn invalid_create(kind: Kind, namespace: &str, name: &str) -> Option<Error> {
    if name.is_empty() {
        return Some(Error::invalid("metadata.name", "is required"));
    }
    if kind.namespaced() {
        if namespace.is_empty() {
            return Some(Error::invalid("metadata.namespace", "is required"));
        }
    } else if !namespace.is_empty() {
        return Some(Error::invalid(
            "metadata.namespace",
            format!(
                "must be empty for cluster-scoped {}, got {namespace:?}",
                kind.resource()
            ),
        ));
    }
    None
}

/// Whether a request can fail after it has written something: several ops, or
/// emptying a namespace (its check comes after its DELETE). A single create,
/// update or delete checks first and writes in one statement.
fn needs_savepoint(ops: &[Op]) -> bool {
    !matches!(
        ops,
        [Op::Create { .. } | Op::Update { .. } | Op::Delete { .. }]
    )
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

/// The state of one batch transaction.
struct Writer {
    tx: Tx,
    /// The last revision handed out.
    next: i64,
    /// The `now` of the request being run.
    now_us: i64,
    /// The changes of the request being run.
    changes: Vec<Change>,
}

/// How an object row is written, together with its feed row.
#[derive(Clone, Copy)]
enum ObjectWrite {
    Insert,
    /// The row must still be at this resource_version.
    Update {
        expected: i64,
    },
    Delete {
        expected: i64,
    },
}

/// Postgres: the object's write and its feed row in one statement (one round
/// trip, and atomic: the feed row is written exactly when the object row is).
/// $1..$11 are the feed row (revision, event, kind, namespace, name, uid, labels,
/// data, creation_timestamp, deletion_timestamp, committed_at); $12 the
/// resource_version an update or delete expects.
macro_rules! with_feed_row {
    ($object:literal) => {
        concat!(
            "WITH o AS (",
            $object,
            " RETURNING 1) INSERT INTO changes (revision, event, kind, namespace, name, uid, \
             resource_version, labels, data, creation_timestamp, deletion_timestamp, committed_at) \
             SELECT $1, $2, $3, $4, $5, $6, $1, $7, $8, $9, $10, $11 FROM o"
        )
    };
}
const PG_INSERT: &str = with_feed_row!(
    "INSERT INTO objects (kind, namespace, name, uid, resource_version, labels, data, \
     creation_timestamp, deletion_timestamp) VALUES ($3, $4, $5, $6, $1, $7, $8, $9, $10)"
);
const PG_UPDATE: &str = with_feed_row!(
    "UPDATE objects SET resource_version = $1, labels = $7, data = $8, deletion_timestamp = $10 \
     WHERE kind = $3 AND namespace = $4 AND name = $5 AND resource_version = $12"
);
const PG_DELETE: &str = with_feed_row!(
    "DELETE FROM objects \
     WHERE kind = $3 AND namespace = $4 AND name = $5 AND resource_version = $12"
);

impl Writer {
    fn revision(&mut self) -> i64 {
        self.next += 1;
        self.next
    }

    /// Runs one request's ops. `Ok(answer)`: the request is done (written, or
    /// refused with nothing of it left in the transaction); `Err`: the batch
    /// cannot go on.
    async fn request(
        &mut self,
        ops: &[Op],
        savepoint: bool,
    ) -> std::result::Result<Result<Vec<Change>>, BatchError> {
        let start = self.next;
        if savepoint {
            self.statement("SAVEPOINT request").await?;
        }
        let mut outcome = Ok(());
        for op in ops {
            outcome = self.op(op).await;
            if outcome.is_err() {
                break;
            }
        }
        let refused = match outcome {
            Ok(()) => {
                if savepoint {
                    self.statement("RELEASE SAVEPOINT request").await?;
                }
                return Ok(Ok(std::mem::take(&mut self.changes)));
            }
            Err(TxError::Retry(why)) => return Err(BatchError::Retry(why)),
            Err(TxError::Statement(e) | TxError::Fatal(e)) if savepoint => {
                // Undo what the request wrote; the batch goes on without it. (If
                // this fails, the connection or the transaction is gone: the
                // batch fails.)
                self.statement("ROLLBACK TO SAVEPOINT request").await?;
                self.statement("RELEASE SAVEPOINT request").await?;
                e
            }
            // Refused before it wrote anything (see `needs_savepoint`).
            Err(TxError::Fatal(e)) => e,
            // On Postgres the transaction is aborted now.
            Err(TxError::Statement(_)) => return Err(BatchError::Isolate),
        };
        // Its revisions are given back: the next request continues from the last
        // one that succeeded, so the feed has no holes.
        self.next = start;
        self.changes.clear();
        Ok(Err(refused))
    }

    /// A statement of the batch itself: any failure fails the batch.
    async fn statement(&mut self, sql: &'static str) -> std::result::Result<(), BatchError> {
        with_tx!(&mut self.tx, |c| sqlx::query(sql)
            .execute(&mut **c)
            .await
            .map(drop))
        .map_err(|e| BatchError::from(TxError::db(e)))
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
        if let Some(e) = invalid_create(kind, namespace, name) {
            return Err(e.into());
        }
        // Both checks in one round trip. (For a cluster-scoped kind the first
        // asks for a Namespace named "", which never exists, and is ignored.)
        let (namespace_exists, taken): (bool, bool) = with_tx!(&mut self.tx, |c| sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM objects WHERE kind = $4 AND namespace = '' AND name = $2), \
             EXISTS (SELECT 1 FROM objects WHERE kind = $1 AND namespace = $2 AND name = $3)"
        )
        .bind(kind.as_str())
        .bind(namespace)
        .bind(name)
        .bind(Kind::Namespace.as_str())
        .fetch_one(&mut **c)
        .await)
        .map_err(TxError::db)?;
        if kind.namespaced() && !namespace_exists {
            return Err(not_found(Kind::Namespace, namespace).into());
        }
        if taken {
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
        self.write(ObjectWrite::Insert, EventType::Added, record)
            .await
    }

    /// A run of single creates (see [`create_run`]), Postgres only: one query
    /// checks every namespace and name, then one statement writes every object
    /// that may be created and its feed row. Refused ones are answered without
    /// having written anything and take no revision, so no savepoints are needed
    /// and revisions follow the requests' order with no holes. Two round trips for
    /// the whole run instead of two per create.
    async fn create_run(
        &mut self,
        run: &[Request],
    ) -> std::result::Result<Vec<Result<Vec<Change>>>, BatchError> {
        let keys: Vec<(Kind, &str, &str)> = run.iter().filter_map(single_create).collect();
        let Tx::Postgres(tx) = &mut self.tx else {
            return Err(BatchError::Fatal(Error::Internal(
                "store error: a create run outside Postgres".into(),
            )));
        };
        let kinds: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let namespaces: Vec<&str> = keys.iter().map(|k| k.1).collect();
        let names: Vec<&str> = keys.iter().map(|k| k.2).collect();
        let found: Vec<(bool, bool)> = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM objects o \
                 WHERE o.kind = $4 AND o.namespace = '' AND o.name = k.namespace), \
             EXISTS (SELECT 1 FROM objects o \
                 WHERE o.kind = k.kind AND o.namespace = k.namespace AND o.name = k.name) \
             FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(kind, namespace, name, i) \
             ORDER BY k.i",
        )
        .bind(&kinds)
        .bind(&namespaces)
        .bind(&names)
        .bind(Kind::Namespace.as_str())
        .fetch_all(&mut **tx)
        .await
        .map_err(statement_failed)?;
        if found.len() != run.len() {
            return Err(BatchError::Fatal(Error::Internal(
                "store error: the create check returned the wrong number of rows".into(),
            )));
        }
        let mut answers = Vec::with_capacity(run.len());
        let mut records = Vec::new();
        for (request, (namespace_exists, taken)) in run.iter().zip(found) {
            let Some(Op::Create {
                kind,
                namespace,
                name,
                labels,
                data,
            }) = request.ops.first()
            else {
                // Not reachable (`single_create` picked the run); answered so that
                // every request keeps its place among the answers.
                answers.push(Err(Error::Internal("store error: not a create".into())));
                continue;
            };
            let refused = invalid_create(*kind, namespace, name).or_else(|| {
                if kind.namespaced() && !namespace_exists {
                    Some(not_found(Kind::Namespace, namespace))
                } else if taken {
                    Some(already_exists(*kind, name))
                } else {
                    None
                }
            });
            let labels_text = match refused.map_or_else(|| labels_json(labels), Err) {
                Ok(l) => l,
                Err(e) => {
                    answers.push(Err(e));
                    continue;
                }
            };
            let now_us = unix_micros(request.now);
            let record = Record {
                kind: *kind,
                namespace: namespace.clone(),
                name: name.clone(),
                uid: uuid::Uuid::new_v4().to_string(),
                resource_version: self.revision(),
                labels: labels.clone(),
                data: data.clone(),
                creation_timestamp: from_unix_micros(now_us),
                deletion_timestamp: None,
            };
            answers.push(Ok(vec![Change {
                revision: record.resource_version,
                event: EventType::Added,
                record: record.clone(),
            }]));
            records.push((record, labels_text, now_us));
        }
        if records.is_empty() {
            return Ok(answers);
        }
        let Tx::Postgres(tx) = &mut self.tx else {
            return Ok(answers);
        };
        // creation_timestamp and committed_at are both the request's `now`.
        let written = sqlx::query(
            "WITH r AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], \
                 $5::text[], $6::text[], $7::bytea[], $8::bigint[]) \
                 AS r(rv, kind, namespace, name, uid, labels, data, created)), \
             o AS (INSERT INTO objects (kind, namespace, name, uid, resource_version, labels, \
                 data, creation_timestamp, deletion_timestamp) \
                 SELECT kind, namespace, name, uid, rv, labels, data, created, NULL FROM r) \
             INSERT INTO changes (revision, event, kind, namespace, name, uid, resource_version, \
                 labels, data, creation_timestamp, deletion_timestamp, committed_at) \
             SELECT rv, $9, kind, namespace, name, uid, rv, labels, data, created, NULL, created \
             FROM r",
        )
        .bind(
            records
                .iter()
                .map(|r| r.0.resource_version)
                .collect::<Vec<_>>(),
        )
        .bind(
            records
                .iter()
                .map(|r| r.0.kind.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            records
                .iter()
                .map(|r| r.0.namespace.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            records
                .iter()
                .map(|r| r.0.name.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(records.iter().map(|r| r.0.uid.as_str()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(
            records
                .iter()
                .map(|r| r.0.data.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(records.iter().map(|r| r.2).collect::<Vec<_>>())
        .bind(EventType::Added.as_str())
        .execute(&mut **tx)
        .await
        .map_err(statement_failed)?
        .rows_affected();
        if usize::try_from(written).ok() != Some(records.len()) {
            // Not reachable while the counter lock is held; if it were, the
            // answers above would be wrong: fail the batch, commit nothing.
            return Err(BatchError::Fatal(Error::Internal(
                "store error: a create run wrote an unexpected number of rows".into(),
            )));
        }
        Ok(answers)
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
        let expected = current.resource_version;
        let record = Record {
            resource_version: self.revision(),
            labels: labels.clone(),
            data: data.to_vec(),
            deletion_timestamp,
            ..current
        };
        self.write(
            ObjectWrite::Update { expected },
            EventType::Modified,
            record,
        )
        .await
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
        let expected = current.resource_version;
        let record = Record {
            resource_version: self.revision(),
            ..current
        };
        self.write(ObjectWrite::Delete { expected }, EventType::Deleted, record)
            .await
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

    /// Writes the object row (`how`) and the feed row of `record` (the object
    /// after the change; for a delete its last state). An update or delete that
    /// finds the row changed writes neither and answers Conflict.
    async fn write(
        &mut self,
        how: ObjectWrite,
        event: EventType,
        record: Record,
    ) -> Result<(), TxError> {
        let labels = labels_json(&record.labels)?;
        let (kind, name) = (record.kind, record.name.as_str());
        let Tx::Postgres(tx) = &mut self.tx else {
            return self.write_in_two(how, event, record, &labels).await;
        };
        let (sql, expected) = match how {
            ObjectWrite::Insert => (PG_INSERT, None),
            ObjectWrite::Update { expected } => (PG_UPDATE, Some(expected)),
            ObjectWrite::Delete { expected } => (PG_DELETE, Some(expected)),
        };
        let mut query = sqlx::query(sql)
            .bind(record.resource_version)
            .bind(event.as_str())
            .bind(kind.as_str())
            .bind(&record.namespace)
            .bind(name)
            .bind(&record.uid)
            .bind(&labels)
            .bind(&record.data)
            .bind(unix_micros(record.creation_timestamp))
            .bind(record.deletion_timestamp.map(unix_micros))
            .bind(self.now_us);
        if let Some(expected) = expected {
            query = query.bind(expected);
        }
        let written = query
            .execute(&mut **tx)
            .await
            .map_err(|e| TxError::db_about(e, kind, name))?
            .rows_affected();
        if written != 1 {
            return Err(modified_concurrently(kind, name).into());
        }
        self.changes.push(Change {
            revision: record.resource_version,
            event,
            record,
        });
        Ok(())
    }

    /// SQLite (no data-modifying CTEs): the object row, then the feed row, inside
    /// the request's savepoint.
    async fn write_in_two(
        &mut self,
        how: ObjectWrite,
        event: EventType,
        record: Record,
        labels: &str,
    ) -> Result<(), TxError> {
        let (kind, name) = (record.kind, record.name.as_str());
        let written = with_tx!(&mut self.tx, |c| (match how {
            ObjectWrite::Insert => sqlx::query(
                "INSERT INTO objects (kind, namespace, name, uid, resource_version, labels, data, \
                 creation_timestamp, deletion_timestamp) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(kind.as_str())
            .bind(&record.namespace)
            .bind(name)
            .bind(&record.uid)
            .bind(record.resource_version)
            .bind(labels)
            .bind(&record.data)
            .bind(unix_micros(record.creation_timestamp))
            .bind(record.deletion_timestamp.map(unix_micros))
            .execute(&mut **c)
            .await,
            ObjectWrite::Update { expected } => sqlx::query(
                "UPDATE objects SET resource_version = $1, labels = $2, data = $3, \
                 deletion_timestamp = $4 \
                 WHERE kind = $5 AND namespace = $6 AND name = $7 AND resource_version = $8",
            )
            .bind(record.resource_version)
            .bind(labels)
            .bind(&record.data)
            .bind(record.deletion_timestamp.map(unix_micros))
            .bind(kind.as_str())
            .bind(&record.namespace)
            .bind(name)
            .bind(expected)
            .execute(&mut **c)
            .await,
            ObjectWrite::Delete { expected } => sqlx::query(
                "DELETE FROM objects \
                 WHERE kind = $1 AND namespace = $2 AND name = $3 AND resource_version = $4",
            )
            .bind(kind.as_str())
            .bind(&record.namespace)
            .bind(name)
            .bind(expected)
            .execute(&mut **c)
            .await,
        })
        .map(|r| r.rows_affected()))
        .map_err(|e| TxError::db_about(e, kind, name))?;
        if written != 1 {
            return Err(modified_concurrently(kind, name).into());
        }
        self.record_change(event, record).await
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
