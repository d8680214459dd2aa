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
//! object. `apply` hands its ops to the store's writer task, which commits every
//! request waiting in one such transaction, each request still all or nothing
//! (group commit, see `write.rs`): the lock and the commit are paid once per
//! batch. On Postgres a `NOTIFY` in the same transaction wakes every process's
//! [`Store::subscribe`] receivers (see `listener.rs`); on SQLite the committing
//! store bumps the watch its process shares.
//!
//! SQL is written once and compiled for both drivers (`with_pool!` / `with_tx!`:
//! `$N` placeholders, row values and `RETURNING` work on both); it stays portable
//! (plain column types, no jsonb, times as microseconds). The backend-specific
//! parts are isolated: `LISTEN`/`NOTIFY` ([`listener`] and [`write::notify`]), the
//! snapshot-isolation `BEGIN` ([`READ_SNAPSHOT`]), advisory locks, the write
//! `BEGIN` (`Store::begin_write`), each backend's migrations (`migrations/` and
//! `migrations/sqlite/`, see [`schema`]) and the error codes ([`db_error`]).
//!
//! Modules: `types` (what callers pass and get back), `read` (get, list, scan),
//! `feed` (the change feed and its compaction), `write` (`apply` and its
//! transaction), `relay` (one reader of the feed per store, serving every
//! [`Follower`]), `seal` (Secret data at rest), `row` (rows to records), `error`
//! (sqlx errors to domain errors); this file keeps the handle, the connection
//! and the transactions every module shares.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use badge_core::seal::DataSealer;
use badge_core::{Error, Result};
use sqlx::Transaction;
use sqlx::postgres::{PgConnectOptions, PgPool, Postgres};
use sqlx::sqlite::Sqlite;
use tokio::sync::{OwnedMutexGuard, mpsc, oneshot, watch};

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

mod error;
mod feed;
mod listener;
mod primary;
mod read;
mod relay;
mod row;
mod schema;
mod seal;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;
mod types;
mod write;

use error::db_error;
pub use relay::{FollowBatch, Follower};
pub use seal::SEALED_KINDS;
pub use types::{
    Change, EventType, Feed, FeedEntry, ListPage, ListQuery, Op, Precondition, Record, Unreadable,
};

#[derive(Clone)]
pub struct StoreOptions {
    /// Upper bound of the connection pool (the LISTEN connection is extra).
    pub max_connections: u32,
    /// How long to wait for a connection (pool acquire, including connecting).
    pub connect_timeout: Duration,
    /// Encrypts the data of sensitive kinds (Secrets) at rest. Every process that
    /// reads them needs the same key.
    pub sealer: Option<Arc<dyn DataSealer>>,
    /// Feed entries the store's relay keeps in memory for its followers (see
    /// [`Store::follow`]): a follower further behind than this reads the
    /// database itself.
    pub feed_ring: usize,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("sealed", &self.sealer.is_some())
            .field("feed_ring", &self.feed_ring)
            .finish()
    }
}
impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            sealer: None,
            feed_ring: DEFAULT_FEED_RING,
        }
    }
}

/// Default of [`StoreOptions::feed_ring`]: a few seconds of a busy store's
/// writes, a few megabytes of memory.
pub const DEFAULT_FEED_RING: usize = 10_000;
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
    /// The queue of this store's writer task (see `write.rs`): every `apply` is
    /// committed there, together with the others waiting. Dropped with the last
    /// `Store` clone, which ends the task once the queue is drained.
    writer: mpsc::Sender<write::Request>,
    /// The feed relay, started by the first [`Store::follow`].
    relay: OnceLock<relay::RelayHandle>,
    feed_ring: usize,
    /// Reads of the change feed from the database (see [`Store::feed_reads`]).
    feed_reads: AtomicU64,
}

/// The database behind a store (cheap to clone: both are shared handles).
#[derive(Clone)]
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
            let db = Db::Sqlite(shared.clone());
            return Ok(Store {
                inner: Arc::new(Inner {
                    sealer: opts.sealer.clone(),
                    revision: shared.revision.clone(),
                    writer: write::spawn_writer(db.clone(), shared.revision.clone()),
                    db,
                    _stop_listener: None,
                    relay: OnceLock::new(),
                    feed_ring: opts.feed_ring,
                    feed_reads: AtomicU64::new(0),
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
            None => primary::Primary::single(primary::build_pool(
                parse(url)?,
                opts.max_connections,
                acquire_timeout,
            )),
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
        let db = Db::Postgres(primary);
        Ok(Store {
            inner: Arc::new(Inner {
                sealer: opts.sealer.clone(),
                writer: write::spawn_writer(db.clone(), revision.clone()),
                db,
                revision,
                _stop_listener: Some(stop_tx),
                relay: OnceLock::new(),
                feed_ring: opts.feed_ring,
                feed_reads: AtomicU64::new(0),
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

    /// A cursor on the change feed after revision `after`, served by this store's
    /// feed relay: one task per store reads each change from the database once
    /// and every follower takes it from memory, so the database's work per change
    /// does not grow with the followers (see `relay.rs`). The order, the entries
    /// and the errors are those of [`Store::read_feed`]: ascending revisions with
    /// no gaps, unreadable entries in their place, `OutOfRange` for a cursor
    /// behind the compaction mark. The relay starts with the first call; must be
    /// called inside a Tokio runtime.
    ///
    /// For the steady state of a follower. What must be everything committed up
    /// to now (the replay after a list) is read with [`Store::changes_since`] or
    /// [`Store::read_feed`].
    pub fn follow(&self, after: i64) -> Follower {
        let handle = self
            .inner
            .relay
            .get_or_init(|| relay::start(self, self.inner.feed_ring));
        Follower::new(self.clone(), handle.relay.clone(), after)
    }

    /// How many times this store has read the change feed from the database
    /// (its relay, followers behind the relay, [`Store::read_feed`] and
    /// [`Store::changes_since`] callers): what the relay keeps flat as followers
    /// are added.
    pub fn feed_reads(&self) -> u64 {
        self.inner.feed_reads.load(Ordering::Relaxed)
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

    /// Begins a write transaction (see [`Db::begin_write`]).
    async fn begin_write(&self) -> sqlx::Result<Tx> {
        self.inner.db.begin_write().await
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
}

impl Db {
    /// Begins a write transaction. Postgres serialises writers on the counter row;
    /// SQLite takes the process's writers' mutex, then `BEGIN IMMEDIATE` (the
    /// write lock up front, so no reader-turned-writer can fail half-way).
    async fn begin_write(&self) -> sqlx::Result<Tx> {
        match self {
            Db::Postgres(primary) => Ok(Tx::Postgres(primary.begin("BEGIN").await?)),
            Db::Sqlite(shared) => {
                let writer = shared.writer.clone().lock_owned().await;
                let tx = primary::begin_detached(shared.pool.clone(), "BEGIN IMMEDIATE").await?;
                Ok(Tx::Sqlite(tx, Some(writer)))
            }
        }
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
