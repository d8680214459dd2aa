//! SQLite-only: the embedded backend's connection, and the in-process stand-ins for
//! what Postgres does across processes (the writers' lock, the change-feed wake-up,
//! advisory locks).
//!
//! One SQLite database serves **one process**. Every [`Store`](crate::Store) that
//! process opens on the same file shares one [`Shared`]: one pool, one writers'
//! mutex (so commit order equals revision order), one revision watch (so a commit
//! through any of them wakes every subscriber) and one set of held `try_locked`
//! keys. A second process on the same file would still be safe for the data
//! (SQLite's own locking, `BEGIN IMMEDIATE`), but it would not hear the first
//! one's commits and the advisory locks would not exclude it: run Postgres for
//! more than one process.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use badge_core::{Error, Result};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::watch;

use crate::{StoreOptions, publish};

/// Whether `url` names an SQLite database (`sqlite://PATH` or `sqlite:PATH`).
pub(crate) fn is_sqlite_url(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// What every `Store` of this process on one database file shares.
pub(crate) struct Shared {
    pub(crate) pool: SqlitePool,
    pub(crate) revision: watch::Sender<i64>,
    /// Held by every write transaction from before `BEGIN IMMEDIATE` until it
    /// ends: writers queue here instead of spinning on SQLite's busy handler.
    pub(crate) writer: Arc<tokio::sync::Mutex<()>>,
    /// Keys held through [`crate::Store::try_locked`].
    locks: Mutex<HashSet<i64>>,
}

/// Open databases of this process, by absolute path.
static OPEN: LazyLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The connect options of `url`: the file is created when missing, in WAL mode
/// (readers never block the writer), with foreign keys on and a busy timeout for
/// the rare case of another process holding the write lock.
fn connect_options(url: &str, busy_timeout: Duration) -> Result<SqliteConnectOptions> {
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| Error::invalid("database_url", format!("is not a valid sqlite url: {e}")))?;
    if opts.get_filename().as_os_str().is_empty()
        || opts
            .get_filename()
            .to_string_lossy()
            .starts_with("file:sqlx-in-memory")
    {
        return Err(Error::invalid(
            "database_url",
            "must name a database file (sqlite://PATH): an in-memory database would lose \
             everything on exit",
        ));
    }
    Ok(opts
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(busy_timeout))
}

/// The absolute path of the database file (the key of [`OPEN`]).
fn absolute(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    // Not created yet: resolve the directory, keep the file name.
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => match dir.canonicalize() {
            Ok(dir) => dir.join(name),
            Err(_) => std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
        },
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
    }
}

/// Creates the directory the database file lives in.
fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir).map_err(|e| {
            Error::Unavailable(format!(
                "store unavailable: creating the database directory {}: {e}",
                dir.display()
            ))
        }),
        _ => Ok(()),
    }
}

/// The shared state of the database `url` names, opened on first use. Like the
/// Postgres pool, no connection is made here (the file is created on the first
/// connection; its directory here).
pub(crate) fn open(url: &str, opts: &StoreOptions) -> Result<Arc<Shared>> {
    let connect = connect_options(url, opts.connect_timeout.max(Duration::from_secs(5)))?;
    let path = absolute(connect.get_filename());
    create_parent(&path)?;
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    open.retain(|_, s| s.strong_count() > 0);
    if let Some(shared) = open.get(&path).and_then(Weak::upgrade) {
        return Ok(shared);
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(opts.max_connections.max(1))
        .acquire_timeout(opts.connect_timeout)
        .connect_lazy_with(connect.filename(&path));
    let (revision, _) = watch::channel(0_i64);
    let shared = Arc::new(Shared {
        pool,
        revision,
        writer: Arc::new(tokio::sync::Mutex::new(())),
        locks: Mutex::new(HashSet::new()),
    });
    open.insert(path, Arc::downgrade(&shared));
    drop(open);
    // Start subscribers at the stored revision, as the Postgres listener's first
    // catch-up does. Best effort: an unmigrated database has no counter yet.
    let catch_up = Arc::downgrade(&shared);
    tokio::spawn(async move {
        let Some(shared) = catch_up.upgrade() else {
            return;
        };
        let rev: sqlx::Result<i64> =
            sqlx::query_scalar("SELECT revision FROM revision_counter WHERE id = 1")
                .fetch_one(&shared.pool)
                .await;
        match rev {
            Ok(rev) => publish(&shared.revision, rev),
            Err(e) => tracing::debug!(error = %e, "no revision to catch up on yet"),
        }
    });
    Ok(shared)
}

/// Creates the database file (and its directory) when missing. Returns whether it
/// created it.
pub(crate) async fn create_database_if_missing(url: &str) -> Result<bool> {
    let connect = connect_options(url, Duration::from_secs(5))?;
    let path = connect.get_filename().to_path_buf();
    if path.exists() {
        return Ok(false);
    }
    create_parent(&path)?;
    let conn: SqliteConnection = connect
        .connect()
        .await
        .map_err(|e| crate::db_error(e, None))?;
    let _ = conn.close().await;
    Ok(true)
}

impl Shared {
    /// Takes the in-process lock `key`; `None` while someone holds it. The lock is
    /// released when the guard drops (also when the holder is cancelled).
    pub(crate) fn try_lock(self: &Arc<Self>, key: i64) -> Option<KeyGuard> {
        let mut held = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        held.insert(key).then(|| KeyGuard {
            shared: self.clone(),
            key,
        })
    }
}

pub(crate) struct KeyGuard {
    shared: Arc<Shared>,
    key: i64,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.shared
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}
