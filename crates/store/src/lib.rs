//! Badge's store: one generic object table, optimistic concurrency, and the change
//! feed, through sqlx on one of two backends, picked by the URL given to
//! [`Store::connect`]:
//!
//! - `postgres://…` — PostgreSQL, the production store: any number of processes
//!   (replicas of every service) share one database.
//! - `sqlite://PATH` — an embedded SQLite file (created with its directory when
//!   missing, WAL mode), for `badge up` and development: nothing to install, but
//!   **one database serves one process**. The writers' lock, the change-feed
//!   wake-up and [`Store::try_locked`] are in-process on SQLite, shared by every
//!   store that process opens on the file (see `sqlite.rs`).
//!
//! The store is byte-oriented: the identity service encodes its prost messages into
//! [`Record::data`]; the server-managed metadata (uid, resource_version, timestamps,
//! labels) lives in columns and is overlaid onto the decoded object by the service.
//!
//! Every write goes through [`Store::apply`], which runs a batch of [`Op`]s in one
//! transaction. The transaction first locks the single row of the revision counter
//! (SQLite: the process's writers' mutex, then `BEGIN IMMEDIATE`), so writers are
//! serialised and commit order equals revision order; every changed object gets its
//! own revision and a row in the `changes` feed, committed together with the
//! object. On Postgres a `NOTIFY` in the same transaction wakes every process's
//! [`Store::subscribe`] receivers (see `listener.rs`); on SQLite the committing
//! store bumps the watch its process shares.
//!
//! SQL is written once and compiled for both drivers (`with_pool!` / `with_tx!`:
//! `$N` placeholders, row values and `RETURNING` work on both); it stays portable
//! (plain column types, no jsonb, times as microseconds). The backend-specific
//! parts are isolated: `LISTEN`/`NOTIFY` ([`listener`] and [`notify`]), the
//! snapshot-isolation `BEGIN` ([`READ_SNAPSHOT`]), advisory locks, the write
//! `BEGIN` (`Store::begin_write`), each backend's migrations (`migrations/` and
//! `migrations/sqlite/`, see [`schema`]) and the error codes ([`db_error`]).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use badge_core::clock::{from_unix_micros, unix_micros};
use badge_core::seal::DataSealer;
use badge_core::{Error, Kind, Result};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteRow};
use sqlx::{Row, Transaction};
use tokio::sync::{OwnedMutexGuard, oneshot, watch};

/// Bound on one read of the change feed (see [`Store::read_feed`]): far above a
/// healthy read of one batch, short enough that a follower stuck on a frozen
/// server resumes soon after the failover.
const FEED_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The object columns, in the order `record_from_row` reads them by name.
macro_rules! object_columns {
    () => {
        "kind, namespace, name, uid, resource_version, labels, data, \
         creation_timestamp, deletion_timestamp"
    };
}

/// Runs `$body` with `$p` bound to the pool of whichever backend `$db` (a `&Db`)
/// is: the SQL is written once and compiled for both drivers.
macro_rules! with_pool {
    ($db:expr, |$p:ident| $body:expr) => {
        match $db {
            crate::Db::Postgres(primary) => {
                let pool = primary.pool();
                let $p = &pool;
                let r = $body;
                primary.observe(&r);
                r
            }
            crate::Db::Sqlite(shared) => {
                let $p = &shared.pool;
                $body
            }
        }
    };
}

/// Runs `$body` with `$c` bound to the transaction (`&mut Transaction<'static, _>`)
/// inside `$tx` (a `&mut Tx`), whichever backend it is on. Use `&mut **$c` as the
/// executor.
macro_rules! with_tx {
    ($tx:expr, |$c:ident| $body:expr) => {
        match $tx {
            crate::Tx::Postgres($c) => $body,
            crate::Tx::Sqlite($c, _) => $body,
        }
    };
}

mod listener;
mod primary;
mod schema;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

/// One stored object with its server-managed metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The revision of the object's last write.
    pub resource_version: i64,
    pub labels: BTreeMap<String, String>,
    /// The encoded object (opaque to the store).
    pub data: Vec<u8>,
    pub creation_timestamp: SystemTime,
    pub deletion_timestamp: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "ADDED" => Ok(EventType::Added),
            "MODIFIED" => Ok(EventType::Modified),
            "DELETED" => Ok(EventType::Deleted),
            other => Err(Error::Internal(format!(
                "unknown event type {other:?} in the change feed"
            ))),
        }
    }
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: i64,
    pub event: EventType,
    /// The object after the change; for `Deleted`, its last state with
    /// `resource_version` set to the revision of the delete (as Kubernetes does).
    pub record: Record,
}

/// An object or feed entry whose data could not be opened: sealed under another
/// key-encryption key, tampered with, or sealed while this process has no key.
/// Only its key and the reason travel on — never its data (which is ciphertext
/// anyway, and must not end up in a log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The feed revision; for an object read by [`Store::scan`], its
    /// resource_version.
    pub revision: i64,
    /// The feed event; `None` for an object read by [`Store::scan`].
    pub event: Option<EventType>,
    pub kind: Kind,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    /// The revision of the object's write (for a delete: of the delete).
    pub resource_version: i64,
    /// Why it could not be opened (names the object and the sealer's error).
    pub reason: String,
}

/// One entry of [`Store::read_feed`]: a change, or a change whose object could
/// not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEntry {
    Change(Change),
    Unreadable(Unreadable),
}

impl FeedEntry {
    pub fn revision(&self) -> i64 {
        match self {
            FeedEntry::Change(c) => c.revision,
            FeedEntry::Unreadable(u) => u.revision,
        }
    }
}

/// A batch of [`Store::read_feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    /// Ascending by revision.
    pub entries: Vec<FeedEntry>,
    /// The revision counter in the snapshot the entries were read from. When
    /// `entries` is empty, nothing up to this revision remains to be read.
    pub revision: i64,
}

/// Optimistic-concurrency preconditions of an update or delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Precondition {
    pub resource_version: Option<i64>,
    pub uid: Option<String>,
}

/// One write of an [`Store::apply`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// uid = a new UUIDv4, creation_timestamp = `now`.
    Create {
        kind: Kind,
        namespace: String,
        name: String,
        labels: BTreeMap<String, String>,
        data: Vec<u8>,
    },
    /// Replaces labels, data and deletion_timestamp; uid and creation_timestamp stay.
    Update {
        kind: Kind,
        namespace: String,
        name: String,
        precondition: Precondition,
        labels: BTreeMap<String, String>,
        data: Vec<u8>,
        deletion_timestamp: Option<SystemTime>,
    },
    /// Removes the object. Deleting a Namespace does not cascade by itself.
    Delete {
        kind: Kind,
        namespace: String,
        name: String,
        precondition: Precondition,
    },
    /// Deletes every namespaced object in the namespace (all kinds), one `Deleted`
    /// change each, ordered by (kind, name).
    DeleteNamespaceContents { namespace: String },
}

#[derive(Clone)]
pub struct StoreOptions {
    /// Upper bound of the connection pool (the LISTEN connection is extra).
    pub max_connections: u32,
    /// How long to wait for a connection (pool acquire, including connecting).
    pub connect_timeout: Duration,
    /// Encrypts the data of sensitive kinds (Secrets) at rest. Every process that
    /// reads them needs the same key.
    pub sealer: Option<Arc<dyn DataSealer>>,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("sealed", &self.sealer.is_some())
            .finish()
    }
}

/// Kinds whose data is sealed at rest when a sealer is configured. (Signing keys
/// arrive with their private part already sealed by the token-issuer.)
pub const SEALED_KINDS: [Kind; 1] = [Kind::Secret];

/// Prefix of sealed data. Protobuf never starts with a zero byte (field 0 does not
/// exist), so sealed and plain rows cannot be confused: plain rows written before
/// encryption was turned on stay readable and are sealed on their next write.
const SEALED_PREFIX: &[u8] = b"\0badge:sealed:v1\0";

fn seal_aad(kind: Kind, namespace: &str, name: &str) -> Vec<u8> {
    format!("badge/{}/{namespace}/{name}", kind.as_str()).into_bytes()
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            sealer: None,
        }
    }
}

/// A page request of [`Store::list`].
pub struct ListQuery<'a> {
    pub kind: Kind,
    /// `None` lists all namespaces.
    pub namespace: Option<&'a str>,
    /// Exclusive `(namespace, name)` cursor: items strictly after it.
    pub after: Option<(String, String)>,
    /// At most this many items; 0 means no limit.
    pub limit: usize,
    /// Applied in Rust to every row; only matching rows count toward `limit`.
    pub filter: &'a (dyn Fn(&Record) -> bool + Send + Sync),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Ordered by (namespace, name), bytewise.
    pub items: Vec<Record>,
    /// True when further matching items may exist after the last item.
    pub more: bool,
    /// The revision of exactly the state listed: watch from here.
    pub revision: i64,
}

/// A handle on the store; cheap to clone. The background LISTEN task ends when the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    /// Seals the data of [`SEALED_KINDS`] at rest (None: stored as given).
    sealer: Option<Arc<dyn DataSealer>>,
    /// Postgres: this store's own, fed by the LISTEN task; SQLite: the one every
    /// store of this process on the database shares.
    revision: watch::Sender<i64>,
    /// Postgres: dropped with the last `Store` clone; its receiver stops the
    /// LISTEN task.
    _stop_listener: Option<oneshot::Sender<()>>,
}

/// The database behind a store.
enum Db {
    /// The current primary's pool (one fixed pool for a single-host URL).
    Postgres(Arc<primary::Primary>),
    Sqlite(Arc<sqlite::Shared>),
}

/// An open transaction on either backend. An SQLite write transaction holds the
/// process's writers' mutex until it ends (declared after the transaction, so it
/// is released after the transaction's own drop).
enum Tx {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>, Option<OwnedMutexGuard<()>>),
}

impl Tx {
    async fn commit(self) -> sqlx::Result<()> {
        match self {
            Tx::Postgres(tx) => tx.commit().await,
            Tx::Sqlite(tx, _writer) => tx.commit().await,
        }
    }

    async fn rollback(self) -> sqlx::Result<()> {
        match self {
            Tx::Postgres(tx) => tx.rollback().await,
            Tx::Sqlite(tx, _writer) => tx.rollback().await,
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("sealed", &self.sealer.is_some())
            .finish_non_exhaustive()
    }
}

/// Name of the NOTIFY channel; the payload is the last revision of the commit.
const CHANNEL: &str = "badge_changes";
/// How often a write transaction is retried after a serialization failure or
/// deadlock before answering Conflict.
const MAX_ATTEMPTS: u32 = 5;
/// Upper bound on rows fetched per round trip while listing.
const MAX_BATCH: usize = 500;
/// Lower bound, so a selective filter with a small page does not mean a round trip
/// per row.
const MIN_BATCH: usize = 64;

impl Store {
    /// Builds the pool (lazily: no connection is made until one is needed, so a
    /// binary can start and report NotServing while the database is down) and
    /// spawns the LISTEN task. Must be called inside a Tokio runtime.
    ///
    /// `url` picks the backend: `postgres://` / `postgresql://` for PostgreSQL,
    /// `sqlite://PATH` for an embedded SQLite file (created with its directory
    /// when missing; one process per file, see the crate docs).
    pub async fn connect(url: &str, opts: StoreOptions) -> Result<Store> {
        if sqlite::is_sqlite_url(url) {
            let shared = sqlite::open(url, &opts)?;
            return Ok(Store {
                inner: Arc::new(Inner {
                    sealer: opts.sealer.clone(),
                    revision: shared.revision.clone(),
                    db: Db::Sqlite(shared),
                    _stop_listener: None,
                }),
            });
        }
        let parse = |url: &str| {
            PgConnectOptions::from_str(url)
                .map_err(|e| {
                    Error::invalid("database_url", format!("is not a valid postgres url: {e}"))
                })
                .map(|c| c.application_name("badge-store"))
        };
        let hosts = primary::parse_hosts(url).map_err(|e| {
            Error::invalid("database_url", format!("is not a valid postgres url: {e}"))
        })?;
        // A connection that cannot be made answers UNAVAILABLE within this bound
        // (sqlx retries a refused connection until the acquire timeout): a request
        // must not hang for the whole connect timeout while the store is down.
        let acquire_timeout = opts.connect_timeout.min(primary::PROBE_TIMEOUT);
        let primary = match hosts {
            None => primary::Primary::single(
                PgPoolOptions::new()
                    .max_connections(opts.max_connections.max(1))
                    .acquire_timeout(acquire_timeout)
                    .connect_lazy_with(parse(url)?),
            ),
            Some(list) => {
                let hosts = list
                    .urls
                    .iter()
                    .map(|u| parse(u))
                    .collect::<Result<Vec<_>>>()?;
                primary::Primary::multi(hosts, list.labels, opts.max_connections, acquire_timeout)
                    .await
            }
        };
        let (revision, _) = watch::channel(0_i64);
        let (stop_tx, stop_rx) = oneshot::channel();
        listener::spawn(
            opts.connect_timeout,
            primary.clone(),
            revision.clone(),
            stop_rx,
        );
        Ok(Store {
            inner: Arc::new(Inner {
                sealer: opts.sealer.clone(),
                db: Db::Postgres(primary),
                revision,
                _stop_listener: Some(stop_tx),
            }),
        })
    }

    /// Creates the database named in `url` when it does not exist yet (so
    /// `badge migrate` works on a fresh server; for SQLite, the file and its
    /// directory). Returns whether it created it.
    pub async fn create_database_if_missing(url: &str) -> Result<bool> {
        use sqlx::migrate::MigrateDatabase;
        if sqlite::is_sqlite_url(url) {
            return sqlite::create_database_if_missing(url).await;
        }
        // sqlx cannot parse a host list: run this on the host that accepts writes.
        let writable = match primary::parse_hosts(url) {
            Ok(Some(list)) => {
                let hosts = list
                    .urls
                    .iter()
                    // Probed on the maintenance database: this one may not exist yet.
                    .map(|u| PgConnectOptions::from_str(u).map(|o| o.database("postgres")))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| {
                        Error::invalid("database_url", format!("is not a valid postgres url: {e}"))
                    })?;
                match primary::find_primary(&hosts).await {
                    Some(i) => list.urls[i].clone(),
                    None => {
                        return Err(Error::Unavailable(format!(
                            "store unavailable: no host of {} accepts writes",
                            list.labels.join(",")
                        )));
                    }
                }
            }
            _ => url.to_owned(),
        };
        let url = writable.as_str();
        if Postgres::database_exists(url)
            .await
            .map_err(|e| db_error(e, None))?
        {
            return Ok(false);
        }
        match Postgres::create_database(url).await {
            Ok(()) => Ok(true),
            // Another process created it first.
            Err(e) if Postgres::database_exists(url).await.unwrap_or(false) => {
                tracing::debug!(error = %e, "database appeared concurrently");
                Ok(false)
            }
            Err(e) => Err(db_error(e, None)),
        }
    }

    /// Runs `f` while this process holds the Postgres session advisory lock `key`,
    /// so only one replica does it at a time (key rotation). Returns `None` without
    /// running `f` when another session holds the lock. The connection is closed,
    /// not returned to the pool, unless the unlock succeeded — a lock can never be
    /// left behind on a pooled connection, even if `f` is cancelled.
    ///
    /// On SQLite the lock is in-process (shared by every store of this process on
    /// the file), which is enough because one SQLite database serves one process.
    pub async fn try_locked<F, Fut, T>(&self, key: i64, f: F) -> Result<Option<T>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let pool = match &self.inner.db {
            Db::Postgres(primary) => primary.pool(),
            Db::Sqlite(shared) => {
                // Released when dropped: after `f`, or when this future is cancelled.
                let Some(_held) = shared.try_lock(key) else {
                    return Ok(None);
                };
                return Ok(Some(f().await));
            }
        };
        let mut conn = pool.acquire().await.map_err(|e| db_error(e, None))?;
        drop(pool);
        conn.close_on_drop();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| db_error(e, None))?;
        if !got {
            return Ok(None);
        }
        let out = f().await;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error(e, None))?;
        // sqlx cannot undo close_on_drop, so this connection closes even after a
        // clean unlock: one reconnect per rotation is cheap.
        Ok(Some(out))
    }

    /// Runs the embedded migrations (`migrations/` for Postgres,
    /// `migrations/sqlite/` for SQLite).
    pub async fn migrate(&self) -> Result<()> {
        schema::migrate(&self.inner.db).await
    }

    /// Refuses a schema this binary does not know (not migrated, newer, missing,
    /// failed or modified migrations) with `FailedPrecondition`.
    pub async fn check_schema(&self) -> Result<()> {
        schema::check(&self.inner.db).await
    }

    /// One round trip to the database.
    pub async fn ping(&self) -> Result<()> {
        with_pool!(&self.inner.db, |p| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(drop))
        .map_err(|e| db_error(e, None))
    }

    /// The latest committed revision this process knows of: updated right after
    /// this process's own commits and, through LISTEN/NOTIFY, on every other
    /// process's. After the LISTEN connection (re)connects the task re-reads the
    /// counter, so a missed notification is never lost for good. On SQLite every
    /// store of the process on the database shares one watch, bumped after each
    /// commit.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.revision.subscribe()
    }

    /// The revision of the last committed write (0 when none yet).
    pub async fn current_revision(&self) -> Result<i64> {
        with_pool!(&self.inner.db, |p| sqlx::query_scalar(
            "SELECT revision FROM revision_counter WHERE id = 1"
        )
        .fetch_one(p)
        .await)
        .map_err(|e| db_error(e, None))
    }

    /// Begins a write transaction. Postgres serialises writers on the counter row;
    /// SQLite takes the process's writers' mutex, then `BEGIN IMMEDIATE` (the
    /// write lock up front, so no reader-turned-writer can fail half-way).
    async fn begin_write(&self) -> sqlx::Result<Tx> {
        match &self.inner.db {
            Db::Postgres(primary) => Ok(Tx::Postgres(primary.begin("BEGIN").await?)),
            Db::Sqlite(shared) => {
                let writer = shared.writer.clone().lock_owned().await;
                let tx = primary::begin_detached(shared.pool.clone(), "BEGIN IMMEDIATE").await?;
                Ok(Tx::Sqlite(tx, Some(writer)))
            }
        }
    }

    /// Begins a read-only transaction whose statements all see one snapshot.
    async fn begin_read(&self) -> Result<Tx> {
        match &self.inner.db {
            Db::Postgres(primary) => primary
                .begin(READ_SNAPSHOT)
                .await
                .map(Tx::Postgres)
                .map_err(|e| db_error(e, None)),
            // A deferred transaction in WAL mode reads one snapshot, taken at its
            // first SELECT, until it ends.
            Db::Sqlite(shared) => primary::begin_detached(shared.pool.clone(), "BEGIN")
                .await
                .map(|tx| Tx::Sqlite(tx, None))
                .map_err(|e| db_error(e, None)),
        }
    }

    /// [`Self::begin_read`], and the revision its snapshot is at (read first, so
    /// what the transaction lists is exactly the state at that revision).
    async fn begin_read_at_revision(&self) -> Result<(Tx, i64)> {
        let mut tx = self.begin_read().await?;
        let revision: i64 = with_tx!(&mut tx, |c| sqlx::query_scalar(
            "SELECT revision FROM revision_counter WHERE id = 1"
        )
        .fetch_one(&mut **c)
        .await)
        .map_err(|e| db_error(e, None))?;
        Ok((tx, revision))
    }

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

    async fn read_feed_once(&self, after: i64, limit: i64) -> Result<Feed> {
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
        Ok(Feed {
            entries,
            revision: counter,
        })
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
        Ok(removed)
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

    /// Whether Secret data is sealed at rest.
    pub fn seals_data(&self) -> bool {
        self.inner.sealer.is_some()
    }

    /// Seals the data of sensitive kinds before it is written.
    fn seal_ops(&self, mut ops: Vec<Op>) -> Result<Vec<Op>> {
        let Some(sealer) = &self.inner.sealer else {
            return Ok(ops);
        };
        for op in &mut ops {
            if let Op::Create {
                kind,
                namespace,
                name,
                data,
                ..
            }
            | Op::Update {
                kind,
                namespace,
                name,
                data,
                ..
            } = op
                && SEALED_KINDS.contains(kind)
            {
                let sealed = sealer
                    .seal(data, &seal_aad(*kind, namespace, name))
                    .map_err(|e| {
                        Error::Internal(format!("sealing {} data: {e}", kind.resource()))
                    })?;
                let mut out = Vec::with_capacity(SEALED_PREFIX.len() + sealed.len());
                out.extend_from_slice(SEALED_PREFIX);
                out.extend_from_slice(&sealed);
                *data = out;
            }
        }
        Ok(ops)
    }

    /// Opens sealed data after it is read. Sealed data without a sealer, or one that
    /// does not open (wrong key, tampering), is an error — never garbage.
    fn open(&self, mut record: Record) -> Result<Record> {
        let Some(sealed) = record.data.strip_prefix(SEALED_PREFIX) else {
            return Ok(record);
        };
        let Some(sealer) = &self.inner.sealer else {
            return Err(Error::Internal(format!(
                "{} {}/{} is encrypted at rest but no key-encryption key is configured",
                record.kind.resource(),
                record.namespace,
                record.name
            )));
        };
        record.data = sealer
            .open(
                sealed,
                &seal_aad(record.kind, &record.namespace, &record.name),
            )
            .map_err(|e| {
                Error::Internal(format!(
                    "{} {}/{} cannot be decrypted with the configured key-encryption key: {e}",
                    record.kind.resource(),
                    record.namespace,
                    record.name
                ))
            })?;
        Ok(record)
    }

    /// [`Self::open`], or on failure the object's namespace, name and the reason
    /// (the sealed data is dropped here, so it cannot travel further).
    fn open_or_key(&self, record: Record) -> std::result::Result<Record, (String, String, String)> {
        if !record.data.starts_with(SEALED_PREFIX) {
            // The common case (every unsealed kind): no copies of the key.
            return Ok(record);
        }
        let (namespace, name) = (record.namespace.clone(), record.name.clone());
        self.open(record).map_err(|e| {
            let reason = match e {
                Error::Internal(m) => m,
                other => other.to_string(),
            };
            (namespace, name, reason)
        })
    }

    /// Opens the changes of a committed write for the caller. This process sealed
    /// whatever it wrote; only a deletion can carry data sealed by someone else
    /// (the last state of an object another key sealed). The delete has been
    /// committed: answering an error would make the caller believe it failed (and
    /// an operator deleting an unreadable Secret could never see it succeed), so
    /// such a change comes back with its metadata and empty data.
    fn open_applied(&self, changes: Vec<Change>) -> Result<Vec<Change>> {
        changes
            .into_iter()
            .map(|c| {
                if c.event != EventType::Deleted || !c.record.data.starts_with(SEALED_PREFIX) {
                    return Ok(Change {
                        record: self.open(c.record)?,
                        ..c
                    });
                }
                let mut record = c.record;
                let data = std::mem::take(&mut record.data);
                let opened = self.open(Record {
                    data,
                    ..record.clone()
                });
                Ok(Change {
                    record: match opened {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(
                                kind = record.kind.as_str(),
                                namespace = %record.namespace,
                                name = %record.name,
                                revision = c.revision,
                                reason = %e,
                                "deleted an object whose data cannot be opened"
                            );
                            record
                        }
                    },
                    ..c
                })
            })
            .collect()
    }
}

/// Keeps the watch value at the highest revision seen.
fn publish(tx: &watch::Sender<i64>, revision: i64) {
    tx.send_if_modified(|cur| {
        if revision > *cur {
            *cur = revision;
            true
        } else {
            false
        }
    });
}

/// Postgres: the counter, for the LISTEN task's catch-up.
async fn current_revision(pool: &PgPool) -> Result<i64> {
    sqlx::query_scalar("SELECT revision FROM revision_counter WHERE id = 1")
        .fetch_one(pool)
        .await
        .map_err(|e| db_error(e, None))
}

/// Postgres-only: a read-only transaction whose statements all see one snapshot.
const READ_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// Postgres-only: wakes every LISTENer when (and only if) the transaction commits.
async fn notify(tx: &mut Transaction<'static, Postgres>, revision: i64) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(revision.to_string())
        .execute(&mut **tx)
        .await
        .map(|_| ())
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

fn not_found(kind: Kind, name: &str) -> Error {
    Error::NotFound(format!("{} \"{name}\" not found", kind.resource()))
}

fn already_exists(kind: Kind, name: &str) -> Error {
    Error::AlreadyExists(format!("{} \"{name}\" already exists", kind.resource()))
}

fn modified_concurrently(kind: Kind, name: &str) -> Error {
    Error::Conflict(format!(
        "operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
         please apply your changes to the latest version and try again",
        kind.resource()
    ))
}

fn labels_json(labels: &BTreeMap<String, String>) -> Result<String> {
    serde_json::to_string(labels).map_err(|e| Error::Internal(format!("encoding labels: {e}")))
}

/// Typed column access on either driver's rows.
trait RowExt {
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

fn record_from_row(row: &impl RowExt) -> Result<Record> {
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
fn change_from_row(row: &impl RowExt) -> Result<Change> {
    Ok(Change {
        revision: row.int("revision")?,
        event: EventType::parse(&row.text("event")?)?,
        record: record_from_row(row)?,
    })
}

/// A failed write transaction: retried, or answered.
enum TxError {
    Retry(String),
    Fatal(Error),
}

impl TxError {
    fn db(e: sqlx::Error) -> Self {
        Self::classify(e, None)
    }

    fn db_about(e: sqlx::Error, kind: Kind, name: &str) -> Self {
        Self::classify(e, Some((kind, name)))
    }

    fn classify(e: sqlx::Error, about: Option<(Kind, &str)>) -> Self {
        if is_retryable(&e) {
            TxError::Retry(e.to_string())
        } else {
            TxError::Fatal(db_error(e, about))
        }
    }
}

impl From<Error> for TxError {
    fn from(e: Error) -> Self {
        TxError::Fatal(e)
    }
}

/// Serialization failure or deadlock (Postgres), or a database another process
/// holds locked past the busy timeout (SQLite): the transaction may succeed if run
/// again.
fn is_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => match sqlite_code(d.as_ref()) {
            Some(code) => matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED),
            None => matches!(d.code().as_deref(), Some("40001" | "40P01")),
        },
        _ => false,
    }
}

const SQLITE_ERROR: i32 = 1;
const SQLITE_READONLY: i32 = 8;
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_IOERR: i32 = 10;
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_NOTADB: i32 = 26;

/// The (extended) result code of an SQLite error; `None` for Postgres errors.
fn sqlite_code(d: &dyn sqlx::error::DatabaseError) -> Option<i32> {
    d.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    d.code()?.parse().ok()
}

/// The one mapping from sqlx errors (and SQLSTATEs / SQLite result codes) to
/// domain errors. `about` names the object a unique violation is about. Messages
/// never include object data.
fn db_error(e: sqlx::Error, about: Option<(Kind, &str)>) -> Error {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => match about {
            Some((kind, name)) => already_exists(kind, name),
            None => Error::AlreadyExists("object already exists".to_owned()),
        },
        sqlx::Error::Database(d) if sqlite_code(d.as_ref()).is_some() => {
            let code = sqlite_code(d.as_ref()).unwrap_or(0);
            match code & 0xff {
                SQLITE_ERROR if d.message().starts_with("no such table") => {
                    Error::precondition("database schema is not migrated: run `badge migrate`")
                }
                SQLITE_BUSY | SQLITE_LOCKED => Error::Unavailable(format!(
                    "store unavailable: {} (is another process using the database file?)",
                    d.message()
                )),
                SQLITE_READONLY | SQLITE_IOERR | SQLITE_CORRUPT | SQLITE_FULL | SQLITE_CANTOPEN
                | SQLITE_NOTADB => {
                    Error::Unavailable(format!("store unavailable: {}", d.message()))
                }
                _ => Error::Internal(format!("store error: {e}")),
            }
        }
        sqlx::Error::Database(d) => match d.code().as_deref() {
            Some("40001" | "40P01") => Error::Conflict(format!(
                "the store could not serialise concurrent writes ({}); retry",
                d.message()
            )),
            // undefined_table: the schema is not there at all.
            Some("42P01") => {
                Error::precondition("database schema is not migrated: run `badge migrate`")
            }
            // Class 08 connection exceptions, 57P0x shutdown / cannot connect now,
            // 53300 too many connections, 25006 read-only transaction (a demoted
            // primary: the store is finding the new one).
            Some(code)
                if code.starts_with("08")
                    || code.starts_with("57P")
                    || code == "53300"
                    || code == "25006" =>
            {
                Error::Unavailable(format!("store unavailable: {}", d.message()))
            }
            _ => Error::Internal(format!("store error: {e}")),
        },
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => Error::Unavailable(format!("store unavailable: {e}")),
        _ => Error::Internal(format!("store error: {e}")),
    }
}
