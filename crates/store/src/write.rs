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
    // The next batch's transaction, begun while the previous one committed (see
    // `Locked`).
    let mut begun: Option<Locked> = None;
    // Whatever is waiting when the previous batch is done makes the next one:
    // no timer, so a lone write is not delayed and a busy store batches more.
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A caller that gave up before its write began is not written: the same
        // as an `apply` cancelled before its transaction started.
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            // Nothing to write: a transaction begun for it must not sit on the
            // counter lock (other processes' writers wait for it). Dropped, its
            // task rolls it back.
            begun = None;
        } else {
            begun = commit_batch(&db, &revision, std::mem::take(&mut batch), begun, &queue).await;
        }
        batch.clear();
    }
    tracing::debug!("store writer stopped");
}

/// The next batch's transaction, begun and waiting for (or holding) the counter
/// lock, with the counter's value once it has it.
///
/// Why: a batch costs a handful of round trips to Postgres and on a busy machine
/// each is a wait for the server process to be scheduled, so the batch's time,
/// not the database's capacity, bounds the write rate. When requests are already
/// waiting as a batch is about to commit, the writer begins the next transaction
/// on a second connection and sends its lock statement at once: the pool's
/// check, `BEGIN` and the lock's round trip then overlap the commit, and
/// Postgres grants the lock the moment the commit releases it. The guarantees
/// are the lock's own: the next batch still reads the counter (and every
/// object) only after the previous batch committed, so commit order is still
/// revision order. It is only begun when requests are waiting, and dropped when
/// the next batch turns out empty, so an idle store never holds the lock.
type Locked = tokio::task::JoinHandle<std::result::Result<(Tx, i64), TxError>>;

/// Begins a write transaction and locks the counter row (in a task of its own,
/// so it proceeds while the caller commits the previous batch).
fn begin_locked(db: &Db) -> Locked {
    let db = db.clone();
    tokio::spawn(async move {
        let mut tx = db.begin_write().await.map_err(TxError::db)?;
        let base = lock_counter(&mut tx).await.map_err(TxError::db)?;
        Ok((tx, base))
    })
}

/// Locks the counter row: from then on this transaction is the only writer, so
/// every read in it sees all earlier commits and no one can change what it read
/// before it commits. (On SQLite the transaction is already the only writer;
/// this just reads the counter.)
async fn lock_counter(tx: &mut Tx) -> sqlx::Result<i64> {
    with_tx!(tx, |c| sqlx::query_scalar(
        "UPDATE revision_counter SET revision = revision WHERE id = 1 RETURNING revision",
    )
    .fetch_one(&mut **c)
    .await)
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
/// `begun`: a transaction begun for it (see [`Locked`]), used by the first
/// attempt. Returns the one begun for the next batch, if any.
async fn commit_batch(
    db: &Db,
    revision: &watch::Sender<i64>,
    batch: Vec<Request>,
    mut begun: Option<Locked>,
    queue: &mpsc::Receiver<Request>,
) -> Option<Locked> {
    let mut attempt = 1;
    let mut isolate = false;
    let mut next = None;
    let outcome = loop {
        // A transaction an earlier attempt began for the next batch goes to this
        // attempt: it holds (or waits for) the counter lock, so a new one would
        // only wait behind it.
        let begun = begun.take().or_else(|| next.take());
        let run = tokio::time::timeout(
            BATCH_TIMEOUT,
            run_batch(db, &batch, isolate, begun, queue, &mut next),
        )
        .await;
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
    next
}

/// One attempt at a batch: every request's answer (in order) and the last
/// revision committed (None: nothing changed, nothing committed).
/// `begun`: this batch's transaction, already begun and locked (see [`Locked`]);
/// `next_batch`: where the next batch's is put when this one begins one.
async fn run_batch(
    db: &Db,
    batch: &[Request],
    isolate: bool,
    begun: Option<Locked>,
    queue: &mpsc::Receiver<Request>,
    next_batch: &mut Option<Locked>,
) -> std::result::Result<(Vec<Result<Vec<Change>>>, Option<i64>), BatchError> {
    let started = std::time::Instant::now();
    // The counter row is locked first (see `lock_counter`).
    let (tx, base) = match begun {
        Some(begun) => begun.await.unwrap_or_else(|e| {
            Err(TxError::Fatal(Error::Internal(format!(
                "store error: beginning the write transaction failed: {e}"
            ))))
        })?,
        None => {
            let mut tx = db.begin_write().await.map_err(TxError::db)?;
            let base = lock_counter(&mut tx).await.map_err(TxError::db)?;
            (tx, base)
        }
    };
    let locked = started.elapsed();
    // SQLite keeps the transaction going after a failed statement, but a request
    // of two statements could then be half-written: always a savepoint there
    // (in-process, nearly free).
    let always_savepoint = isolate || matches!(tx, Tx::Sqlite(..));
    let mut w = Writer {
        tx,
        next: base,
        finished_at: None,
        now_us: 0,
        changes: Vec::new(),
    };
    // Postgres: consecutive single creates, updates and deletes are checked with
    // one query and written with one statement (see `Writer::op_run`).
    let runs = matches!(w.tx, Tx::Postgres(_)) && !isolate;
    // Postgres: the next batch's transaction starts just before this one's last
    // statements if requests are waiting, so that its lock is granted as this one
    // commits (see `Locked`). Not on SQLite: one process, one writer, nothing to
    // overlap.
    let mut begin_next = || {
        if runs && next_batch.is_none() && !queue.is_empty() {
            *next_batch = Some(begin_locked(db));
        }
    };
    let mut answers = Vec::with_capacity(batch.len());
    let mut i = 0;
    while let Some(request) = batch.get(i) {
        let run = if runs { op_run(&batch[i..]) } else { 0 };
        if run > 1 {
            // A run that ends the batch also advances the counter (one round
            // trip fewer).
            let last = i + run == batch.len();
            let finishing: Option<&mut (dyn FnMut() + Send)> =
                if last { Some(&mut begin_next) } else { None };
            answers.extend(w.op_run(&batch[i..i + run], finishing).await?);
            i += run;
            continue;
        }
        w.now_us = unix_micros(request.now);
        let savepoint = always_savepoint || needs_savepoint(&request.ops);
        answers.push(w.request(&request.ops, savepoint).await?);
        i += 1;
    }
    let Writer {
        mut tx,
        next,
        finished_at,
        ..
    } = w;
    let ran = started.elapsed();
    if next == base {
        // Nothing changed (every request failed, or changed nothing): nothing to
        // commit.
        tx.rollback().await.map_err(TxError::db)?;
        return Ok((answers, None));
    }
    if finished_at != Some(next) {
        begin_next();
        finish(&mut tx, next).await.map_err(TxError::db)?;
    }
    let finished = started.elapsed();
    // Only now are the requests done: a failed COMMIT fails them all (the caller
    // retries a retryable one), and nobody was answered before.
    tx.commit().await.map_err(TxError::db)?;
    tracing::debug!(
        requests = batch.len(),
        locked_us = locked.as_micros(),
        ran_us = ran.as_micros(),
        finished_us = finished.as_micros(),
        committed_us = started.elapsed().as_micros(),
        "batch committed"
    );
    Ok((answers, Some(next)))
}

/// A request of exactly one create, update or delete of anything but a
/// namespace: the key it writes. (Namespaces are left out of runs: a create in a
/// run is checked against the namespaces as they were before the run.)
fn single_op(request: &Request) -> Option<(Kind, &str, &str)> {
    match request.ops.as_slice() {
        [
            Op::Create {
                kind,
                namespace,
                name,
                ..
            }
            | Op::Update {
                kind,
                namespace,
                name,
                ..
            }
            | Op::Delete {
                kind,
                namespace,
                name,
                ..
            },
        ] if *kind != Kind::Namespace => Some((*kind, namespace, name)),
        _ => None,
    }
}

/// How many requests from the start of `batch` form a run of single ops that
/// cannot see each other: no namespaces (a create in the run could need one made
/// or removed by another) and no key twice (the second must see the first).
/// Within such a run, the outcome of each op depends only on what was committed
/// before the run.
fn op_run(batch: &[Request]) -> usize {
    let mut keys = std::collections::HashSet::new();
    batch
        .iter()
        .take_while(|r| single_op(r).is_some_and(|key| keys.insert(key)))
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

/// Advances the counter to `last`, the batch's last revision, and on Postgres
/// wakes every LISTENer when (and only if) the transaction commits: one
/// statement, one round trip.
async fn finish(tx: &mut Tx, last: i64) -> sqlx::Result<()> {
    match tx {
        Tx::Postgres(tx) => sqlx::query(
            "WITH c AS (UPDATE revision_counter SET revision = $1 WHERE id = 1 RETURNING revision) \
             SELECT pg_notify($2, c.revision::text) FROM c",
        )
        .bind(last)
        .bind(CHANNEL)
        .execute(&mut **tx)
        .await
        .map(drop),
        Tx::Sqlite(tx, _) => sqlx::query("UPDATE revision_counter SET revision = $1 WHERE id = 1")
            .bind(last)
            .execute(&mut **tx)
            .await
            .map(drop),
    }
}

/// The state of one batch transaction.
struct Writer {
    tx: Tx,
    /// The last revision handed out.
    next: i64,
    /// The revision a statement of the batch advanced the counter to (and sent
    /// the NOTIFY for), if one did: then the batch's own [`finish`] is not needed.
    finished_at: Option<i64>,
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

/// `kind IN ($2, …)` with one placeholder per [`Kind::ALL`] (bound in that
/// order after the namespace): the primary key (kind, namespace, name) then
/// serves a namespace's objects without an index of their own (migration 2
/// dropped `objects_by_namespace` to save an index insert per write).
macro_rules! namespace_kinds {
    () => {
        "kind IN ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    };
}
// The placeholders above must be exactly the kinds.
const _: () = assert!(Kind::ALL.len() == 12);

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

    /// A run of single creates, updates and deletes (see [`op_run`]), Postgres
    /// only: one query reads every key's object and namespace, each op is decided
    /// here exactly as [`Writer::op`] would decide it alone, then one statement
    /// writes every op that was not refused, with its feed row. Refused ones are
    /// answered without having written anything and take no revision, so no
    /// savepoints are needed and revisions follow the requests' order with no
    /// holes. Two round trips for the whole run instead of two per op.
    /// `finishing`: the run ends the batch, so its statement also does the
    /// batch's [`finish`]; called just before that statement is sent (the
    /// batch's `begin_next`, see [`Locked`]).
    async fn op_run(
        &mut self,
        run: &[Request],
        finishing: Option<&mut (dyn FnMut() + Send)>,
    ) -> std::result::Result<Vec<Result<Vec<Change>>>, BatchError> {
        let keys: Vec<(Kind, &str, &str)> = run.iter().filter_map(single_op).collect();
        let Tx::Postgres(tx) = &mut self.tx else {
            return Err(BatchError::Fatal(Error::Internal(
                "store error: a run of writes outside Postgres".into(),
            )));
        };
        if keys.len() != run.len() {
            return Err(BatchError::Fatal(Error::Internal(
                "store error: a run of writes holds a request of several ops".into(),
            )));
        }
        let kinds: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let namespaces: Vec<&str> = keys.iter().map(|k| k.1).collect();
        let names: Vec<&str> = keys.iter().map(|k| k.2).collect();
        // The object columns are NULL where the key has no object (`found`).
        let rows = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM objects n \
                 WHERE n.kind = $4 AND n.namespace = '' AND n.name = k.namespace) AS namespace_exists, \
             o.uid IS NOT NULL AS found, o.kind, o.namespace, o.name, o.uid, o.resource_version, \
             o.labels, o.data, o.creation_timestamp, o.deletion_timestamp \
             FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(kind, namespace, name, i) \
             LEFT JOIN objects o \
                 ON o.kind = k.kind AND o.namespace = k.namespace AND o.name = k.name \
             ORDER BY k.i",
        )
        .bind(&kinds)
        .bind(&namespaces)
        .bind(&names)
        .bind(Kind::Namespace.as_str())
        .fetch_all(&mut **tx)
        .await
        .map_err(statement_failed)?;
        if rows.len() != run.len() {
            return Err(BatchError::Fatal(Error::Internal(
                "store error: the check of a run of writes returned the wrong number of rows"
                    .into(),
            )));
        }
        let mut answers = Vec::with_capacity(run.len());
        let mut writes = RunWrites::default();
        for (request, row) in run.iter().zip(&rows) {
            let decided = decide_single(request, row).and_then(|(event, record, expected)| {
                Ok((event, labels_json(&record.labels)?, record, expected))
            });
            let (event, labels, mut record, expected) = match decided {
                Ok(d) => d,
                Err(e) => {
                    answers.push(Err(e));
                    continue;
                }
            };
            record.resource_version = self.revision();
            writes.push(event, &record, labels, expected, unix_micros(request.now));
            answers.push(Ok(vec![Change {
                revision: record.resource_version,
                event,
                record,
            }]));
        }
        if writes.revisions.is_empty() {
            return Ok(answers);
        }
        let Tx::Postgres(tx) = &mut self.tx else {
            return Ok(answers);
        };
        let expected_rows = writes.revisions.len();
        let last = finishing.is_some();
        if let Some(begin_next) = finishing {
            begin_next();
        }
        let finish_at = last.then_some(self.next);
        let query = writes.bind(sqlx::query_as(if last { PG_RUN_FINISH } else { PG_RUN }));
        let query = match finish_at {
            Some(revision) => query.bind(revision).bind(CHANNEL),
            None => query,
        };
        let (objects, feed): (i64, i64) =
            query.fetch_one(&mut **tx).await.map_err(statement_failed)?;
        self.finished_at = finish_at;
        if [objects, feed]
            .iter()
            .any(|&n| usize::try_from(n).ok() != Some(expected_rows))
        {
            // Not reachable while the counter lock is held (nothing else writes
            // between the check and the write); if it were, the answers above
            // would be wrong: fail the batch, commit nothing.
            return Err(BatchError::Fatal(Error::Internal(
                "store error: a run of writes wrote an unexpected number of rows".into(),
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
        // Cluster-scoped objects have namespace '', so this only touches namespaced
        // ones. Every kind is named so that the primary key (kind, namespace, name)
        // serves the query, one index range per kind (see `namespace_kinds!`).
        let records = with_tx!(&mut self.tx, |c| {
            let mut query = sqlx::query(concat!(
                "SELECT ",
                object_columns!(),
                " FROM objects WHERE namespace = $1 AND ",
                namespace_kinds!(),
                " ORDER BY kind, name"
            ))
            .bind(namespace);
            for kind in Kind::ALL {
                query = query.bind(kind.as_str());
            }
            query
                .fetch_all(&mut **c)
                .await
                .map_err(TxError::db)?
                .iter()
                .map(record_from_row)
                .collect::<Result<Vec<_>>>()?
        });
        let deleted = with_tx!(&mut self.tx, |c| {
            let mut query = sqlx::query(concat!(
                "DELETE FROM objects WHERE namespace = $1 AND ",
                namespace_kinds!()
            ))
            .bind(namespace);
            for kind in Kind::ALL {
                query = query.bind(kind.as_str());
            }
            query.execute(&mut **c).await.map(|r| r.rows_affected())
        })
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

/// One op of a run, decided against the row the run's check read for its key:
/// the change it makes (its record without its revision yet) and, for an update
/// or delete, the resource_version the row must still have. The same rules, in
/// the same order, as [`Writer::create`], [`Writer::update`] and
/// [`Writer::delete`] apply to a lone op.
fn decide_single(
    request: &Request,
    row: &sqlx::postgres::PgRow,
) -> Result<(EventType, Record, Option<i64>)> {
    use sqlx::Row as _;
    let db = |e| crate::error::db_error(e, None);
    let namespace_exists: bool = row.try_get("namespace_exists").map_err(db)?;
    let current = if row.try_get::<bool, _>("found").map_err(db)? {
        Some(record_from_row(row)?)
    } else {
        None
    };
    let existing = |kind: Kind, name: &str, precondition: &Precondition| {
        let current = current.clone().ok_or_else(|| not_found(kind, name))?;
        check_precondition(&current, precondition)?;
        Ok::<_, Error>(current)
    };
    match request.ops.as_slice() {
        [
            Op::Create {
                kind,
                namespace,
                name,
                labels,
                data,
            },
        ] => {
            if let Some(e) = invalid_create(*kind, namespace, name) {
                return Err(e);
            }
            if kind.namespaced() && !namespace_exists {
                return Err(not_found(Kind::Namespace, namespace));
            }
            if current.is_some() {
                return Err(already_exists(*kind, name));
            }
            let record = Record {
                kind: *kind,
                namespace: namespace.clone(),
                name: name.clone(),
                uid: uuid::Uuid::new_v4().to_string(),
                resource_version: 0,
                labels: labels.clone(),
                data: data.clone(),
                // Stored in microseconds: the answer says what a read will.
                creation_timestamp: from_unix_micros(unix_micros(request.now)),
                deletion_timestamp: None,
            };
            Ok((EventType::Added, record, None))
        }
        [
            Op::Update {
                kind,
                name,
                precondition,
                labels,
                data,
                deletion_timestamp,
                ..
            },
        ] => {
            let current = existing(*kind, name, precondition)?;
            let expected = current.resource_version;
            let record = Record {
                labels: labels.clone(),
                data: data.clone(),
                deletion_timestamp: *deletion_timestamp,
                ..current
            };
            Ok((EventType::Modified, record, Some(expected)))
        }
        [
            Op::Delete {
                kind,
                name,
                precondition,
                ..
            },
        ] => {
            let current = existing(*kind, name, precondition)?;
            let expected = current.resource_version;
            Ok((EventType::Deleted, current, Some(expected)))
        }
        _ => Err(Error::Internal(
            "store error: a run of writes holds a request of several ops".into(),
        )),
    }
}

/// The columns of a run's write statement ([`PG_RUN`]), one entry per op.
#[derive(Default)]
struct RunWrites {
    revisions: Vec<i64>,
    events: Vec<&'static str>,
    kinds: Vec<&'static str>,
    namespaces: Vec<String>,
    names: Vec<String>,
    uids: Vec<String>,
    labels: Vec<String>,
    data: Vec<Vec<u8>>,
    created: Vec<i64>,
    deleted: Vec<Option<i64>>,
    expected: Vec<Option<i64>>,
    committed: Vec<i64>,
}

impl RunWrites {
    fn push(
        &mut self,
        event: EventType,
        record: &Record,
        labels: String,
        expected: Option<i64>,
        now_us: i64,
    ) {
        self.revisions.push(record.resource_version);
        self.events.push(event.as_str());
        self.kinds.push(record.kind.as_str());
        self.namespaces.push(record.namespace.clone());
        self.names.push(record.name.clone());
        self.uids.push(record.uid.clone());
        self.labels.push(labels);
        self.data.push(record.data.clone());
        self.created.push(unix_micros(record.creation_timestamp));
        self.deleted
            .push(record.deletion_timestamp.map(unix_micros));
        self.expected.push(expected);
        self.committed.push(now_us);
    }

    fn bind<'q, O>(
        self,
        query: sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(self.revisions)
            .bind(self.events)
            .bind(self.kinds)
            .bind(self.namespaces)
            .bind(self.names)
            .bind(self.uids)
            .bind(self.labels)
            .bind(self.data)
            .bind(self.created)
            .bind(self.deleted)
            .bind(self.expected)
            .bind(self.committed)
    }
}

macro_rules! pg_run {
    ($finish:literal, $from:literal) => {
        concat!(
            "WITH r AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], \
                $5::text[], $6::text[], $7::text[], $8::bytea[], $9::bigint[], $10::bigint[], \
                $11::bigint[], $12::bigint[]) \
                AS r(rv, event, kind, namespace, name, uid, labels, data, created, deleted, \
                    expected, committed)), \
            ins AS (INSERT INTO objects (kind, namespace, name, uid, resource_version, labels, \
                    data, creation_timestamp, deletion_timestamp) \
                SELECT kind, namespace, name, uid, rv, labels, data, created, deleted \
                FROM r WHERE event = 'ADDED' RETURNING 1), \
            upd AS (UPDATE objects o SET resource_version = r.rv, labels = r.labels, \
                    data = r.data, deletion_timestamp = r.deleted \
                FROM r WHERE r.event = 'MODIFIED' AND o.kind = r.kind \
                    AND o.namespace = r.namespace AND o.name = r.name \
                    AND o.resource_version = r.expected RETURNING 1), \
            del AS (DELETE FROM objects o USING r \
                WHERE r.event = 'DELETED' AND o.kind = r.kind AND o.namespace = r.namespace \
                    AND o.name = r.name AND o.resource_version = r.expected RETURNING 1), \
            feed AS (INSERT INTO changes (revision, event, kind, namespace, name, uid, \
                    resource_version, labels, data, creation_timestamp, deletion_timestamp, \
                    committed_at) \
                SELECT rv, event, kind, namespace, name, uid, rv, labels, data, created, \
                    deleted, committed \
                FROM r RETURNING 1)",
            $finish,
            " SELECT (SELECT count(*) FROM ins) + (SELECT count(*) FROM upd) \
                + (SELECT count(*) FROM del), (SELECT count(*) FROM feed)",
            $from
        )
    };
}
/// A run's writes in one statement: the object rows (inserted, updated or
/// deleted; an update or delete only where the row is still at `expected`) and a
/// feed row for each. Answers how many object rows and feed rows it wrote; the
/// caller checks both against the number of ops. (All parts of one statement
/// see the same snapshot, which is why a run never holds a key twice.)
const PG_RUN: &str = pg_run!("", "");
/// [`PG_RUN`] for a run that ends its batch: it also does the batch's [`finish`]
/// ($13 the batch's last revision, $14 the NOTIFY channel). The NOTIFY's CTE is
/// selected from: a plain SELECT in a WITH only runs when referenced. (The
/// counter row always exists, so it yields exactly one row.)
const PG_RUN_FINISH: &str = pg_run!(
    ", c AS (UPDATE revision_counter SET revision = $13 WHERE id = 1 RETURNING revision), \
     n AS (SELECT pg_notify($14, revision::text) FROM c)",
    " FROM n"
);

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
